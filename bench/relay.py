"""Benchmark of the relay end to end (not a test): WebSocket clients -> proxy -> UDP core.

N WebSocket clients (one load-generator process, asyncio over raw sockets: upgrade with
``Sec-WebSocket-Protocol: sip`` and an Origin, masked frames, ``Via: SIP/2.0/WS
xxx.invalid``) talk through the proxy to a core process on UDP (bench/_relay_peers.py).
Two scenarios:

- ``--scenario options`` (default): each connection keeps a window of OPTIONS outstanding
  (distinct Call-ID and branch); the core answers 200.  Figures per request.
- ``--scenario calls``: each connection keeps a window of calls in progress.  A call is
  INVITE with SDP -> 100/180/200 (Contact, Record-Route copied, SDP) from the core ->
  ACK, an in-dialog MESSAGE (-> 200) and BYE (-> 200), ACK/MESSAGE/BYE sent along the
  route set the 200 carried.  A call counts only when every final response was 200 and
  the core saw INVITE, ACK, MESSAGE, BYE for it in that order (the core says what it saw in
  its answer to the BYE, and keeps its own count, printed beside the client's); anything
  else is a failure, reported by reason and never counted.  Figures per call; latency is
  call set-up, INVITE sent -> 200 received.

The same load runs, in the same run and against the same core, through

- sipws (``twistd -n sipws``, ``[sip] upstream`` the core, ``[server] workers = N`` with
  ``--workers N`` > 1), and
- Kamailio 5.6 (``bench/kamailio/relay.cfg``) doing the same job with ``t_relay()``:
  Path on REGISTER, double Record-Route on dialog-creating requests, ``loose_route()`` for
  in-dialog ones; ``children`` and ``tcp_children`` = N (``--kamailio-children``) — the
  reference — and, for context (options scenario), with stateless ``forward()``.

Measured for each: requests or calls per second, the proxy's CPU per request or call
(utime + stime from /proc/PID/stat of every process of the proxy: sipws's master and its
workers, every Kamailio process), the load generator's and core's CPU (to see who was the
bottleneck), p50/p99 latency.  Printed last: the ratios sipws / Kamailio t_relay.  Every
process the bench starts is stopped by its pid, also on error; every wait has a timeout.

``--show`` instead sends one REGISTER and one call through each proxy and prints what the
core received and what the client got back (the headers each proxy adds).

Run: .venv/bin/python bench/relay.py [--scenario options|calls] [--workers N] [--clients 50]
     [--window 2] [--requests N | --calls N] [--rounds 3] [--quick] [--profile FILE] [--show]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _relay_peers  # noqa: E402 - bench/ is not a package
import _limits  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
#: The interpreter that runs sipws: this tree's venv when it has one, else the one running the
#: bench; PYTHONPATH names this tree either way, so the sipws measured is the one beside bench/.
SIPWS_PYTHON = ROOT_DIR / ".venv" / "bin" / "python"
#: twistd by its module, so no console script of any venv is needed.
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
KAMAILIO_CFG = BENCH_DIR / "kamailio" / "relay.cfg"
KAMAILIO = "kamailio"
#: Kamailio's shared and private memory (MB).  tm keeps every finished transaction for its
#: 5 s wait timer; at ~6000 requests/s, 256 MB ran out after ~19,000 requests
#: ("build_cell(): could not allocate shared memory"), answered 500 and lost replies.
KAMAILIO_SHM_MB = 1024
KAMAILIO_PKG_MB = 16

#: Defaults: connections, requests or calls in progress per connection, units per server.
DEFAULT_CLIENTS = 50
DEFAULT_WINDOW = 2
DEFAULT_UNITS = {"options": 20000, "calls": 5000}
QUICK_UNITS = {"options": 5000, "calls": 1500}
#: Rounds of every proxy, alternated; the best round of each is compared (the machine is shared).
DEFAULT_ROUNDS = 3
#: Seconds a server may take to listen, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
#: Seconds to wait for a line from a child process (warm-up included).
LINE_TIMEOUT = 90.0
#: Seconds allowed for one measured phase (the load generator's own limit is its stall timeout).
RUN_TIMEOUT = 300.0
#: Seconds after start-up for every worker to be forked before the process tree is read.
FORK_SETTLE = 0.5


# -- processes ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, in seconds ((0, 0) when it is gone): user time is the
    proxy's own code (Python or C), system time the kernel working for it (socket calls, epoll)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, by the ppid in /proc/*/stat (Kamailio's main forks
    all its workers; sipws's master its worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped (receive buffer full) on the UDP sockets these processes
    hold, since each socket was opened (the ``drops`` column of /proc/net/udp, udp6)."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and int(fields[9]) in inodes:
                total += int(fields[12])
    return total


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_env() -> dict[str, str]:
    """The environment for a Python child: this tree first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def sipws_python() -> str:
    return str(SIPWS_PYTHON) if SIPWS_PYTHON.exists() else sys.executable


class Process:
    """A child process the bench started: stopped by its pid whatever happens."""

    def __init__(self, name: str, args: list[str], log: Optional[Path] = None, lines: bool = False) -> None:
        self.name = name
        self.log = log
        # line-driven children (core, load generator) keep our stderr for their complaints
        out = subprocess.PIPE if lines else open(log, "wb") if log else subprocess.DEVNULL
        err = None if lines else subprocess.STDOUT
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if lines else subprocess.DEVNULL,
                                     stdout=out, stderr=err, cwd=str(ROOT_DIR), text=lines, bufsize=1 if lines else -1,
                                     env=python_env())
        self.pids: list[int] = [self.proc.pid]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def line(self, timeout: float = LINE_TIMEOUT) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"{self.name}: no output within {timeout:.0f}s{self.tail()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(STOP_GRACE)
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}){self.tail()}")
        return line.strip()

    def ask(self, command: str, timeout: float = LINE_TIMEOUT) -> str:
        self.send(command)
        return self.line(timeout)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def refresh_pids(self) -> None:
        """Every process of this server now (workers forked since start-up included)."""
        if self.alive():
            self.pids = list(dict.fromkeys(self.pids + descendants(self.pid)))

    def cpu_by_pid(self) -> dict[int, float]:
        return self.cpu_reading()[0]

    def cpu_reading(self) -> tuple[dict[int, float], float]:
        """utime + stime of each process of this server, and the kernel time (stime) of
        them all, from one read of each /proc/PID/stat."""
        split = {pid: cpu_split(pid) for pid in self.pids}
        return {pid: user + system for pid, (user, system) in split.items()}, \
            sum(system for _, system in split.values())

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n  " + "\n  ".join(text) if text else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; leftover children by their pids."""
        self.refresh_pids()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings (a process born in between counts from zero)."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after if after[pid])


def wait_listening(process: Process, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited ({process.proc.returncode}){process.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{process.name}: nothing listening on {port} after {START_TIMEOUT:.0f}s{process.tail()}")


def sipws_config(ws_port: int, upstream: int, workers: int, log_level: str = "warn") -> str:
    """sipws's TOML for the bench: ``[server] workers`` only when more than one (a sipws
    without workers refuses the key)."""
    text = ""
    if workers > 1:
        text += f"[server]\nworkers = {workers}\n\n"
    text += f'[ws]\nlisten = ["127.0.0.1:{ws_port}"]\n\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
    if upstream:
        text += f'upstream = "sip:127.0.0.1:{upstream};transport=udp"\n'
    text += f'\n[admin]\nlisten = ""\n\n[log]\nlevel = "{log_level}"\n'
    text += _limits.TOML  # a load generator is one source address: see _limits.NOTE
    return text


def start_sipws(workdir: Path, upstream: int, profile: str = "", workers: int = 1,
                log_level: str = "warn") -> tuple[Process, int]:
    ws_port = free_port()
    workdir.mkdir(parents=True)
    config = workdir / "sipws.toml"
    config.write_text(sipws_config(ws_port, upstream, workers, log_level))
    args = [sipws_python(), *TWISTD, "-n", "--pidfile=", "--logfile=-"]
    if profile:
        args += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    args += ["sipws", "--config", str(config)]
    name = "sipws" if workers == 1 else f"sipws ({workers} workers)"
    process = Process(name, args, workdir / "sipws.log")
    wait_listening(process, ws_port)
    time.sleep(FORK_SETTLE)
    process.refresh_pids()
    return process, ws_port


def start_kamailio(workdir: Path, upstream: int, stateless: bool, children: int) -> tuple[Process, int]:
    ws_port = free_port()
    udp_port = free_port(socket.SOCK_DGRAM)
    run = workdir
    run.mkdir(parents=True)
    args = [KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid"),
            "-w", str(run), "-m", str(KAMAILIO_SHM_MB), "-M", str(KAMAILIO_PKG_MB),
            "-l", f"udp:127.0.0.1:{udp_port}", "-l", f"tcp:127.0.0.1:{ws_port}",
            "-A", f'UPSTREAM="sip:127.0.0.1:{upstream};transport=udp"', "-A", f"CHILDREN={children}"]
    if stateless:
        args += ["-A", "STATELESS"]
    process = Process("kamailio" + (" (forward)" if stateless else ""), args, run / "kamailio.log")
    wait_listening(process, ws_port)
    time.sleep(FORK_SETTLE)  # every worker forked
    process.refresh_pids()
    return process, ws_port


# -- one measured run ------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    scenario: str
    completed: int
    attempted: int
    seconds: float
    server_cpu: float
    responder_cpu: float
    load_cpu: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    failures: dict[str, int]
    notes: dict[str, int]
    processes: int
    core: dict = field(default_factory=dict)
    server_drops: int = 0
    core_drops: int = 0
    #: CPU seconds of each process of the proxy over the phase, the one the bench started first
    by_process: list[float] = field(default_factory=list)
    #: cores in use on the whole machine during the phase (ours and everybody else's)
    machine_cores: float = 0.0
    #: of server_cpu, the seconds spent in the kernel (stime)
    server_system_cpu: float = 0.0

    @property
    def unit(self) -> str:
        return "call" if self.scenario == "calls" else "req"

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / max(self.completed, 1) * 1e6


def load_command(scenario: str, port: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--load", str(port), "--scenario", scenario,
            "--clients", str(args.clients), "--window", str(args.window), "--units", str(args.units)]


def drive(name: str, server: Process, port: int, responder: Process, args: argparse.Namespace,
          processes: list[Process]) -> Result:
    """Connect the clients, warm up, then measure one phase of ``args.units`` requests or calls."""
    load = Process(f"load generator ({name})", load_command(args.scenario, port, args), lines=True)
    processes.append(load)
    try:
        ready = load.line()
        if ready != "READY":
            raise RuntimeError(f"load generator: {ready!r}")
        responder.ask("stats")  # the warm-up's record is dropped
        server.refresh_pids()
        drops_before = udp_drops(server.pids), udp_drops(responder.pids)
        (server_before, system_before), responder_before = server.cpu_reading(), responder.cpu_by_pid()
        machine_before = machine_jiffies()
        load.send("go")
        report = json.loads(load.line(RUN_TIMEOUT))
        machine_after = machine_jiffies()
        machine = ((machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1)
                   * (os.cpu_count() or 1))
        server.refresh_pids()
        server_after, system_after = server.cpu_reading()
        server_cpu = cpu_between(server_before, server_after)
        server_system = system_after - system_before
        by_process = [server_after[pid] - server_before.get(pid, 0.0) for pid in server.pids if server_after[pid]]
        responder_cpu = cpu_between(responder_before, responder.cpu_by_pid())
        drops = udp_drops(server.pids) - drops_before[0], udp_drops(responder.pids) - drops_before[1]
        core = json.loads(responder.ask("stats")) if args.scenario == "calls" else {}
        load.proc.wait(STOP_GRACE)
    finally:
        load.stop()
    return Result(name, args.scenario, report["completed"], report["attempted"], report["seconds"], server_cpu,
                  responder_cpu, report["load_cpu"], report["p50_ms"], report["p99_ms"], report["max_ms"],
                  report["statuses"], report["failures"], report["notes"], len(server.pids), core, *drops, by_process, machine,
                  server_system)


def print_result(result: Result) -> None:
    what = "calls/s" if result.scenario == "calls" else "req/s"
    latency = "set-up " if result.scenario == "calls" else ""
    print(f"  {result.name:<24} {result.rate:8.0f} {what:<7} {result.cpu_us:7.1f} us CPU/{result.unit} "
          f"({result.server_cpu / result.seconds:4.2f} cores, {result.processes} process"
          f"{'es' if result.processes > 1 else ''})  {latency}p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
          f"  max {result.max_ms:6.1f} ms")
    kernel = result.server_system_cpu / max(result.completed, 1) * 1e6
    print(f"  {'':<24} of which user {result.cpu_us - kernel:.1f} us, kernel {kernel:.1f} us "
          f"({result.server_system_cpu / max(result.server_cpu, 1e-9):.0%} in the kernel)")
    statuses = ", ".join(f"{count} x {status}" for status, count in sorted(result.statuses.items()))
    print(f"  {'':<24} whole machine {result.machine_cores:4.2f} of {os.cpu_count()} cores; "
          f"load generator {result.load_cpu / result.seconds:4.2f} cores, core "
          f"{result.responder_cpu / result.seconds:4.2f} cores; UDP datagrams dropped: at the proxy "
          f"{result.server_drops}, at the core {result.core_drops}; final responses: {statuses}")
    if result.name.startswith("sipws") and len(result.by_process) > 1:
        shares = ", ".join(f"{cpu / result.seconds:4.2f}" for cpu in result.by_process)
        print(f"  {'':<24} cores by process (master first): {shares}")
    failed = sum(result.failures.values())
    counted = f"{result.completed} of {result.attempted} {result.unit}s counted"
    if failed:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in sorted(result.failures.items()))
        counted += f", {failed} FAILED ({reasons})"
    if result.scenario == "calls":
        core = result.core
        counted += (f"; the core saw {core.get('in_order', 0)} calls complete in order, "
                    f"{core.get('out_of_order', 0)} out of order, {core.get('open', 0)} left open")
        if core.get("retransmissions") or core.get("resent_2xx"):
            counted += (f"; the core got {core.get('retransmissions', 0)} retransmitted requests and resent "
                        f"{core.get('resent_2xx', 0)} 2xx (no ACK in time)")
        if core.get("route_left"):
            counted += f", {core['route_left']} in-dialog requests still carrying a Route"
        if core.get("bad_examples"):
            counted += f" (e.g. {core['bad_examples'][0]})"
    print(f"  {'':<24} {counted}")
    if result.notes:
        notes = "; ".join(f"{count} x {note}" for note, count in sorted(result.notes.items()))
        print(f"  {'':<24} notes: {notes}")


def print_profile(path: str, limit: int = 25) -> None:
    import pstats

    print(f"\nsipws profile ({path}, the master process only), top {limit} by own time:")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(limit)


#: Kamailio log lines worth showing (its start-up banner goes to stderr too).
KAMAILIO_COMPLAINTS = ("ERROR", "WARNING", "CRITICAL", "ALERT", "BUG")


def log_size(log: Optional[Path]) -> int:
    return log.stat().st_size if log is not None and log.exists() else 0


def complaints(name: str, log: Optional[Path], upto: int) -> list[str]:
    """What a server logged while under load that is worth reading (its shutdown excluded):
    any sipws line at [log] level = warn, Kamailio's errors and warnings."""
    if log is None or not log.exists():
        return []
    text = log.read_bytes()[:upto].decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if name.startswith("kamailio"):
        lines = [line for line in lines if any(word in line for word in KAMAILIO_COMPLAINTS)]
    return lines


def best(results: list[Result], name: str) -> Result:
    """The round of ``name`` with the least server CPU per request or call."""
    return min((r for r in results if r.name == name), key=lambda r: r.cpu_us)


def paired_line(label: str, results: list[Result], ours: str, theirs: str) -> str:
    """Ratios round by round (each proxy against the other's run next to it in time, so the
    same neighbours' load), and their median: steadier than best against best on a busy machine."""
    pairs = list(zip([r for r in results if r.name == ours], [r for r in results if r.name == theirs]))
    metrics = {"throughput": lambda a, b: a.rate / b.rate, f"CPU per {pairs[0][0].unit}": lambda a, b: a.cpu_us / b.cpu_us,
               "p50": lambda a, b: a.p50_ms / b.p50_ms, "p99": lambda a, b: a.p99_ms / b.p99_ms}
    parts = []
    for metric, ratio in metrics.items():
        values = sorted(ratio(a, b) for a, b in pairs)
        median = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        parts.append(f"{metric} {median:.2f} ({', '.join(f'{ratio(a, b):.2f}' for a, b in pairs)})")
    return f"  median of round-by-round ratios {label}: " + ", ".join(parts)


def ratio_line(label: str, ours: Result, theirs: Result) -> str:
    return (f"  ratio {label}: throughput {ours.rate / theirs.rate:.2f}, CPU per {ours.unit} "
            f"{ours.cpu_us / theirs.cpu_us:.2f}, p50 {ours.p50_ms / theirs.p50_ms:.2f}, "
            f"p99 {ours.p99_ms / theirs.p99_ms:.2f}")


def start_server(kind: str, workdir: Path, upstream: int, args: argparse.Namespace,
                 profile: str = "") -> tuple[Process, int]:
    if kind == "sipws":
        return start_sipws(workdir, upstream, profile, args.workers)
    return start_kamailio(workdir, upstream, kind == "forward", args.kamailio_children)


def bench(args: argparse.Namespace) -> int:
    processes: list[Process] = []
    results: list[Result] = []
    sipws_name = "sipws" if args.workers == 1 else f"sipws ({args.workers} workers)"
    runs = [(sipws_name, "sipws"), ("kamailio t_relay", "t_relay")]
    if not args.no_stateless:
        runs.append(("kamailio forward", "forward"))
    if args.only:
        runs = [run for run in runs if run[1] == args.only]
    failed_units = 0
    with tempfile.TemporaryDirectory(prefix="sipws-bench-relay-") as tmp:
        workdir = Path(tmp)
        try:
            responder = Process("core", [sys.executable, str(Path(__file__).resolve()), "--responder"], lines=True)
            processes.append(responder)
            upstream = int(responder.line().split()[1])
            unit = "calls (INVITE+SDP/100/180/200, ACK, MESSAGE/200, BYE/200)" if args.scenario == "calls" \
                else "OPTIONS"
            warmup = (_relay_peers.WARMUP_CALLS_PER_CLIENT if args.scenario == "calls"
                      else _relay_peers.WARMUP_OPTIONS_PER_CLIENT) * args.clients
            print(f"relay, {args.scenario}: {args.clients} WebSocket clients x {args.window} {unit} in progress, "
                  f"{args.units} measured per proxy and round (after {warmup} warm-up), {args.rounds} round(s); "
                  f"sipws workers {args.workers} ({_limits.NOTE}), kamailio children = tcp_children = {args.kamailio_children}; "
                  f"UDP core on 127.0.0.1:{upstream}; {os.cpu_count()} CPUs, load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            for round_number in range(args.rounds):
                for name, kind in runs:
                    profile = args.profile if round_number == 0 and kind == "sipws" else ""
                    server, port = start_server(kind, workdir / f"{kind}-{round_number}", upstream, args, profile)
                    processes.append(server)
                    try:
                        result = drive(name, server, port, responder, args, processes)
                        logged_upto = log_size(server.log)
                    finally:
                        server.stop()
                    results.append(result)
                    failed_units += sum(result.failures.values())
                    print_result(result)
                    logged = complaints(name, server.log, logged_upto)
                    if logged:
                        print(f"  {'':<24} {name} logged {len(logged)} line(s); first: {logged[0][:200]}")
                    sys.stdout.flush()
        except Exception as exc:
            print(f"relay bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for process in reversed(processes):
                process.stop()
    if args.only:
        if args.profile and args.only == "sipws":
            print_profile(args.profile)
        return 0
    sipws, kamailio = best(results, sipws_name), best(results, "kamailio t_relay")
    what = "calls/s" if args.scenario == "calls" else "req/s"
    print(f"best of {args.rounds}: {sipws_name} {sipws.rate:.0f} {what}, {sipws.cpu_us:.0f} us CPU/{sipws.unit}; "
          f"kamailio t_relay {kamailio.rate:.0f} {what}, {kamailio.cpu_us:.0f} us CPU/{kamailio.unit}")
    print(ratio_line(f"{sipws_name} / kamailio t_relay", sipws, kamailio))
    if not args.no_stateless:
        print(ratio_line(f"{sipws_name} / kamailio forward ", sipws, best(results, "kamailio forward")))
    print(paired_line(f"{sipws_name} / kamailio t_relay", results, sipws_name, "kamailio t_relay"))
    if failed_units:
        print(f"  {failed_units} {sipws.unit}s FAILED over the run (not counted in any figure above)")
    if args.profile:
        print_profile(args.profile)
    return 0


# -- --show: the headers each proxy adds -------------------------------------------------------


def show(args: argparse.Namespace) -> int:
    """One REGISTER and one call through each proxy; what the core received, what came back."""
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="sipws-bench-relay-show-") as tmp:
        workdir = Path(tmp)
        try:
            responder = Process("core", [sys.executable, str(Path(__file__).resolve()), "--responder"], lines=True)
            processes.append(responder)
            upstream = int(responder.line().split()[1])
            for kind in ("sipws", "t_relay"):
                server, port = start_server(kind, workdir / kind, upstream, args)
                processes.append(server)
                try:
                    responder.ask("samples")
                    load = Process("show client", [sys.executable, str(Path(__file__).resolve()), "--show-client",
                                                   str(port)], lines=True)
                    processes.append(load)
                    report = json.loads(load.line())
                    load.stop()
                    samples = json.loads(responder.ask("samples"))
                finally:
                    server.stop()
                title = "sipws" if kind == "sipws" else "kamailio (bench/kamailio/relay.cfg)"
                print(f"===== {title}: call completed {report['completed']}, failures {report['failures']}")
                for method in ("REGISTER", "INVITE", "ACK", "MESSAGE", "BYE"):
                    print(f"--- the core received {method}:\n{samples.get(method, '(nothing)').rstrip()}\n")
                for message in report["received"]:
                    first = message.split("\r\n", 1)[0]
                    if " 200 " in first + " " and ("INVITE" in message.split("CSeq:")[-1].split("\r\n")[0]
                                                  or "REGISTER" in message.split("CSeq:")[-1].split("\r\n")[0]):
                        print(f"--- the client received:\n{message.rstrip()}\n")
        except Exception as exc:
            print(f"relay --show failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for process in reversed(processes):
                process.stop()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["options", "calls"], default="options")
    parser.add_argument("--workers", type=int, default=1,
                        help="sipws worker processes ([server] workers, written only when > 1)")
    parser.add_argument("--kamailio-children", type=int, default=None,
                        help="Kamailio children and tcp_children (default: --workers)")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="WebSocket connections")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="requests or calls in progress per connection")
    parser.add_argument("--requests", type=int, default=None, help="measured OPTIONS per proxy and round")
    parser.add_argument("--calls", type=int, default=None, help="measured calls per proxy and round")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_UNITS['options']} requests or {QUICK_UNITS['calls']} calls, one round, "
                             f"no stateless Kamailio run")
    parser.add_argument("--no-stateless", action="store_true", help="skip the Kamailio forward() run")
    parser.add_argument("--profile", default="", help="run sipws under cProfile, stats to this file")
    parser.add_argument("--only", choices=["sipws", "t_relay", "forward"], default="",
                        help="measure one proxy only (no ratios)")
    parser.add_argument("--show", action="store_true",
                        help="one REGISTER and one call through each proxy: print the headers they add")
    parser.add_argument("--responder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--show-client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.responder:
        return _relay_peers.run_responder()
    if args.load:
        asyncio.run(_relay_peers.run_load(args.scenario, args.load, args.clients, args.units, args.window))
        return 0
    if args.show_client:
        asyncio.run(_relay_peers.run_show(args.show_client))
        return 0
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.kamailio_children is None:
        args.kamailio_children = args.workers
    given = args.calls if args.scenario == "calls" else args.requests
    args.units = given or (QUICK_UNITS if args.quick else DEFAULT_UNITS)[args.scenario]
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.quick or args.scenario == "calls":
        args.no_stateless = True  # forward() cannot follow the calls' in-dialog requests statefully
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.show:
        return show(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
