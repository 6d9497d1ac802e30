"""Shared machinery of the WebSocket benchmarks (not a bench itself: ``make bench`` runs it
with no arguments, which only prints this usage).

Servers and the load generator run in their own processes, so the server's RSS and CPU
(read from /proc/PID) contain nothing of the client's work.

``python bench/_wsload.py serve sipws|bare [--cert C --key K] [--log FILE] [--tracemalloc]
[--profile FILE]``
    A server on 127.0.0.1:0, ws (and wss when a certificate is given), epoll reactor.
    ``sipws``: ``sipws.tap.build_service`` with ``config_from_dict``; ``bare``: a plain
    Autobahn ``WebSocketServerProtocol`` echo server that accepts subprotocol "sip".
    Prints ``READY ws=PORT wss=PORT``, then answers one-line commands on stdin with one
    line on stdout: ``count`` (open WebSocket connections), ``snap`` / ``top N``
    (tracemalloc baseline / growth since it, JSON), ``anatomy`` (sizes of what one
    open connection holds, JSON), ``quit``.

``python bench/_wsload.py hold --port P --count N [--tls] [--warmup W]``
    Opens and closes W warm-up connections, prints ``WARM``, waits for a line on stdin,
    opens N idle connections (upgrade with ``Sec-WebSocket-Protocol: sip`` and an Origin),
    prints ``OPEN ok=N failed=F seconds=S``, waits for a line, resets them all (RST),
    prints ``CLOSED``.

``python bench/_wsload.py cycle --port P --count N [--tls] [--concurrency C]``
    N connect / upgrade / Close 1000 / wait-for-server-close cycles, C at a time;
    prints one JSON line.

Connections come from 127.0.0.2 ... 127.0.0.(1 + SOURCE_ADDRESSES) in turn, so neither
ephemeral ports nor TIME_WAIT run short however many connections the benches make.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _limits  # noqa: E402 - bench/ is not a package

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
#: Loopback source addresses the load generator spreads its connections over.
SOURCE_ADDRESSES = 200
#: Open file descriptors wanted in every benchmark process (servers and clients).
WANTED_FILES = 65536
#: Upgrades in flight at once while the load generator fills a server.
OPEN_CONCURRENCY = 200
#: Seconds any single connection step may take in the load generator.
STEP_TIMEOUT = 20.0
#: Seconds to wait for a server or load generator to answer a command.
COMMAND_TIMEOUT = 180.0
#: Linux IP_BIND_ADDRESS_NO_PORT: bind the source address, pick the port at connect.
IP_BIND_ADDRESS_NO_PORT = 24
ORIGIN = "https://phone.example.com"
#: A client Close frame, code 1000, masked with a zero key (RFC 6455 §5.3 allows any key).
CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", 1000)


def raise_file_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (max(WANTED_FILES, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
        except (ValueError, OSError):
            continue
    return soft


# -- reading another process ------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- driving the child processes from a bench -------------------------------------


class Child:
    """A benchmark subprocess spoken to one line at a time."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=str(ROOT_DIR),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """The next stdout line; it must start with ``prefix``."""
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.kill()
                raise RuntimeError(f"{self.name}: no {prefix!r} within {timeout}s")
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.kill()
            err = self.proc.stderr.read()[-3000:]
            raise RuntimeError(f"{self.name}: expected {prefix!r}, got {line!r}\n{err}")
        return line.strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        self.send(command)
        return self.expect("", timeout)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass


def start_server(kind: str, cert: str = "", key: str = "", log: str = "", trace_memory: bool = False,
                 profile: str = "") -> tuple[Child, int, int]:
    """A server subprocess; returns (child, ws port, wss port or 0)."""
    args = ["serve", kind]
    if profile:
        args += ["--profile", profile]
    if cert:
        args += ["--cert", cert, "--key", key]
    if log:
        args += ["--log", log]
    if trace_memory:
        args.append("--tracemalloc")
    child = Child(args, f"{kind} server")
    ready = child.expect("READY", timeout=60)
    ports = dict(part.split("=") for part in ready.split()[1:])
    return child, int(ports["ws"]), int(ports.get("wss", 0))


def make_certificate(directory: Path) -> tuple[str, str]:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1 (tests/certs.py)."""
    sys.path.insert(0, str(ROOT_DIR))
    from tests.certs import CertificateAuthority

    issued = CertificateAuthority(directory).issue("server", ["localhost", "127.0.0.1"])
    return issued.cert, issued.key


# -- servers ----------------------------------------------------------------------


def serve(kind: str, cert: str, key: str, log_path: str, trace_memory: bool, profile: str = "") -> None:
    if trace_memory:
        import tracemalloc

        tracemalloc.start(1)
    raise_file_limit()
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # What an operator gets at [log] level = info: every event formatted into a file.
    # Starting logging also empties Twisted's start-up buffer, which would otherwise
    # keep the last 65536 log events in memory and count them as per-connection RSS.
    out = open(log_path or os.devnull, "a", encoding="utf-8")
    observer = FilteringLogObserver(textFileLogObserver(out), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    if kind == "sipws":
        ws_port, wss_port, count, anatomy = _start_sipws(cert, key)
    elif kind == "bare":
        ws_port, wss_port, count, anatomy = _start_bare(reactor, cert, key)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")

    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    state: dict[str, Any] = {}

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            words = line.decode().split()
            if not words:
                return
            command = words[0]
            if command == "count":
                answer = str(count())
            elif command == "anatomy":
                answer = json.dumps(anatomy())
            elif command == "snap":
                import tracemalloc

                gc.collect()
                state["snapshot"] = tracemalloc.take_snapshot()
                answer = "ok"
            elif command == "top":
                answer = json.dumps(_tracemalloc_top(state["snapshot"], int(words[1]) if len(words) > 1 else 15))
            elif command == "quit":
                sys.stdout.write("bye\n")
                sys.stdout.flush()
                reactor.stop()
                return
            else:
                answer = f"error unknown command {command}"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())
    ports = f"ws={ws_port}" + (f" wss={wss_port}" if wss_port else "")
    sys.stdout.write(f"READY {ports}\n")
    sys.stdout.flush()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    reactor.run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    os._exit(0)  # skip the graceful 1001 for thousands of connections


def _start_sipws(cert: str, key: str):
    from sipws.config import config_from_dict
    from sipws.tap import build_service
    from sipws.transport.connections import OPEN

    data: dict[str, Any] = {"ws": {"listen": ["127.0.0.1:0"]}, "sip": {"listen": []}, "admin": {"listen": ""},
                            "limits": dict(_limits.OFF)}
    if cert:
        data["wss"] = {"listen": ["127.0.0.1:0"], "certificate": cert, "private_key": key}
    root = build_service(config_from_dict(data))
    root.privilegedStartService()
    root.startService()
    ws_port = root.listening("ws")[0].getHost().port
    wss_port = root.listening("wss")[0].getHost().port if cert else 0

    def count() -> int:
        return sum(1 for record in root.connections.values() if record.state == OPEN)

    def anatomy() -> dict[str, Any]:
        records = [r for r in root.connections.values() if r.state == OPEN][:2]
        protocols = [r.protocol for r in records]
        result = _anatomy(protocols)
        if records:
            result["ConnectionRecord (slots, shallow)"] = sys.getsizeof(records[0])
        return result

    return ws_port, wss_port, count, anatomy


def _start_bare(reactor: Any, cert: str, key: str):
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket.types import ConnectionDeny

    opened = [0]

    class BareProtocol(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> str:
            if "sip" in request.protocols:
                return "sip"
            raise ConnectionDeny(400, "subprotocol sip required")

        def onOpen(self) -> None:
            opened[0] += 1
            self.bench_open = True

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            if getattr(self, "bench_open", False):
                self.bench_open = False
                opened[0] -= 1

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = BareProtocol
    ws_port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1").getHost().port
    wss_port = 0
    if cert:
        from twisted.internet import ssl as tssl

        pem = Path(cert).read_bytes() + b"\n" + Path(key).read_bytes()
        options = tssl.PrivateCertificate.loadPEM(pem).options()
        secure = WebSocketServerFactory()
        secure.protocol = BareProtocol
        wss_port = reactor.listenSSL(0, secure, options, backlog=1024, interface="127.0.0.1").getHost().port

    def anatomy() -> dict[str, Any]:
        protocols = [
            o for o in gc.get_objects() if isinstance(o, BareProtocol) and o.state == BareProtocol.STATE_OPEN
        ][:2]
        return _anatomy(protocols)

    return ws_port, wss_port, (lambda: opened[0]), anatomy


def _tracemalloc_top(before: Any, limit: int) -> list[dict[str, Any]]:
    import tracemalloc

    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    rows = []
    for stat in after.compare_to(before, "lineno")[:limit]:
        frame = stat.traceback[0]
        rows.append({"where": f"{_short(frame.filename)}:{frame.lineno}", "size_diff": stat.size_diff,
                     "count_diff": stat.count_diff})
    return rows


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/sipws/", "lib/python3"):
        index = filename.find(marker)
        if index >= 0:
            return filename[index:]
    return filename


def _sizes(first: Any, second: Any, label: str) -> dict[str, int]:
    """Shallow sizes of the attributes of ``first`` that it does not share with ``second``."""
    out = {f"{label} object": sys.getsizeof(first)}
    attrs = getattr(first, "__dict__", None)
    if attrs is None:
        return out
    out[f"{label}.__dict__ ({len(attrs)} attributes)"] = sys.getsizeof(attrs)
    other = getattr(second, "__dict__", {}) if second is not None else {}
    for name, value in attrs.items():
        if name in other and other[name] is value:
            continue  # shared (factory, reactor, interned constants)
        size = sys.getsizeof(value)
        if isinstance(value, (list, tuple, set, dict)):
            items = value.values() if isinstance(value, dict) else value
            size += sum(sys.getsizeof(item) for item in items)
        if size >= 64 or isinstance(value, (bytes, bytearray, list, dict, set)):
            out[f"{label}.{name} ({type(value).__name__})"] = size
    return out


def _anatomy(protocols: list[Any]) -> dict[str, Any]:
    """What one open connection holds, in bytes, as Python sees it (OpenSSL's C memory excluded)."""
    if not protocols:
        return {}
    first = protocols[0]
    second = protocols[1] if len(protocols) > 1 else None
    result = _sizes(first, second, type(first).__name__)
    transport = first.transport
    other_transport = second.transport if second is not None else None
    result.update(_sizes(transport, other_transport, type(transport).__name__))
    inner = getattr(transport, "transport", None)
    if inner is not None:  # TLS: TLSMemoryBIOProtocol over a tcp.Server
        result.update(_sizes(inner, getattr(other_transport, "transport", None), type(inner).__name__))
    return dict(sorted(result.items(), key=lambda item: -item[1]))


# -- load generator -----------------------------------------------------------------


def _client_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench measures the server, not the checks
    return context


def _request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
        f"Origin: {ORIGIN}\r\nUser-Agent: sipws-bench\r\n\r\n"
    ).encode()


class _Upgrade(asyncio.Protocol):
    """The client side of one connection: sends the upgrade, checks the 101, then idles."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.upgraded: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.upgraded.done():
            return  # frames after the upgrade (Close, Ping) are not looked at
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        if head.startswith(b"http/1.1 101") and b"\r\nsec-websocket-protocol: sip" in head:
            self.upgraded.set_result(None)
        else:
            self.upgraded.set_exception(ConnectionError(self.buffer[:end].split(b"\r\n")[0].decode()))
        self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before 101"))
        if not self.closed.done():
            self.closed.set_result(None)


class _Generator:
    def __init__(self, port: int, tls: bool) -> None:
        self.port = port
        self.tls = _client_tls() if tls else None
        self.loop = asyncio.get_running_loop()
        self.next_source = 0

    def _source(self) -> str:
        self.next_source = (self.next_source + 1) % SOURCE_ADDRESSES
        return f"127.0.0.{2 + self.next_source}"

    async def open(self) -> _Upgrade:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self._source(), 0))
            sock.setblocking(False)
            await self.loop.sock_connect(sock, ("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        protocol = _Upgrade(_request(self.port), self.loop)
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs = {"ssl": self.tls, "server_hostname": "localhost"}
        await self.loop.create_connection(lambda: protocol, sock=sock, **kwargs)
        await protocol.upgraded
        return protocol


def _reset(protocol: _Upgrade) -> None:
    """Drop a connection with RST: the server sees it at once and no TIME_WAIT is left."""
    transport = protocol.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


async def _open_many(generator: _Generator, count: int) -> tuple[list[_Upgrade], int]:
    limit = asyncio.Semaphore(OPEN_CONCURRENCY)
    opened: list[_Upgrade] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with limit:
            try:
                opened.append(await asyncio.wait_for(generator.open(), STEP_TIMEOUT))
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                failed += 1
                if failed <= 3:
                    print(f"open failed: {exc!r}", file=sys.stderr)

    await asyncio.gather(*(one() for _ in range(count)))
    return opened, failed


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def hold(port: int, count: int, tls: bool, warmup: int) -> None:
    generator = _Generator(port, tls)
    warm, _ = await _open_many(generator, warmup)
    for protocol in warm:
        _reset(protocol)
    print("WARM", flush=True)
    await _stdin_line()
    started = time.perf_counter()
    opened, failed = await _open_many(generator, count)
    print(f"OPEN ok={len(opened)} failed={failed} seconds={time.perf_counter() - started:.2f}", flush=True)
    await _stdin_line()
    for protocol in opened:
        _reset(protocol)
    await asyncio.sleep(0.2)
    print("CLOSED", flush=True)
    await _stdin_line()


async def cycle(port: int, count: int, tls: bool, concurrency: int) -> None:
    generator = _Generator(port, tls)
    remaining = [count]
    failures = [0]
    latencies: list[float] = []

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            began = time.perf_counter()
            try:
                protocol = await asyncio.wait_for(generator.open(), STEP_TIMEOUT)
                latencies.append(time.perf_counter() - began)
                protocol.transport.write(CLOSE_1000)
                await asyncio.wait_for(protocol.closed, STEP_TIMEOUT)
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                failures[0] += 1
                if failures[0] <= 3:
                    print(f"cycle failed: {exc!r}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    median = latencies[len(latencies) // 2] if latencies else 0.0
    print(json.dumps({"ok": count - failures[0], "failed": failures[0], "seconds": elapsed,
                      "median_upgrade_ms": median * 1e3}), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve")
    server.add_argument("kind", choices=["sipws", "bare"])
    server.add_argument("--cert", default="")
    server.add_argument("--key", default="")
    server.add_argument("--log", default="")
    server.add_argument("--tracemalloc", action="store_true")
    server.add_argument("--profile", default="", help="write cProfile stats of the run to this file")
    for name in ("hold", "cycle"):
        load = sub.add_parser(name)
        load.add_argument("--port", type=int, required=True)
        load.add_argument("--count", type=int, required=True)
        load.add_argument("--tls", action="store_true")
        load.add_argument("--warmup", type=int, default=50)
        load.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command is None:
        print(__doc__.strip())
        return 0
    if args.command == "serve":
        serve(args.kind, args.cert, args.key, args.log, args.tracemalloc, args.profile)
        return 0
    raise_file_limit()
    if args.command == "hold":
        asyncio.run(hold(args.port, args.count, args.tls, args.warmup))
    else:
        asyncio.run(cycle(args.port, args.count, args.tls, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
