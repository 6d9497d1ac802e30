"""A worker process: the whole relay of one process, on listeners its master bound.

The master starts ``python -m sipws.workers.worker SPEC`` where SPEC is a JSON
object (see ``master.WorkerHandle.spec``): the worker's index, the
configuration file, the file descriptors it inherits (WebSocket listening
sockets, the control socket), its first block of connection ids, the
standalone core's address when the master runs it, and the state admin calls
have set (ws.disable, trace).

A worker owns its connections outright: it accepts on its own listening
socket (one of the master's SO_REUSEPORT group), relays over its own SIP
sockets (``[sip] listen`` ports + index) and answers the core itself.  It
stops like a single process does: SIGTERM or SIGINT close every connection
with 1001 and exit 0.  If the master goes away the worker stops too.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner, Logger

from sipws.config import ConfigError, load_config
from sipws.errors import StartupError
from sipws.logsetup import json_line, make_formatter
from sipws.proxy.targets import NoRoute
from sipws.tap import EXIT_CONFIG, build_service
from sipws.trace.errors import TraceNotConfigured
from sipws.transport.standalone import may_hold_bindings
from sipws.workers.control import ControlProtocol, HandOver
from sipws.workers.plan import LeasedIds, worker_config

log = Logger(namespace="sipws.worker")

#: Exit status for a start-up failure: the single process's (a config or bind problem).
EXIT_STARTUP = EXIT_CONFIG


def _family(name: str) -> int:
    return socket.AF_INET6 if name == "inet6" else socket.AF_INET


def start_logging(index: int, level: str, fmt: str) -> None:
    """Log lines on stdout (the master's), each saying which worker wrote it."""
    system = f"worker {index}"

    def text(event: dict[str, Any]) -> str | None:
        event = dict(event)
        level = getattr(event.get("log_level"), "name", "info")
        event["log_system"] = f"{system} {event.get('log_namespace', '-')}#{level}"
        return formatEventAsClassicLogText(event)

    def as_json(event: dict[str, Any]) -> str | None:
        event = dict(event)
        event["worker"] = index
        return json_line(event)

    # make_formatter's "text" branch uses the body it is given: ours add the worker.
    formatter = make_formatter(level, "text", as_json if fmt == "json" else text)
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stdout, formatter)], redirectStandardIO=False)


class Worker:
    """Builds the worker's service tree and keeps it connected to the master."""

    def __init__(self, spec: dict[str, Any], reactor: Any) -> None:
        self.spec = spec
        self.reactor = reactor
        self.index = int(spec["index"])
        self.root: Any = None
        self.control: Any = None
        self.ids: Any = None
        self.stopping = False

    def build(self) -> None:
        spec = self.spec
        config = load_config(spec.get("config"))
        config = worker_config(config, self.index, spec.get("standalone_upstream", ""))
        start_logging(self.index, config.log.level, config.log.format)
        root = build_service(config, self.reactor)
        root.inherited_listeners = {
            kind: [(int(fd), _family(family)) for fd, family in entries]
            for kind, entries in spec.get("listeners", {}).items()
        }
        root.accepting = bool(spec.get("accepting", True))
        if spec.get("trace") is not None:  # set by the admin `trace` since the instance started
            try:
                root.tracer.set_enabled(bool(spec["trace"]))
            except TraceNotConfigured:
                pass  # the master only remembers a state a worker accepted
        limits = spec.get("limits")
        if limits is not None:
            self._map_limits(root, limits)
        self._set_bans(spec.get("bans") or [], root)
        self.root = root
        self.ids = LeasedIds(int(spec["first_id"]), self._renew_ids, int(spec["id_block_size"]))
        root.connections.use_ids(self.ids)
        if spec.get("standalone_upstream"):
            root.connections.on_removed(self._flow_closed)
        self._connect_control(int(spec["control_fd"]))

    def _map_limits(self, root: Any, limits: dict[str, Any]) -> None:
        """Count per-address connections and handshakes in the master's shared block, row = index."""
        from sipws.edge import sketch

        fd, rows = int(limits["fd"]), int(limits["rows"])
        mapping = mmap.mmap(fd, sketch.block_size(rows))
        os.close(fd)
        root.limits.attach_shared(mapping, rows, self.index, bytes.fromhex(limits["key"]))

    def _set_bans(self, entries: list[Any], root: Any = None) -> None:
        """Hold exactly the master's bans (drop counts of bans kept are kept)."""
        from sipws.edge.limits import parse_ban_network

        root = root or self.root
        now = self.reactor.seconds()
        wanted = {}
        for network, until, reason in entries:
            net = parse_ban_network(network)
            wanted[net] = (float(until or 0.0), str(reason))
        bans = root.limits.bans
        for ban in list(bans):
            if ban.network not in wanted:
                bans.remove(ban.network)
        for net, (until, reason) in wanted.items():
            if not until or until > now:
                bans.add(net, until, reason, now)

    def _connect_control(self, fd: int) -> None:
        handlers = {"admin": self._admin, "flows": self._flows,
                    "set_bans": lambda entries: self._set_bans(entries)}
        self.control = ControlProtocol(handlers, self.reactor, on_lost=self._master_gone)
        factory = HandOver(self.control)
        self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
        os.close(fd)

    # -- master -> worker ----------------------------------------------------------------

    def _admin(self, method: str, params: Any = None) -> Any:
        from sipws.admin import methods

        return methods.call(self.root, method, params)

    def _flows(self) -> dict[str, int]:
        from sipws.admin import methods

        return methods.flow_ids(self.root)

    # -- worker -> master ----------------------------------------------------------------

    def hello(self) -> None:
        root = self.root
        ports: dict[str, list[list[Any]]] = {}
        for kind, listening in root.ports.items():
            ports[kind] = [[p.getHost().host, p.getHost().port] for p in listening if hasattr(p.getHost(), "port")]
        relay = getattr(root, "relay", None)
        edge = getattr(relay, "edge_tcp", None)
        advertised = None
        proxy = getattr(relay, "proxy", None)
        local = getattr(proxy, "local", None)
        if local is not None and edge is not None:
            try:
                address = local.address_for("tcp")
                advertised = [address.host, address.port]
            except NoRoute:  # no tcp socket: nothing to map
                advertised = None
        self.control.notify("hello", index=self.index, pid=os.getpid(), ports=ports,
                            edge_tcp=list(edge) if edge else None, advertised_tcp=advertised)

    def _renew_ids(self) -> None:
        def granted(first: Any) -> None:
            self.ids.add_block(int(first))

        def refused(failure: Any) -> None:
            log.error("worker {index}: no new connection ids from the master: {why}",
                      index=self.index, why=failure.getErrorMessage())

        self.control.call("lease").addCallbacks(granted, refused)

    def _flow_closed(self, record: Any) -> None:
        relay = getattr(self.root, "relay", None)
        if relay is not None and may_hold_bindings(record):
            self.control.notify("flow_closed", token=relay.tokens.make(record.id))

    def _master_gone(self, reason: Any) -> None:
        if self.stopping:
            return
        log.warn("worker {index}: the master is gone; stopping", index=self.index)
        self.stopping = True
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        os.write(2, b"usage: python -m sipws.workers.worker SPEC-JSON (started by the sipws master)\n")
        return EXIT_STARTUP
    spec = json.loads(argv[0])
    from twisted.internet import reactor

    worker = Worker(spec, reactor)
    try:
        worker.build()
        # The MultiService step itself, so that a bind failure reaches us (not
        # SipwsService's one-line exit) and the line can say which worker.
        MultiService.privilegedStartService(worker.root)
    except (ConfigError, StartupError) as exc:
        os.write(2, f"worker {spec.get('index')}: {exc}\n".encode("utf-8", "replace"))
        return EXIT_STARTUP
    root = worker.root

    def started() -> None:
        root.startService()
        worker.hello()

    def stopping() -> Any:
        worker.stopping = True
        return root.stopService()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    _stop_on_signals(reactor, worker)
    reactor.run(installSignalHandlers=False)
    return 0


def _stop_on_signals(reactor: Any, worker: Worker) -> None:
    """SIGTERM stops the worker once, however many arrive; SIGINT is the master's.

    A worker may get SIGTERM twice: from its master, and directly (systemd
    without KillMode=mixed signals every process of the unit); Twisted's own
    handler would log a critical ReactorNotRunning for the second.  Ctrl-C
    sends SIGINT to the whole process group: the workers leave it to the
    master, which stops them in order (were they to exit on their own first,
    the master could take it for a crash and start them again).
    """
    def stop_once() -> None:
        if not worker.stopping and reactor.running:
            worker.stopping = True
            reactor.stop()

    def handler(signum: int, frame: Any) -> None:
        log.info("worker {index}: SIGTERM, closing every connection with 1001", index=worker.index)
        reactor.callFromThread(stop_once)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Child processes (none today) would still be reaped: Twisted installs its
    # SIGCHLD handling only with installSignalHandlers; sipws workers spawn none.


if __name__ == "__main__":
    sys.exit(main())
