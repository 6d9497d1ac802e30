"""The connection table: every WebSocket connection, server or client role.

Ids are positive integers, unique and never reused within a run; the same id
shows in logs, ws.dump, the closed event and HEP correlation ids.  A record
enters the table when its TCP connection is accepted (or dialled) and leaves
it exactly once, when the connection ends, however it ends: ``remove`` is
idempotent and is called from ``connectionLost``, which Twisted always runs.

Records use __slots__: with tens of thousands of idle connections the record
is part of the per-connection memory budget.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

#: Connection states, in the order a connection goes through them.
CONNECTING = "connecting"  # TCP (and TLS) up, HTTP upgrade not finished
OPEN = "open"
CLOSING = "closing"  # close handshake started
CLOSED = "closed"

#: Who closed a connection, as reported by the closed event and logs.
LOCAL = "local"
REMOTE = "remote"

#: Roles.
SERVER = "server"  # accepted from a client
CLIENT = "client"  # dialled by sipws


class ConnectionRecord:
    """What the table knows about one connection.

    ``transport`` is "ws" or "wss"; ``local`` and ``remote`` are (host, port)
    tuples; times are reactor seconds.  ``protocol`` is the object that can
    send on the connection (see ``send``, ``close``, ``ping``, ``pong`` on the
    transport protocols); it is dropped when the record is removed.
    """

    __slots__ = (
        "id",
        "transport",
        "role",
        "local",
        "remote",
        "proxy_peer",
        "state",
        "subprotocol",
        "extensions",
        "created",
        "last_used",
        "awaiting_pong",
        "origin",
        "user_agent",
        "resource",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "protocol",
        "traced",
        "identity",
        "__weakref__",
    )

    def __init__(
        self,
        transport: str,
        role: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        now: float,
        protocol: Any = None,
    ) -> None:
        self.id = 0
        self.transport = transport
        self.role = role
        self.local = local
        self.remote = remote
        #: The socket peer when ``remote`` came from a PROXY header or a trusted
        #: proxy's X-Forwarded-For / Forwarded (the balancer); None when direct.
        self.proxy_peer: tuple[str, int] | None = None
        self.state = CONNECTING
        self.subprotocol = ""
        #: Negotiated extensions as in the 101's Sec-WebSocket-Extensions ("" = none).
        self.extensions = ""
        self.created = now
        self.last_used = now
        self.awaiting_pong = False
        self.origin = ""
        self.user_agent = ""
        self.resource = ""
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.protocol = protocol
        #: Whether HEP tracing applies to this connection (decided once).
        self.traced = False
        #: Who authenticated at the handshake ([auth]; "user" or "user@domain"), "" = nobody.
        self.identity = ""

    def describe(self) -> str:
        """One-line identity for logs: ``#7 ws 127.0.0.1:50120->127.0.0.1:8080``, with
        `` via 10.0.0.2:40000`` when the connection came through a proxy."""
        text = f"#{self.id} {self.transport} {_fmt(self.remote)}->{_fmt(self.local)}"
        if self.proxy_peer is not None:
            text += f" via {_fmt(self.proxy_peer)}"
        return text

    def as_dict(self, now: float) -> dict[str, Any]:
        """The record as plain JSON-able data (ws.dump, closed event, logs)."""
        return {
            "id": self.id,
            "transport": self.transport,
            "role": self.role,
            "local": _fmt(self.local),
            "remote": _fmt(self.remote),
            "proxy_peer": _fmt(self.proxy_peer) if self.proxy_peer is not None else None,
            "state": self.state,
            "subprotocol": self.subprotocol,
            "extensions": self.extensions,
            "resource": self.resource,
            "age": round(now - self.created, 3),
            "idle": round(now - self.last_used, 3),
            "awaiting_pong": self.awaiting_pong,
            "origin": self.origin,
            "user_agent": self.user_agent,
            "identity": self.identity,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


def _fmt(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class ConnectionTable:
    """Records by id and by (remote host, remote port, transport), both O(1)."""

    def __init__(self, ids: Iterator[int] | None = None) -> None:
        #: Where ids come from: 1, 2, 3... in a single process; a worker takes
        #: blocks leased by its master (sipws.workers), so that ids stay unique
        #: across workers and across a worker's restarts.
        self._ids = ids if ids is not None else itertools.count(1)
        self._by_id: dict[int, ConnectionRecord] = {}
        self._by_address: dict[tuple[str, int, str], ConnectionRecord] = {}
        #: Most connections open at once since start.
        self.max_concurrent = 0
        self._listeners_added: list[Callable[[ConnectionRecord], None]] = []
        self._listeners_removed: list[Callable[[ConnectionRecord], None]] = []

    def use_ids(self, ids: Iterator[int]) -> None:
        """Take ids from ``ids`` from now on (a worker, before it accepts anything)."""
        self._ids = ids

    def add(self, record: ConnectionRecord) -> int:
        """Give the record a fresh id and enter it; returns the id."""
        record.id = next(self._ids)
        self._by_id[record.id] = record
        self._by_address[(record.remote[0], record.remote[1], record.transport)] = record
        if len(self._by_id) > self.max_concurrent:
            self.max_concurrent = len(self._by_id)
        for listener in self._listeners_added:
            listener(record)
        return record.id

    def remove(self, record: ConnectionRecord) -> bool:
        """Take the record out; False if it was not (or no longer) in the table."""
        if self._by_id.pop(record.id, None) is None:
            return False
        key = (record.remote[0], record.remote[1], record.transport)
        if self._by_address.get(key) is record:
            del self._by_address[key]
        record.state = CLOSED
        for listener in self._listeners_removed:
            listener(record)
        record.protocol = None
        return True

    def set_remote(self, record: ConnectionRecord, remote: tuple[str, int]) -> None:
        """Change a record's remote address (a trusted proxy named the client), keeping the
        by-address index in step so that ``remove`` finds the entry it must drop."""
        key = (record.remote[0], record.remote[1], record.transport)
        if self._by_address.get(key) is record:
            del self._by_address[key]
        record.remote = remote
        if record.id in self._by_id:
            self._by_address[(remote[0], remote[1], record.transport)] = record

    def get(self, conn_id: int) -> ConnectionRecord | None:
        return self._by_id.get(conn_id)

    def by_address(self, host: str, port: int, transport: str) -> ConnectionRecord | None:
        return self._by_address.get((host, port, transport))

    def on_added(self, listener: Callable[[ConnectionRecord], None]) -> None:
        self._listeners_added.append(listener)

    def on_removed(self, listener: Callable[[ConnectionRecord], None]) -> None:
        self._listeners_removed.append(listener)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ConnectionRecord]:
        return iter(list(self._by_id.values()))

    def __contains__(self, conn_id: object) -> bool:
        return conn_id in self._by_id

    def values(self):
        """A live view of the records in id order (ids only grow, dicts keep order)."""
        return self._by_id.values()
