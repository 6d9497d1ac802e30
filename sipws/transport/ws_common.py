"""What accepted and dialled WebSocket connections share.

``SipWebSocketMixin`` goes in front of Autobahn's server or client protocol
class.  It keeps the connection-table record up to date, counts, traces,
enforces the frame limit, answers CRLF keep-alives, sends text-or-binary,
closes with any code RFC 6455 allows, and acts as the transport's push
producer so the keep-alive sweeper can drop peers that stop reading.  The
closed event (log line, tracer, [events] on_closed) fires from
``connectionLost`` exactly once, because the record leaves the table once.

The factory of either role provides: ``root``, ``transport_name``,
``max_msg_chunks``, ``send_timeout``, ``sweeper`` and ``fire_closed``.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipws.config import resolve_callable
from sipws.transport import autobahn_tuning  # noqa: F401 - lazy option formatting (see module)
from sipws.transport.connections import CLOSING, LOCAL, OPEN, REMOTE, ConnectionRecord
from sipws.transport.tls_failure import TlsFailure, describe_tls_failure

log = Logger(namespace="sipws.ws")

#: Messages that are SIP-over-WebSocket keep-alives (SIP.js, JsSIP, Asterisk).
CRLF_KEEPALIVES = (b"\r\n", b"\r\n\r\n")
CRLF_REPLY = b"\r\n"
#: Close codes sipws may put on the wire (RFC 6455 §7.4; 1004-1006, 1015 are reserved).
SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011))
#: Largest close reason in bytes (125-byte control payload minus the 2-byte code).
MAX_CLOSE_REASON = 123
#: Seconds the close handshake may take before the TCP connection is dropped.
CLOSE_HANDSHAKE_TIMEOUT = 2.0
#: First byte of a final Ping / Pong frame (FIN, opcode 0x9 / 0xA), and their payload limit.
PING_HEAD = 0x89
PONG_HEAD = 0x8A
MAX_CONTROL_PAYLOAD = 125
#: Second byte's MASK bit (every client-to-server frame has it).
MASK_BIT = 0x80


def close_code_allowed(code: int) -> bool:
    return code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


def close_frame_problem(code: int | None, reason: bytes | None) -> tuple[int, str] | None:
    """What is wrong with a received Close frame's code and reason (RFC 6455 §5.5.1, §7.4), as
    (the Close code to answer with, why), or None when it is acceptable."""
    if code is not None and not close_code_allowed(code):
        return 1002, f"invalid close code {code}"
    if reason:
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            return 1007, "close reason is not valid UTF-8"
    return None


def protocol_options(section: Any, handshake_timeout: float) -> dict[str, Any]:
    """Autobahn options both roles use (see ANCHORS.md for why each is set)."""
    return dict(
        failByDrop=False,  # send 1002/1007/1009 instead of dropping TCP
        echoCloseCodeReason=True,
        maxFramePayloadSize=section.max_message_size,
        maxMessagePayloadSize=section.max_message_size,
        openHandshakeTimeout=handshake_timeout,
        closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
        autoFragmentSize=0,
    )


def protocol_class_with_options(base: type, factory: Any) -> type:
    """A subclass of ``base`` carrying ``factory``'s protocol options as class attributes.

    On every new connection Autobahn copies each of its ~40 options from the
    factory into the protocol's instance ``__dict__`` unless the protocol
    already has the attribute; as class attributes they are shared by every
    connection of the factory instead (part of the memory budget per idle
    connection, bench/ws_memory.py).  Options are never changed per
    connection, so nothing else differs.
    """
    options = {}
    for name in base.CONFIG_ATTRS:
        if hasattr(factory, name):
            value = getattr(factory, name)
            # A plain function as a class attribute would become a method (and get
            # the protocol as first argument): keep it a plain callable.
            options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    return type(base.__name__, (base,), {"__module__": base.__module__, **options})


def wait_until_gone(root: Any, records: list[ConnectionRecord], grace: float) -> defer.Deferred:
    """Fires once the records have left the table; aborts stragglers after ``grace`` seconds."""
    reactor = root.reactor
    done: defer.Deferred = defer.Deferred()
    deadline = reactor.seconds() + grace

    def check() -> None:
        alive = [r for r in records if r.id in root.connections]
        if not alive:
            done.callback(None)
        elif reactor.seconds() >= deadline:
            for record in alive:
                if record.protocol is not None:
                    record.protocol.abort("shutdown")
            reactor.callLater(0.05, lambda: done.called or done.callback(None))
        else:
            reactor.callLater(0.05, check)

    check()
    return done


class ClosedHook:
    """The [events] on_closed callable: called once, its exceptions logged, never raised."""

    def __init__(self, config: Any) -> None:
        self._callable = None
        if config.events.on_closed:
            self._callable = resolve_callable("[events] on_closed", config.events.on_closed)

    def __call__(self, record: ConnectionRecord, code: int | None, reason: str, side: str) -> None:
        if self._callable is None:
            return
        try:
            self._callable(record, code, reason, side)
        except Exception:
            log.failure("[events] on_closed raised for {conn}", conn=record.describe())


class SipWebSocketMixin:
    """Record keeping, limits and sending for one WebSocket connection carrying SIP."""

    record: ConnectionRecord
    factory: Any
    transport: Any
    state: int
    #: [limits] messages_per_connection_per_second: a TokenBucket (accepted connections), or None.
    _bucket: Any = None
    #: True on a connection whose subprotocol is "msrp" (RFC 7977): its messages are MSRP
    #: chunks for root.msrp, not SIP, and CRLF keep-alives are not SIP's there.
    is_msrp = False

    def _enter_table(self, role: str) -> None:
        """Create and register the record; called from connectionMade."""
        root = self.factory.root
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.record = ConnectionRecord(
            self.factory.transport_name,
            role,
            (host.host, host.port),
            (peer.host, peer.port),
            root.reactor.seconds(),
            protocol=self,
        )
        self._frames = 0
        self._local_abort = ""
        self._tls_failure: TlsFailure | None = None
        self._failed = False
        self.paused_since: float | None = None
        self.keepalive_at = 0.0
        self.keepalive_slot = -1  # the keep-alive wheel's booking (keepalive.py)
        root.connections.add(self.record)
        root.tracer.connection_made(self.record)

    def _leave_table(self) -> bool:
        """Remove the record and fire the closed event; False if already done."""
        record = self.record
        root = self.factory.root
        if root.connections.get(record.id) is not record:
            return False
        # Read the outcome while the record still says how far the connection
        # got (removal marks it closed, and every loss would read "during handshake").
        code, why, side = self._close_outcome()
        root.connections.remove(record)
        root.stats.incr("ws.closed_local" if side == LOCAL else "ws.closed_remote")
        # A page's files ([http] document_root) come one request per connection,
        # about 200 for the phone page: their lines would bury the WebSocket ones.
        emit = log.debug if getattr(self, "_served", None) is not None else log.info
        emit(
            "closed {conn} code={code} side={side} reason={reason}",
            conn=record.describe(),
            code=code,
            side=side,
            reason=why,
            conn_id=record.id,
        )
        root.tracer.ws_closed(record, code, why, side)
        self.factory.fire_closed(record, code, why, side)
        return True

    def _handshake_failure(self) -> str | None:
        """Why the opening handshake failed, if it did (role-specific)."""
        return None

    def _note_tls_failure(self, reason: Any) -> Any:
        """Record a TLS failure's real cause and side; returns the reason to pass on.

        Autobahn would log any ``SSL.Error`` as ``SSL error: ...`` at error
        level with no peer and no side; the connection's own closed line says
        it instead, so Autobahn gets a plain ConnectionLost carrying the text.
        """
        if reason is None or reason.check(SSL.Error) is None:
            return reason
        self._tls_failure = describe_tls_failure(reason.value)
        return Failure(ConnectionLost(self._tls_failure.text))

    def _close_outcome(self) -> tuple[int | None, str, str]:
        """(code, reason, side) of a finished connection, for the closed event."""
        failure = self._handshake_failure()
        if failure is not None:
            return None, failure, LOCAL
        tls = self._tls_failure
        if tls is not None:
            return None, tls.text, tls.side
        if self._local_abort:
            return None, self._local_abort, LOCAL
        if getattr(self, "closedByMe", False) and getattr(self, "localCloseCode", None) is not None:
            raw = getattr(self, "localCloseReason", None) or b""
            return self.localCloseCode, raw.decode("utf-8", "replace"), LOCAL
        remote_code = getattr(self, "remoteCloseCode", None)
        if remote_code is not None:
            return remote_code, getattr(self, "remoteCloseReason", None) or "", REMOTE
        if getattr(self, "failedByMe", False):
            return None, getattr(self, "wasNotCleanReason", None) or "failed", LOCAL
        if self.record.state in (OPEN, CLOSING):
            return None, "connection lost without a Close frame", REMOTE
        return None, "connection lost during the opening handshake", REMOTE

    # -- failing the connection (RFC 6455 §7.1.7) --------------------------------

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """Send the Close for a violation, then close TCP and stop reading.

        RFC 6455 §7.1.7: after failing a connection an endpoint should not
        process anything more from the peer.  Autobahn (failByDrop off) would
        keep reading to await the peer's Close: a control frame declaring 2**40
        bytes then grew the buffer without bound, and a bad Close frame from
        the peer was taken for that answer and the connection reset before our
        Close left.  Here the Close is written and the transport closed after
        it (loseConnection flushes), and later input is discarded.
        """
        super()._fail_connection(code, reason)
        if not self._failed:
            self._failed = True
            if self.transport is not None:
                self.transport.loseConnection()

    def close_for_policy(self, reason: str) -> None:
        """Close with 1008 and read nothing more (a flood is not processed further).

        Like ``_fail_connection`` but without Autobahn's own warning line per
        connection: the limits adapter writes a throttled one instead.
        """
        if self._failed:
            return
        self._failed = True
        self.failedByMe = True
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.factory.root.stats.incr("ws.frames_out")
            reason_bytes = reason.encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
            self.sendCloseFrame(code=1008, reasonUtf8=reason_bytes, isReply=False)
            self.record.state = CLOSING
        if self.transport is not None:
            self.transport.loseConnection()

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        if self._failed:
            return True  # the peer's answer to our failure Close: nothing to do
        problem = close_frame_problem(code, reasonRaw)
        if problem is not None:
            self._fail_connection(*problem)
            return True
        return super().onCloseFrame(code, reasonRaw)

    def _mark_alive(self) -> None:
        record = self.record
        record.last_used = self.factory.root.reactor.seconds()
        record.awaiting_pong = False

    # -- messages ---------------------------------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        self._frames = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        self._frames += 1
        self.factory.root.stats.incr("ws.frames_in")
        if self._frames > self.factory.max_msg_chunks:
            self._fail_connection(1009, f"more than {self.factory.max_msg_chunks} frames in one message")
            return
        super().onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        root = self.factory.root
        record = self.record
        # Both the fast path and Autobahn's end here; last_used is this read's time (_mark_alive).
        bucket = self._bucket
        if bucket is not None and not bucket.take(record.last_used):
            return root.limits.over_message_rate(self)
        if self.is_msrp:
            return self._msrp_message(payload)
        if payload in CRLF_KEEPALIVES:
            root.stats.incr("ws.crlf_keepalives")
            self._send_message(CRLF_REPLY, False)
            return
        size = len(payload)
        record.messages_in += 1
        record.bytes_in += size
        stats = root.stats
        stats.incr("ws.messages_in")
        stats.incr("ws.bytes_in", size)
        tracer = root.tracer
        if tracer.enabled:  # not even the call while tracing is off
            tracer.sip_message(
                record, "in", record.transport, record.remote, record.local, payload, root.reactor.seconds()
            )
        try:
            root.deliver(record, payload)
        except Exception:
            log.failure("message handler failed on {conn}", conn=record.describe())

    def _msrp_message(self, payload: bytes) -> None:
        """One MSRP chunk (RFC 7977: one chunk per WebSocket message) to the MSRP relay."""
        root = self.factory.root
        record = self.record
        size = len(payload)
        record.messages_in += 1
        record.bytes_in += size
        stats = root.stats
        stats.incr("msrp.ws_messages_in")
        stats.incr("msrp.ws_bytes_in", size)
        tracer = root.tracer
        if tracer.enabled:
            tracer.msrp_message(record, "in", record.transport, record.remote, record.local, payload,
                                root.reactor.seconds())
        try:
            root.msrp.from_websocket(record, payload)
        except Exception:
            log.failure("MSRP handler failed on {conn}", conn=record.describe())

    def onPing(self, payload: bytes) -> None:
        self.factory.root.stats.incr("ws.frames_in")
        bucket = self._bucket  # a Ping costs a Pong: it counts as a message
        if bucket is not None and not bucket.take(self.record.last_used):
            return self.factory.root.limits.over_message_rate(self)
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.factory.root.stats.incr("ws.frames_in")

    # -- sending (relay, admin interface, keep-alive) ---------------------------

    def send_message(self, data: bytes) -> bool:
        """Send one message: text if valid UTF-8, else binary (RFC 7118 §4.2)."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        try:
            data.decode("utf-8")
            binary = False
        except UnicodeDecodeError:
            binary = True
        self._send_message(data, binary)
        record = self.record
        root = self.factory.root
        record.messages_out += 1
        record.bytes_out += len(data)
        tracer = root.tracer
        if self.is_msrp:
            root.stats.incr("msrp.ws_messages_out")
            root.stats.incr("msrp.ws_bytes_out", len(data))
            if tracer.enabled:
                tracer.msrp_message(record, "out", record.transport, record.local, record.remote, data,
                                    root.reactor.seconds())
            return True
        root.stats.incr("ws.messages_out")
        root.stats.incr("ws.bytes_out", len(data))
        if tracer.enabled:
            tracer.sip_message(
                record, "out", record.transport, record.local, record.remote, data, root.reactor.seconds()
            )
        return True

    def _send_message(self, data: bytes, binary: bool) -> None:
        self.factory.root.stats.incr("ws.frames_out")
        self.sendMessage(data, isBinary=binary)

    def close_connection(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake with any code RFC 6455 lets an endpoint send."""
        if not close_code_allowed(code):
            raise ValueError(f"close code {code} may not be sent")
        if self.state == WebSocketProtocol.STATE_OPEN:
            reason_bytes = reason.encode("utf-8")[:MAX_CLOSE_REASON]
            # do not cut a UTF-8 sequence in half
            reason_bytes = reason_bytes.decode("utf-8", "ignore").encode("utf-8")
            self.factory.root.stats.incr("ws.frames_out")
            self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)
            self.record.state = CLOSING
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.abort(f"closed during handshake ({code})")
        elif self.state == WebSocketProtocol.STATE_CLOSED and self.transport is not None \
                and self.transport.connected:
            # Refused, failed or served a file, and still flushing to a peer that
            # does not read: nothing is left to say to it (shutdown, ws.close).
            self.abort(f"closed while finishing ({code})")

    def send_ping(self, payload: bytes) -> bool:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        self.factory.root.stats.incr("ws.frames_out")
        if not self._write_control(PING_HEAD, payload):
            self.sendPing(payload)
        return True

    def send_pong(self, payload: bytes) -> bool:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        self.factory.root.stats.incr("ws.frames_out")
        if not self._write_control(PONG_HEAD, payload):
            self.sendPong(payload)
        return True

    def _write_control(self, head: int, payload: bytes) -> bool:
        """Write a server's (unmasked) keep-alive frame straight to the transport.

        The keep-alive sweep sends one per idle connection per timeout; Autobahn's
        ``sendFrame`` rebuilds the same few bytes each time.  False (the caller
        goes through Autobahn) for the client role, whose frames are masked.
        Autobahn's send queue stays empty in sipws (no chopped or synchronous
        writes), so writing to the transport keeps the order of frames.
        """
        if not self.factory.isServer or len(payload) > MAX_CONTROL_PAYLOAD:
            return False
        self.transport.write(bytes((head, len(payload))) + payload)
        return True

    def abort(self, why: str = "aborted") -> None:
        """Drop the TCP connection now, without a close handshake."""
        if not self._local_abort:
            self._local_abort = why
        self.transport.abortConnection()

    # -- back-pressure (IPushProducer, registered on the transport) -------------

    def pauseProducing(self) -> None:
        if self.paused_since is None:
            self.paused_since = self.factory.root.reactor.seconds()
            self.factory.sweeper.wake_at(self.paused_since + self.factory.send_timeout, self.record)

    def resumeProducing(self) -> None:
        self.paused_since = None
        if self.is_msrp:
            self.factory.root.msrp.ws_drained(self.record)

    def stopProducing(self) -> None:
        self.paused_since = None
