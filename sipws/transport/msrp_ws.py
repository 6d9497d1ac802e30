"""The MSRP relay's I/O (RFC 7977, RFC 4976): ``root.msrp``.

The decisions are the pure core's (``sipws.msrp.MsrpRelay``); this service
only feeds it and carries out what it returns:

- WebSocket connections that negotiated "msrp" (``ws_server``) are opened in
  the relay with their handshake identity, each of their messages (one chunk,
  RFC 7977) is handed to it, and their end (however it happens: the
  connection table's removal) is told to it;
- TCP/TLS peers (``msrp_stream.PeerPool``): ``[msrp] listen`` sockets for peers
  that reach the Use-Path authority, and connections dialled per ``PeerKey``;
- actions: ``SendToConnection`` (a WebSocket message, or a write on a peer
  connection: peers have negative ids), ``SendToPeer`` (reuse or dial),
  ``CloseConnection``, ``Log`` (one line, with the source the core names);
- once a second ``tick()`` (transaction timeouts 408, session expiry);
- back-pressure: bytes written to a connection whose transport has paused us
  are reported with ``buffered``; the core refuses SENDs toward a backed-up hop.

The Use-Path authority is ``[msrp] advertise``, else the first ``[msrp]
listen`` entry (``msrps`` for tls:), else the first wss listener (``msrps``),
else the first ws listener (``msrp``, with ``allow_insecure``).  With workers,
each worker has its own ``[msrp] listen`` port and Use-Path port (+ index,
``sipws.workers.plan``): a chunk for a session on another worker goes to it
over TCP/TLS like to any peer.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipws.config import Config, HostPort, parse_host_port
from sipws.errors import StartupError
from sipws.msrp import (
    CloseConnection, Limits, Log, MsrpRelay, PeerKey, RelaySettings, SendToConnection, SendToPeer,
)
from sipws.transport.connections import ConnectionRecord
from sipws.transport.msrp_stream import MsrpStreamProtocol, PeerEvents, PeerPool
from sipws.transport.tls import client_tls_options
from sipws.transport.ws_common import close_code_allowed

log = Logger(namespace="sipws.msrp")

#: Seconds between the relay's ticks (transaction timeouts, session expiry).
TICK_INTERVAL = 1.0
#: Listen backlog of the [msrp] listen sockets.
LISTEN_BACKLOG = 511
#: Close code used when the core asks for one a WebSocket endpoint may not send.
FALLBACK_CLOSE_CODE = 1008
#: Shortest AUTH Expires the relay grants (RFC 4976 §5.1: the relay chooses).
MIN_EXPIRES = 60

_LOG_LEVELS = {"debug": log.debug, "info": log.info, "warning": log.warn, "warn": log.warn}


def msrp_enabled(config: Config) -> bool:
    """True when any listener can carry MSRP (a subprotocol or [msrp] listen)."""
    return "msrp" in config.ws.subprotocols or "msrp" in config.wss.subprotocols or bool(config.msrp.listen)


class MsrpService(Service, PeerEvents):
    """``root.msrp``: the relay core, the peer pool, and the WebSocket hand-off."""

    name = "msrp"

    def __init__(self, root: Any) -> None:
        self.root = root
        self.config = root.config
        self.reactor = root.reactor
        self.stats = root.stats
        msrp = self.config.msrp
        self.enabled = msrp_enabled(self.config)
        self.limits = Limits.for_chunk_size(msrp.max_chunk_size)
        self.relay: Optional[MsrpRelay] = None
        #: (host, port, tls) written into Use-Path; set once the listeners are bound.
        self.authority: Optional[tuple[str, int, bool]] = None
        self.pool = PeerPool(
            self.reactor, self, self.stats, self.limits,
            tls_client_options=self._tls_client_options,
            connect_timeout=msrp.peer_connect_timeout,
            tls_timeout=self.config.wss.tls_handshake_timeout,
            idle_timeout=msrp.peer_idle_timeout,
            max_backlog=msrp.max_backlog,
        )
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        #: Bytes written to each paused WebSocket connection (conn id -> bytes).
        self._ws_backlog: dict[int, int] = {}
        for name in ("msrp.ws_connections", "msrp.ws_messages_in", "msrp.ws_messages_out",
                     "msrp.ws_bytes_in", "msrp.ws_bytes_out", "msrp.peer_messages_in",
                     "msrp.peer_messages_out", "msrp.peer_connect_failures", "msrp.peer_framing_errors"):
            self.stats.incr(name, 0)

    # -- start and stop ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.enabled:
            return
        for entry in self.config.msrp.listen:
            self._listen(entry.transport, entry.host, entry.port)
        self.authority = self._authority()
        host, port, tls = self.authority
        msrp = self.config.msrp
        settings = RelaySettings(
            host=host, port=port, tls=tls, require_auth=msrp.require_auth or self.config.auth.required,
            max_chunk_size=msrp.max_chunk_size, default_expires=msrp.expires,
            min_expires=min(MIN_EXPIRES, msrp.expires), max_expires=msrp.expires,
            max_backlog=msrp.max_backlog,
            hmac_secrets=tuple(self.config.auth.hmac_secrets),
            hmac_algorithm=self.config.auth.hmac_algorithm,
        )
        self.relay = MsrpRelay(self.reactor, settings)
        if msrp.require_auth and not self.config.auth.required and not settings.hmac_secrets:
            log.warn("MSRP relay: [msrp] require_auth without [auth] hmac_secrets: AUTH from a "
                     "connection without handshake credentials is refused (403), no Digest offered")
        self.root.connections.on_removed(self._ws_removed)
        scheme = "msrps" if tls else "msrp"
        shown = f"[{host}]" if ":" in host else host
        log.info("MSRP relay: Use-Path {scheme}://{host}:{port}/SESSION;tcp", scheme=scheme, host=shown, port=port)

    def _listen(self, transport: str, host: str, port: int) -> None:
        tls = transport == "tls"
        factory: Any = self.pool.factory(tls)
        try:
            if tls:
                listening = self.reactor.listenSSL(port, factory, self.root.tls.server("msrp-tls"),
                                                   backlog=LISTEN_BACKLOG, interface=host)
            else:
                listening = self.reactor.listenTCP(port, factory, backlog=LISTEN_BACKLOG, interface=host)
        except error.CannotListenError as exc:
            why = exc.socketError.strerror if hasattr(exc.socketError, "strerror") else exc.socketError
            raise StartupError(f"[msrp] listen: cannot listen on {transport}:{HostPort(host, port)}: {why}") from None
        self.root.ports.setdefault(f"msrp-{transport}", []).append(listening)
        bound = listening.getHost()
        log.info("listening msrp {transport} on {host}:{port}", transport=transport, host=bound.host, port=bound.port)

    def _authority(self) -> tuple[str, int, bool]:
        """Where peers reach this relay: (host, port, tls) of the Use-Path URI."""
        config = self.config
        tls_default = True
        if config.msrp.listen:
            first = config.msrp.listen[0]
            tls_default = first.transport == "tls"
            bound = self.root.listening(f"msrp-{first.transport}")[0].getHost()
            host, port = bound.host, bound.port
        elif self.root.listening("wss"):
            bound = self.root.listening("wss")[0].getHost()
            host, port = bound.host, bound.port
        elif self.root.listening("ws"):
            bound = self.root.listening("ws")[0].getHost()
            host, port, tls_default = bound.host, bound.port, False
        else:
            host, port = "127.0.0.1", 2855
        if config.msrp.advertise:
            advertised = parse_host_port("[msrp] advertise", config.msrp.advertise, port)
            return advertised.host, advertised.port, tls_default
        if not config.msrp.listen:
            log.info("[msrp] listen is empty: MSRP peers cannot connect to the Use-Path address "
                     "({host}:{port} is a WebSocket listener); WebSocket clients reach each other, and "
                     "peers only through connections sipws opens", host=host, port=port)
        if host in ("0.0.0.0", "::"):
            log.warn("[msrp] advertise is empty and the MSRP address is a wildcard ({host}): "
                     "the Use-Path URI will carry an address peers cannot reach", host=host)
        return host, port, tls_default

    def startService(self) -> None:
        super().startService()
        if self.relay is not None:
            self.pool.start()
            self._ticker.start(TICK_INTERVAL, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._ticker.running:
            self._ticker.stop()
        self.pool.stop()
        ports = [port for kind in ("msrp-tcp", "msrp-tls") for port in self.root.ports.pop(kind, [])]
        for port in ports:
            port.stopListening()
        return None

    def _tls_client_options(self, server_name: str) -> Any:
        if self.config.msrp.verify_peers:
            return self.root.tls.client(server_name)
        return client_tls_options(server_name, verify=False, min_tls_version=self.config.wss.min_tls_version)

    # -- WebSocket connections (ws_server / ws_common) ------------------------------------

    def ws_opened(self, record: ConnectionRecord) -> None:
        """A WebSocket client negotiated "msrp"."""
        if self.relay is None:
            return
        self._run(self.relay.connection_opened(record.id, "ws", identity=record.identity or None))

    def from_websocket(self, record: ConnectionRecord, data: bytes) -> None:
        """One WebSocket message of an msrp connection: one MSRP chunk (RFC 7977)."""
        if self.relay is None:
            log.warn("MSRP message from {conn} but no relay is configured; closing", conn=record.describe())
            if record.protocol is not None:
                record.protocol.close_connection(1008, "no MSRP relay")
            return
        self._run(self.relay.received(record.id, data), source=record.describe())

    def _ws_removed(self, record: ConnectionRecord) -> None:
        if record.subprotocol != "msrp" or self.relay is None:
            return
        self._ws_backlog.pop(record.id, None)
        self._run(self.relay.connection_closed(record.id))

    def ws_drained(self, record: ConnectionRecord) -> None:
        """The transport of an msrp connection resumed us: its backlog is gone."""
        if self._ws_backlog.pop(record.id, None) and self.relay is not None:
            self._run(self.relay.buffered(record.id, 0))

    # -- peers (msrp_stream.PeerPool events) ------------------------------------------------

    def peer_opened(self, conn_id: int, peer: Optional[PeerKey], protocol: MsrpStreamProtocol) -> None:
        if self.relay is not None:
            self._run(self.relay.connection_opened(conn_id, "peer", peer=peer))

    def peer_message(self, conn_id: int, data: bytes, protocol: MsrpStreamProtocol) -> None:
        tracer = self.root.tracer
        if tracer.enabled:
            tracer.msrp_message(None, "in", protocol.transport_name, protocol.peer, protocol.local, data)
        if self.relay is not None:
            self._run(self.relay.received(conn_id, data), source=protocol.describe())

    def peer_sent(self, protocol: MsrpStreamProtocol, data: bytes) -> None:
        tracer = self.root.tracer
        if tracer.enabled:
            tracer.msrp_message(None, "out", protocol.transport_name, protocol.local, protocol.peer, data)

    def peer_closed(self, conn_id: int) -> None:
        if self.relay is not None:
            self._run(self.relay.connection_closed(conn_id))

    def peer_unreachable(self, peer: PeerKey, reason: str) -> None:
        if self.relay is not None:
            self._run(self.relay.peer_unreachable(peer, reason))

    def peer_buffered(self, target: Any, nbytes: int) -> None:
        if self.relay is not None:
            self._run(self.relay.buffered(target, nbytes))

    # -- carrying out the core's actions ---------------------------------------------------

    def _tick(self) -> None:
        if self.relay is not None:
            self._run(self.relay.tick())

    def _run(self, actions: list[Any], source: str = "") -> None:
        for action in actions:
            try:
                self._act(action, source)
            except Exception:  # noqa: BLE001 - one failed action must not stop the others
                log.failure("MSRP action {action} failed", action=type(action).__name__)

    def _act(self, action: Any, source: str) -> None:
        if isinstance(action, SendToConnection):
            self._send_to_connection(action.conn_id, action.data)
        elif isinstance(action, SendToPeer):
            self.pool.send_to_peer(action.peer, action.data)
        elif isinstance(action, CloseConnection):
            self._close(action.conn_id, action.code, action.reason)
        elif isinstance(action, Log):
            emit = _LOG_LEVELS.get(action.level, log.info)
            if source:
                emit("{source}: {text}", source=source, text=action.text)
            else:
                emit("{text}", text=action.text)
        else:
            log.warn("MSRP relay returned an unknown action {action!r}", action=action)

    def _send_to_connection(self, conn_id: int, data: bytes) -> None:
        if conn_id < 0:
            if not self.pool.send_to_connection(conn_id, data):
                self.stats.incr("msrp.send_to_gone")
            return
        record = self.root.connections.get(conn_id)
        protocol = record.protocol if record is not None else None
        if protocol is None or not protocol.send_message(data):
            self.stats.incr("msrp.send_to_gone")
            return
        if protocol.paused_since is not None:  # the transport holds more than its buffer unsent
            backlog = self._ws_backlog.get(conn_id, 0) + len(data)
            self._ws_backlog[conn_id] = backlog
            self._run(self.relay.buffered(conn_id, backlog))

    def _close(self, conn_id: int, code: int, reason: str) -> None:
        if conn_id < 0:
            self.pool.close(conn_id)
            return
        record = self.root.connections.get(conn_id)
        if record is None or record.protocol is None:
            return
        if not close_code_allowed(code):
            code = FALLBACK_CLOSE_CODE
        record.protocol.close_connection(code, reason)

    # -- admin ------------------------------------------------------------------------------

    def stats_snapshot(self) -> dict[str, Any]:
        """The relay's counters and the peer pool's gauges (admin ``stats``, /metrics)."""
        if self.relay is None:
            return {}
        result: dict[str, Any] = dict(self.relay.counters)
        result.update(self.pool.stats_snapshot())
        if self.authority is not None:
            host, port, tls = self.authority
            result["use_path_authority"] = f"{'msrps' if tls else 'msrp'}://{host}:{port}"
        return result

    def sessions_by_connection(self) -> dict[int, list[dict[str, Any]]]:
        """The relay's sessions grouped by connection id (ws.dump)."""
        grouped: dict[int, list[dict[str, Any]]] = {}
        if self.relay is None:
            return grouped
        for session in self.relay.dump():
            grouped.setdefault(session.get("conn_id"), []).append(session)
        return grouped


def install(root: Any) -> None:
    service = MsrpService(root)
    service.setServiceParent(root)
    root.msrp = service
