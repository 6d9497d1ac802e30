"""PROXY protocol on the ws/wss listeners: a thin wrapper around the listener's factory.

``[ws] proxy_protocol_from`` / ``[wss] proxy_protocol_from`` list the load
balancers that begin every connection with a PROXY v1/v2 header.  For a
connection from one of them, ``ProxyHeaderFactory`` first reads the header
(``sipws.edge.proxy_header`` decides), then builds the listener's real
protocol as if the header's source had connected: its ``getPeer()`` answers
that address, so every layer above (TLS, the WebSocket protocol, the
connection record, logs, HEP, the SIP ``received``) sees the client.  Bytes
that came in the same reads as the header are replayed to it.

On wss this factory sits outside ``TLSMemoryBIOFactory``: the load balancer
writes the header in clear before the client's TLS ClientHello.

A connection from any other source gets no PROXY parsing at all: the real
protocol is built at once and talks to the socket directly.  A connection
from a listed source that sends no header, a garbled one, or nothing within
the listener's ``handshake_timeout`` is dropped with one log line naming the
socket address, and counted (``ws.proxy_header_failed``).

A v2 LOCAL or v1 UNKNOWN header (a balancer's health check, or a connection of
its own) keeps the socket address.  With nothing after it, nothing more is built:
a health check that connects, sends its header and closes leaves no connection
record and no log line (only the ``ws.proxy_header_local`` counter); bytes that
follow, or the timeout, start the real protocol with the socket address.

Once the header is read the wrapper steps out of the way: the socket's
transport is handed to the real protocol and delivers to it directly, so a
proxied connection (every connection, behind a balancer) costs nothing per
read or write after its first bytes.  The transport only learns to answer
``getPeer()`` with the header's source and carries ``proxy_peer``, the
balancer's own address, for the connection record.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from sipws.edge.networks import NetworkSet
from sipws.edge.proxy_header import ProxyHeaderError, parse_proxy_header

log = Logger(namespace="sipws.ws")

#: The transport attribute holding the socket peer (host, port) of a proxied connection.
PROXY_PEER_ATTR = "proxy_peer"

FAILED_COUNTER = "ws.proxy_header_failed"
#: Headers that kept the socket address (v2 LOCAL, v1 UNKNOWN: health checks).
LOCAL_COUNTER = "ws.proxy_header_local"


def proxy_peer_of(transport: Any) -> tuple[str, int] | None:
    """The balancer's address when ``transport`` (or the one a TLS layer wraps) came through one."""
    return getattr(transport, PROXY_PEER_ATTR, None)


class ProxyHeaderFactory(Factory):
    """Wraps a listener's factory; only ``senders`` must (and may) send a PROXY header."""

    noisy = False

    def __init__(self, wrapped: Any, senders: NetworkSet, timeout: float, reactor: Any,
                 stats: Any, kind: str) -> None:
        self.wrapped = wrapped
        self.senders = senders
        self.timeout = timeout
        self.reactor = reactor
        self.stats = stats
        self.kind = kind

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else self.__class__.__name__

    def buildProtocol(self, addr: Any) -> Any:
        if addr.host not in self.senders:
            return self.wrapped.buildProtocol(addr)  # not a listed balancer: no PROXY parsing
        return ProxyHeaderProtocol(self, addr)


class ProxyHeaderProtocol(Protocol):
    """Reads the header of one connection from a listed sender, then hands the socket over."""

    def __init__(self, factory: ProxyHeaderFactory, socket_peer: Any) -> None:
        self.factory = factory
        self.socket_peer = socket_peer
        self._buffer = b""
        self._timer: Any = None
        self._done = False
        #: A LOCAL/UNKNOWN header read with nothing after it yet (a health check, probably).
        self._local = False

    def connectionMade(self) -> None:
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._local:  # the first bytes after a LOCAL/UNKNOWN header: a real connection after all
            return self._hand_over(self.socket_peer, data)
        # parse_proxy_header decides within MAX_HEADER_LENGTH bytes, so the buffer
        # kept between reads stays below that (one read may bring more, handed on).
        self._buffer += data
        try:
            header = parse_proxy_header(self._buffer)
        except ProxyHeaderError as exc:
            return self._refuse(exc.reason)
        if header is None:
            return
        rest = self._buffer[header.length:]
        self._buffer = b""
        if header.source is None:
            self.factory.stats.incr(LOCAL_COUNTER)
            if not rest:
                # A balancer's health check connects, sends LOCAL (v2) or UNKNOWN (v1) and
                # closes: no connection record, no log lines, unless bytes follow (then it
                # is a connection of the balancer's own, served with the socket address).
                self._local = True
                return
            return self._hand_over(self.socket_peer, rest)
        host, port = header.source
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        setattr(self.transport, PROXY_PEER_ATTR, (self.socket_peer.host, self.socket_peer.port))
        self.transport.getPeer = lambda: address  # what the real protocol and TLS ask for
        self._hand_over(address, rest)

    def _hand_over(self, address: Any, rest: bytes) -> None:
        """Build the real protocol for ``address`` and give it the socket and ``rest``."""
        self._finish()
        transport = self.transport
        protocol = self.factory.wrapped.buildProtocol(address)
        if protocol is None:  # the wrapped factory refused it
            transport.loseConnection()
            return
        transport.protocol = protocol  # reads go straight to it from now on
        protocol.makeConnection(transport)
        if rest:
            protocol.dataReceived(rest)

    def connectionLost(self, reason: Any) -> None:
        self._finish()

    def _timed_out(self) -> None:
        self._timer = None
        if self._local:  # idle after a LOCAL header: the real protocol's own timeout takes over
            return self._hand_over(self.socket_peer, b"")
        self._refuse(f"no PROXY header within {self.factory.timeout:g} s")

    def _refuse(self, reason: str) -> None:
        self._finish()
        self._buffer = b""
        self.factory.stats.incr(FAILED_COUNTER)
        log.warn(
            "proxy header refused from {host}:{port} reason={reason} listener={kind}",
            host=self.socket_peer.host,
            port=self.socket_peer.port,
            reason=reason,
            kind=self.factory.kind,
        )
        self.transport.loseConnection()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
