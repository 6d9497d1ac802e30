"""A scriptable SIP "core" on real loopback sockets (UDP and TCP) for relay tests.

It records what sipws sends and lets a test answer or send requests itself.
Interop with real SIP cores (Kamailio, sipp) lives in tests/interop; this is
for the cases a real core would not produce on demand (bad tokens, a
connection gone mid-transaction, oversized datagrams, malformed input).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from sipws.sip import parse
from sipws.sip.framer import StreamFramer

WAIT = 10.0


class CoreUdp(DatagramProtocol):
    """A UDP SIP endpoint: every datagram goes into ``inbox`` with its source."""

    def __init__(self) -> None:
        self.inbox: defer.DeferredQueue = defer.DeferredQueue()
        self.port: Any = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.inbox.put((data, (addr[0], addr[1])))

    def next(self, timeout: float = WAIT) -> defer.Deferred:
        """Fires with (message, raw bytes, source) of the next datagram."""
        return self.inbox.get().addTimeout(timeout, reactor).addCallback(
            lambda item: (parse(item[0]), item[0], item[1]))

    def send(self, data: bytes | str, address: tuple[str, int]) -> None:
        self.transport.write(data.encode() if isinstance(data, str) else data, address)

    @property
    def number(self) -> int:
        return self.port.getHost().port


def udp_core() -> CoreUdp:
    core = CoreUdp()
    core.port = reactor.listenUDP(0, core, interface="127.0.0.1", maxPacketSize=65535)
    return core


class _CoreStream(Protocol):
    def connectionMade(self) -> None:
        self.framer = StreamFramer()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        for message in self.framer.feed(data):
            self.factory.inbox.put((message, self))

    def send(self, data: bytes | str) -> None:
        self.transport.write(data.encode() if isinstance(data, str) else data)


class CoreTcp(Factory):
    """A TCP SIP endpoint: messages go into ``inbox`` with the connection they came on."""

    protocol = _CoreStream

    def __init__(self) -> None:
        self.inbox: defer.DeferredQueue = defer.DeferredQueue()
        self.connections: list[_CoreStream] = []
        self.port: Any = None

    def next(self, timeout: float = WAIT) -> defer.Deferred:
        return self.inbox.get().addTimeout(timeout, reactor).addCallback(
            lambda item: (parse(item[0]), item[0], item[1]))

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def tcp_core() -> CoreTcp:
    core = CoreTcp()
    core.port = reactor.listenTCP(0, core, interface="127.0.0.1")
    return core


def reply(request: Any, status: int = 200, reason: str = "OK", extra: str = "", to_tag: str = "core1") -> bytes:
    """A response to a request as a core would write it (every Via copied)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in request.get_all("via")]
    lines.append(f"From: {request.get('from')}")
    to = request.get("to")
    if ";tag=" not in to and status > 100:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.get('call-id')}")
    lines.append(f"CSeq: {request.get('cseq')}")
    if extra:
        lines.append(extra.rstrip("\r\n"))
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_request(method: str, call_id: str, ruri: str = "sip:bob@example.com", branch: str | None = None,
               extra: str = "", cseq: int = 1, body: str = "") -> bytes:
    """A request as a browser's stack writes it over WebSocket."""
    branch = branch or f"z9hG4bK{call_id}{cseq}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch={branch}",
        "Max-Forwards: 69",
        "To: <sip:bob@example.com>",
        "From: \"Alice\" <sip:alice@example.com>;tag=ws1",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if extra:
        lines.append(extra.rstrip("\r\n"))
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def core_request(method: str, call_id: str, ruri: str, route: str | None, via_port: int,
                 branch: str | None = None, extra: str = "", body: str = "", transport: str = "UDP") -> bytes:
    """A request the core sends toward a WebSocket client through sipws."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{via_port};branch={branch or 'z9hG4bKcore' + call_id};rport",
        "Max-Forwards: 70",
        "From: <sip:carol@example.com>;tag=core9",
        "To: <sip:alice@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: 7 {method}",
    ]
    if route:
        lines.append(f"Route: {route}")
    if extra:
        lines.append(extra.rstrip("\r\n"))
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
