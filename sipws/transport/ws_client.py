"""The WebSocket client role: sipws dialling ws:// and wss:// SIP servers.

One connection per (host, port, secure, resource) is shared by every message
sent there.  Messages that arrive while it is being opened wait in a bounded
queue and go out in order once the 101 is in; if the dial fails (refused,
TLS verification, a handshake without the "sip" subprotocol) every waiting
message fails with 503, and with 408 if the handshake timed out.  A closed
connection is dialled again by the next message, never in a loop.

Dialled connections are ordinary entries of the connection table (role
"client"): the same keep-alive sweep, frame limits, counters, tracing and
closed event as accepted ones (``ws_common.SipWebSocketMixin``).  What the
remote server sends down them goes to ``root.deliver`` like anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from service_identity import VerificationError
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger

from sipws.config import ConfigError
from sipws.errors import SipwsError
from sipws.transport import deflate, handshake
from sipws.transport.connections import CLIENT, OPEN
from sipws.transport.ws_common import ClosedHook, SipWebSocketMixin, protocol_options, wait_until_gone

log = Logger(namespace="sipws.ws.client")

#: SIP status for a connection that could not be opened, and for one that timed out.
STATUS_UNAVAILABLE = 503
STATUS_TIMEOUT = 408
#: Seconds a stopping service waits for its client connections to close.
SHUTDOWN_GRACE = 3.0


class ClientConnectError(SipwsError):
    """A message could not be sent because its connection could not be opened."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


@dataclass(frozen=True, slots=True)
class WsTarget:
    """Where to dial: one connection is kept per distinct target."""

    host: str
    port: int
    secure: bool
    resource: str = "/"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}{self.resource}"


def target_from_url(url: str, config: Any) -> WsTarget:
    """``ws://host[:port][/path]`` or ``wss://...``; defaults from [ws]/[wss]."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = scheme == "wss"
    section = config.wss if secure else config.ws
    try:
        port = parts.port or section.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return WsTarget(parts.hostname.lower(), port, secure, parts.path or section.resource)


def target_from_uri(uri: Any, config: Any) -> WsTarget:
    """A ``sip:``/``sips:`` URI with ``transport=ws`` (RFC 7118 §5.2: sips means wss)."""
    secure = uri.scheme == "sips"
    section = config.wss if secure else config.ws
    return WsTarget(uri.host, uri.port or section.port, secure, section.resource)


class SipClientProtocol(SipWebSocketMixin, WebSocketClientProtocol):
    """One dialled WebSocket connection carrying SIP."""

    def connectionMade(self) -> None:
        self._failure: str | None = None
        self._timed_out = False
        self._enter_table(CLIENT)
        self.record.resource = self.factory.target.resource
        self.factory.link.connecting = self
        super().connectionMade()
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Any) -> None:
        if self.record.state != OPEN and self._failure is None:
            self._failure = reason.getErrorMessage()
            if reason.check(SSL.Error, VerificationError):
                self._failure = f"TLS certificate verification failed: {self._failure}"
        self._leave_table()
        self.factory.client.lost(self.factory.link, self)
        super().connectionLost(reason)

    def _handshake_failure(self) -> str | None:
        if self._failure is None:
            return None
        return f"handshake failed: {self._failure}"

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return  # failed (RFC 6455 §7.1.7): nothing more is read
        self._mark_alive()
        super().dataReceived(data)

    def failHandshake(self, reason: str) -> None:
        self._failure = reason
        super().failHandshake(reason)

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == WebSocketProtocol.STATE_CONNECTING:
            self._failure = "handshake timeout"
            self._timed_out = True
        super().onOpenHandshakeTimeout()

    def onConnect(self, response: Any) -> None:
        if response.protocol != handshake.SUBPROTOCOL:
            self._failure = f"server did not accept subprotocol sip (got {response.protocol!r})"
            raise ClientConnectError(STATUS_UNAVAILABLE, self._failure)

    def onOpen(self) -> None:
        record = self.record
        root = self.factory.root
        record.state = OPEN
        record.subprotocol = self.websocket_protocol_in_use or ""
        deflate.adopt_client(self)
        root.stats.incr("ws.handshakes_ok")
        root.stats.incr("ws.client_connects_ok")
        request, response = self.http_request_data, self.http_response_data
        details = None
        if self.factory.target.secure:
            from sipws.transport.tls import tls_details

            details = tls_details(self.transport)
        root.tracer.ws_handshake(record, bytes(request or b""), bytes(response or b""), 101, "Switching Protocols", details)
        self.http_request_data = None
        self.http_response_data = None
        log.info("connected {conn} to {url}", conn=record.describe(), url=self.factory.target.url, conn_id=record.id)
        self.factory.client.opened(self.factory.link, self)


class SipClientFactory(WebSocketClientFactory):
    """Settings for dialling one target."""

    protocol = SipClientProtocol

    def __init__(self, client: "WsClient", link: "_Link") -> None:
        root = client.root
        config = root.config
        target = link.target
        section = config.wss if target.secure else config.ws
        origin = config.client.origin or _default_origin(config)
        super().__init__(
            url=target.url,
            origin=origin,
            protocols=[handshake.SUBPROTOCOL],
            useragent=None,
            headers=dict(config.client.headers),
            reactor=root.reactor,
        )
        self.client = client
        self.link = link
        self.root = root
        self.target = target
        self.transport_name = "wss" if target.secure else "ws"
        self.max_msg_chunks = section.max_msg_chunks
        self.send_timeout = section.send_timeout
        self.sweeper = root.ws_server.sweeper if hasattr(root, "ws_server") else _NoSweeper()
        timeout = section.handshake_timeout + (config.wss.tls_handshake_timeout if target.secure else 0.0)
        self.deflate = deflate.DeflateSettings.from_section(section)
        self.setProtocolOptions(
            version=13,
            perMessageCompressionOffers=[deflate.client_offer(self.deflate)] if self.deflate.enabled else [],
            perMessageCompressionAccept=deflate.ClientAccept(self.deflate, target.url),
            **protocol_options(section, timeout),
        )
        self.fire_closed = client.fire_closed


class _NoSweeper:
    def wake_at(self, when: float, record: Any = None) -> None:
        return None


def _default_origin(config: Any) -> str:
    host = config.sip.advertise.split(":")[0] if config.sip.advertise else "localhost"
    return f"http://{host}"


class _Link:
    """One connection (possibly still opening) to a target, and what waits for it."""

    __slots__ = ("target", "protocol", "connecting", "queue", "queued_bytes", "timeout_call")

    def __init__(self, target: WsTarget) -> None:
        self.target = target
        #: The open connection, once the 101 is in.
        self.protocol: SipClientProtocol | None = None
        #: The connection while TCP/TLS is up but the upgrade is not done.
        self.connecting: SipClientProtocol | None = None
        self.queue: list[tuple[bytes | None, defer.Deferred]] = []
        self.queued_bytes = 0
        self.timeout_call: Any = None


class WsClient(Service):
    """Dials, reuses and re-dials client connections."""

    name = "ws-client"

    def __init__(self, root: Any) -> None:
        self.root = root
        config = root.config
        self.config = config
        self.links: dict[WsTarget, _Link] = {}
        self.fire_closed = ClosedHook(config)
        self.max_queued = config.client.max_queued_messages
        self.max_queued_bytes = config.client.max_queued_bytes
        if config.client.certificate and not config.client.private_key:
            pass  # a PEM holding both is fine; tls.client_tls_options reads it twice
        if not config.wss.verify_server:
            log.warn("[wss] verify_server = false: remote wss certificates are NOT checked")

    # -- API -------------------------------------------------------------------

    def send(self, target: WsTarget, data: bytes) -> defer.Deferred:
        """Send one message to target; fires with the record, or fails with ClientConnectError."""
        link = self.links.get(target)
        if link is not None and link.protocol is not None and link.protocol.record.state == OPEN:
            if self._reusable(link):
                if link.protocol.send_message(data):
                    return defer.succeed(link.protocol.record)
        return self._enqueue(target, data)

    def connect(self, url: str) -> defer.Deferred:
        """Open (or reuse) the connection for a ws:// or wss:// URL: admin ws.connect."""
        target = target_from_url(url, self.config)
        link = self.links.get(target)
        if link is not None and link.protocol is not None and link.protocol.record.state == OPEN:
            return defer.succeed(link.protocol.record)
        return self._enqueue(target, None)

    # -- internals -------------------------------------------------------------

    def _reusable(self, link: _Link) -> bool:
        """cert_check_on_conn_reusage: the open connection's certificate must still name the host."""
        if not (link.target.secure and self.config.wss.cert_check_on_conn_reusage and self.config.wss.verify_server):
            return True
        from service_identity import VerificationError
        from service_identity.pyopenssl import verify_hostname

        try:
            verify_hostname(link.protocol.transport.getHandle(), link.target.host)
            return True
        except (VerificationError, Exception):
            log.warn("not reusing {url}: certificate no longer matches", url=link.target.url)
            link.protocol.close_connection(1000, "certificate check on reuse failed")
            self.links.pop(link.target, None)
            return False

    def _enqueue(self, target: WsTarget, data: bytes | None) -> defer.Deferred:
        link = self.links.get(target)
        if link is None or (link.protocol is not None and link.protocol.record.state == OPEN):
            link = self._dial(target)
        size = len(data) if data else 0
        if len(link.queue) >= self.max_queued or link.queued_bytes + size > self.max_queued_bytes:
            self.root.stats.incr("ws.client_queue_full")
            return defer.fail(ClientConnectError(STATUS_UNAVAILABLE, f"queue for {target.url} is full"))
        waiter: defer.Deferred = defer.Deferred()
        link.queue.append((data, waiter))
        link.queued_bytes += size
        return waiter

    def _dial(self, target: WsTarget) -> _Link:
        link = _Link(target)
        self.links[target] = link
        reactor = self.root.reactor
        section = self.config.wss if target.secure else self.config.ws
        factory = SipClientFactory(self, link)
        endpoint: Any = HostnameEndpoint(reactor, target.host, target.port, timeout=section.handshake_timeout)
        if target.secure:
            try:
                endpoint = wrapClientTLS(self._tls_options(target), endpoint)
            except ConfigError as exc:
                reactor.callLater(0, self._fail_link, link, STATUS_UNAVAILABLE, str(exc))
                return link
        budget = section.handshake_timeout + (self.config.wss.tls_handshake_timeout if target.secure else 0.0)
        link.timeout_call = reactor.callLater(budget + section.handshake_timeout, self._dial_timed_out, link)
        log.info("dialling {url}", url=target.url)
        dialled = endpoint.connect(factory)
        dialled.addErrback(self._dial_failed, link)
        return link

    def _tls_options(self, target: WsTarget) -> Any:
        from sipws.transport.tls import WSS_ALPN

        # ALPN http/1.1 offered as browsers do: some front ends (HAProxy, nginx
        # with h2 enabled) pick the HTTP version from it.
        return self.root.tls.client(target.host, WSS_ALPN)

    def _dial_failed(self, failure: Any, link: _Link) -> None:
        timed_out = failure.check(error.TimeoutError, defer.TimeoutError, defer.CancelledError) is not None
        self._fail_link(link, STATUS_TIMEOUT if timed_out else STATUS_UNAVAILABLE, failure.getErrorMessage())

    def _dial_timed_out(self, link: _Link) -> None:
        """Guard over connect + TLS + upgrade, in case no lower timeout fired."""
        link.timeout_call = None
        if link.protocol is not None:
            return
        if link.connecting is not None:
            link.connecting._timed_out = True
            link.connecting._failure = "handshake timeout"
            link.connecting.abort("handshake timeout")  # lost() fails the queue
        else:
            self._fail_link(link, STATUS_TIMEOUT, "connect timeout")

    def _fail_link(self, link: _Link, status: int, reason: str) -> None:
        if self.links.get(link.target) is link:
            del self.links[link.target]
        if link.timeout_call is not None and link.timeout_call.active():
            link.timeout_call.cancel()
        link.timeout_call = None
        waiting, link.queue, link.queued_bytes = link.queue, [], 0
        if waiting or status:
            self.root.stats.incr("ws.client_connects_failed")
            log.warn(
                "cannot connect to {url}: {reason} ({count} message(s) failed with {status})",
                url=link.target.url,
                reason=reason,
                count=len(waiting),
                status=status,
            )
        for _data, waiter in waiting:
            waiter.errback(ClientConnectError(status, reason))

    def opened(self, link: _Link, protocol: SipClientProtocol) -> None:
        link.protocol = protocol
        link.connecting = None
        if link.timeout_call is not None and link.timeout_call.active():
            link.timeout_call.cancel()
        link.timeout_call = None
        waiting, link.queue, link.queued_bytes = link.queue, [], 0
        for data, waiter in waiting:
            if data is not None:
                protocol.send_message(data)
            waiter.callback(protocol.record)

    def lost(self, link: _Link, protocol: SipClientProtocol) -> None:
        if link.protocol is protocol or link.protocol is None:
            if link.protocol is None:
                status = STATUS_TIMEOUT if protocol._timed_out else STATUS_UNAVAILABLE
                self._fail_link(link, status, protocol._failure or "connection lost")
            elif self.links.get(link.target) is link:
                del self.links[link.target]

    def stopService(self) -> defer.Deferred:
        super().stopService()
        records = [r for r in self.root.connections if r.role == CLIENT]
        for record in records:
            if record.protocol is not None:
                record.protocol.close_connection(1001, "Going Away")
        for link in list(self.links.values()):
            if link.protocol is None:
                self._fail_link(link, STATUS_UNAVAILABLE, "shutting down")
        return wait_until_gone(self.root, records, SHUTDOWN_GRACE)


def install(root: Any) -> None:
    service = WsClient(root)
    service.setServiceParent(root)
    root.ws_client = service
