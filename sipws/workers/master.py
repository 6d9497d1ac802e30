"""The master of a multi-process instance: binds, spawns, supervises, answers the admin.

With ``[server] workers = N`` (N > 1) ``twistd sipws`` runs this instead of the
relay.  The master

- binds every WebSocket listener itself, before privileges could be dropped
  (ports below 1024 work as root or with CAP_NET_BIND_SERVICE): one socket per
  worker per address, all with ``SO_REUSEPORT``, so the kernel spreads new
  connections over the workers by a hash of the client's address and port,
  even when they arrive one at a time (a single shared accept queue lets the
  worker that wakes first take most of them; bench/accept_spread.py measures
  both).  The master keeps its copies open: a worker's socket outlives the
  worker, and connections that arrive while it restarts wait in its queue;
- starts N workers (``python -m sipws.workers.worker``) with their sockets and a
  control channel (``control.py``), leases them connection ids, and restarts a
  worker that dies (with a back-off when it dies young), leaving the others'
  connections alone;
- runs the admin listener: calls fan out to the workers and merge (``admin.py``);
- in standalone mode, runs the built-in registrar: every worker's edge relays
  to it over loopback TCP, so a client on one worker can call a client on
  another (the core dials the worker named in the Path, as a core would);
- on SIGTERM/SIGINT sends SIGTERM to every worker (each closes its
  connections with 1001) and exits once all have.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import sys
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from sipws.config import Config, HostPort
from sipws.edge import sketch
from sipws.edge.limits import BanList
from sipws.errors import StartupError
from sipws.tap import EXIT_CONFIG, SipwsService
from sipws.transport.ws_server import LISTEN_BACKLOG
from sipws.workers.control import ControlProtocol, HandOver
from sipws.workers.plan import ID_BLOCK_SIZE, IdLeases, highest_port, msrp_without_listen
from sipws.workers.worker import EXIT_STARTUP

log = Logger(namespace="sipws.master")

#: Seconds a stopping worker gets to close its connections before SIGKILL.
STOP_TIMEOUT = 15.0
#: Seconds after SIGKILL before the master stops waiting for a worker's end.
KILL_GRACE = 5.0
#: A worker that dies sooner than this after its start is restarted after a back-off.
MIN_UPTIME = 5.0
#: First and longest restart delays of a worker that keeps dying young (seconds).
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
#: Seconds a starting worker has to report ready before the instance gives up at start.
START_TIMEOUT = 30.0
#: Child file descriptors: 0-2 standard, then the control socket, then listeners.
CONTROL_FD = 3
FIRST_LISTENER_FD = 4


class WorkerHandle:
    """What the master knows of one worker slot (it outlives each worker process)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        #: The ProcessProtocol of the current process (Twisted clears ``process.proto`` before
        #: calling processEnded, so the handle keeps its own reference).
        self.protocol: Any = None
        self.pid: Optional[int] = None
        self.control: Optional[ControlProtocol] = None
        #: The worker's hello: ports, edge address (None until it reported ready).
        self.info: Optional[dict[str, Any]] = None
        self.started_at = 0.0
        self.restarts = 0
        self.restart_delay = RESTART_DELAY_FIRST
        self.ever_ready = False
        self.ended: Optional[defer.Deferred] = None

    @property
    def ready(self) -> bool:
        return self.info is not None and self.control is not None and self.control.connected_ok

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


def bind_reuseport(kind: str, address: HostPort, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address, in one SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sockets: list[socket.socket] = []
    port = address.port
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address.host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            port = sock.getsockname()[1]  # port 0: the others join the first one's port
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"[{kind}] listen: cannot listen on {address}: {exc.strerror}") from None
    return sockets


class WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", handle: WorkerHandle) -> None:
        self.supervisor = supervisor
        self.handle = handle

    def processEnded(self, reason: Any) -> None:
        self.supervisor.worker_ended(self.handle, self, reason)


class Supervisor(Service):
    """Binds the shared listeners and keeps N workers running."""

    name = "workers"

    def __init__(self, root: "Master") -> None:
        self.root = root
        self.reactor = root.reactor
        self.count = root.config.server.workers
        self.handles = [WorkerHandle(i) for i in range(self.count)]
        self.leases = IdLeases(ID_BLOCK_SIZE)
        #: kind -> one list per address of ``count`` sockets (worker i takes entry i).
        self.sockets: dict[str, list[list[socket.socket]]] = {}
        self.stopping = False
        self._devnull: Optional[int] = None
        self._all_ready: defer.Deferred = defer.Deferred()
        self._start_timer: Any = None
        #: [limits] per-address counts shared by the workers (sipws.edge.sketch): a memfd the
        #: master creates and maps, handed to each worker as one more child fd.
        self.limits_fd: Optional[int] = None
        self.limits_map: Optional[mmap.mmap] = None
        self.limits_key = os.urandom(sketch.KEY_BYTES)
        self.limits_counters: Optional[sketch.SharedCounters] = None

    # -- start ---------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        config = self.root.config
        too_high = highest_port(config, self.count)
        if too_high is not None:
            raise StartupError(f"[sip] listen: {too_high[0]}: with {self.count} workers the last one "
                               f"would use port {too_high[1]} (worker i uses port + i)")
        for kind, addresses in (("ws", config.ws.listen), ("wss", config.wss.listen)):
            groups = self.sockets.setdefault(kind, [])
            for address in addresses:
                group = bind_reuseport(kind, address, self.count)
                groups.append(group)
                host, port = group[0].getsockname()[:2]
                self.root.ports.setdefault(kind, []).append(_BoundPort(host, port))
                log.info("listening {kind} on {host}:{port} (SO_REUSEPORT, one socket per worker, "
                         "{count} workers)", kind=kind, host=host, port=port, count=self.count)
        gap = msrp_without_listen(config, self.count)
        if gap is not None:
            log.warn("{line}", line=gap)
        self._devnull = os.open(os.devnull, os.O_RDONLY)
        self._share_limits()
        super().privilegedStartService()

    def _share_limits(self) -> None:
        """The block of per-address counters every worker maps (one row each)."""
        size = sketch.block_size(self.count)
        fd = os.memfd_create("sipws-limits", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self.limits_fd = fd
        self.limits_map = mmap.mmap(fd, size)
        self.limits_counters = sketch.SharedCounters(self.limits_map, self.count, 0, self.limits_key)

    def startService(self) -> None:
        super().startService()
        for handle in self.handles:
            self.spawn(handle)
        self._start_timer = self.reactor.callLater(START_TIMEOUT, self._start_too_slow)
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (in-process tests): admin tls.reload still works
            pass

    def _on_sighup(self, signum: int, frame: Any) -> None:
        """Each worker re-reads its certificates (it owns its TLS contexts)."""
        self.reactor.callFromThread(self._forward, signal.SIGHUP)

    def _forward(self, signum: int) -> None:
        log.info("SIGHUP: passed to {count} workers (tls reload)", count=self.count)
        for handle in self.handles:
            if handle.process is not None:
                _signal(handle, signum)

    def _start_too_slow(self) -> None:
        self._start_timer = None
        late = [h.describe() for h in self.handles if not h.ever_ready]
        if late:
            log.critical("{late} did not start within {timeout:g} s; stopping", late=", ".join(late),
                         timeout=START_TIMEOUT)
            self.root.fail_start()

    def spec(self, handle: WorkerHandle, fds: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
        root = self.root
        standalone = getattr(root, "standalone", None)
        return {
            "index": handle.index,
            "config": root.config_path,
            "control_fd": CONTROL_FD,
            "listeners": fds,
            "first_id": self.leases.lease(handle.index),
            "id_block_size": self.leases.block_size,
            "standalone_upstream": standalone.upstream if standalone is not None and standalone.enabled else "",
            "accepting": root.accepting,
            "trace": root.trace_state,
            "bans": root.ban_entries(),
        }

    def spawn(self, handle: WorkerHandle) -> None:
        if self.stopping:
            return
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: dict[int, Any] = {0: self._devnull, 1: 1, 2: 2, CONTROL_FD: child_end.fileno()}
        fds: dict[str, list[tuple[int, str]]] = {}
        next_fd = FIRST_LISTENER_FD
        for kind, groups in self.sockets.items():
            for group in groups:
                sock = group[handle.index]
                child_fds[next_fd] = sock.fileno()
                family = "inet6" if sock.family == socket.AF_INET6 else "inet"
                fds.setdefault(kind, []).append((next_fd, family))
                next_fd += 1
        spec_data = self.spec(handle, fds)
        if self.limits_fd is not None:
            child_fds[next_fd] = self.limits_fd
            spec_data["limits"] = {"fd": next_fd, "rows": self.count, "key": self.limits_key.hex()}
        spec = json.dumps(spec_data)
        process = WorkerProcess(self, handle)
        handle.protocol = process
        handle.info = None
        handle.control = ControlProtocol(self.root.control_handlers(handle), self.reactor,
                                         on_lost=lambda reason: None)
        try:
            handle.process = self.reactor.spawnProcess(
                process, sys.executable, [sys.executable, "-m", "sipws.workers.worker", spec],
                env=dict(os.environ), childFDs=child_fds)
        except OSError as exc:
            # e.g. the interpreter is not readable after twistd --uid dropped privileges
            log.critical("cannot start worker {index} ({python}): {why}; stopping", index=handle.index,
                         python=sys.executable, why=exc.strerror or exc)
            handle.protocol = None
            parent_end.close()
            self.root.fail_start()
            return
        finally:
            child_end.close()
        self.reactor.adoptStreamConnection(parent_end.fileno(), socket.AF_UNIX, HandOver(handle.control))
        parent_end.close()
        handle.pid = handle.process.pid
        handle.started_at = self.reactor.seconds()
        handle.ended = defer.Deferred()
        log.info("{worker} started", worker=handle.describe())

    # -- the workers' reports ------------------------------------------------------------

    def worker_ready(self, handle: WorkerHandle, info: dict[str, Any]) -> None:
        handle.info = info
        handle.ever_ready = True
        log.info("{worker} ready", worker=handle.describe())
        self.root.worker_ready(handle)
        if all(h.ever_ready for h in self.handles) and self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
            log.info("all {count} workers ready", count=self.count)

    def worker_ended(self, handle: WorkerHandle, process: WorkerProcess, reason: Any) -> None:
        if handle.protocol is not process:
            return  # an earlier process of this slot (already handled)
        handle.protocol = None
        status = reason.value
        how = _describe_exit(status)
        ended, handle.ended = handle.ended, None
        handle.process = None
        handle.info = None
        if handle.control is not None and handle.control.transport is not None:
            handle.control.transport.loseConnection()
        self.leases.forget(handle.index)
        if self.limits_counters is not None:
            self.limits_counters.clear_row(handle.index)  # its connections are gone with it
        if ended is not None:
            ended.callback(None)
        if self.stopping:
            log.info("{worker} stopped ({how})", worker=handle.describe(), how=how)
            return
        if not handle.ever_ready and getattr(status, "exitCode", None) == EXIT_STARTUP:
            log.critical("{worker} could not start ({how}); stopping", worker=handle.describe(), how=how)
            self.root.fail_start()
            return
        uptime = self.reactor.seconds() - handle.started_at
        delay = 0.0 if uptime >= MIN_UPTIME else handle.restart_delay
        handle.restart_delay = RESTART_DELAY_FIRST if uptime >= MIN_UPTIME \
            else min(handle.restart_delay * 2, RESTART_DELAY_MAX)
        handle.restarts += 1
        log.error("{worker} {how} after {uptime:.1f} s; its clients reconnect; starting it again "
                  "in {delay:g} s (restart {count})", worker=handle.describe(), how=how, uptime=uptime,
                  delay=delay, count=handle.restarts)
        self.reactor.callLater(delay, self.spawn, handle)

    # -- stop ----------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.stopping = True
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        waiting = []
        for handle in self.handles:
            if handle.process is not None and handle.ended is not None:
                waiting.append(handle.ended)
                _signal(handle, signal.SIGTERM)
        done = defer.DeferredList(waiting)
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill_all)
        # Never wait forever: a process that SIGKILL did not end (or that was
        # never reaped) must not keep the master from exiting.
        done.addTimeout(STOP_TIMEOUT + KILL_GRACE, self.reactor)
        done.addErrback(lambda _: log.error("workers still not reaped {grace:g} s after SIGKILL; exiting anyway",
                                            grace=KILL_GRACE))
        done.addBoth(lambda _: killer.cancel() if killer.active() else None)
        done.addBoth(lambda _: self._close_sockets())
        return done

    def _kill_all(self) -> None:
        for handle in self.handles:
            if handle.process is not None:
                log.warn("{worker} still running {timeout:g} s after SIGTERM: SIGKILL",
                         worker=handle.describe(), timeout=STOP_TIMEOUT)
                _signal(handle, signal.SIGKILL)

    def _close_sockets(self) -> None:
        for groups in self.sockets.values():
            for group in groups:
                for sock in group:
                    sock.close()
        self.sockets.clear()
        if self.limits_counters is not None:
            self.limits_counters.release()
            self.limits_counters = None
        if self.limits_map is not None:
            self.limits_map.close()
            self.limits_map = None
        if self.limits_fd is not None:
            os.close(self.limits_fd)
            self.limits_fd = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None


def _signal(handle: WorkerHandle, signum: int) -> None:
    try:
        handle.process.signalProcess(signum)
    except Exception:  # noqa: BLE001 - already gone: processEnded follows
        pass


def _describe_exit(status: Any) -> str:
    signum = getattr(status, "signal", None)
    if signum:
        try:
            return f"was killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"was killed by signal {signum}"
    return f"exited with status {getattr(status, 'exitCode', '?')}"


class _BoundPort:
    """What ``root.ports`` holds for a listener the master bound (``getHost()``, as Twisted ports)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def getHost(self) -> "_BoundPort":
        return self


class Master(SipwsService):
    """The root service of a multi-process instance (the workers do the relaying)."""

    def __init__(self, config: Config, config_path: Optional[str], reactor: Any = None) -> None:
        super().__init__(config, reactor)
        self.config_path = config_path
        #: Last state set with ``trace on|off`` (a restarted worker gets it); None = as configured.
        self.trace_state: Optional[bool] = None
        self.exit_status = 0
        self.supervisor: Supervisor
        #: Bans set with ws.ban: every worker holds a copy, a restarted one gets them (ban_entries).
        self.bans = BanList()

    def control_handlers(self, handle: WorkerHandle) -> dict[str, Any]:
        """What a worker may ask of the master."""
        return {
            "hello": lambda **info: self.supervisor.worker_ready(handle, info),
            "lease": lambda: self.supervisor.leases.lease(handle.index),
            "flow_closed": lambda token: self._flow_closed(token),
        }

    def _flow_closed(self, token: str) -> None:
        standalone = getattr(self, "standalone", None)
        home = getattr(standalone, "home", None)
        if home is not None:
            home.flow_closed(token)

    def ban_entries(self) -> list[list[Any]]:
        """The bans in force as [network, until, reason] (what a starting worker is given)."""
        self.bans.expire(self.reactor.seconds())
        return [[str(ban.network), ban.until, ban.reason] for ban in self.bans]

    def worker_ready(self, handle: WorkerHandle) -> None:
        """Tell the standalone core how to reach this worker's edge (its Path may be advertised)."""
        if handle.control is not None and len(self.bans):
            # bans set while it was starting (after its spec was written)
            handle.control.call("set_bans", entries=self.ban_entries()).addErrback(
                lambda f: log.error("{worker}: bans not handed over: {why}", worker=handle.describe(),
                                    why=f.getErrorMessage()))
        standalone = getattr(self, "standalone", None)
        info = handle.info or {}
        if standalone is not None and info.get("edge_tcp") and info.get("advertised_tcp"):
            standalone.dial_map[tuple(info["advertised_tcp"])] = tuple(info["edge_tcp"])

    def fail_start(self) -> None:
        """A worker cannot start: stop the instance with the start-up exit status."""
        if self.exit_status:
            return  # already stopping for this reason
        self.exit_status = EXIT_CONFIG
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Any:
        stopped = super().stopService()
        if self.exit_status:
            status = self.exit_status
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
        return stopped

    # -- admin -----------------------------------------------------------------------------

    def call_admin(self, name: str, params: Any) -> Any:
        from sipws.workers.admin import call

        return call(self, name, params)

    def render_metrics(self) -> defer.Deferred:
        from sipws.workers.admin import render_metrics

        return render_metrics(self)


def build_master(config: Config, config_path: Optional[str], reactor: Any = None) -> Master:
    """The service tree of a master: logging, memory upkeep, standalone core, workers, admin."""
    from sipws import fdlimit, logsetup, memory
    from sipws.admin import rpc
    from sipws.transport import standalone

    master = Master(config, config_path, reactor)
    logsetup.install(master)
    memory.install(master)
    fdlimit.install(master)  # workers inherit the raised open-file limit
    standalone.install(master)
    master.supervisor = Supervisor(master)
    master.supervisor.setServiceParent(master)
    rpc.install(master)
    return master
