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

import os
from types import MappingProxyType
from typing import Any, Mapping

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger

from sipws.config import Config, HostPort
from sipws.edge.forwarded import client_address
from sipws.edge.networks import NetworkSet
from sipws.errors import StartupError
from sipws.transport import deflate, handshake, ws_fastpath
from sipws.transport.auth import HandshakeAuth
from sipws.transport.connections import CLOSING, OPEN, SERVER
from sipws.transport.keepalive import KeepaliveSweeper
from sipws.transport.proxy_protocol import ProxyHeaderFactory, proxy_peer_of
from sipws.transport.static_files import StaticFiles
from sipws.transport.ws_common import (
    MASK_BIT, MAX_CONTROL_PAYLOAD, PONG_HEAD, ClosedHook, SipWebSocketMixin, protocol_class_with_options,
    protocol_options, wait_until_gone,
)

log = Logger(namespace="sipws.ws")

#: What replaces a connection's parsed request headers once it is open (shared, read-only).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
#: What replaces per-connection lists Autobahn no longer needs once it is open (shared, read-only).
NO_ITEMS: tuple = ()

#: First byte of a read that may be a lone keep-alive Pong (see _lone_pong).
LONE_PONG_FIRST = bytes((PONG_HEAD,))

#: Seconds stopService waits for closing connections before aborting them.
SHUTDOWN_GRACE = 3.0
#: Listen backlog: a burst of browsers reconnecting after a restart is normal.
LISTEN_BACKLOG = 1024
#: Bytes a client may send while the [auth] hook decides its handshake (head included).
AUTH_WAIT_MAX_BYTES = 2 * handshake.MAX_HEAD_SIZE


def _ignore_data(data: bytes) -> None:
    """What a connection dropped at accept does with bytes handed to it."""


class SipServerProtocol(SipWebSocketMixin, WebSocketServerProtocol):
    """One accepted WebSocket connection carrying SIP."""

    #: The source counted toward [limits] max_connections_per_ip while this connection lives.
    limit_source: str | None = None
    #: True when the peer was banned and the connection aborted at accept (nothing else was set up).
    _dropped_at_accept = False

    def dropConnection(self, abort: bool = False) -> None:
        # After a closing handshake that we started and the peer answered (our 1001
        # at shutdown, ws.close), Autobahn's server drops TCP with abort=True:
        # Twisted's abortConnection, a TCP reset, which clients report as an
        # abnormal close (Node's 'websocket': 1006, whatever Close frame came
        # first).  A clean handshake ends with a FIN, as it already does when the
        # peer started the close; unclean drops (timeouts, failures) still abort.
        super().dropConnection(abort=abort and not getattr(self, "wasClean", False))

    def connectionMade(self) -> None:
        if self.factory.root.limits.drop_at_accept(self):  # banned (ws.ban): nothing parsed, no entry
            self._dropped_at_accept = True
            # Bytes already read may still be handed over (a PROXY header reader replays what
            # followed the header): ignored, as Twisted ignores reads after abortConnection.
            self.dataReceived = _ignore_data  # type: ignore[method-assign]
            return
        self._refused: handshake.Refusal | None = None
        #: Set once a static file request was answered ([http] document_root).
        self._served: str | None = None
        self._request: handshake.HandshakeRequest | None = None
        self._request_head = b""
        self._enter_table(SERVER)
        if self.factory.proxy_senders:  # a PROXY header may have named the client
            self.record.proxy_peer = proxy_peer_of(self.transport)
        # every connection of a listener shares one local-address tuple
        self.record.local = self.factory.local_addresses.setdefault(self.record.local, self.record.local)
        super().connectionMade()
        self.transport.registerProducer(self, True)
        self._bucket = self.factory.root.limits.message_bucket(self.record.created)

    def connectionLost(self, reason: Any) -> None:
        if self._dropped_at_accept:
            return  # never set up: nothing to undo
        if self.limit_source is not None:
            self.factory.root.limits.released(self)
        reason = self._note_tls_failure(reason)
        if self._auth_pending is not None:  # the hook's answer will find nobody
            self._auth_pending.cancel()
        if self.record.state in (OPEN, CLOSING):  # it counted towards [ws] max_connections
            self.factory.open_connections -= 1
        self._leave_table()
        super().connectionLost(reason)

    def _handshake_failure(self) -> str | None:
        if self._served is not None:
            return self._served
        if self._refused is None:
            return None
        return f"handshake refused: {self._refused.status} {self._refused.reason}"

    # -- opening handshake ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._mark_alive()
        if self._refused is not None or self._served is not None or self._failed:
            return  # refused, answered or failed: ignore whatever else the client sends
        if self.state == WebSocketProtocol.STATE_OPEN and not self.data and self.current_frame is None:
            # between frames: the shortcuts below may take the read whole
            if data[:1] == LONE_PONG_FIRST and self._lone_pong(data):
                return
            if not self.inside_message and self._perMessageCompress is None:
                data = ws_fastpath.take_frames(self, data)  # plain whole frames; the rest to Autobahn
                if not data:
                    return
        # Autobahn's own dataReceived only adds a debug log call: go to its parser directly.
        self._dataReceived(data)

    def _lone_pong(self, data: bytes) -> bool:
        """A read holding exactly one complete masked Pong, between frames: the answer to a
        keep-alive Ping, taken without Autobahn's frame parser (the peer is alive, which
        ``_mark_alive`` noted; Autobahn would only call ``onPong``).  Called between frames only."""
        second = data[1] if len(data) > 1 else 0
        length = second & 0x7F
        if not second & MASK_BIT or length > MAX_CONTROL_PAYLOAD or len(data) != 6 + length:
            return False
        self.onPong(data[6:])
        return True

    def _send_message(self, data: bytes, binary: bool) -> None:
        """One unmasked frame written directly when nothing is queued and no
        extension is in use (ws_fastpath); otherwise through Autobahn."""
        limit = self.maxMessagePayloadSize
        if (self.state == WebSocketProtocol.STATE_OPEN and self._perMessageCompress is None
                and not self.send_queue and (not limit or len(data) <= limit)):
            self.factory.root.stats.incr("ws.frames_out")
            self.transport.write(ws_fastpath.frame_header(len(data), binary) + data)
            return
        super()._send_message(data, binary)

    #: The [auth] hook's Deferred while it decides this handshake (see _authenticate).
    _auth_pending: defer.Deferred | None = None

    def processHandshake(self) -> None:
        """Apply sipws's handshake policy, then let Autobahn finish the upgrade."""
        if self._refused is not None:
            return
        if self._auth_pending is not None:
            return self._auth_waiting()  # Autobahn calls again on every read: decided once
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
        self._apply_forwarded(parsed)
        if self.factory.static_files is not None and parsed.header("upgrade") is None:
            return self._serve_file(parsed)
        refusal = handshake.check_request(parsed, self.factory.policy, self.factory.root.accepting)
        if refusal is None:
            refusal = self.factory.over_capacity()
        refusal = refusal or self.factory.root.limits.admit(self)  # [limits], bans: 403 / 429
        if refusal is not None:
            return self._refuse(refusal, head)
        self._request = parsed
        self._request_head = head
        record = self.record
        record.origin = parsed.header("origin") or ""
        record.user_agent = (parsed.header("user-agent") or "")[:200]
        record.resource = parsed.path
        if self._authenticate(parsed, head):  # [auth]: False = refused, or answered later
            super().processHandshake()

    # -- [auth] (sipws.transport.auth) ----------------------------------------------

    def _authenticate(self, request: handshake.HandshakeRequest, head: bytes) -> bool:
        """Credentials and hook: True when the upgrade may go on now (identity set)."""
        auth = self.factory.auth
        if auth is None:
            return True
        self._request_head = auth.redact(head)  # HEP never carries a credential
        outcome = auth.decide(request, self.record.remote, self.factory.transport_name,
                              self.record.describe())
        if isinstance(outcome, defer.Deferred):
            self._auth_pending = outcome
            outcome.addCallback(self._auth_answered)
            self._auth_waiting()  # bytes that came with the head count too
            return False
        return self._auth_verdict(outcome)

    def _auth_verdict(self, outcome: Any) -> bool:
        verdict = self.factory.auth.verdict(outcome)
        if isinstance(verdict, handshake.Refusal):
            self._refuse(verdict, self._request_head)
            return False
        self.record.identity = verdict
        return True

    def _auth_answered(self, outcome: Any) -> None:
        """The hook's Deferred fired: go on, unless the connection ended meanwhile."""
        self._auth_pending = None
        if self._refused is not None or self.state != WebSocketProtocol.STATE_CONNECTING \
                or self.record.id not in self.factory.root.connections:
            return
        if self._auth_verdict(outcome):
            super().processHandshake()

    def _auth_waiting(self) -> None:
        """Bytes arriving while the hook decides: a client waits for the 101, so a pile of
        them is refused rather than buffered without bound."""
        if self._auth_pending is not None and len(self.data) > AUTH_WAIT_MAX_BYTES:
            pending, self._auth_pending = self._auth_pending, None
            self._refuse(handshake.Refusal(400, "data sent before the handshake was answered"),
                         self._request_head)
            pending.cancel()

    def _apply_forwarded(self, request: handshake.HandshakeRequest) -> None:
        """[http] trusted_proxies: a trusted peer's X-Forwarded-For / Forwarded names the client
        (sipws.edge.forwarded decides); before every other check, so that refusals, limits
        and logs see the client's address."""
        trusted = self.factory.trusted_proxies
        if not trusted:
            return
        record = self.record
        found = client_address(record.remote, trusted, request.headers)
        if found.problem is not None:
            self.factory.root.stats.incr("ws.forwarded_ignored")
            log.warn("forwarded header ignored from {host}:{port} reason={reason} conn={conn_id}",
                     host=record.remote[0], port=record.remote[1], reason=found.problem, conn_id=record.id)
        elif found.header is not None and found.address != record.remote:
            if record.proxy_peer is None:
                record.proxy_peer = record.remote
            self.factory.root.connections.set_remote(record, found.address)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn's own refusals take the same path as ours."""
        headers = tuple((str(k), str(v)) for k, v in (responseHeaders or ()))
        head = self._request_head or bytes(self.data[: handshake.MAX_HEAD_SIZE])
        self._refuse(handshake.Refusal(code, reason, headers), head)

    def _serve_file(self, request: handshake.HandshakeRequest) -> None:
        """A plain GET/HEAD with [http] document_root set: answer it, then close."""
        answer = self.factory.static_files.respond(request.method, request.target)
        self._served = f"HTTP {request.method} {request.path}: {answer.status} {answer.note}"
        self.factory.root.stats.incr(f"http.static_{answer.status}")
        self.transport.write(answer.data)
        self.data = b""
        self.state = WebSocketProtocol.STATE_CLOSED
        # A paused streaming producer is resumed instead of the connection being
        # closed once the buffer drains (Twisted's doWrite): a file over the write
        # buffer (64 KiB) left the connection open, out of reading, forever.
        # Unregistered, the close follows the last byte; a write that paused has
        # set paused_since, so a reader that stops is still aborted after send_timeout.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _refuse(self, refusal: handshake.Refusal, head: bytes) -> None:
        root = self.factory.root
        self._refused = refusal
        response = handshake.refusal_response(refusal)
        self.transport.write(response)
        root.stats.incr("ws.handshakes_failed")
        if self.factory.auth is not None:
            head = self.factory.auth.redact(head)  # HEP never carries a credential
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
                "handshake timeout from {host}:{port} conn={conn_id}{waiting}",
                host=host,
                port=port,
                conn_id=self.record.id,
                waiting=" (waiting for the [auth] hook)" if self._auth_pending is not None else "",
            )
            self._local_abort = "handshake timeout"
        super().onOpenHandshakeTimeout()

    def onConnect(self, request: Any) -> tuple[str, dict[str, str]]:
        headers = handshake.accept_headers(self._request, self.factory.policy)
        extension = deflate.negotiate_server(self)  # permessage-deflate, when on
        if extension:
            headers["Sec-WebSocket-Extensions"] = extension
        chosen = handshake.choose_subprotocol(handshake.offered_subprotocols(self._request),
                                              self.factory.policy.subprotocols)
        return chosen or handshake.SUBPROTOCOL, headers

    def onOpen(self) -> None:
        record = self.record
        root = self.factory.root
        record.state = OPEN
        self.factory.open_connections += 1
        record.subprotocol = self.websocket_protocol_in_use or ""
        if record.subprotocol == handshake.MSRP_SUBPROTOCOL:
            self._open_msrp(root)
        root.stats.incr("ws.handshakes_ok")
        response = self.http_response_data
        if isinstance(response, str):
            response = response.encode("utf-8")
        if root.tracer.enabled and record.traced:  # TLS details cost a few µs: only when traced
            root.tracer.ws_handshake(
                record, self._request_head, response, 101, "Switching Protocols", self._tls_details()
            )
        # nothing of the handshake is kept per connection once it is traced
        self._request_head = b""
        self._request = None
        self.http_response_data = None
        self.http_request_data = None
        self.http_headers = NO_HEADERS  # Autobahn reads them only during the handshake
        self.http_status_line = ""
        # Idle-connection memory (bench/idle_connections.py): Autobahn's other copies of the
        # request, read only during the handshake; its event-emitter tables, used only with
        # .on() listeners (sipws has none: ObservableMixin's class-level None then applies);
        # and its send queue, used only for chopped or synchronous writes, which sipws never
        # makes (one shared immutable empty queue instead of a deque per connection).
        self.websocket_protocols = self.websocket_extensions = NO_ITEMS
        self.websocket_origin = self._wskey = ""
        self.http_request_params = NO_HEADERS
        self.__dict__.pop("_valid_events", None)
        self.__dict__.pop("_results", None)
        self.send_queue = NO_ITEMS
        log.info(
            "opened {conn} origin={origin} identity={identity}",
            conn=record.describe(),
            origin=record.origin or "-",
            identity=record.identity or "-",
            conn_id=record.id,
        )

    def _open_msrp(self, root: Any) -> None:
        """An MSRP connection (RFC 7977): its message limit is one chunk of [msrp] max_chunk_size
        plus the core's header allowance (``Limits.for_chunk_size``) instead of [ws]
        max_message_size (instance attributes shadow the factory's class-level options); a body
        over max_chunk_size within that allowance reaches the relay and gets 413, a bigger
        message is closed with 1009.  The MSRP relay learns the connection exists."""
        self.is_msrp = True
        limit = root.msrp.limits.max_message_size
        self.maxMessagePayloadSize = limit
        self.maxFramePayloadSize = limit
        root.stats.incr("msrp.ws_connections")
        root.msrp.ws_opened(self.record)

    def _tls_details(self) -> dict[str, Any] | None:
        if not self.factory.is_secure:
            return None
        from sipws.transport.tls import tls_details

        return tls_details(self.transport)


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
        self.deflate = deflate.DeflateSettings.from_section(section)
        #: The listeners' (host, port), one tuple shared by their connections' records.
        self.local_addresses: dict[tuple[str, int], tuple[str, int]] = {}
        #: [ws]/[wss] max_connections (0 = no cap) and the open connections it counts.
        self.max_connections = section.max_connections
        self.open_connections = 0
        self.policy = handshake.HandshakePolicy(
            resource=section.resource,
            require_origin=config.http.require_origin,
            allowed_origins=config.http.allowed_origins,
            cors_mode=config.http.cors_mode,
            subprotocols=section.subprotocols,
        )
        timeout = section.handshake_timeout
        if self.is_secure:
            timeout += config.wss.tls_handshake_timeout
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,  # no HTML status page naming the library
            requireMaskedClientFrames=True,
            allowedOrigins=["*"],
            allowNullOrigin=True,  # the policy in handshake.py decides
            perMessageCompressionAccept=lambda offers: None,  # deflate.negotiate_server decides
            **protocol_options(section, timeout),
        )
        self.protocol = protocol_class_with_options(SipServerProtocol, self)
        #: [http] document_root: plain GETs answered with files (None = off).
        self.static_files = StaticFiles(config.http.document_root) if config.http.document_root else None
        self.fire_closed = ClosedHook(config)
        #: [http] trusted_proxies (empty: no Forwarded / X-Forwarded-For is believed).
        self.trusted_proxies = NetworkSet(config.http.trusted_proxies)
        #: [ws]/[wss] proxy_protocol_from (empty: no PROXY headers on this kind of listener).
        self.proxy_senders = NetworkSet(section.proxy_protocol_from)
        self.proxy_header_timeout = section.handshake_timeout
        #: [auth] handshake authentication (None = not configured: no cost per handshake).
        self.auth = HandshakeAuth(config.auth, root.reactor.seconds, root.stats) if config.auth.methods else None

    def over_capacity(self) -> handshake.Refusal | None:
        """503 when this listener kind already holds [ws]/[wss] max_connections open connections."""
        cap = self.max_connections
        if cap and self.open_connections >= cap:
            self.root.stats.incr("ws.over_capacity")
            return handshake.Refusal(503, f"too many connections ([{self.transport_name}] max_connections {cap})")
        return None


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
            self._tls_options = root.tls.server("wss")

    def privilegedStartService(self) -> None:
        reactor = self.root.reactor
        config = self.root.config
        inherited = getattr(self.root, "inherited_listeners", None)
        for kind, addresses in (("ws", config.ws.listen), ("wss", config.wss.listen)):
            ports = self.root.ports.setdefault(kind, [])
            if inherited is not None:
                # A worker: its master bound the listeners (sipws.workers.master).
                for fd, family in inherited.get(kind, ()):
                    ports.append(self._adopt(reactor, kind, fd, family))
                continue
            for address in addresses:
                ports.append(self._listen(reactor, kind, address))
        super().privilegedStartService()

    def _port_factory(self, kind: str) -> Any:
        """What a listening port of ``kind`` accepts with: on wss, TLS in memory (what listenSSL
        builds); with ``proxy_protocol_from``, the PROXY header reader outside it all (the
        header comes before TLS)."""
        root = self.root
        server = self.factories[kind]
        factory: Any = server
        if kind == "wss":
            factory = TLSMemoryBIOFactory(self._tls_options, False, factory)
        if server.proxy_senders:
            factory = ProxyHeaderFactory(factory, server.proxy_senders, server.proxy_header_timeout,
                                         root.reactor, root.stats, kind)
        return factory

    def _adopt(self, reactor: Any, kind: str, fd: int, family: int) -> Any:
        """Accept on a listening socket bound by the master (the same factory as ``_listen``)."""
        port = reactor.adoptStreamPort(fd, family, self._port_factory(kind))
        os.close(fd)  # adoptStreamPort works on its own duplicate
        return port

    def _listen(self, reactor: Any, kind: str, address: HostPort) -> Any:
        try:
            port = reactor.listenTCP(
                address.port, self._port_factory(kind), backlog=LISTEN_BACKLOG, interface=address.host
            )
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
        return defer.DeferredList(stopping).addCallback(
            lambda _: wait_until_gone(self.root, closing, SHUTDOWN_GRACE)
        )


def install(root: Any) -> None:
    service = WsServerService(root)
    service.setServiceParent(root)
    root.ws_server = service
