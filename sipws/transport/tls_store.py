"""Every TLS context sipws uses, in one place, and re-read on demand.

Listeners (wss, and ``tls:`` in ``[sip] listen``) and dialled connections
(the WebSocket client role, SIP over TLS toward the core) used to build their
contexts each on its own.  Certificates expire and are renewed (Let's Encrypt
every 60-90 days), so they must be re-read without a restart: ``reload()``
(admin ``tls.reload``, and SIGHUP) re-reads ``[wss] certificate``,
``private_key``, ``ca_list`` and ``[client] certificate`` / ``private_key``.

- New handshakes use the new files; open connections keep their session.
- A bad new file (unreadable, not PEM, key not matching) changes nothing:
  the old contexts stay, one log line names the key, the admin call fails
  with the same text.
- The configuration file itself is not re-read: a different path needs a
  restart.
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from sipws.config import ConfigError
from sipws.transport.tls import (
    SIP_TLS_ALPN,
    WSS_ALPN,
    ReloadableServerTls,
    certificate_summary,
    client_tls_options,
)

log = Logger(namespace="sipws.tls")

#: The server contexts a store can hand out, by listener kind.
_SERVER_ALPN = {"wss": WSS_ALPN, "sip-tls": SIP_TLS_ALPN, "msrp-tls": SIP_TLS_ALPN}
#: Client contexts kept (one per server name and ALPN list dialled); the least
#: recently used goes first.  Server names come from next hops, which clients'
#: Routes can name, and each context holds a trust store: the cache must not
#: grow with the number of names ever dialled.
MAX_CLIENT_CONTEXTS = 256


class TlsStore(Service):
    """Builds, caches and reloads TLS contexts; reloads on SIGHUP while running."""

    name = "tls"

    def __init__(self, root: Any) -> None:
        self.root = root
        self.config = root.config
        self._servers: dict[str, ReloadableServerTls] = {}
        self._clients: OrderedDict[tuple[str, tuple[bytes, ...]], Any] = OrderedDict()
        self._previous_sighup: Any = None
        self.reloads = 0
        #: Client contexts dropped from the cache because it was full (rebuilt when dialled again).
        self.client_evictions = 0

    # -- contexts ----------------------------------------------------------------

    def server(self, kind: str) -> ReloadableServerTls:
        """The context factory for a listener kind ("wss" or "sip-tls"), built once."""
        context = self._servers.get(kind)
        if context is None:
            context = ReloadableServerTls(self.config.wss, _SERVER_ALPN[kind])
            self._servers[kind] = context
        return context

    def client(self, server_name: str, alpn: tuple[bytes, ...] = ()) -> Any:
        """Options for dialling ``server_name`` over TLS, cached until the next reload.

        At most MAX_CLIENT_CONTEXTS are kept; past that the least recently
        used is dropped (and built again if that name is dialled again).
        """
        key = (server_name, alpn)
        clients = self._clients
        options = clients.get(key)
        if options is not None:
            clients.move_to_end(key)
            return options
        wss, client = self.config.wss, self.config.client
        options = client_tls_options(server_name, wss.ca_list, wss.verify_server, client.certificate,
                                     client.private_key, wss.min_tls_version, alpn)
        clients[key] = options
        if len(clients) > MAX_CLIENT_CONTEXTS:
            clients.popitem(last=False)
            self.client_evictions += 1
            if self.client_evictions == 1:
                log.warn("tls: more than {limit} server names dialled; the least recently used "
                         "client contexts are dropped and rebuilt on demand", limit=MAX_CLIENT_CONTEXTS)
        return options

    # -- reload ------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read every certificate file; raises ConfigError and keeps the old ones on a bad file.

        Everything new is built before anything is swapped, so a bad file
        leaves every listener as it was.
        """
        fresh = {kind: ReloadableServerTls(self.config.wss, _SERVER_ALPN[kind]) for kind in self._servers}
        client = self.config.client
        if client.certificate:
            # Build one client context now so a bad client file fails the reload,
            # rather than the next dial.
            wss = self.config.wss
            client_tls_options("reload-check", wss.ca_list, wss.verify_server, client.certificate,
                               client.private_key, wss.min_tls_version)
        for kind, context in fresh.items():
            self._servers[kind].current = context.current
        self._clients.clear()
        self.reloads += 1
        result: dict[str, Any] = {kind: certificate_summary(context.current) for kind, context in fresh.items()}
        if client.certificate:
            result["client"] = {"certificate": client.certificate}
        log.info("tls: certificates reloaded ({what})", what=_describe(result))
        return result

    def reload_logged(self) -> None:
        """Reload, turning a failure into one log line (SIGHUP has nobody to answer)."""
        try:
            self.reload()
        except ConfigError as exc:
            log.error("tls: reload failed, keeping the current certificates: {error}", error=str(exc))

    # -- SIGHUP ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:
            self._previous_sighup = None  # not the main thread (embedded use): no signal

    def stopService(self) -> Any:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return super().stopService()

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # Signal handlers run between bytecodes: hand the work to the reactor.
        self.root.reactor.callFromThread(self._sighup)

    def _sighup(self) -> None:
        log.info("tls: SIGHUP received, re-reading certificates")
        self.reload_logged()


def _describe(result: dict[str, Any]) -> str:
    parts = []
    for kind, value in result.items():
        if kind == "client":
            parts.append(f"client {value['certificate']}")
            continue
        for cert in value:
            parts.append(f"{kind} {','.join(cert['names'])} until {cert['not_after']}")
    return "; ".join(parts) or "nothing configured"


def install(root: Any) -> None:
    store = TlsStore(root)
    store.setServiceParent(root)
    root.tls = store
