"""Benchmark: WebSocket handshakes per second with sipws workers, 1 against N (not a test).

sipws runs as operators run it (``twistd -n sipws``, bench/relay.py's start-up: info-level
logging to a file, admin off), once with ``[server] workers`` absent (one process) and
once with ``[server] workers = N`` (``--workers``, default 2), alternated ``--rounds`` times
in the same run.  Several load-generator processes (``--generators``, asyncio, from
127.0.0.2... so no port runs short) are started and connected first, then all told to go
at once; for ``--duration`` seconds each runs complete cycles, ``--concurrency`` at a time:
TCP connect, upgrade with ``Sec-WebSocket-Protocol: sip`` and an Origin, check the 101,
Close 1000, wait until the server closes TCP.  Handshakes/s = cycles completed by all
generators / the longest generator's measured time.  Server CPU is utime + stime of every
process of sipws (master and workers, /proc/PID/stat), generators' CPU is printed too, and
so is how busy the whole machine was (/proc/stat): on a small machine the generators
compete with sipws for the same cores, which caps what more workers can show.

Printed last: the ratio of handshakes/s (and of CPU per handshake) N workers / 1.
Then the spread: ``--spread`` connections are opened and held, and the established
connections to the WebSocket port are counted per sipws process (/proc/net/tcp inodes
matched to /proc/PID/fd), then closed.

A sipws without workers refuses ``[server] workers``: the bench then says so, reports the
one-process figures and exits 0.

Run: .venv/bin/python bench/handshakes.py [--workers 2] [--generators 3] [--concurrency 16]
     [--duration 5] [--rounds 3] [--spread 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _wsload  # noqa: E402 - bench/ is not a package
import relay  # noqa: E402

DEFAULT_GENERATORS = 3
DEFAULT_CONCURRENCY = 16
DEFAULT_DURATION = 5.0
DEFAULT_ROUNDS = 3
DEFAULT_SPREAD = 200
#: Cycles every generator runs before it reports READY (code paths, caches warm).
WARMUP_CYCLES = 100
#: What the issue asks of 2 workers against 1.
TARGET_RATIO = 1.8
#: Seconds to wait for a generator's line (warm-up or measured phase).
LINE_TIMEOUT = 120.0


# -- the generator (a child process) -----------------------------------------------------


def generate(port: int, concurrency: int, duration: float) -> None:
    """Warm up, print READY, wait for a line, run cycles for ``duration`` s, print JSON.

    A bare epoll loop over non-blocking sockets rather than asyncio: a cycle costs the
    generator a fraction of what it costs the server, so that the generators, which share the
    machine's cores with sipws, leave as much CPU as possible to the server."""
    import errno
    import selectors

    request = _wsload._request(port)
    selector = selectors.EpollSelector()
    state: dict[int, list] = {}  # fd -> [socket, phase, started, buffer]
    counts = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    source = [0]

    def fail(fd: int, why: str) -> None:
        sock = state.pop(fd)[0]
        selector.unregister(sock)
        sock.close()
        counts["failed"] += 1
        if counts["failed"] <= 3:
            print(f"cycle failed: {why}", file=sys.stderr)

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, _wsload.IP_BIND_ADDRESS_NO_PORT, 1)
        source[0] = (source[0] + 1) % _wsload.SOURCE_ADDRESSES
        sock.bind((f"127.0.0.{2 + source[0]}", 0))
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            counts["failed"] += 1
            return
        state[sock.fileno()] = [sock, "connect", time.perf_counter(), b""]
        selector.register(sock, selectors.EVENT_WRITE)

    def step(fd: int) -> bool:
        """Advance one connection; True when its cycle is complete."""
        entry = state[fd]
        sock, phase = entry[0], entry[1]
        if phase == "connect":
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                fail(fd, os.strerror(code))
                return False
            sock.send(request)
            entry[1] = "upgrade"
            selector.modify(sock, selectors.EVENT_READ)
            return False
        try:
            data = sock.recv(65536)
        except ConnectionError as exc:
            fail(fd, repr(exc))
            return False
        if phase == "upgrade":
            if not data:
                fail(fd, "closed before 101")
                return False
            entry[3] += data
            end = entry[3].find(b"\r\n\r\n")
            if end < 0:
                return False
            head = entry[3][:end].lower()
            if not head.startswith(b"http/1.1 101") or b"\r\nsec-websocket-protocol: sip" not in head:
                fail(fd, head.split(b"\r\n")[0].decode(errors="replace"))
                return False
            latencies.append(time.perf_counter() - entry[2])
            sock.send(_wsload.CLOSE_1000)
            entry[1] = "closing"
            return False
        if data:
            return False  # the server's Close frame; its FIN follows
        selector.unregister(sock)
        sock.close()
        del state[fd]
        return True

    def run(until: float, cycles: int) -> int:
        """Cycles until the clock passes ``until`` or ``cycles`` are done (0: no count limit)."""
        done = 0
        started = 0
        while len(state) < concurrency and (not cycles or started < cycles):
            start()
            started += 1
        while state:
            now = time.perf_counter()
            for key, _ in selector.select(0.5):
                if key.fd in state and step(key.fd):
                    done += 1
                    counts["ok"] += 1
                    if (not cycles or started < cycles) and time.perf_counter() < until:
                        start()
                        started += 1
            for fd in [fd for fd, entry in state.items() if now - entry[2] > _wsload.STEP_TIMEOUT]:
                fail(fd, "timeout")
        return done

    run(float("inf"), WARMUP_CYCLES)
    counts.update(ok=0, failed=0)
    latencies.clear()
    print("READY", flush=True)
    sys.stdin.readline()
    before = os.times()
    began = time.perf_counter()
    run(began + duration, 0)
    elapsed = time.perf_counter() - began
    after = os.times()
    latencies.sort()
    print(json.dumps({"ok": counts["ok"], "failed": counts["failed"], "seconds": elapsed,
                      "median_upgrade_ms": latencies[len(latencies) // 2] * 1e3 if latencies else 0.0,
                      "cpu": (after.user + after.system) - (before.user + before.system)}), flush=True)


# -- the orchestrator ------------------------------------------------------------------------


def machine_busy() -> tuple[int, int]:
    """(busy jiffies, total jiffies) of all CPUs, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class WorkersRefused(Exception):
    """This sipws has no [server] workers."""


def start(workdir: Path, workers: int) -> tuple[relay.Process, int]:
    try:
        return relay.start_sipws(workdir, 0, workers=workers, log_level="info")
    except RuntimeError as exc:
        if workers > 1 and "workers" in str(exc):
            raise WorkersRefused(str(exc).strip().splitlines()[-1].strip()) from None
        raise


def measure(workdir: Path, workers: int, args: argparse.Namespace, processes: list[relay.Process]) -> dict:
    server, port = start(workdir, workers)
    processes.append(server)
    try:
        generators = []
        for index in range(args.generators):
            generator = relay.Process(f"generator {index}", [sys.executable, str(Path(__file__).resolve()),
                                                             "--generate", str(port), "--concurrency",
                                                             str(args.concurrency), "--duration",
                                                             str(args.duration)], lines=True)
            processes.append(generator)
            generators.append(generator)
        for generator in generators:
            if generator.line(LINE_TIMEOUT) != "READY":
                raise RuntimeError(f"{generator.name}: no READY")
        time.sleep(0.3)
        server.refresh_pids()
        cpu_before = server.cpu_by_pid()
        busy_before = machine_busy()
        for generator in generators:
            generator.send("go")
        reports = [json.loads(generator.line(args.duration + LINE_TIMEOUT)) for generator in generators]
        server.refresh_pids()
        cpu_after = server.cpu_by_pid()
        cpu = relay.cpu_between(cpu_before, cpu_after)
        by_process = [cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in server.pids if cpu_after[pid]]
        busy_after = machine_busy()
        for generator in generators:
            generator.stop()
        spread = connection_spread(server, port, args.spread) if args.spread else {}
        processes_count = len(server.pids)
    finally:
        server.stop()
    ok = sum(r["ok"] for r in reports)
    seconds = max(r["seconds"] for r in reports)
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1) * (os.cpu_count() or 1)
    return {"workers": workers, "ok": ok, "failed": sum(r["failed"] for r in reports), "rate": ok / seconds,
            "cpu_us": cpu / max(ok, 1) * 1e6, "server_cores": cpu / seconds,
            "load_cores": sum(r["cpu"] for r in reports) / seconds, "machine_cores": busy,
            "median_ms": sorted(r["median_upgrade_ms"] for r in reports)[len(reports) // 2],
            "processes": processes_count, "spread": spread,
            "by_process": [value / seconds for value in by_process]}


def established_inodes(port: int) -> set[int]:
    """Inodes of established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def connection_spread(server: relay.Process, port: int, count: int) -> dict[str, int]:
    """Open and upgrade ``count`` connections, count them per sipws process, reset them."""
    held = asyncio.run(_hold(port, count))
    try:
        time.sleep(0.5)
        server.refresh_pids()
        established = established_inodes(port)
        return {str(pid): len(socket_inodes(pid) & established) for pid in server.pids}
    finally:
        for sock in held:
            sock.close()


async def _hold(port: int, count: int) -> list[socket.socket]:
    """``count`` upgraded connections, detached from asyncio so they stay open while counted."""
    generator = _wsload._Generator(port, False)
    opened, failed = await _wsload._open_many(generator, count)
    socks = []
    for protocol in opened:
        sock = protocol.transport.get_extra_info("socket")
        socks.append(socket.socket(fileno=os.dup(sock.fileno())))
        protocol.transport.abort()
    if failed:
        print(f"  spread: {failed} of {count} connections failed to open", file=sys.stderr)
    return socks


def print_row(row: dict) -> None:
    name = "1 process" if row["workers"] == 1 else f"{row['workers']} workers"
    print(f"  sipws {name:<10} {row['rate']:7.0f} handshakes/s  {row['cpu_us']:6.0f} us server CPU/handshake  "
          f"(sipws {row['server_cores']:4.2f} cores in {row['processes']} process"
          f"{'es' if row['processes'] > 1 else ''}, generators {row['load_cores']:4.2f}, whole machine "
          f"{row['machine_cores']:4.2f} of {os.cpu_count()})  median connect+upgrade {row['median_ms']:.2f} ms"
          + (f"  {row['failed']} FAILED" if row["failed"] else ""))
    if len(row["by_process"]) > 1:
        print(f"  {'':<17} cores by process (master first): "
              + ", ".join(f"{value:4.2f}" for value in row["by_process"]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers compared with one process (default 2)")
    parser.add_argument("--generators", type=int, default=DEFAULT_GENERATORS, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="cycles in flight per generator")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternated rounds; best of each")
    parser.add_argument("--spread", type=int, default=DEFAULT_SPREAD,
                        help="connections held to see how they spread over the processes (0: skip)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s")
    parser.add_argument("--generate", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _wsload.raise_file_limit()
    if args.generate:
        generate(args.generate, args.concurrency, args.duration)
        return 0
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    print(f"handshakes: sipws 1 process against {args.workers} workers; {args.generators} generator processes x "
          f"{args.concurrency} cycles in flight, {args.duration:.0f} s per run, {args.rounds} round(s); "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{relay._limits.NOTE}", flush=True)
    processes: list[relay.Process] = []
    rows: dict[int, list[dict]] = {1: [], args.workers: []}
    refused = ""
    with tempfile.TemporaryDirectory(prefix="sipws-bench-handshakes-") as tmp:
        workdir = Path(tmp)
        try:
            for round_number in range(args.rounds):
                for workers in (1, args.workers):
                    if workers > 1 and refused:
                        continue
                    try:
                        row = measure(workdir / f"w{workers}-{round_number}", workers, args, processes)
                    except WorkersRefused as exc:
                        refused = str(exc)
                        print(f"  sipws {workers} workers: refused by this sipws ({refused})")
                        continue
                    rows[workers].append(row)
                    print_row(row)
                    sys.stdout.flush()
        except Exception as exc:
            print(f"handshakes bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for process in reversed(processes):
                process.stop()
    one = max(rows[1], key=lambda r: r["rate"])
    for row in (one, *([max(rows[args.workers], key=lambda r: r["rate"])] if rows[args.workers] else [])):
        if row["spread"]:
            spread = ", ".join(f"pid {pid}: {count}" for pid, count in row["spread"].items())
            print(f"  spread of {args.spread} held connections, {row['workers']} worker(s): {spread}")
    load_us = one["load_cores"] / one["rate"] * 1e6
    ceiling = (os.cpu_count() or 1) / ((one["cpu_us"] + load_us) / 1e6)
    print(f"  ceiling on this machine: the generators cost {load_us:.0f} us per cycle beside sipws's "
          f"{one['cpu_us']:.0f} us, so {os.cpu_count()} cores running nothing else would allow at most "
          f"{ceiling:.0f} handshakes/s, {ceiling / one['rate']:.2f} x the 1-process figure")
    if not rows[args.workers]:
        print(f"best of {args.rounds}: 1 process {one['rate']:.0f} handshakes/s, {one['cpu_us']:.0f} us CPU each; "
              f"no {args.workers}-worker figure (this sipws has no [server] workers), so no ratio")
        return 0
    many = max(rows[args.workers], key=lambda r: r["rate"])
    ratio = many["rate"] / one["rate"]
    print(f"best of {args.rounds}: 1 process {one['rate']:.0f} handshakes/s, {args.workers} workers "
          f"{many['rate']:.0f} handshakes/s")
    print(f"  ratio {args.workers} workers / 1: handshakes/s {ratio:.2f} (target >= {TARGET_RATIO}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}), CPU per handshake {many['cpu_us'] / one['cpu_us']:.2f}")
    paired = [b["rate"] / a["rate"] for a, b in zip(rows[1], rows[args.workers])]
    ordered = sorted(paired)
    half = len(ordered) // 2
    median = ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
    listed = ", ".join(f"{value:.2f}" for value in paired)
    print(f"  median of round-by-round ratios (each {args.workers}-worker run against the 1-process run before it): "
          f"{median:.2f} ({listed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
