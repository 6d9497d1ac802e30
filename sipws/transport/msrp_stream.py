"""MSRP over TCP and TLS (RFC 4975): connections to and from MSRP peers.

A peer is another relay or an MSRP endpoint.  Connections are reused per
``PeerKey`` (host, port, tls) as RFC 4975 §6 and RFC 4976 §6 want: the first
chunk toward a peer opens one, chunks sent meanwhile wait in a bounded queue,
and every later chunk toward that key goes on it.  Peers also connect to the
``[msrp] listen`` sockets (the authority of the Use-Path URI sipws hands out).

Every connection, accepted or dialled, gets a negative connection id (the
relay core names connections by int; WebSocket ids are positive, so the two
never meet) and a ``MessageSplitter`` that frames the byte stream.  A stream
that cannot be framed loses its position: it is closed with a log line naming
the peer.  TLS toward a peer verifies the certificate and the host name
([wss] ca_list or the system CAs) unless ``[msrp] verify_peers`` is false.

Bounded: a connection being opened queues at most ``max_backlog`` bytes; once
Twisted holds more than its buffer unsent (the transport pauses us), bytes
written are counted and reported to the relay (``buffered``), which refuses
SENDs toward a backed-up hop; past ``BACKLOG_ABORT_FACTOR`` × max_backlog the
peer is considered stuck and the connection aborted.  Connections idle for
``[msrp] peer_idle_timeout`` are closed, accepted TLS connections that do not finish
their handshake within ``[wss] tls_handshake_timeout`` too.  Accepted connections are capped at
``MAX_ACCEPTED``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from sipws.msrp import Limits, MessageSplitter, MsrpParseError, PeerKey
from sipws.transport.dialling import Dial, DialingPool
from sipws.transport.tls_failure import describe_tls_failure

log = Logger(namespace="sipws.msrp.stream")

#: Seconds between idle sweeps.
IDLE_SWEEP_INTERVAL = 5.0
#: Accepted peer connections beyond this are refused at once.
MAX_ACCEPTED = 10000
#: A peer that leaves this many times [msrp] max_backlog unread is aborted.
BACKLOG_ABORT_FACTOR = 2
#: Chunks (besides bytes) waiting per connection being opened.
MAX_QUEUED_MESSAGES = 1024


class PeerEvents:
    """What the pool tells its owner (the MSRP service); every call is made from the reactor."""

    def peer_opened(self, conn_id: int, peer: Optional[PeerKey], protocol: "MsrpStreamProtocol") -> None: ...
    def peer_message(self, conn_id: int, data: bytes, protocol: "MsrpStreamProtocol") -> None: ...
    def peer_closed(self, conn_id: int) -> None: ...
    def peer_unreachable(self, peer: PeerKey, reason: str) -> None: ...
    def peer_buffered(self, target: Any, nbytes: int) -> None: ...
    def peer_sent(self, protocol: "MsrpStreamProtocol", data: bytes) -> None: ...


@implementer(IHandshakeListener, IPushProducer)
class MsrpStreamProtocol(Protocol):
    """One TCP or TLS connection carrying MSRP, accepted or dialled."""

    def __init__(self, pool: "PeerPool", tls: bool, peer_key: Optional[PeerKey]) -> None:
        self.pool = pool
        self.tls = tls
        #: The PeerKey a dialled connection was opened for; None when accepted.
        self.peer_key = peer_key
        self.conn_id = pool.next_id()
        self.splitter = MessageSplitter(pool.limits)
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.ready = False
        self.last_used = 0.0
        self.failure: Optional[str] = None
        self.paused = False
        self.backlog = 0
        self.closing = False
        self._deadline: Any = None

    @property
    def transport_name(self) -> str:
        return "tls" if self.tls else "tcp"

    def describe(self) -> str:
        host, port = self.peer
        shown = f"[{host}]" if ":" in host else host
        return f"msrp {self.transport_name} {shown}:{port} (#{self.conn_id})"

    def connectionMade(self) -> None:
        address, local = self.transport.getPeer(), self.transport.getHost()
        self.peer = (address.host, address.port)
        self.local = (local.host, local.port)
        self.last_used = self.pool.clock.seconds()
        self.transport.registerProducer(self, True)
        self.pool.connections[self.conn_id] = self
        if not self.tls:
            self._ready()
        elif self.peer_key is None:  # accepted TLS: the handshake has a deadline (dialled: the dial's)
            self._deadline = self.pool.clock.callLater(self.pool.tls_timeout, self._handshake_deadline)

    def _handshake_deadline(self) -> None:
        if not self.ready and not self.closing and self.transport is not None:
            log.warn("{conn}: TLS handshake not finished in {timeout} s; closing",
                     conn=self.describe(), timeout=self.pool.tls_timeout)
            self.pool.stats.incr("msrp.peer_tls_timeouts")
            self.closing = True
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        log.info("opened {conn} ({how})", conn=self.describe(), how="dialled" if self.peer_key else "accepted")
        self.pool.opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_used = self.pool.clock.seconds()
        try:
            messages = self.splitter.feed(data)
        except MsrpParseError as exc:
            log.warn("{conn}: cannot frame the MSRP stream ({reason}); closing the connection",
                     conn=self.describe(), reason=exc.reason)
            self.pool.stats.incr("msrp.peer_framing_errors")
            self.close()
            return
        for message in messages:
            if self.closing or self.transport is None:
                return
            self.pool.message(self, message)

    def send(self, data: bytes) -> bool:
        """Write one MSRP message; False when the peer has stopped reading (aborted)."""
        if self.closing or self.transport is None:
            return False
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.pool.max_backlog * BACKLOG_ABORT_FACTOR:
                log.warn("{conn}: peer stopped reading ({count} bytes waiting, limit {limit}); aborting",
                         conn=self.describe(), count=self.backlog, limit=self.pool.max_backlog)
                self.pool.stats.incr("msrp.peer_backlog_aborts")
                self.closing = True
                self.transport.abortConnection()
                return False
            self.pool.buffered(self, self.backlog)
        self.last_used = self.pool.clock.seconds()
        self.transport.write(data)
        self.pool.sent(self, data)
        return True

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.loseConnection()

    # -- IPushProducer ----------------------------------------------------------------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.backlog = 0

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            if self.backlog:
                self.backlog = 0
                self.pool.buffered(self, 0)

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if reason is not None and reason.check(SSL.Error):
            tls = describe_tls_failure(reason.value)
            self.failure = f"TLS: {tls.text}"
            if not self.ready:
                log.warn("{conn}: {reason} (side={side})", conn=self.describe(), reason=tls.text, side=tls.side)
        elif reason is not None and reason.check(VerificationError):
            self.failure = f"TLS certificate verification failed: {reason.getErrorMessage()}"
        elif not self.ready and reason is not None:
            self.failure = reason.getErrorMessage()
        self.pool.lost(self)


class _Refused(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _Factory(Factory):
    def __init__(self, pool: "PeerPool", tls: bool, peer_key: Optional[PeerKey]) -> None:
        self.pool = pool
        self.tls = tls
        self.peer_key = peer_key

    def buildProtocol(self, addr: Any) -> Protocol:
        if self.peer_key is None and self.pool.accepted >= MAX_ACCEPTED:
            log.warn("msrp: refusing a connection from {host}:{port}: {count} accepted connections open",
                     host=getattr(addr, "host", "?"), port=getattr(addr, "port", 0), count=self.pool.accepted)
            return _Refused()
        protocol = MsrpStreamProtocol(self.pool, self.tls, self.peer_key)
        protocol.factory = self
        if self.peer_key is None:
            self.pool.accepted += 1
        return protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class PeerPool(DialingPool):
    """Every MSRP TCP/TLS connection: by connection id, and dialled ones by PeerKey."""

    def __init__(self, clock: Any, events: PeerEvents, stats: Any, limits: Limits, *,
                 tls_client_options: Callable[[str], Any], connect_timeout: float, tls_timeout: float,
                 idle_timeout: float, max_backlog: int) -> None:
        self.clock = clock
        self.events = events
        self.stats = stats
        self.limits = limits
        self.tls_client_options = tls_client_options
        self.connect_timeout = connect_timeout
        self.tls_timeout = tls_timeout
        self.idle_timeout = idle_timeout
        self.max_backlog = max_backlog
        self.connections: dict[int, MsrpStreamProtocol] = {}
        self.by_peer: dict[PeerKey, MsrpStreamProtocol] = {}
        self.dials: dict[PeerKey, Dial] = {}
        self.accepted = 0
        self._ids = itertools.count(-1, -1)
        self._sweep = LoopingCall(self._close_idle)
        self._sweep.clock = clock
        self._stopping = False

    def next_id(self) -> int:
        return next(self._ids)

    def factory(self, tls: bool) -> Factory:
        """What an [msrp] listen socket accepts with."""
        return _Factory(self, tls, None)

    def start(self) -> None:
        self._sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    # -- sending ---------------------------------------------------------------------

    def send_to_peer(self, peer: PeerKey, data: bytes) -> None:
        """Send on the connection opened for ``peer``, or open one (queued meanwhile).
        Failure is reported through ``events.peer_unreachable``, never raised."""
        protocol = self.by_peer.get(peer)
        if protocol is not None and protocol.ready and not protocol.closing:
            if not protocol.send(data):
                self._unreachable(peer, "peer stopped reading")
            return
        if self._stopping:
            self._unreachable(peer, "shutting down")
            return
        dial = self.dials.get(peer)
        if dial is None:
            dial = self._dial(peer)
        if len(dial.queue) >= MAX_QUEUED_MESSAGES or dial.queued_bytes + len(data) > self.max_backlog:
            self.stats.incr("msrp.peer_queue_full")
            self._unreachable(peer, f"queue toward {peer} is full")
            return
        dial.queue.append(data)
        dial.queued_bytes += len(data)

    def send_to_connection(self, conn_id: int, data: bytes) -> bool:
        protocol = self.connections.get(conn_id)
        if protocol is None or not protocol.ready:
            return False
        return protocol.send(data)

    def close(self, conn_id: int) -> None:
        protocol = self.connections.get(conn_id)
        if protocol is not None:
            protocol.close()

    def _unreachable(self, peer: PeerKey, reason: str) -> None:
        # Later, not inside the caller's loop over the relay's actions.
        self.clock.callLater(0, self.events.peer_unreachable, peer, reason)

    def _dial(self, peer: PeerKey) -> Dial:
        dial = Dial(peer)
        self.dials[peer] = dial
        endpoint = HostnameEndpoint(self.clock, peer.host, peer.port, timeout=self.connect_timeout)
        if self._start_dial(dial, endpoint, _Factory(self, peer.tls, peer), self.connect_timeout,
                            peer.host if peer.tls else None):
            log.info("dialling {peer}", peer=str(peer))
        return dial

    def _fail_dial(self, dial: Dial, reason: str) -> None:
        self._forget_dial(dial)
        log.warn("cannot reach {peer}: {reason}", peer=str(dial.key), reason=reason)
        self.stats.incr("msrp.peer_connect_failures")
        dial.queue.clear()
        self.events.peer_unreachable(dial.key, reason)

    # -- protocol callbacks -------------------------------------------------------------

    def opened(self, protocol: MsrpStreamProtocol) -> None:
        peer = protocol.peer_key
        if peer is not None:
            self.by_peer[peer] = protocol
        self.events.peer_opened(protocol.conn_id, peer, protocol)
        if peer is None:
            return
        dial = self.dials.pop(peer, None)
        if dial is None:
            return
        if dial.timeout is not None and dial.timeout.active():
            dial.timeout.cancel()
        for data in dial.queue:
            if not protocol.send(data):
                self._unreachable(peer, "peer stopped reading")
                break
        dial.queue.clear()

    def message(self, protocol: MsrpStreamProtocol, data: bytes) -> None:
        self.stats.incr("msrp.peer_messages_in")
        self.stats.incr("msrp.peer_bytes_in", len(data))
        self.events.peer_message(protocol.conn_id, data, protocol)

    def sent(self, protocol: MsrpStreamProtocol, data: bytes) -> None:
        self.stats.incr("msrp.peer_messages_out")
        self.stats.incr("msrp.peer_bytes_out", len(data))
        self.events.peer_sent(protocol, data)

    def buffered(self, protocol: MsrpStreamProtocol, nbytes: int) -> None:
        target: Any = protocol.peer_key if protocol.peer_key is not None else protocol.conn_id
        self.events.peer_buffered(target, nbytes)

    def lost(self, protocol: MsrpStreamProtocol) -> None:
        if self.connections.pop(protocol.conn_id, None) is None:
            return
        if protocol.peer_key is None:
            self.accepted -= 1
        elif self.by_peer.get(protocol.peer_key) is protocol:
            del self.by_peer[protocol.peer_key]
        if protocol.ready:
            log.info("closed {conn}", conn=protocol.describe())
            self.events.peer_closed(protocol.conn_id)
        if protocol.peer_key is not None:
            self._dial_lost(protocol.peer_key, protocol)

    def _close_idle(self) -> None:
        deadline = self.clock.seconds() - self.idle_timeout
        for protocol in list(self.connections.values()):
            if protocol.last_used < deadline:
                log.info("closing idle {conn}", conn=protocol.describe())
                protocol.close()

    def stop(self) -> None:
        self._stopping = True
        if self._sweep.running:
            self._sweep.stop()
        self._abandon_dials()
        for protocol in list(self.connections.values()):
            protocol.close()

    def stats_snapshot(self) -> dict[str, int]:
        return {"peer_connections": len(self.connections), "peer_connections_accepted": self.accepted,
                "peer_dials": len(self.dials)}
