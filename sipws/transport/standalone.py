"""Standalone mode's I/O: the built-in registrar and forking proxy on a loopback socket.

With ``[sip] upstream`` empty (the default), this service binds one socket on
127.0.0.1 (an ephemeral port), runs the standalone core
(sipws.registrar.HomeProxy) behind it, and makes that socket the edge
proxy's upstream.  The edge relays to it exactly as it would to Kamailio, so
Path, Record-Route, flow tokens, 430 and alias mode behave the same in both
modes; only where requests end up differs.

The hop is TCP (reliable: no retransmissions on it): the core dials the
edge's first tcp: socket of ``[sip] listen``, or a loopback one the relay
opens when there is none.  Bindings die with their connection: the
connection table's removal hook tells the core which flow token is gone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipws.errors import StartupError
from sipws.proxy.transaction import Timers
from sipws.registrar import BindingTable, Registrar
from sipws.registrar.home_proxy import HomeProxy
from sipws.sip.limits import Limits
from sipws.stats import Stats
from sipws.transport.connections import SERVER, ConnectionRecord
from sipws.proxy.targets import split_host_port
from sipws.transport.sip_stream import StreamPool

log = Logger(namespace="sipws.standalone")

#: Where the standalone core listens: loopback only, never reachable from outside.
LOOPBACK = "127.0.0.1"
#: Seconds between sweeps for expired bindings.
EXPIRY_SWEEP_INTERVAL = 1.0


def may_hold_bindings(record: ConnectionRecord) -> bool:
    """Can the standalone core know this connection's flow? Only a browser's connection
    that sent at least one SIP message (CRLF keep-alives do not count): a binding comes
    from a REGISTER relayed from the flow. The others close without telling the core,
    which spares a flow-token digest per connection, and with workers a message to the
    master (a handshake that never carries SIP costs no IPC)."""
    return record.role == SERVER and record.messages_in > 0


class StandaloneService(Service):
    """Runs the standalone core when ``[sip] upstream`` is empty; idle otherwise."""

    name = "standalone"

    def __init__(self, root: Any) -> None:
        self.root = root
        config = root.config
        self.config = config
        self.enabled = not config.sip.upstream
        registrar_config = config.registrar
        self.bindings = BindingTable(root.reactor)
        self.registrar = Registrar(
            self.bindings, root.reactor, domains=registrar_config.domains,
            min_expires=registrar_config.min_expires, max_expires=registrar_config.max_expires,
            default_expires=registrar_config.default_expires,
        )
        self.home: Optional[HomeProxy] = None
        self.upstream = ""
        self._port: Any = None
        self._pool: Optional[StreamPool] = None
        self._advertised = split_host_port(config.sip.advertise) if config.sip.advertise else None
        #: Advertised edge address -> the socket to dial instead (a master fills
        #: it from its workers' reports: each worker's Path names its own port).
        self.dial_map: dict[tuple[str, int], tuple[str, int]] = {}
        self._sweep = LoopingCall(self.bindings.expire)
        self._sweep.clock = root.reactor

    # -- start and stop ------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the loopback socket before the relay builds its edge proxy (it reads ``upstream``)."""
        if self.enabled:
            self._bind()
        super().privilegedStartService()

    def _bind(self) -> None:
        reactor = self.root.reactor
        self._pool = StreamPool(reactor, self._received, Stats(), Limits.from_config(self.config.sip),
                                _no_tls, self.config.wss.tls_handshake_timeout)
        try:
            self._port = reactor.listenTCP(0, self._pool.factory("tcp"), interface=LOOPBACK)
        except error.CannotListenError as exc:
            raise StartupError(f"standalone mode: cannot listen on {LOOPBACK}: {exc.socketError}") from None
        port = self._port.getHost().port
        self.upstream = f"sip:{LOOPBACK}:{port};transport=tcp"
        self.home = HomeProxy(reactor, self, self.registrar, (LOOPBACK, port), self._own_hosts(),
                              Timers.from_config(self.config.sip))
        self.root.ports.setdefault("standalone", []).append(self._port)
        self.root.connections.on_removed(self._connection_closed)
        log.info("standalone mode: no [sip] upstream; the built-in registrar (tcp {host}:{port}) "
                 "serves WebSocket clients: REGISTER, then calls and messages between them",
                 host=LOOPBACK, port=port)
        self._warn_if_open()

    def _own_hosts(self) -> frozenset[str]:
        config = self.config
        hosts = {"localhost"}
        hosts.update(a.host for a in config.ws.listen)
        hosts.update(a.host for a in config.wss.listen)
        hosts.update(e.host for e in config.sip.listen)
        if self._advertised:
            hosts.add(self._advertised[0])
        return frozenset(h.lower() for h in hosts if h)

    def _warn_if_open(self) -> None:
        """Anyone who can reach a public listener may register as anybody: say so."""
        config = self.config
        if config.http.allowed_origins:
            return
        if config.auth.required and config.auth.bind_identity:
            return  # every client authenticated and held to its own identity (docs/authentication.md)
        exposed = [f"{a.host}:{a.port}" for a in (*config.ws.listen, *config.wss.listen)
                   if not _is_loopback(a.host)]
        if exposed:
            log.warn("standalone mode listens on {where} and [http] allowed_origins is empty: any web "
                     "page can connect and register as any user; set allowed_origins and [auth] "
                     "(required, bind_identity) before exposing it", where=", ".join(exposed))

    def startService(self) -> None:
        super().startService()
        if self.enabled:
            if self._pool is not None:
                self._pool.start()
            self._sweep.start(EXPIRY_SWEEP_INTERVAL, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._sweep.running:
            self._sweep.stop()
        if self._pool is not None:
            self._pool.stop()
        if self.home is not None:
            self.home.table.clear()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None

    # -- what the edge proxy needs --------------------------------------------------------

    def edge_sip_config(self, sip_config: Any) -> Any:
        """The [sip] section the edge proxy runs with: the standalone core as upstream."""
        if not self.enabled:
            return sip_config
        return dataclasses.replace(sip_config, upstream=self.upstream)

    def _connection_closed(self, record: ConnectionRecord) -> None:
        if self.home is None or not may_hold_bindings(record):
            return
        relay = getattr(self.root, "relay", None)
        if relay is None:
            return
        removed = self.home.flow_closed(relay.tokens.make(record.id))
        if removed:
            log.info("{conn} closed: {count} binding(s) removed", conn=record.describe(), count=removed)

    # -- I/O for the core (sipws.registrar.home_proxy.HomeOutput) ------------------------------

    def send(self, address: tuple[str, int], data: bytes, on_error: Any) -> None:
        if self._pool is None:
            if on_error is not None:
                on_error("standalone core stopped")
            return
        self._pool.send("tcp", self._dialable(address), data, on_error)

    def _dialable(self, address: tuple[str, int]) -> tuple[str, int]:
        """A Path names the edge as a core elsewhere would reach it ([sip] advertise,
        possibly a public address behind NAT): dial the socket it is bound to instead."""
        mapped = self.dial_map.get((address[0], address[1]))
        if mapped is not None:
            return mapped
        advertised = self._advertised
        relay = getattr(self.root, "relay", None)
        edge = getattr(relay, "edge_tcp", None)
        if advertised and edge and address[0].lower() == advertised[0].lower() \
                and advertised[1] in (None, address[1]):
            return edge
        return address

    def _received(self, message: bytes, peer: tuple[str, int], transport: str, protocol: Any) -> None:
        if self.home is not None:
            self.home.receive(message, peer)


def _no_tls(server_name: str) -> Any:
    raise StartupError("the standalone core never dials TLS")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def install(root: Any) -> None:
    service = StandaloneService(root)
    service.setServiceParent(root)
    root.standalone = service
