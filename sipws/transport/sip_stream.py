"""SIP over TCP and TLS toward the core: listeners, framing, connection reuse.

A stream carries many SIP messages, framed by Content-Length
(``sipws.sip.framer``).  Connections are kept in one pool keyed by
(transport, peer IP, peer port), whoever opened them: a request to the core
reuses an open connection to that address, and a response to a request the
core sent goes back on the connection it came on (RFC 3261 §18.2.2).

Dialling (reconnect on demand): the first message to an address without a
connection opens one; messages sent while it opens wait in a bounded queue.
If the connection (or, for TLS, the handshake and the certificate check)
fails, every waiting message's ``on_error`` is called, so its transaction
answers 503 at once.  TLS toward the core verifies the certificate and the
host name with service-identity (``sipws.transport.tls.client_tls_options``).

A framing error loses the stream position: the connection is closed, with a
log line naming the peer.  Double-CRLF keep-alive pings are answered with a
CRLF (RFC 5626 §3.5.1).  Connections idle for ``IDLE_TIMEOUT`` are closed.

Output is bounded: each connection is its transport's push producer, so it
learns when Twisted holds more than its buffer size (64 KiB) unsent; a peer
that stops reading while more than ``MAX_OUTPUT_BACKLOG`` bytes are written
to it is aborted (log line, ``sip.stream_backlog_aborts``), and the message
that went over fails at once (503), like a failed connection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from sipws.sip import SipParseError
from sipws.sip.framer import StreamFramer
from sipws.sip.limits import Limits
from sipws.transport.dialling import Dial, DialingPool
from sipws.transport.tls_failure import describe_tls_failure

log = Logger(namespace="sipws.transport.sip_stream")

#: Seconds to open a TCP connection to the core (TLS gets its handshake timeout on top).
CONNECT_TIMEOUT = 5.0
#: Messages (and bytes) waiting per connection being opened.
MAX_QUEUED_MESSAGES = 256
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: A connection with no traffic in either direction for this long is closed.
IDLE_TIMEOUT = 600.0
#: Seconds between idle sweeps.
IDLE_SWEEP_INTERVAL = 10.0
#: The answer to a double-CRLF ping (RFC 5626 §3.5.1).
PONG = b"\r\n"
#: Bytes written to a connection while its transport is paused (Twisted already
#: holding more than its buffer size unsent) above which the peer is considered
#: stuck and the connection aborted.
MAX_OUTPUT_BACKLOG = 8 * 1024 * 1024

Receiver = Callable[[bytes, tuple[str, int], str, Any], None]
OnError = Optional[Callable[[str], None]]
Key = tuple[str, str, int]


@implementer(IHandshakeListener, IPushProducer)
class SipStreamProtocol(Protocol):
    """One TCP or TLS connection carrying SIP, accepted or dialled."""

    def __init__(self, pool: "StreamPool", transport_name: str, dialled: bool) -> None:
        self.pool = pool
        self.transport_name = transport_name
        self.dialled = dialled
        self.framer = StreamFramer(pool.limits)
        self.peer: tuple[str, int] = ("", 0)
        self.ready = False
        self.last_used = 0.0
        self.failure: Optional[str] = None
        #: Set while the transport has paused us (its buffer is over its size).
        self.paused = False
        #: Bytes written since the transport paused us (MAX_OUTPUT_BACKLOG).
        self.backlog = 0
        #: Set once the connection was aborted for its backlog.
        self.aborted = False

    @property
    def key(self) -> Key:
        return (self.transport_name, self.peer[0], self.peer[1])

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = (address.host, address.port)
        self.last_used = self.pool.clock.seconds()
        self.transport.registerProducer(self, True)
        if self.transport_name == "tcp":
            self._ready()
        elif not self.dialled:
            # Accepted TLS: register now; what we write waits for the handshake anyway.
            self.pool.register(self)

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        self.pool.register(self)
        if self.dialled:
            self.pool.dial_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.last_used = self.pool.clock.seconds()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.warn("{transport} {host}:{port}: framing error ({reason}); closing the connection",
                     transport=self.transport_name, host=self.peer[0], port=self.peer[1], reason=exc)
            self.pool.stats.incr("sip.framing_errors")
            self.transport.loseConnection()
            return
        if self.framer.pings:
            self.transport.write(PONG * self.framer.pings)
        for message in messages:
            if self.transport is None or not self.connected:
                return
            try:
                self.pool.receiver(message, self.peer, self.transport_name, self)
            except Exception:
                log.failure("relay failed on a message from {transport} {host}:{port}",
                            transport=self.transport_name, host=self.peer[0], port=self.peer[1])

    def send(self, data: bytes) -> bool:
        """Write one message; False (and the connection aborted) when the peer
        has left more than MAX_OUTPUT_BACKLOG bytes unread."""
        if self.paused:
            self.backlog += len(data)
            if self.backlog > MAX_OUTPUT_BACKLOG:
                if not self.aborted and self.transport is not None:
                    self.aborted = True
                    log.warn("{transport} {host}:{port}: peer stopped reading ({count} bytes written since "
                             "its buffer filled, limit {limit}); aborting the connection",
                             transport=self.transport_name, host=self.peer[0], port=self.peer[1],
                             count=self.backlog, limit=MAX_OUTPUT_BACKLOG)
                    self.pool.stats.incr("sip.stream_backlog_aborts")
                    self.transport.abortConnection()
                return False
        self.last_used = self.pool.clock.seconds()
        self.transport.write(data)
        self.pool.on_sent(self, data)
        return True

    # -- IPushProducer: the transport tells us when its buffer is full ----------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.backlog = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if not self.dialled and reason is not None and reason.check(SSL.Error):
            tls = describe_tls_failure(reason.value)
            log.warn("{transport} {host}:{port}: {reason} (side={side})", transport=self.transport_name,
                     host=self.peer[0], port=self.peer[1], reason=tls.text, side=tls.side)
        if not self.ready and reason is not None:
            self.failure = reason.getErrorMessage()
            if reason.check(SSL.Error, VerificationError):
                self.failure = f"TLS certificate verification failed: {self.failure}"
        self.pool.lost(self)


class _Refused(Protocol):
    """An accepted connection over ``max_connections``: closed at once, TCP or TLS."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _StreamFactory(Factory):
    def __init__(self, pool: "StreamPool", transport_name: str, dialled: bool) -> None:
        self.pool = pool
        self.transport_name = transport_name
        self.dialled = dialled

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        if not self.dialled and len(self.pool.connections) >= self.pool.max_connections:
            log.warn("{transport}: refusing a connection from {host}:{port}: {count} open",
                     transport=self.transport_name, host=getattr(addr, "host", "?"),
                     port=getattr(addr, "port", 0), count=len(self.pool.connections))
            # Not None: under listenSSL the TLS wrapper would wrap None, raise in
            # makeConnection and leave the socket open (uncounted, past the bound).
            return _Refused()  # type: ignore[return-value]
        protocol = SipStreamProtocol(self.pool, self.transport_name, self.dialled)
        protocol.factory = self
        return protocol

    def doStart(self) -> None:  # no "Starting factory" noise in the log
        pass

    def doStop(self) -> None:
        pass


class StreamPool(DialingPool):
    """Every SIP TCP/TLS connection, by (transport, peer IP, peer port)."""

    #: Accepted connections beyond this are refused (dialled ones always proceed).
    max_connections = 10000

    def __init__(self, clock: Any, receiver: Receiver, stats: Any, limits: Limits,
                 tls_client_options: Callable[[str], Any], tls_timeout: float) -> None:
        self.clock = clock
        self.receiver = receiver
        self.stats = stats
        self.limits = limits
        self.tls_client_options = tls_client_options
        self.tls_timeout = tls_timeout
        self.connections: dict[Key, SipStreamProtocol] = {}
        self.dials: dict[Key, Dial] = {}
        self._sweep = LoopingCall(self._close_idle)
        self._sweep.clock = clock
        self._stopping = False
        #: Called with (protocol, data) for every message written (stats, tracing).
        self.on_sent: Callable[[SipStreamProtocol, bytes], None] = lambda protocol, data: None

    # -- listening -----------------------------------------------------------

    def factory(self, transport_name: str) -> Factory:
        return _StreamFactory(self, transport_name, dialled=False)

    def start(self) -> None:
        self._sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    # -- sending -------------------------------------------------------------

    def send(self, transport_name: str, address: tuple[str, int], data: bytes,
             on_error: OnError = None, server_name: str = "") -> None:
        """Send on the open connection to address, or open one (queued meanwhile)."""
        key = (transport_name, address[0], address[1])
        protocol = self.connections.get(key)
        if protocol is not None and protocol.ready and protocol.connected:
            if not protocol.send(data) and on_error is not None:
                on_error(f"{transport_name}:{address[0]}:{address[1]} stopped reading")
            return
        if self._stopping:
            if on_error is not None:
                on_error("shutting down")
            return
        dial = self.dials.get(key)
        if dial is None:
            dial = self._dial(key, server_name or address[0])
        if len(dial.queue) >= MAX_QUEUED_MESSAGES or dial.queued_bytes + len(data) > MAX_QUEUED_BYTES:
            self.stats.incr("sip.stream_queue_full")
            if on_error is not None:
                on_error(f"queue toward {transport_name}:{address[0]}:{address[1]} is full")
            return
        dial.queue.append((data, on_error))
        dial.queued_bytes += len(data)

    def _dial(self, key: Key, server_name: str) -> Dial:
        transport_name, host, port = key
        dial = Dial(key)
        self.dials[key] = dial
        endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_class(self.clock, host, port, timeout=CONNECT_TIMEOUT)
        if self._start_dial(dial, endpoint, _StreamFactory(self, transport_name, dialled=True),
                            CONNECT_TIMEOUT, server_name if transport_name == "tls" else None):
            log.info("dialling {transport}:{host}:{port}", transport=transport_name, host=host, port=port)
        return dial

    def _dial_connected(self, protocol: SipStreamProtocol, dial: Dial) -> None:
        super()._dial_connected(protocol, dial)
        if protocol.ready:
            self.dial_ready(protocol)

    def dial_ready(self, protocol: SipStreamProtocol) -> None:
        dial = self.dials.pop(protocol.key, None)
        if dial is None:
            return
        if dial.timeout is not None and dial.timeout.active():
            dial.timeout.cancel()
        log.info("connected {transport}:{host}:{port}", transport=protocol.transport_name,
                 host=protocol.peer[0], port=protocol.peer[1])
        for data, on_error in dial.queue:
            if not protocol.send(data) and on_error is not None:
                on_error(f"{protocol.transport_name}:{protocol.peer[0]}:{protocol.peer[1]} stopped reading")
        dial.queue.clear()

    def _fail_dial(self, dial: Dial, reason: str) -> None:
        self._forget_dial(dial)
        transport_name, host, port = dial.key
        log.warn("cannot reach {transport}:{host}:{port}: {reason}", transport=transport_name,
                 host=host, port=port, reason=reason)
        self.stats.incr("sip.connect_failures")
        queue, dial.queue = dial.queue, []
        for _, on_error in queue:
            if on_error is not None:
                on_error(reason)

    # -- bookkeeping -----------------------------------------------------------

    def register(self, protocol: SipStreamProtocol) -> None:
        self.connections[protocol.key] = protocol

    def lost(self, protocol: SipStreamProtocol) -> None:
        if self.connections.get(protocol.key) is protocol:
            del self.connections[protocol.key]
        self._dial_lost(protocol.key, protocol)

    def _close_idle(self) -> None:
        deadline = self.clock.seconds() - IDLE_TIMEOUT
        for protocol in list(self.connections.values()):
            if protocol.last_used < deadline and protocol.transport is not None:
                log.info("closing idle {transport}:{host}:{port}", transport=protocol.transport_name,
                         host=protocol.peer[0], port=protocol.peer[1])
                protocol.transport.loseConnection()

    def stop(self) -> None:
        self._stopping = True
        if self._sweep.running:
            self._sweep.stop()
        self._abandon_dials()
        for protocol in list(self.connections.values()):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
