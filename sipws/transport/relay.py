"""The relay's I/O: wires the pure edge proxy to every socket.

``install(root)`` adds the ``Relay`` service, which

- binds the ``[sip] listen`` sockets (UDP, TCP, TLS) toward the SIP core;
- builds ``sipws.proxy.EdgeProxy`` with the addresses actually bound (port 0
  in a test becomes the real port in Via, Record-Route and Path), the
  WebSocket listeners counted as "ours" for Route matching;
- takes every complete WebSocket message from the hub (``root.deliver``):
  messages on connections browsers opened are flows, messages on connections
  sipws dialled (a ws:// upstream) are SIP-side input like UDP or TCP;
- tells the proxy about every closed connection (``flow_closed``), so a
  request pending toward it gets 430 and no flow outlives its connection;
- carries out the proxy's output: to a WebSocket connection by id, or to a
  Target resolved per RFC 3263 and sent over UDP, TCP, TLS, or the client
  role's WebSocket connection;
- counts ``sip.messages_in.<transport>`` / ``sip.messages_out.<transport>``
  and traces the SIP side to HEP (the WebSocket side is traced where frames
  are read and written).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.logger import Logger

from sipws.proxy import EdgeProxy, FlowTokens, LocalAddresses
from sipws.proxy.targets import Target
from sipws.sip.limits import Limits
from sipws.errors import StartupError
from sipws.transport.connections import CLIENT, SERVER, ConnectionRecord
from sipws.transport.resolver import ResolveError, SipResolver
from sipws.transport.sip_stream import StreamPool, SipStreamProtocol
from sipws.proxy.hop_failures import HopReportLimiter
from sipws.transport.sip_udp import SipUdpProtocol, listen_udp

log = Logger(namespace="sipws.transport.relay")

OnError = Optional[Callable[[str], None]]
#: Listen backlog of the SIP TCP/TLS sockets.
LISTEN_BACKLOG = 511
#: Seconds an address that refused a connection is tried last (RFC 3263 failover).
FAILED_ADDRESS_MEMORY = 30.0
#: Failed addresses remembered at most.
MAX_FAILED_ADDRESSES = 1024
#: Counters this layer keeps (more appear as the stream pool counts them).
KNOWN_COUNTERS = tuple(
    f"sip.messages_{direction}.{transport}"
    for direction in ("in", "out") for transport in ("udp", "tcp", "tls", "ws", "wss")
) + ("sip.connect_failures", "sip.dns_failures", "sip.framing_errors", "sip.icmp_errors",
   "sip.udp_drops")


#: Counter names per transport, built once (not per message).
_IN = {t: f"sip.messages_in.{t}" for t in ("udp", "tcp", "tls", "ws", "wss")}
_OUT = {t: f"sip.messages_out.{t}" for t in ("udp", "tcp", "tls", "ws", "wss")}

#: The loopback TCP socket the edge opens for the standalone core when [sip] listen has no tcp: entry.
STANDALONE_HOP_HOST = "127.0.0.1"


class Relay(Service):
    """The SIP relay service: sockets toward the core plus the edge proxy."""

    name = "relay"

    def __init__(self, root: Any, dns_resolver: Any = None) -> None:
        self.root = root
        self.config = root.config
        self.reactor = root.reactor
        self.counters = root.stats
        self.tokens = FlowTokens(self.config.sip.flow_token_secret or None)
        self.resolver = SipResolver(self.reactor, dns_resolver)
        self.udp: list[SipUdpProtocol] = []
        self.pool = StreamPool(self.reactor, self._received, self.counters,
                               Limits.from_config(self.config.sip), self._tls_client_options,
                               self.config.wss.tls_handshake_timeout)
        self.pool.on_sent = self._stream_sent
        self.proxy: Optional[EdgeProxy] = None
        #: [auth] bind_identity: the connection's identity goes with its messages to the proxy.
        self.bind_identity = self.config.auth.bind_identity
        for name in KNOWN_COUNTERS:  # shown (as 0) in stats and /metrics from the start
            self.counters.incr(name, 0)
        self._listening: list[Any] = []
        #: The first TCP socket toward the core, as bound (the standalone core dials it).
        self.edge_tcp: Optional[tuple[str, int]] = None
        #: ICMP errors are logged once per destination per minute, with a count.
        self._icmp_reports = HopReportLimiter()
        #: (transport, (ip, port)) -> when a connection to it last failed.
        self._failed_at: dict[tuple[str, tuple[str, int]], float] = {}

    # -- start and stop --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        bound = [self._listen(entry.transport, entry.host, entry.port) for entry in self.config.sip.listen]
        standalone = getattr(self.root, "standalone", None)
        if standalone is not None and standalone.enabled and not any(t == "tcp" for t, _, _ in bound):
            # The standalone core reaches clients through a TCP socket of ours
            # (the Path it stores): without a tcp: entry, one on loopback only.
            bound.append(self._listen("tcp", STANDALONE_HOP_HOST, 0))
        self.edge_tcp = next(((host, port) for t, host, port in bound if t == "tcp"), None)
        also = [(port.getHost().host, port.getHost().port)
                for kind in ("ws", "wss") for port in self.root.listening(kind)]
        local = LocalAddresses(bound, self.config.sip.advertise, also)
        if local.needs_advertise():
            log.warn("[sip] listen has a wildcard address and [sip] advertise is empty: "
                     "Via, Record-Route and Path will carry an address the core cannot reach")
        sip_config = standalone.edge_sip_config(self.config.sip) if standalone is not None else self.config.sip
        if not sip_config.upstream:
            raise StartupError("[sip] upstream: empty, and the standalone core is not installed")
        if standalone is None or not standalone.enabled:
            log.info("relay mode: WebSocket clients' requests go to [sip] upstream {upstream}",
                     upstream=sip_config.upstream)
        self.proxy = EdgeProxy(sip_config, self.reactor, self.tokens, self, local=local)
        self.root.set_message_handler(self.from_websocket)
        self.root.connections.on_removed(self._connection_closed)
        super().privilegedStartService()

    def _listen(self, transport: str, host: str, port: int) -> tuple[str, str, int]:
        reactor = self.reactor
        try:
            if transport == "udp":
                protocol, listening = listen_udp(reactor, host, port, self._received, self._unreachable,
                                                 self.config.sip.udp_buffer_size, self._udp_drops)
                self.udp.append(protocol)
            elif transport == "tcp":
                listening = reactor.listenTCP(port, self.pool.factory("tcp"), backlog=LISTEN_BACKLOG,
                                              interface=host)
            else:
                listening = reactor.listenSSL(port, self.pool.factory("tls"), self._server_tls(),
                                              backlog=LISTEN_BACKLOG, interface=host)
        except error.CannotListenError as exc:
            why = getattr(exc.socketError, "strerror", None) or exc.socketError
            raise StartupError(f"[sip] listen: cannot listen on {transport}:{host}:{port}: {why}") from None
        self._listening.append(listening)
        self.root.ports.setdefault(f"sip-{transport}", []).append(listening)
        actual = listening.getHost()
        log.info("listening sip {transport} on {host}:{port}", transport=transport,
                 host=actual.host, port=actual.port)
        return (transport, host, actual.port)

    def _server_tls(self) -> Any:
        return self.root.tls.server("sip-tls")

    def _tls_client_options(self, server_name: str) -> Any:
        return self.root.tls.client(server_name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        self.pool.stop()
        if self.proxy is not None:
            dropped = self.proxy.table.clear()
            if dropped:
                log.info("stopping with {count} open transactions", count=dropped)
        stopping = [port.stopListening() for port in self._listening]
        self._listening.clear()
        self.udp.clear()
        for kind in ("sip-udp", "sip-tcp", "sip-tls"):
            self.root.ports.pop(kind, None)
        return defer.gatherResults([d for d in stopping if d is not None])

    # -- input ---------------------------------------------------------------------------

    def from_websocket(self, record: ConnectionRecord, data: bytes) -> None:
        """One complete WebSocket message (already traced and counted as WS traffic)."""
        if self.proxy is None:
            return
        self.counters.incr(_IN.get(record.transport) or "sip.messages_in." + record.transport)
        if record.role == SERVER:
            self.proxy.receive_from_flow(record.id, data, record.remote, record.transport,
                                         record.identity if self.bind_identity else "")
        else:
            self.proxy.receive_from_sip(data, record.remote, record.transport)

    def _received(self, data: bytes, source: tuple[str, int], transport: str, receiver: Any) -> None:
        """One UDP datagram or framed TCP/TLS message from the SIP side; ``receiver``
        is the socket's protocol (for the local address in traces)."""
        if self.proxy is None:
            return
        self.counters.incr(_IN.get(transport) or "sip.messages_in." + transport)
        tracer = self.root.tracer
        if tracer.enabled:
            tracer.sip_message(None, "in", transport, source, _local_of(receiver), data)
        self.proxy.receive_from_sip(data, source, transport)

    def _unreachable(self, quoted: bytes, destination: tuple[str, int], reason: str) -> None:
        """An ICMP error for a datagram sent to ``destination``: fail its transaction now."""
        self.counters.incr("sip.icmp_errors")
        if self.proxy is None or not self.proxy.unreachable(quoted, f"{reason} (udp {destination[0]}:{destination[1]})"):
            return
        held_back = self._icmp_reports.due(f"{destination[0]}:{destination[1]}", self.reactor.seconds())
        if held_back is not None:
            more = f"; {held_back} more since the last report" if held_back else ""
            log.warn("udp {host}:{port}: {reason}: its request is answered 503 at once{more}",
                     host=destination[0], port=destination[1], reason=reason, more=more)

    def _udp_drops(self, count: int) -> None:
        """The kernel dropped ``count`` datagrams on a full receive buffer of ours."""
        self.counters.incr("sip.udp_drops", count)

    def _connection_closed(self, record: ConnectionRecord) -> None:
        if self.proxy is not None and record.role == SERVER:
            self.proxy.flow_closed(record.id)

    # -- output (sipws.proxy.core.ProxyOutput) ---------------------------------------------

    def send_to_flow(self, conn_id: int, data: bytes) -> bool:
        record = self.root.connections.get(conn_id)
        if record is None or record.protocol is None:
            return False
        if not record.protocol.send_message(data):
            return False
        self.counters.incr(_OUT.get(record.transport) or "sip.messages_out." + record.transport)
        return True

    def send_to_target(self, target: Target, data: bytes, on_error: OnError) -> None:
        if target.is_ws:
            self._send_ws(target, data, on_error)
            return
        if target.is_numeric:  # the common case (a numeric upstream): no Deferred, no DNS
            self._send_resolved([(target.host, target.port_or_default)], target, data, on_error)
            return
        if not target.dialable:
            _report(on_error, f"{target.host} is not dialable")
            return
        d = self.resolver.resolve(target)
        d.addCallbacks(self._send_resolved, self._resolve_failed,
                       callbackArgs=(target, data, on_error), errbackArgs=(target, on_error))

    def _resolve_failed(self, failure: Any, target: Target, on_error: OnError) -> None:
        reason = failure.getErrorMessage() if failure.check(ResolveError) else f"DNS: {failure.getErrorMessage()}"
        log.warn("cannot resolve {target}: {reason}", target=str(target), reason=reason)
        self.counters.incr("sip.dns_failures")
        _report(on_error, reason)

    def _send_resolved(self, addresses: list[tuple[str, int]], target: Target, data: bytes,
                       on_error: OnError) -> None:
        address = addresses[0]
        if target.transport == "udp":
            sock = self._udp_for(address[0])
            if sock is None:
                _report(on_error, f"no UDP socket for {address[0]}")
                return
            if sock.send(data, address, on_error):
                self.counters.incr("sip.messages_out.udp")
                tracer = self.root.tracer
                if tracer.enabled:
                    tracer.sip_message(None, "out", "udp", sock.local, address, data)
            return
        if target.transport in ("tcp", "tls"):
            server_name = address[0] if target.is_numeric else target.host
            self._send_stream(target.transport, self._by_health(target.transport, addresses), 0,
                              data, on_error, server_name)
            return
        _report(on_error, f"unsupported transport {target.transport}")

    def _send_stream(self, transport: str, addresses: list[tuple[str, int]], index: int, data: bytes,
                     on_error: OnError, server_name: str) -> None:
        """RFC 3263 §4.3: when a connection to one address fails, try the next
        (SRV order, addresses that failed lately last); the request fails only
        when every address did."""
        address = addresses[index]

        def failed(reason: str) -> None:
            self._remember_failure(transport, address)
            if index + 1 < len(addresses):
                log.info("{transport}:{host}:{port} failed ({reason}); trying the next address",
                         transport=transport, host=address[0], port=address[1], reason=reason)
                self._send_stream(transport, addresses, index + 1, data, on_error, server_name)
            else:
                _report(on_error, reason)

        self.pool.send(transport, address, data, failed, server_name)

    def _remember_failure(self, transport: str, address: tuple[str, int]) -> None:
        """Note when a connection to ``address`` failed; entries older than
        FAILED_ADDRESS_MEMORY are forgotten once the map grows (next hops come
        from clients' Routes too: it must not grow without bound)."""
        now = self.reactor.seconds()
        failed_at = self._failed_at
        failed_at[(transport, address)] = now
        if len(failed_at) > MAX_FAILED_ADDRESSES:
            since = now - FAILED_ADDRESS_MEMORY
            for key in [k for k, when in failed_at.items() if when < since]:
                del failed_at[key]
            while len(failed_at) > MAX_FAILED_ADDRESSES:  # all recent: drop the oldest
                del failed_at[next(iter(failed_at))]

    def _by_health(self, transport: str, addresses: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The addresses in resolver order, those that failed in the last
        FAILED_ADDRESS_MEMORY seconds moved to the end."""
        if len(addresses) < 2 or not self._failed_at:
            return addresses
        since = self.reactor.seconds() - FAILED_ADDRESS_MEMORY
        fresh = [a for a in addresses if self._failed_at.get((transport, a), -1.0) < since]
        return fresh + [a for a in addresses if a not in fresh]

    def _udp_for(self, host: str) -> Optional[SipUdpProtocol]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for sock in self.udp:
            if sock.family == family and sock.transport is not None:
                return sock
        return None

    def _stream_sent(self, protocol: SipStreamProtocol, data: bytes) -> None:
        self.counters.incr("sip.messages_out." + protocol.transport_name)
        tracer = self.root.tracer
        if tracer.enabled:
            tracer.sip_message(None, "out", protocol.transport_name, _local_of(protocol), protocol.peer, data)

    def _send_ws(self, target: Target, data: bytes, on_error: OnError) -> None:
        """A ws:// upstream or a ``transport=ws`` next hop: the client role's connection.

        The WebSocket client decides reuse (one connection per target, the
        certificate re-check of ``cert_check_on_conn_reusage``).  Only a target
        it has no connection for, but which names an open client-role
        connection by its address — a response to a request the dialled
        server sent — goes straight to that connection.
        """
        from sipws.transport.ws_client import WsTarget

        secure = target.transport == "wss"
        section = self.config.wss if secure else self.config.ws
        port = target.port if target.port is not None else section.port
        resource = target.resource if target.resource != "/" else section.resource
        ws_target = WsTarget(target.host, port, secure, resource)
        client = getattr(self.root, "ws_client", None)
        if client is None or ws_target not in client.links:
            record = self.root.connections.by_address(target.host, port, target.transport)
            if record is not None and record.role == CLIENT and record.protocol is not None:
                if record.protocol.send_message(data):
                    self.counters.incr("sip.messages_out." + target.transport)
                    return
        if client is None:
            _report(on_error, "no WebSocket client role")
            return

        def sent(result: Any) -> None:
            self.counters.incr("sip.messages_out." + target.transport)

        def failed(failure: Any) -> None:
            reason = getattr(failure.value, "reason", None) or failure.getErrorMessage()
            _report(on_error, reason)

        client.send(ws_target, data).addCallbacks(sent, failed)

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the admin ``stats`` method shows under "sip"."""
        proxy = self.proxy
        return {
            "transactions": len(proxy.table) if proxy else 0,
            "client_transactions": len(proxy.table.clients) + len(proxy.table.absorbing) if proxy else 0,
            "server_transactions": len(proxy.table.servers) + len(proxy.table.lingering) if proxy else 0,
            "lingering_transactions": len(proxy.table.lingering) + len(proxy.table.absorbing) if proxy else 0,
            "flows": len(proxy.flows) if proxy else 0,
            "stream_connections": len(self.pool.connections),
            "dns_queries": self.resolver.queries,
            "events": dict(sorted(proxy.counters.items())) if proxy else {},
        }


def _local_of(protocol: Any) -> tuple[str, int]:
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return ("0.0.0.0", 0)
    host = transport.getHost()
    return (host.host, host.port)


def _report(on_error: OnError, reason: str) -> None:
    if on_error is not None:
        on_error(reason)


def install(root: Any) -> None:
    relay = Relay(root, getattr(root, "dns_resolver", None))
    relay.setServiceParent(root)
    root.relay = relay
