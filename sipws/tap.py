"""twistd glue: command-line options and the service tree.

``twistd -n sipws --config sipws.toml`` calls ``makeService``.  A bad
configuration or a listener that cannot be bound prints one line on stderr and
exits with status 2; twistd never gets to print a traceback.

``SipwsService`` is the hub every layer plugs into.  It owns the shared state
(configuration, clock, counters, connection table) and the hand-off points:

- ``deliver(record, data)``: each complete WebSocket message goes here; the SIP
  relay installs itself with ``set_message_handler``; until then a sink logs.
- ``tracer``: HEP tracing hooks (a no-op object until tracing is configured).
- ``accepting``: False while the WebSocket server is disabled (503 to new
  handshakes, open connections untouched).
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from sipws import __version__
from sipws.config import Config, ConfigError, load_config
from sipws.errors import StartupError  # noqa: F401 - re-exported: tests and older code import it here
from sipws.stats import Stats
from sipws.transport.connections import ConnectionRecord, ConnectionTable

#: Exit status for a configuration or start-up error.
EXIT_CONFIG = 2

log = Logger(namespace="sipws")

MessageHandler = Callable[[ConnectionRecord, bytes], None]


class NullTracer:
    """Stands in for the HEP tracer when tracing is not configured."""

    enabled = False

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class SipwsService(MultiService):
    """The root service: shared state plus child services for each layer."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.stats = Stats()
        self.connections = ConnectionTable()
        self.tracer: Any = NullTracer()
        #: False while the WebSocket server is disabled (ws.disable).
        self.accepting = True
        self._message_handler: MessageHandler = self._log_message
        #: Listening ports of every layer, for tests and the start-up log.
        self.ports: dict[str, list[Any]] = {}
        #: True when twistd runs this service as the process (makeService): only
        #: then are process-wide settings changed (the open-file limit, sipws.fdlimit).
        self.owns_process = False

    # -- message hand-off -------------------------------------------------

    def set_message_handler(self, handler: MessageHandler) -> None:
        """Install the consumer of complete WebSocket messages (the SIP relay)."""
        self._message_handler = handler

    def deliver(self, record: ConnectionRecord, data: bytes) -> None:
        """Hand one complete WebSocket message to the installed consumer."""
        self._message_handler(record, data)

    def _log_message(self, record: ConnectionRecord, data: bytes) -> None:
        log.info(
            "message from {conn}: {size} bytes (no relay configured)",
            conn=record.describe(),
            size=len(data),
        )

    # -- server control (admin ws.disable / ws.enable) ----------------------

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        log.info("websocket server {state}", state="enabled" if accepting else "disabled")

    def privilegedStartService(self) -> None:
        """Bind every listener; twistd calls this before the reactor runs.

        Layers bind in their own privilegedStartService and raise StartupError
        (port in use, bad certificate...); under twistd that becomes one line
        on stderr and exit status 2.
        """
        try:
            super().privilegedStartService()
        except (ConfigError, StartupError) as exc:
            _fail(str(exc))

    def startService(self) -> None:
        super().startService()
        # Everything imported and built so far (modules, classes, config) lives
        # as long as the process: move it out of the collector's sight, so full
        # GC passes under load only walk objects that can actually die.
        gc.freeze()

    def listening(self, kind: str) -> list[Any]:
        """The ports bound for one kind of listener ("ws", "wss", "sip-udp", "admin"...)."""
        return self.ports.get(kind, [])


def build_service(config: Config, reactor: Any = None) -> SipwsService:
    """The complete service tree for a configuration (tests call this too)."""
    root = SipwsService(config, reactor)
    for installer in _installers():
        installer(root)
    return root


def _installers() -> list[Callable[[SipwsService], None]]:
    """Each layer's ``install(root)``; imported lazily so a layer's absence is explicit."""
    installers: list[Callable[[SipwsService], None]] = []
    for module_name in (
        "sipws.logsetup",
        "sipws.memory",
        "sipws.fdlimit",
        "sipws.trace.tracer",
        "sipws.transport.tls_store",
        "sipws.transport.edge_limits",
        "sipws.transport.ws_server",
        "sipws.transport.ws_client",
        "sipws.transport.standalone",
        "sipws.transport.relay",
        "sipws.transport.msrp_ws",
        "sipws.admin.rpc",
    ):
        try:
            module = __import__(module_name, fromlist=["install"])
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # layer not built yet
            raise
        installers.append(module.install)
    return installers


class Options(usage.Options):
    """``twistd sipws`` options."""

    synopsis = "[--config PATH]"
    longdesc = "SIP over WebSocket (RFC 7118) edge proxy."
    optParameters = [["config", "c", None, "TOML configuration file (default: built-in defaults)"]]

    def opt_version(self) -> None:
        print(f"sipws {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(self["config"])
        except ConfigError as exc:
            _fail(str(exc))


def _fail(line: str) -> None:
    """One line on stderr and a non-zero exit, never a traceback.

    Written to file descriptor 2 directly: once twistd has started logging,
    sys.stderr is redirected into the log.
    """
    os.write(2, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    raise SystemExit(EXIT_CONFIG)


def makeService(options: Options) -> SipwsService:
    config = options["parsed"]
    try:
        if config.server.workers > 1:
            from sipws.workers.master import build_master

            root = build_master(config, options["config"])
        else:
            root = build_service(config)
        root.owns_process = True
        return root
    except (ConfigError, StartupError) as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
