"""An in-memory stand-in for the root service: what the admin methods read and call."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from sipws.config import config_from_dict
from sipws.stats import Stats
from sipws.trace.errors import TraceNotConfigured
from sipws.transport.connections import CLIENT, OPEN, SERVER, ConnectionRecord, ConnectionTable


class FakeProtocol:
    """Records what the admin methods asked a connection to send."""

    def __init__(self, record: ConnectionRecord) -> None:
        self.record = record
        self.sent: list[tuple[Any, ...]] = []

    def close_connection(self, code: int = 1000, reason: str = "") -> None:
        self.sent.append(("close", code, reason))
        self.record.state = "closing"

    def send_ping(self, payload: bytes) -> bool:
        self.sent.append(("ping", payload))
        return self.record.state == OPEN

    def send_pong(self, payload: bytes) -> bool:
        self.sent.append(("pong", payload))
        return self.record.state == OPEN


class FakeTracer:
    def __init__(self, configured: bool = True) -> None:
        self.configured = configured
        self.enabled = False

    def set_enabled(self, on: bool) -> None:
        if on and not self.configured:
            raise TraceNotConfigured("tracing needs [trace] destination in the configuration")
        self.enabled = on

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "packets_sent": 0, "queue_length": 3}


class FakeClient:
    def __init__(self, root: "FakeRoot") -> None:
        self.root = root
        self.pending: dict[str, defer.Deferred] = {}

    def connect(self, url: str) -> defer.Deferred:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.pending[url] = d = defer.Deferred()
        return d


class FakeRoot:
    def __init__(self, **config: Any) -> None:
        self.config = config_from_dict(config)
        self.reactor = task.Clock()
        self.reactor.advance(1000)
        self.stats = Stats()
        self.connections = ConnectionTable()
        self.tracer: Any = FakeTracer()
        self.accepting = True
        self.ws_client = FakeClient(self)

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    def add(self, remote_port: int, transport: str = "ws", role: str = SERVER, state: str = OPEN) -> ConnectionRecord:
        record = ConnectionRecord(transport, role, ("127.0.0.1", 8080), ("127.0.0.1", remote_port), self.reactor.seconds())
        record.protocol = FakeProtocol(record)
        record.state = state
        self.connections.add(record)
        return record


__all__ = ["FakeRoot", "FakeProtocol", "CLIENT", "SERVER"]
