"""Benchmark: one sipws instance holding 100,000 idle WebSocket connections (not a test).

sipws runs as an operator runs it (``twistd -n sipws --config FILE``, config in a temp
dir, epoll reactor, ``[log] level = info`` to a file, admin on loopback, ``[keepalive]
timeout = 30`` (``--keepalive-timeout``; 180 is sipws's default) so the sweep pings every
connection during the run, ``[ws]
max_connections`` = N).  sipws raises its own open-file limit at start-up; the bench
prints the line it logged.

Load: one load generator process per sipws instance (``nice``d), each with its own raised
RLIMIT_NOFILE, each a plain epoll loop over raw non-blocking sockets: bind to one of
``SOURCE_ADDRESSES`` loopback source addresses (127.0.0.2 ...; IP_BIND_ADDRESS_NO_PORT)
before connect, so the 28,000 ephemeral ports per (source, destination) pair are no
limit; send the upgrade (``Sec-WebSocket-Protocol: sip``, an Origin; with
``--compression`` also a permessage-deflate offer), check the 101; then answer every
Ping with a Pong (masked, same payload) and do nothing else.

Instances: one sipws process holds at most (hard open-file limit - FD_RESERVE -
INSTANCE_MARGIN) connections; when N is more (the hard limit here is 20,000 and cannot
be raised: no CAP_SYS_RESOURCE), the bench starts enough independent instances and sums.

Measured, sipws alone (its pids, from /proc):
- RSS per connection: VmRSS after a warm-up (WARMUP connections opened and reset) and
  again once all N are open and every connection has been pinged and has answered at
  least once (TIMEOUT + SETTLE seconds after the last one opened); (after - before) / N.
  Also the sum of Pss (``/proc/PID/smaps_rollup``), the figure comparable across servers.
- CPU while idle: utime + stime over IDLE_WINDOW seconds (``--window``; at least one
  keep-alive timeout, so one whole round of Pings) with every connection open,
  as a fraction of one core.  That is the keep-alive: the sweep's walks, N / TIMEOUT
  Pings a second and their Pongs (the bench also prints it per connection and scaled
  to the default ``[keepalive] timeout`` of 180 s).
- Survivors: connections the load generators still hold, and open connections by
  sipws's admin ``stats``, at the end.

Reference, same run, same load generators and N: Kamailio (websocket module, Ping
keep-alive every 30 s, bench/kamailio/idle.cfg; tcp_max_connections, open_files_limit
and shared memory sized for N), all its processes summed.  Printed: ratio sipws /
Kamailio for memory and CPU, and sipws against the issue's budget (8 KB per connection,
5 % of a core).  ``--no-kamailio`` skips the reference.  KB = 1000 bytes.

Run (as root for N over the hard limit; with ``uptime`` load low):
  python bench/idle_connections.py                          # 100,000 connections
  python bench/idle_connections.py --connections 20000 --no-kamailio
  python bench/idle_connections.py --one-instance --keepalive-timeout 180 --no-kamailio   # at the default timeout
  python bench/idle_connections.py --compression            # [ws] compression = true, offered by the clients
  python bench/idle_connections.py --generate ...           # (internal) one load generator
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT_DIR))
from sipws.fdlimit import FD_RESERVE  # noqa: E402
import _limits  # noqa: E402

#: Default number of idle connections.
CONNECTIONS = 100_000
#: Loopback source addresses 127.0.0.2 ... spread over the generators.
SOURCE_ADDRESSES = 16
#: Connections opened and reset before the "before" RSS reading.
WARMUP = 200
#: Upgrades in flight at once, per generator (more, with 6 generators on 2 busy cores, left
#: some waiting past sipws's 5 s handshake_timeout).
INFLIGHT = 64
#: [keepalive] timeout given to both servers: every connection is pinged each TIMEOUT s.
TIMEOUT = 30
#: The default [keepalive] timeout, for the scaled CPU figure.
DEFAULT_TIMEOUT = 180
#: Seconds left after the last connection opened beyond TIMEOUT: every one pinged once.
SETTLE = 8
#: Seconds of idle CPU measured.
IDLE_WINDOW = 60
#: Budget (issue 14).
BUDGET_KB = 8.0
BUDGET_CORE = 0.05
#: Descriptors a generator keeps beyond its connections.
GENERATOR_SPARE_FILES = 64
#: Connections a sipws instance is given below (hard limit - FD_RESERVE): warm-up, admin, logs.
INSTANCE_MARGIN = 300
#: Longest wait for all connections to open (seconds), and for any one child's answer.
OPEN_TIMEOUT = 900.0
LINE_TIMEOUT = 60.0
#: Admin polling.
ADMIN_TIMEOUT = 10.0
POLL_INTERVAL = 1.0
#: Kamailio sizing: shared memory for N connections (16 KiB read buffer each, plus its structs).
KAMAILIO_SHM_BASE_MB = 256
KAMAILIO_SHM_PER_CONN_KB = 96
KAMAILIO_CFG = BENCH_DIR / "kamailio" / "idle.cfg"
#: Linux IP_BIND_ADDRESS_NO_PORT.
IP_BIND_ADDRESS_NO_PORT = 24
ORIGIN = "https://phone.example.com"
NICE = 5


# -- load generator (a child process) ------------------------------------------------

HANDSHAKE, OPEN_STATE = 0, 1


#: The offer browsers make (Chromium), sent with --compression.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


def _upgrade_request(port: int, deflate: bool = False) -> bytes:
    offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: sip\r\nOrigin: {ORIGIN}\r\nUser-Agent: sipws-bench\r\n{offer}\r\n"
    ).encode()


def pong_frame(payload: bytes) -> bytes:
    """A client Pong (masked with a zero key, so the payload is unchanged; RFC 6455 allows any key)."""
    return bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload


class Generator:
    """Opens connections with raw sockets on one epoll; answers Pings; counts."""

    def __init__(self, host: str, port: int, sources: list[str], deflate: bool = False) -> None:
        self.address = (host, port)
        self.sources = sources
        self.request = _upgrade_request(port, deflate)
        #: 101s that accepted permessage-deflate.
        self.deflated = 0
        self.epoll = __import__("select").epoll()
        self.conns: dict[int, list[Any]] = {}  # fd -> [socket, state, buffer]
        self.next_source = 0
        self.opened = 0
        self.failed = 0
        self.pings = 0
        self.closed_by_server = 0
        self.first_error = ""
        #: Connections between connect() and the 101.
        self.handshaking = 0

    def _fail(self, fd: int, why: str) -> None:
        self.failed += 1
        self.handshaking -= 1
        if not self.first_error:
            self.first_error = why
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self.conns.pop(fd, None)
        if entry is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
            entry[0].close()

    def start_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        source = self.sources[self.next_source % len(self.sources)]
        self.next_source += 1
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            code = sock.connect_ex(self.address)
        except OSError as exc:
            sock.close()
            self.failed += 1
            self.first_error = self.first_error or f"connect: {exc}"
            return
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.failed += 1
            self.first_error = self.first_error or f"connect: {os.strerror(code)}"
            return
        fd = sock.fileno()
        self.handshaking += 1
        self.conns[fd] = [sock, HANDSHAKE, b""]
        self.epoll.register(fd, 0x004)  # EPOLLOUT: connected

    def open_many(self, count: int, deadline: float) -> None:
        started = 0
        while (started < count or self.handshaking) and time.monotonic() < deadline:
            while started < count and self.handshaking < INFLIGHT:
                self.start_one()
                started += 1
            for fd, events in self.epoll.poll(1.0):
                self.handle(fd, events)
        self.failed += self.handshaking + (count - started)

    def handle(self, fd: int, events: int) -> None:
        entry = self.conns.get(fd)
        if entry is None:
            return
        sock = entry[0]
        if entry[1] == HANDSHAKE and events & 0x004:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                return self._fail(fd, f"connect: {os.strerror(error)}")
            sock.send(self.request)
            self.epoll.modify(fd, 0x001)  # EPOLLIN
            return
        try:
            data = sock.recv(65536)
        except OSError as exc:
            if entry[1] == HANDSHAKE:
                return self._fail(fd, f"recv: {exc}")
            self.closed_by_server += 1
            return self._drop(fd)
        if not data:
            if entry[1] == HANDSHAKE:
                return self._fail(fd, "closed before 101")
            self.closed_by_server += 1
            return self._drop(fd)
        buf = entry[2] + data
        if entry[1] == HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                entry[2] = buf
                return
            head = buf[:end].lower()
            if not (head.startswith(b"http/1.1 101") and b"\r\nsec-websocket-protocol: sip" in head):
                return self._fail(fd, buf[:end].split(b"\r\n")[0].decode(errors="replace"))
            entry[1] = OPEN_STATE
            self.opened += 1
            if b"\r\nsec-websocket-extensions: permessage-deflate" in head:
                self.deflated += 1
            self.handshaking -= 1
            buf = buf[end + 4:]
        entry[2] = self._frames(fd, sock, buf)

    def _frames(self, fd: int, sock: socket.socket, buf: bytes) -> bytes:
        while len(buf) >= 2:
            opcode, length, head = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, head = struct.unpack_from("!H", buf, 2)[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < head + length:
                break
            payload, buf = buf[head:head + length], buf[head + length:]
            if opcode == 0x9:
                self.pings += 1
                sock.send(pong_frame(payload))
            elif opcode == 0x8:
                self.closed_by_server += 1
                self._drop(fd)
                return b""
        return buf

    def serve(self, stdin_fd: int) -> None:
        self.epoll.register(stdin_fd, 0x001)
        while True:
            for fd, events in self.epoll.poll(1.0):
                if fd == stdin_fd:
                    line = os.read(stdin_fd, 4096).decode()
                    if not line or "quit" in line:
                        return
                    if "stats" in line:
                        print(f"STATS open={len(self.conns)} pings={self.pings} closed={self.closed_by_server}",
                              flush=True)
                    continue
                self.handle(fd, events)

    def reset_all(self) -> None:
        for fd in list(self.conns):
            sock = self.conns[fd][0]
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self._drop(fd)


def raise_file_limit(wanted: int) -> int:
    """This process's RLIMIT_NOFILE to at least ``wanted`` (the hard limit too, as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def generate(args: argparse.Namespace) -> int:
    limit = raise_file_limit(args.count + args.warmup + GENERATOR_SPARE_FILES)
    if limit < args.count + GENERATOR_SPARE_FILES:
        print(f"ERROR open-file limit {limit} too low for {args.count} connections", flush=True)
        return 1
    gen = Generator(args.host, args.port, args.sources.split(","), args.deflate)
    deadline = time.monotonic() + OPEN_TIMEOUT
    if args.warmup:
        gen.open_many(args.warmup, deadline)
        gen.reset_all()
        gen.opened = gen.failed = gen.deflated = 0
    print("WARM", flush=True)
    if not sys.stdin.readline():
        return 0
    began = time.monotonic()
    gen.open_many(args.count, deadline)
    print(f"OPEN ok={gen.opened} failed={gen.failed} seconds={time.monotonic() - began:.1f} "
          f"deflated={gen.deflated} error={gen.first_error!r}", flush=True)
    gen.serve(sys.stdin.fileno())
    gen.reset_all()
    return 0


# -- the bench -------------------------------------------------------------------------


def pss_kb(pids: list[int]) -> int:
    """Sum of Pss over processes, KiB (shared memory counted once in total)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def admin_call(port: int, method: str, params: Optional[list] = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rpc", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as response:
        return json.loads(response.read())["result"]


def open_count(admin_port: int) -> int:
    return int(admin_call(admin_port, "stats")["connections"].get("ws_server", 0))


def start_sipws(workdir: Path, connections: int, compression: bool, profile: str = "",
                cap: bool = True, workers: int = 1) -> tuple[Any, int, int, Path]:
    import relay

    ws_port, admin_port = relay.free_port(), relay.free_port()
    config = workdir / "sipws.toml"
    config.write_text(
        (f'[server]\nworkers = {workers}\n\n' if workers > 1 else "")
        + f'[ws]\nlisten = ["127.0.0.1:{ws_port}"]\n'
        + (f"max_connections = {connections}\n" if cap else "")
        + ("compression = true\n" if compression else "")
        + f'\n[keepalive]\ntimeout = {TIMEOUT}\n\n'
        f'[sip]\nlisten = []\nupstream = "sip:127.0.0.1:5060;transport=udp"\n\n'
        f'[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\n\n[log]\nlevel = "info"\n'
        + _limits.TOML
    )
    twistd = Path(sys.executable).with_name("twistd")
    log = workdir / "sipws.log"
    profiling = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
    process = relay.Process("sipws", [str(twistd), "-n", "--pidfile=", f"--logfile={log}", *profiling, "sipws",
                                      "--config", str(config)], workdir / "sipws.out")
    relay.wait_listening(process, ws_port)
    if workers > 1:  # the master listens at once; wait until every worker accepts
        deadline = time.monotonic() + OPEN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                listing = admin_call(admin_port, "workers")["workers"]
                if sum(1 for w in listing if w["state"] == "ready") == workers:
                    break
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            time.sleep(POLL_INTERVAL)
        process.pids = relay.descendants(process.pid)
    return process, ws_port, admin_port, log


def start_kamailio(workdir: Path, connections: int) -> tuple[Any, int]:
    import relay

    ws_port = relay.free_port()
    run = workdir / "kamailio"
    run.mkdir()
    shm = KAMAILIO_SHM_BASE_MB + connections * KAMAILIO_SHM_PER_CONN_KB // 1024
    args = ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid"),
            "-w", str(run), "-m", str(shm), "-M", "16", "-l", f"tcp:127.0.0.1:{ws_port}",
            "-A", f"MAX_CONNECTIONS={connections + 1000}",
            "-A", f"OPEN_FILES={min(connections + 4000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])}",
            "-A", f"KEEPALIVE_TIMEOUT={TIMEOUT}"]
    process = relay.Process("kamailio", args, run / "kamailio.log")
    relay.wait_listening(process, ws_port)
    time.sleep(0.5)  # every worker forked
    process.pids = relay.descendants(process.pid)
    return process, ws_port


def start_generators(targets: list[tuple[int, int]], deflate: bool = False) -> list[Any]:
    """One nice'd generator per (port, count); each spreads its connections over every source address."""
    import relay

    sources = ",".join(f"127.0.0.{2 + i}" for i in range(SOURCE_ADDRESSES))
    children = []
    for index, (port, count) in enumerate(targets):
        args = ["nice", "-n", str(NICE), sys.executable, str(Path(__file__).resolve()), "--generate",
                "--port", str(port), "--count", str(count), "--sources", sources,
                "--warmup", str(WARMUP)] + (["--deflate"] if deflate else [])
        children.append(relay.Process(f"load generator {index}", args, lines=True))
    for child in children:
        line = child.line(LINE_TIMEOUT * 5)
        if line != "WARM":
            raise RuntimeError(f"{child.name}: {line}")
    return children


def generator_stats(children: list[Any]) -> dict[str, int]:
    total = {"open": 0, "pings": 0, "closed": 0}
    for child in children:
        child.send("stats")
        fields = dict(part.split("=") for part in child.line().split()[1:])
        for key in total:
            total[key] += int(fields[key])
    return total


def cpu(pids: list[int]) -> float:
    import relay

    return sum(relay.cpu_seconds(pid) for pid in pids)


def run_server(name: str, args: argparse.Namespace, workdir: Path, shares: list[int]) -> dict[str, Any]:
    """Start one server per share, fill each with its idle connections, measure, stop everything."""
    import relay

    result: dict[str, Any] = {"name": name, "instances": len(shares)}
    generators: list[Any] = []
    servers: list[Any] = []
    admin_ports: list[int] = []
    try:
        targets = []
        if name == "sipws" and args.one_instance and len(shares) > 1:
            # One instance: a master and one worker per share (each worker a process with its
            # own open-file limit), every generator aimed at the same port.
            home = workdir / "sipws-0"
            home.mkdir()
            server, port, admin_port, log = start_sipws(home, sum(shares), args.compression, "",
                                                        not args.no_max_connections, workers=len(shares))
            admin_ports.append(admin_port)
            result.update(log=log, instances=1, workers=len(shares))
            servers.append(server)
            targets = [(port, share) for share in shares]
            shares = []
        for index, share in enumerate(shares):
            if name == "sipws":
                home = workdir / f"sipws-{index}"
                home.mkdir()
                profile = f"{args.profile}.{index}" if args.profile else ""
                server, port, admin_port, log = start_sipws(home, share, args.compression, profile,
                                                            not args.no_max_connections)
                admin_ports.append(admin_port)
                result.setdefault("log", log)
            else:
                server, port = start_kamailio(workdir, share)
            servers.append(server)
            targets.append((port, share))
        generators = start_generators(targets, args.compression)
        time.sleep(2)
        for server in servers:
            if name == "kamailio":
                server.pids = relay.descendants(server.pid)
        pids = [pid for server in servers for pid in server.pids]
        result["rss_before"], result["pss_before"] = rss_kb(pids), pss_kb(pids)
        began = time.monotonic()
        for child in generators:
            child.send("go")
        opened, failed, errors = 0, 0, []
        for child in generators:
            fields = child.line(OPEN_TIMEOUT).split(" ", 5)
            values = dict(part.split("=", 1) for part in fields[1:5])
            result["deflated"] = result.get("deflated", 0) + int(values["deflated"])
            opened += int(values["ok"])
            failed += int(values["failed"])
            if int(values["failed"]):
                errors.append(fields[5] if len(fields) > 5 else "")
        result["open_seconds"] = time.monotonic() - began
        result["opened"], result["failed"], result["errors"] = opened, failed, errors
        print(f"  {name}: {opened} open, {failed} failed in {result['open_seconds']:.0f} s"
              + (f" (first error: {errors[0]})" if errors else ""), flush=True)
        if admin_ports:
            deadline = time.monotonic() + OPEN_TIMEOUT
            while sum(map(open_count, admin_ports)) < opened and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
            result["server_count"] = sum(map(open_count, admin_ports))
        # every connection pinged (and answered) at least once before the "after" reading
        time.sleep(TIMEOUT + SETTLE)
        result["rss_after"], result["pss_after"] = rss_kb(pids), pss_kb(pids)
        pings_before = generator_stats(generators)["pings"]
        result["pings_before_after_reading"] = pings_before
        cpu_before, t0 = cpu(pids), time.monotonic()
        time.sleep(args.window)
        result["cpu"] = (cpu(pids) - cpu_before) / (time.monotonic() - t0)
        final = generator_stats(generators)
        result["pings_in_window"] = final["pings"] - pings_before
        result["survived"], result["closed_by_server"] = final["open"], final["closed"]
        if admin_ports:
            result["server_count_end"] = sum(map(open_count, admin_ports))
        result["processes"] = len(pids)
    finally:
        for child in generators:
            try:
                child.send("quit")
                child.proc.wait(relay.STOP_GRACE * 3)
            except Exception:
                pass
            child.stop()
        for server in servers:
            server.stop()
    return result


def per_conn_kb(result: dict[str, Any], key: str) -> float:
    return (result[f"{key}_after"] - result[f"{key}_before"]) * 1024 / 1000 / max(result["opened"], 1)


def describe(r: dict[str, Any], args: argparse.Namespace) -> None:
    """One server's figures (printed as soon as it has run)."""
    print(f"{r['name']} ({r['instances']} instance{'s' if r['instances'] > 1 else ''}, {r['processes']} "
          f"process{'es' if r['processes'] > 1 else ''}): {r['opened']} opened, {r['failed']} failed, "
          f"{r['survived']} still open at the end ({r['closed_by_server']} closed by the server)"
          + (f"; admin stats: {r.get('server_count')} open after opening, {r.get('server_count_end')} at the end"
             if 'server_count' in r else ""))
    print(f"  Pings answered before the 'after' reading: {r['pings_before_after_reading']}; "
          f"permessage-deflate accepted on {r.get('deflated', 0)}")
    print(f"  RSS {r['rss_before'] / 1024:.1f} -> {r['rss_after'] / 1024:.1f} MiB: "
          f"{per_conn_kb(r, 'rss'):.2f} KB/conn;  Pss {r['pss_before'] / 1024:.1f} -> "
          f"{r['pss_after'] / 1024:.1f} MiB: {per_conn_kb(r, 'pss'):.2f} KB/conn")
    pings = r["pings_in_window"] / args.window
    per_ping = r["cpu"] / pings * 1e6 if pings else float("nan")
    print(f"  idle CPU over {args.window} s: {r['cpu'] * 100:.2f} % of a core "
          f"({pings:.0f} Pings answered/s, {per_ping:.1f} us CPU per Ping+Pong); per 10,000 connections "
          f"{r['cpu'] * 100 * 10000 / max(r['opened'], 1):.3f} %"
          + ("" if TIMEOUT == DEFAULT_TIMEOUT else f"; scaled to [keepalive] timeout = "
             f"{DEFAULT_TIMEOUT}: {r['cpu'] * TIMEOUT / DEFAULT_TIMEOUT * 100:.2f} %"), flush=True)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """sipws against the budget and against the reference."""
    print()
    sipws = next(r for r in results if r["name"] == "sipws")
    kb, core = per_conn_kb(sipws, "rss"), sipws["cpu"]
    print(f"sipws against the budget: {kb:.2f} KB/conn (<= {BUDGET_KB:.0f}: {'MET' if kb <= BUDGET_KB else 'NOT MET'}), "
          f"keep-alive {core * 100:.2f} % of a core at timeout {TIMEOUT} s "
          f"(< {BUDGET_CORE * 100:.0f} %: {'MET' if core < BUDGET_CORE else 'NOT MET'}), "
          f"{sipws['survived']} of {args.connections} held")
    kam = next((r for r in results if r["name"] == "kamailio"), None)
    if kam is not None:
        sipws_cpu = sipws["cpu"] / max(sipws["opened"], 1)
        kam_cpu = kam["cpu"] / max(kam["opened"], 1)
        print(f"ratio sipws / kamailio, per connection: Pss {per_conn_kb(sipws, 'pss') / per_conn_kb(kam, 'pss'):.2f}, "
              f"idle CPU {sipws_cpu / kam_cpu if kam_cpu else float('nan'):.2f}")


def fd_line(log: Path) -> str:
    """The start-up line of sipws.fdlimit (twistd rotates its log file at 1 MB: read every part)."""
    for part in sorted(log.parent.glob(log.name + "*")):
        for line in part.read_text(errors="replace").splitlines():
            if "open-file limit" in line:
                return line
    return "(no open-file limit line in the log)"


def main(argv: list[str]) -> int:
    global TIMEOUT  # --keepalive-timeout sets it for every function below
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--window", type=int, default=0,
                        help=f"seconds of idle CPU measured (default {IDLE_WINDOW}, at least one keep-alive timeout)")
    parser.add_argument("--keepalive-timeout", type=int, default=TIMEOUT,
                        help=f"[keepalive] timeout of both servers (default {TIMEOUT}; sipws's own default is "
                             f"{DEFAULT_TIMEOUT})")
    parser.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    parser.add_argument("--one-instance", action="store_true",
                        help="when one process cannot hold them all: one sipws instance with a worker per "
                             "share ([server] workers) instead of independent instances")
    parser.add_argument("--compression", action="store_true", help="sipws with [ws] compression = true")
    parser.add_argument("--profile", default="", help="cProfile each sipws instance into FILE.N")
    parser.add_argument("--no-max-connections", action="store_true",
                        help="leave [ws] max_connections out (to measure versions without the key)")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sources", default="127.0.0.2", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deflate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    TIMEOUT = args.keepalive_timeout
    if TIMEOUT < 1:
        parser.error("--keepalive-timeout: at least 1 second")
    # a window shorter than the timeout would see only part of one round of Pings
    args.window = args.window or max(IDLE_WINDOW, TIMEOUT)
    if args.generate:
        return generate(args)
    limit = raise_file_limit(args.connections + WARMUP + GENERATOR_SPARE_FILES)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_instance = hard - FD_RESERVE - INSTANCE_MARGIN
    instances = max(1, -(-args.connections // per_instance))
    shares = [args.connections // instances + (1 if i < args.connections % instances else 0) for i in range(instances)]
    print(f"{args.connections} idle ws connections, [keepalive] timeout = {TIMEOUT} s"
          + (", [ws] compression = true" if args.compression else "") + f"; {_limits.NOTE}", flush=True)
    if instances > 1:
        print(f"open-file limit here: soft {limit}, hard {hard} (cannot be raised: no CAP_SYS_RESOURCE?); "
              f"one process holds at most {per_instance} connections ({FD_RESERVE} descriptors kept by sipws): "
              + (f"one sipws instance with {instances} workers of about {shares[0]} connections each "
                 f"([server] workers), {instances} load generators; " if args.one_instance else
                 f"{instances} sipws instances of {shares[0]} connections, one load generator each; ")
              + f"the Kamailio reference holds {shares[0]} (its tcp_main has the same limit)", flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="sipws-idle-") as tmp:
        workdir = Path(tmp)
        results.append(run_server("sipws", args, workdir, shares))
        print(f"  sipws logged: {fd_line(results[0]['log'])}")
        describe(results[0], args)
        if not args.no_kamailio:
            results.append(run_server("kamailio", args, workdir, shares[:1]))
            describe(results[-1], args)
            tail = workdir / "kamailio" / "kamailio.log"
            errors = [line for line in tail.read_text(errors="replace").splitlines() if "ERROR" in line]
            if errors:
                print(f"  kamailio logged {len(errors)} errors, first: {errors[0].strip()}")
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
