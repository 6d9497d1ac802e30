"""The WebSocket server (ws and wss): Autobahn protocol, listeners, shutdown.

Autobahn does the RFC 6455 framing (masking, UTF-8 validation in C through
its NVX speedups, close handshake).  This module adds what sipws needs on top:

- the handshake policy of ``handshake.py`` applied before Autobahn looks at
  the request, every refusal answered with a bare HTTP response and logged in
  one fail2ban-friendly line;
- the connection table entry, created at TCP accept and removed in
  ``connectionLost`` (which Twisted always calls), so entries never leak;
- frame and size limits (1009), CRLF keep-alives, text-or-binary sends;
- the closed event, fired exactly once per connection;
- back-pressure: the protocol is the transport's push producer, so it learns
  when Twisted's write buffer passes its high-water mark.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.logger import Logger

from sipws.config import Config, HostPort, resolve_callable
from sipws.tap import StartupError
from sipws.transport import handshake
from sipws.transport.connections import (
    CLOSING,
    LOCAL,
    OPEN,
    REMOTE,
    SERVER,
    ConnectionRecord,
)
from sipws.transport.keepalive import KeepaliveSweeper

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
#: Seconds stopService waits for closing connections before aborting them.
SHUTDOWN_GRACE = 3.0
#: Listen backlog: a burst of browsers reconnecting after a restart is normal.
LISTEN_BACKLOG = 1024


def close_code_allowed(code: int) -> bool:
    return code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


class SipServerProtocol(WebSocketServerProtocol):
    """One accepted WebSocket connection carrying SIP."""

    record: ConnectionRecord

    # -- connection life ----------------------------------------------------

    def connectionMade(self) -> None:
        factory: SipServerFactory = self.factory
        root = factory.root
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.record = ConnectionRecord(
            factory.transport_name,
            SERVER,
            (host.host, host.port),
            (peer.host, peer.port),
            root.reactor.seconds(),
            protocol=self,
        )
        self._refused: handshake.Refusal | None = None
        self._request: handshake.HandshakeRequest | None = None
        self._request_head = b""
        self._frames = 0
        self._local_abort = ""
        self.paused_since: float | None = None
        self.keepalive_at = 0.0
        root.connections.add(self.record)
        root.tracer.connection_made(self.record)
        super().connectionMade()
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Any) -> None:
        record = self.record
        root = self.factory.root
        if root.connections.remove(record):
            code, why, side = self._close_outcome(reason)
            root.stats.incr("ws.closed_local" if side == LOCAL else "ws.closed_remote")
            log.info(
                "closed {conn} code={code} side={side} reason={reason}",
                conn=record.describe(),
                code=code,
                side=side,
                reason=why,
                conn_id=record.id,
            )
            root.tracer.ws_closed(record, code, why, side)
            self.factory.fire_closed(record, code, why, side)
        super().connectionLost(reason)

    def _close_outcome(self, reason: Any) -> tuple[int | None, str, str]:
        """(code, reason, side) of a finished connection, for the closed event."""
        if self._refused is not None:
            return None, f"handshake refused: {self._refused.status} {self._refused.reason}", LOCAL
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
        if self.record.state == OPEN or self.record.state == CLOSING:
            return None, "connection lost", REMOTE
        return None, "connection lost during handshake", REMOTE

    # -- incoming bytes -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        record = self.record
        record.last_used = self.factory.root.reactor.seconds()
        record.awaiting_pong = False
        if self._refused is not None:
            return  # refused: ignore whatever else the client sends
        super().dataReceived(data)

    def processHandshake(self) -> None:
        """Apply sipws's handshake policy, then let Autobahn finish the upgrade."""
        if self._refused is not None:
            return
        end = handshake.find_head_end(self.data)
        if end < 0:
            if len(self.data) > handshake.MAX_HEAD_SIZE:
                self._refuse(
                    handshake.Refusal(431, f"request head exceeds {handshake.MAX_HEAD_SIZE} bytes"),
                    bytes(self.data[: handshake.MAX_HEAD_SIZE]),
                )
            return
        head = bytes(self.data[:end])
        parsed = handshake.parse_request_head(head)
        if isinstance(parsed, handshake.Refusal):
            return self._refuse(parsed, head)
        refusal = handshake.check_request(parsed, self.factory.policy, self.factory.root.accepting)
        if refusal is not None:
            return self._refuse(refusal, head)
        self._request = parsed
        self._request_head = head
        record = self.record
        record.origin = parsed.header("origin") or ""
        record.user_agent = (parsed.header("user-agent") or "")[:200]
        record.resource = parsed.path
        super().processHandshake()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn's own refusals take the same path as ours."""
        headers = tuple((str(k), str(v)) for k, v in (responseHeaders or ()))
        self._refuse(handshake.Refusal(code, reason, headers), self._request_head or bytes(self.data[:handshake.MAX_HEAD_SIZE]))

    def _refuse(self, refusal: handshake.Refusal, head: bytes) -> None:
        root = self.factory.root
        self._refused = refusal
        response = handshake.refusal_response(refusal)
        self.transport.write(response)
        root.stats.incr("ws.handshakes_failed")
        host, port = self.record.remote
        log.warn(
            "handshake refused from {host}:{port} status={status} reason={reason} conn={conn_id}",
            host=host,
            port=port,
            status=refusal.status,
            reason=refusal.reason,
            conn_id=self.record.id,
        )
        root.tracer.ws_handshake(self.record, head, response, refusal.status, refusal.reason, self._tls_details())
        self.data = b""
        self.state = WebSocketProtocol.STATE_CLOSED
        self.transport.loseConnection()

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == WebSocketProtocol.STATE_CONNECTING and self._refused is None:
            host, port = self.record.remote
            self.factory.root.stats.incr("ws.handshakes_failed")
            self.factory.root.stats.incr("ws.handshake_timeouts")
            log.warn(
                "handshake timeout from {host}:{port} conn={conn_id}",
                host=host,
                port=port,
                conn_id=self.record.id,
            )
            self._local_abort = "handshake timeout"
        super().onOpenHandshakeTimeout()

    def onConnect(self, request: Any) -> tuple[str, dict[str, str]]:
        return handshake.SUBPROTOCOL, handshake.accept_headers(self._request, self.factory.policy)

    def onOpen(self) -> None:
        record = self.record
        root = self.factory.root
        record.state = OPEN
        record.subprotocol = self.websocket_protocol_in_use or ""
        root.stats.incr("ws.handshakes_ok")
        response = self.http_response_data
        if isinstance(response, str):
            response = response.encode("utf-8")
        root.tracer.ws_handshake(
            record, self._request_head, response, 101, "Switching Protocols", self._tls_details()
        )
        self._request_head = b""
        self._request = None
        self.http_response_data = None
        self.http_request_data = None
        log.info(
            "opened {conn} origin={origin}",
            conn=record.describe(),
            origin=record.origin or "-",
            conn_id=record.id,
        )

    def _tls_details(self) -> dict[str, Any] | None:
        if not self.factory.is_secure:
            return None
        from sipws.transport.tls import tls_details

        return tls_details(self.transport)

    # -- messages -------------------------------------------------------------

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
        if payload in CRLF_KEEPALIVES:
            root.stats.incr("ws.crlf_keepalives")
            self._send(CRLF_REPLY, False)
            return
        size = len(payload)
        record.messages_in += 1
        record.bytes_in += size
        stats = root.stats
        stats.incr("ws.messages_in")
        stats.incr("ws.bytes_in", size)
        root.tracer.sip_message(
            record, "in", record.transport, record.remote, record.local, payload, root.reactor.seconds()
        )
        try:
            root.deliver(record, payload)
        except Exception:
            log.failure("message handler failed on {conn}", conn=record.describe())

    def onPing(self, payload: bytes) -> None:
        self.factory.root.stats.incr("ws.frames_in")
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.factory.root.stats.incr("ws.frames_in")

    # -- sending (used by the relay, the admin interface, the keep-alive) -----

    def send_message(self, data: bytes) -> bool:
        """Send one message: text if valid UTF-8, else binary (RFC 7118 §4.2)."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        try:
            data.decode("utf-8")
            binary = False
        except UnicodeDecodeError:
            binary = True
        self._send(data, binary)
        record = self.record
        root = self.factory.root
        record.messages_out += 1
        record.bytes_out += len(data)
        root.stats.incr("ws.messages_out")
        root.stats.incr("ws.bytes_out", len(data))
        root.tracer.sip_message(
            record, "out", record.transport, record.local, record.remote, data, root.reactor.seconds()
        )
        return True

    def _send(self, data: bytes, binary: bool) -> None:
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

    def send_ping(self, payload: bytes) -> bool:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        self.factory.root.stats.incr("ws.frames_out")
        self.sendPing(payload)
        return True

    def send_pong(self, payload: bytes) -> bool:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        self.factory.root.stats.incr("ws.frames_out")
        self.sendPong(payload)
        return True

    def abort(self, why: str = "aborted") -> None:
        """Drop the TCP connection now, without a close handshake."""
        if not self._local_abort:
            self._local_abort = why
        self.transport.abortConnection()

    # -- back-pressure (IPushProducer, registered on the transport) -----------

    def pauseProducing(self) -> None:
        if self.paused_since is None:
            self.paused_since = self.factory.root.reactor.seconds()
            self.factory.sweeper.wake_at(self.paused_since + self.factory.send_timeout)

    def resumeProducing(self) -> None:
        self.paused_since = None

    def stopProducing(self) -> None:
        self.paused_since = None


class SipServerFactory(WebSocketServerFactory):
    """Shared settings of every connection accepted on one kind of listener."""

    protocol = SipServerProtocol

    def __init__(self, root: Any, transport_name: str, sweeper: KeepaliveSweeper) -> None:
        config: Config = root.config
        section = config.wss if transport_name == "wss" else config.ws
        super().__init__(server=None, reactor=root.reactor)
        self.root = root
        self.transport_name = transport_name
        self.is_secure = transport_name == "wss"
        self.sweeper = sweeper
        self.max_msg_chunks = section.max_msg_chunks
        self.send_timeout = section.send_timeout
        self.policy = handshake.HandshakePolicy(
            resource=section.resource,
            require_origin=config.http.require_origin,
            allowed_origins=config.http.allowed_origins,
            cors_mode=config.http.cors_mode,
        )
        timeout = section.handshake_timeout
        if self.is_secure:
            timeout += config.wss.tls_handshake_timeout
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,
            failByDrop=False,
            echoCloseCodeReason=True,
            requireMaskedClientFrames=True,
            maxFramePayloadSize=section.max_message_size,
            maxMessagePayloadSize=section.max_message_size,
            openHandshakeTimeout=timeout,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            allowedOrigins=["*"],
            allowNullOrigin=True,  # the policy in handshake.py decides
            autoFragmentSize=0,
            perMessageCompressionAccept=lambda offers: None,
        )
        self._on_closed = None
        if config.events.on_closed:
            self._on_closed = resolve_callable("[events] on_closed", config.events.on_closed)

    def fire_closed(self, record: ConnectionRecord, code: int | None, reason: str, side: str) -> None:
        """The [events] on_closed hook: called once, its exceptions logged, never raised."""
        if self._on_closed is None:
            return
        try:
            self._on_closed(record, code, reason, side)
        except Exception:
            log.failure("[events] on_closed raised for {conn}", conn=record.describe())


class WsServerService(Service):
    """Binds the ws and wss listeners, runs the keep-alive sweep, closes on stop."""

    name = "ws-server"

    def __init__(self, root: Any) -> None:
        self.root = root
        self.sweeper = KeepaliveSweeper(root)
        self.factories = {
            "ws": SipServerFactory(root, "ws", self.sweeper),
            "wss": SipServerFactory(root, "wss", self.sweeper),
        }
        self._tls_options: Any = None
        if root.config.wss.listen:
            from sipws.transport.tls import server_tls_options

            self._tls_options = server_tls_options(root.config.wss)

    def privilegedStartService(self) -> None:
        reactor = self.root.reactor
        config = self.root.config
        for kind, addresses in (("ws", config.ws.listen), ("wss", config.wss.listen)):
            ports = self.root.ports.setdefault(kind, [])
            for address in addresses:
                ports.append(self._listen(reactor, kind, address))
        super().privilegedStartService()

    def _listen(self, reactor: Any, kind: str, address: HostPort) -> Any:
        factory = self.factories[kind]
        try:
            if kind == "wss":
                port = reactor.listenSSL(
                    address.port, factory, self._tls_options, backlog=LISTEN_BACKLOG, interface=address.host
                )
            else:
                port = reactor.listenTCP(address.port, factory, backlog=LISTEN_BACKLOG, interface=address.host)
        except error.CannotListenError as exc:
            why = exc.socketError.strerror if hasattr(exc.socketError, "strerror") else exc.socketError
            raise StartupError(f"[{kind}] listen: cannot listen on {address}: {why}") from None
        bound = port.getHost()
        log.info("listening {kind} on {host}:{port}", kind=kind, host=bound.host, port=bound.port)
        return port

    def startService(self) -> None:
        super().startService()
        self.sweeper.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.sweeper.stop()
        stopping = [defer.maybeDeferred(port.stopListening) for kind in ("ws", "wss") for port in self.root.ports.get(kind, [])]
        for kind in ("ws", "wss"):
            self.root.ports.pop(kind, None)
        closing = [record for record in self.root.connections if record.role == SERVER]
        for record in closing:
            protocol = record.protocol
            if protocol is not None:
                protocol.close_connection(1001, "Going Away")
        return defer.DeferredList(stopping).addCallback(lambda _: self._wait_closed(closing))

    def _wait_closed(self, records: list[ConnectionRecord]) -> defer.Deferred:
        """Fires when every closing connection is gone; aborts stragglers after a grace."""
        reactor = self.root.reactor
        done = defer.Deferred()
        deadline = reactor.seconds() + SHUTDOWN_GRACE

        def check() -> None:
            alive = [r for r in records if r.id in self.root.connections]
            if not alive:
                done.callback(None)
                return
            if reactor.seconds() >= deadline:
                for record in alive:
                    if record.protocol is not None:
                        record.protocol.abort("shutdown")
                reactor.callLater(0.05, lambda: done.called or done.callback(None))
                return
            reactor.callLater(0.05, check)

        check()
        return done


def install(root: Any) -> None:
    service = WsServerService(root)
    service.setServiceParent(root)
    root.ws_server = service
