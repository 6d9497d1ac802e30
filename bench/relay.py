"""Benchmark of the relay end to end (not a test): WebSocket clients -> proxy -> UDP core.

N WebSocket clients (one load-generator process, asyncio over raw sockets:
upgrade with ``Sec-WebSocket-Protocol: sip`` and an Origin, masked frames)
each keep a window of OPTIONS outstanding (distinct Call-ID and branch, Via
``SIP/2.0/WS xxx.invalid``).  The proxy relays them over UDP to a tiny
responder process that answers every request 200 OK, copying Via, From, To,
Call-ID and CSeq; the proxy relays the 200 back to the connection.

The same load runs, in the same run and against the same responder, through

- sipws (``twistd -n sipws`` with ``[sip] upstream`` the responder), and
- Kamailio 5.6's websocket module relaying with ``t_relay()`` (stateful, as
  sipws is) — the reference — and, for context, with stateless ``forward()``
  (``bench/kamailio/relay.cfg``).

Measured for each: requests/s, the proxy's CPU seconds per request (utime +
stime from /proc/PID/stat: the twistd process; every Kamailio process), the
load generator's and responder's CPU (to see who was the bottleneck), and
p50/p99 latency per request as the client sees it.  Printed last: the ratios
sipws / Kamailio t_relay.  Every process the bench starts is stopped by its
pid, also on error.

Run: .venv/bin/python bench/relay.py [--clients 50] [--window 2] [--requests N] [--quick]
     [--profile FILE]   (run sipws under cProfile and print its top functions)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sipload import server_frames  # noqa: E402 - bench/ is not a package

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
TWISTD = ROOT_DIR / ".venv" / "bin" / "twistd"
KAMAILIO_CFG = BENCH_DIR / "kamailio" / "relay.cfg"
KAMAILIO = "kamailio"
#: Kamailio's shared and private memory (MB).  tm keeps every finished transaction for its
#: 5 s wait timer; at ~6000 requests/s, 256 MB ran out after ~19,000 requests
#: ("build_cell(): could not allocate shared memory"), answered 500 and lost replies.
KAMAILIO_SHM_MB = 1024
KAMAILIO_PKG_MB = 16

#: Defaults: connections, requests outstanding per connection, requests per server.
DEFAULT_CLIENTS = 50
DEFAULT_WINDOW = 2
DEFAULT_REQUESTS = 20000
QUICK_REQUESTS = 5000
#: Rounds of every proxy, alternated; the best round of each is compared (the machine is shared).
DEFAULT_ROUNDS = 3
#: Requests every connection sends before the measured phase (code paths, caches, allocators warm).
WARMUP_PER_CLIENT = 20
#: Seconds without a single response before the load generator gives up.
STALL_TIMEOUT = 10.0
#: Seconds a server may take to listen, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
#: Seconds to wait for a line from a child process (warm-up included).
LINE_TIMEOUT = 60.0
#: Seconds allowed for one measured phase (the load generator's own limit is the stall timeout).
RUN_TIMEOUT = 300.0
ORIGIN = "https://phone.example.com"
MAX_DATAGRAM = 65535
WS_OPCODE_TEXT = 0x1
WS_OPCODE_BINARY = 0x2
WS_OPCODE_CLOSE = 0x8
WS_OPCODE_PING = 0x9
WS_OPCODE_PONG = 0xA


# -- the UDP responder ----------------------------------------------------------------

#: Header names (lower case, full and compact) copied from a request into its 200.
_COPIED = (b"via:", b"v:", b"from:", b"f:", b"call-id:", b"i:", b"cseq:")
_TO = (b"to:", b"t:")


def answer(request: bytes) -> Optional[bytes]:
    """The 200 OK for one request (None for an ACK or anything that is not a request)."""
    end = request.find(b"\r\n\r\n")
    lines = request[:end if end >= 0 else len(request)].split(b"\r\n")
    if not lines or lines[0].startswith(b"SIP/2.0") or lines[0].startswith(b"ACK "):
        return None
    out = [b"SIP/2.0 200 OK"]
    for line in lines[1:]:
        lower = line[:9].lower()
        if lower.startswith(_COPIED):
            out.append(line)
        elif lower.startswith(_TO):
            out.append(line if b";tag=" in line else line + b";tag=responder")
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)


def run_responder() -> int:
    """Answer every datagram on 127.0.0.1:0 until killed; prints ``READY PORT``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, address = recvfrom(MAX_DATAGRAM)
        reply = answer(data)
        if reply is not None:
            try:
                sendto(reply, address)
            except OSError:
                pass  # a full socket buffer: the proxy's retransmission covers it


# -- the load generator -----------------------------------------------------------------


def _mask(payload: bytes) -> bytes:
    """A client frame's payload XORed with a fresh 4-byte key, key first (RFC 6455 §5.3)."""
    key = random.getrandbits(32).to_bytes(4, "big")
    size = len(payload)
    stream = (key * ((size >> 2) + 1))[:size]
    return key + (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def client_frame(payload: bytes, opcode: int = WS_OPCODE_TEXT) -> bytes:
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + _mask(payload)


def options(client: int, seq: int, run: str) -> tuple[bytes, bytes]:
    """(Call-ID, OPTIONS request) for one request of one client."""
    call_id = f"{run}-{client}-{seq}".encode()
    request = (
        f"OPTIONS sip:bench@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS c{client}x{run}.invalid;branch=z9hG4bK{run}{client}x{seq}\r\n"
        f"Max-Forwards: 70\r\n"
        f"To: <sip:bench@example.com>\r\n"
        f"From: <sip:load{client}@example.com>;tag=t{run}{client}\r\n"
        f"Call-ID: {call_id.decode()}\r\n"
        f"CSeq: {seq} OPTIONS\r\n"
        f"Accept: application/sdp\r\n"
        f"User-Agent: sipws-bench\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    return call_id, request


def _call_id(message: bytes) -> bytes:
    start = message.find(b"\r\nCall-ID:")
    if start < 0:
        lowered = message.lower()
        start = lowered.find(b"\r\ncall-id:")
        if start < 0:
            start = lowered.find(b"\r\ni:")
            if start < 0:
                return b""
            start += 4
        else:
            start += 10
    else:
        start += 10
    end = message.find(b"\r\n", start)
    return message[start:end].strip()


@dataclass
class Shared:
    """What all connections of one load generator share."""

    remaining: int = 0
    outstanding: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    last_progress: float = 0.0
    done: Optional[asyncio.Future] = None
    run: str = "w"
    counter: int = 0


class LoadClient(asyncio.Protocol):
    """One WebSocket connection: upgrade, then OPTIONS with a window of outstanding requests."""

    def __init__(self, index: int, port: int, shared: Shared, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.port = port
        self.shared = shared
        self.upgraded: asyncio.Future = loop.create_future()
        self.buffer = b""
        self.transport: Any = None
        self.pending: dict[bytes, float] = {}
        self.seq = 0
        self.closed = False
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: sip\r\nOrigin: {ORIGIN}\r\nUser-Agent: sipws-bench\r\n\r\n"
        ).encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.buffer = self.buffer[end + 4:]
            if head.startswith(b"http/1.1 101") and b"\r\nsec-websocket-protocol: sip" in head:
                self.upgraded.set_result(None)
            else:
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
        self._frames()

    def _frames(self) -> None:
        frames, used = server_frames(self.buffer)
        for opcode, payload, masked in frames:
            if masked:
                raise SystemExit("server sent a masked frame")
            if opcode in (WS_OPCODE_TEXT, WS_OPCODE_BINARY):
                self._message(payload)
            elif opcode == WS_OPCODE_PING:
                self.transport.write(client_frame(payload, WS_OPCODE_PONG))
            elif opcode == WS_OPCODE_CLOSE and not self.closing:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                print(f"client {self.index}: server closed ({code} {payload[2:]!r})", file=sys.stderr)
        self.buffer = self.buffer[used:]

    def _message(self, message: bytes) -> None:
        shared = self.shared
        sent = self.pending.pop(_call_id(message), None)
        if sent is None:
            shared.unknown += 1
            return
        now = time.perf_counter()
        shared.latencies.append(now - sent)
        shared.last_progress = now
        status = message[8:11].decode("ascii", "replace")
        shared.statuses[status] = shared.statuses.get(status, 0) + 1
        shared.outstanding -= 1
        self.send_next()
        if shared.outstanding == 0 and shared.remaining == 0 and not shared.done.done():
            shared.done.set_result(None)

    def send_next(self) -> None:
        shared = self.shared
        if shared.remaining <= 0 or self.closed:
            return
        shared.remaining -= 1
        shared.outstanding += 1
        self.seq += 1
        call_id, request = options(self.index, self.seq, shared.run)
        self.pending[call_id] = time.perf_counter()
        self.transport.write(client_frame(request))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before 101"))
        elif self.pending and not self.closing:
            print(f"client {self.index}: connection lost with {len(self.pending)} pending", file=sys.stderr)


async def _phase(clients: list[LoadClient], shared: Shared, requests: int, window: int, run: str) -> float:
    loop = asyncio.get_running_loop()
    shared.remaining = requests
    shared.outstanding = 0
    shared.latencies = []
    shared.statuses = {}
    shared.run = run
    shared.done = loop.create_future()
    started = shared.last_progress = time.perf_counter()
    for _ in range(window):
        for client in clients:
            client.send_next()
    while not shared.done.done():
        try:
            await asyncio.wait_for(asyncio.shield(shared.done), 1.0)
        except asyncio.TimeoutError:
            if time.perf_counter() - shared.last_progress > STALL_TIMEOUT:
                raise SystemExit(f"no response for {STALL_TIMEOUT:.0f}s: {shared.outstanding} outstanding, "
                                 f"{shared.remaining} not sent, statuses {shared.statuses}")
    return time.perf_counter() - started


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_load(port: int, count: int, requests: int, window: int) -> None:
    loop = asyncio.get_running_loop()
    shared = Shared()
    clients = []
    for index in range(count):
        client = LoadClient(index, port, shared, loop)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
        await asyncio.wait_for(client.upgraded, STEP_TIMEOUT)
        client.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(client)
    await _phase(clients, shared, WARMUP_PER_CLIENT * count, window, "w")
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = await _phase(clients, shared, requests, window, "m")
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    latencies = shared.latencies
    print(json.dumps({
        "requests": len(latencies), "seconds": elapsed, "statuses": shared.statuses,
        "unknown_responses": shared.unknown, "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3, "max_ms": max(latencies) * 1e3,
        "load_cpu": cpu,
    }), flush=True)
    for client in clients:
        client.closing = True
        client.transport.write(client_frame(struct.pack("!H", 1000), WS_OPCODE_CLOSE))
    await asyncio.sleep(0.2)
    for client in clients:
        client.transport.abort()


#: Seconds one connection may take to open and upgrade.
STEP_TIMEOUT = 10.0


# -- the orchestrator -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Kamailio's main forks all its workers)."""
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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process the bench started: stopped by its pid whatever happens."""

    def __init__(self, name: str, args: list[str], log: Optional[Path] = None, lines: bool = False) -> None:
        self.name = name
        self.log = log
        # line-driven children (responder, load generator) keep our stderr for their complaints
        out = subprocess.PIPE if lines else open(log, "wb") if log else subprocess.DEVNULL
        err = None if lines else subprocess.STDOUT
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if lines else subprocess.DEVNULL,
                                     stdout=out, stderr=err, cwd=str(ROOT_DIR), text=lines, bufsize=1 if lines else -1)
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

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n  " + "\n  ".join(text) if text else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; leftover children by their pids."""
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


def start_sipws(workdir: Path, upstream: int, profile: str) -> tuple[Process, int]:
    ws_port = free_port()
    workdir.mkdir(parents=True)
    config = workdir / "sipws.toml"
    config.write_text(
        f'[ws]\nlisten = ["127.0.0.1:{ws_port}"]\n\n'
        f'[sip]\nlisten = ["udp:127.0.0.1:0"]\nupstream = "sip:127.0.0.1:{upstream};transport=udp"\n\n'
        f'[admin]\nlisten = ""\n\n[log]\nlevel = "warn"\n'
    )
    args = [str(TWISTD), "-n", "--pidfile=", "--logfile=-"]
    if profile:
        args += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    args += ["sipws", "--config", str(config)]
    process = Process("sipws", args, workdir / "sipws.log")
    wait_listening(process, ws_port)
    return process, ws_port


def start_kamailio(workdir: Path, upstream: int, stateless: bool) -> tuple[Process, int]:
    ws_port = free_port()
    udp_port = free_port(socket.SOCK_DGRAM)
    run = workdir
    run.mkdir(parents=True)
    args = [KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid"),
            "-w", str(run), "-m", str(KAMAILIO_SHM_MB), "-M", str(KAMAILIO_PKG_MB),
            "-l", f"udp:127.0.0.1:{udp_port}", "-l", f"tcp:127.0.0.1:{ws_port}",
            "-A", f'UPSTREAM="sip:127.0.0.1:{upstream};transport=udp"']
    if stateless:
        args += ["-A", "STATELESS"]
    process = Process("kamailio" + (" (forward)" if stateless else ""), args, run / "kamailio.log")
    wait_listening(process, ws_port)
    time.sleep(0.5)  # every worker forked
    process.pids = descendants(process.pid)
    return process, ws_port


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    server_cpu: float
    responder_cpu: float
    load_cpu: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    processes: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.requests * 1e6


def drive(name: str, server: Process, port: int, responder: Process, args: argparse.Namespace,
          processes: list[Process]) -> Result:
    """Connect the clients, warm up, then measure one phase of ``args.requests`` requests."""
    load = Process(f"load generator ({name})", [sys.executable, str(Path(__file__).resolve()), "--load",
                                                 str(port), "--clients", str(args.clients), "--window",
                                                 str(args.window), "--requests", str(args.requests)],
                   lines=True)
    processes.append(load)
    try:
        ready = load.line()
        if ready != "READY":
            raise RuntimeError(f"load generator: {ready!r}")
        server_before, responder_before = server.cpu(), responder.cpu()
        load.send("go")
        report = json.loads(load.line(RUN_TIMEOUT))
        server_cpu, responder_cpu = server.cpu() - server_before, responder.cpu() - responder_before
        load.proc.wait(STOP_GRACE)
    finally:
        load.stop()
    return Result(name, report["requests"], report["seconds"], server_cpu, responder_cpu, report["load_cpu"],
                  report["p50_ms"], report["p99_ms"], report["max_ms"], report["statuses"], len(server.pids))


def print_result(result: Result) -> None:
    statuses = ", ".join(f"{count} x {status}" for status, count in sorted(result.statuses.items()))
    print(f"  {result.name:<22} {result.rate:8.0f} req/s  {result.cpu_us:7.1f} us CPU/req "
          f"({result.server_cpu / result.seconds:4.2f} cores, {result.processes} process"
          f"{'es' if result.processes > 1 else ''})  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
          f"max {result.max_ms:6.1f} ms")
    print(f"  {'':<22} load generator {result.load_cpu / result.seconds:4.2f} cores, responder "
          f"{result.responder_cpu / result.seconds:4.2f} cores; responses: {statuses}")


def print_profile(path: str, limit: int = 25) -> None:
    import pstats

    print(f"\nsipws profile ({path}), top {limit} by own time:")
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
    """The round of ``name`` with the least server CPU per request."""
    return min((r for r in results if r.name == name), key=lambda r: r.cpu_us)


def bench(args: argparse.Namespace) -> int:
    processes: list[Process] = []
    results: list[Result] = []
    runs = [("sipws", None), ("kamailio t_relay", False)]
    if not args.no_stateless:
        runs.append(("kamailio forward", True))
    with tempfile.TemporaryDirectory(prefix="sipws-bench-relay-") as tmp:
        workdir = Path(tmp)
        try:
            responder = Process("responder", [sys.executable, str(Path(__file__).resolve()), "--responder"],
                                lines=True)
            processes.append(responder)
            upstream = int(responder.line().split()[1])
            print(f"relay: {args.clients} WebSocket clients x {args.window} outstanding OPTIONS, "
                  f"{args.requests} measured requests per proxy and round (after "
                  f"{WARMUP_PER_CLIENT * args.clients} warm-up), {args.rounds} round(s), "
                  f"UDP responder on 127.0.0.1:{upstream}; {os.cpu_count()} CPUs", flush=True)
            for round_number in range(args.rounds):
                for name, stateless in runs:
                    profile = args.profile if round_number == 0 else ""
                    if stateless is None:
                        server, port = start_sipws(workdir / f"sipws-{round_number}", upstream, profile)
                    else:
                        server, port = start_kamailio(workdir / f"kamailio-{name.split()[-1]}-{round_number}", upstream,
                                                      stateless)
                    processes.append(server)
                    try:
                        result = drive(name, server, port, responder, args, processes)
                        logged_upto = log_size(server.log)
                    finally:
                        server.stop()
                    results.append(result)
                    print_result(result)
                    logged = complaints(name, server.log, logged_upto)
                    if logged:
                        print(f"  {'':<22} {name} logged {len(logged)} line(s); first: {logged[0][:200]}")
        except Exception as exc:
            print(f"relay bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for process in reversed(processes):
                process.stop()
    sipws, kamailio = best(results, "sipws"), best(results, "kamailio t_relay")
    print(f"best of {args.rounds}: sipws {sipws.rate:.0f} req/s, {sipws.cpu_us:.0f} us CPU/req; kamailio t_relay "
          f"{kamailio.rate:.0f} req/s, {kamailio.cpu_us:.0f} us CPU/req")
    print(f"  ratio sipws / kamailio t_relay: throughput {sipws.rate / kamailio.rate:.2f}, "
          f"CPU per request {sipws.cpu_us / kamailio.cpu_us:.2f}, p50 {sipws.p50_ms / kamailio.p50_ms:.2f}, "
          f"p99 {sipws.p99_ms / kamailio.p99_ms:.2f}")
    if not args.no_stateless:
        stateless = best(results, "kamailio forward")
        print(f"  ratio sipws / kamailio forward:  throughput {sipws.rate / stateless.rate:.2f}, "
              f"CPU per request {sipws.cpu_us / stateless.cpu_us:.2f}, p50 {sipws.p50_ms / stateless.p50_ms:.2f}, "
              f"p99 {sipws.p99_ms / stateless.p99_ms:.2f}")
    if args.profile:
        print_profile(args.profile)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="WebSocket connections")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="requests outstanding per connection")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per proxy")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_REQUESTS} requests, one round, no stateless Kamailio run")
    parser.add_argument("--no-stateless", action="store_true", help="skip the Kamailio forward() run")
    parser.add_argument("--profile", default="", help="run sipws under cProfile, stats to this file")
    parser.add_argument("--responder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.quick:
        args.no_stateless = True
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.responder:
        return run_responder()
    if args.load:
        asyncio.run(run_load(args.load, args.clients, args.requests, args.window))
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
