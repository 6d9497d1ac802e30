"""Benchmark: how new connections spread over worker processes (not a test).

Why: the master of ``[server] workers = N`` gives each worker its own listening
socket in one ``SO_REUSEPORT`` group, rather than one socket all workers accept
on.  This measures both ways with the same load, in the same run:

- **shared**: one listening socket inherited by N processes, each accepting on
  it from its own epoll loop (what ``adoptStreamPort`` of one fd gives);
- **reuseport**: N sockets bound to the same port with ``SO_REUSEPORT``, one per
  process (what sipws does; the kernel hashes each connection's addresses);
- **sipws**: a real sipws with ``[server] workers = N``, counting connections
  per worker from the admin ``ws.dump`` (the ``worker`` field).

The client opens M connections **one at a time** (connect, wait for the
answer, close) — the case where a shared queue does worst, since the same idle
worker tends to win every wake-up — and, for the raw modes, each accepting
process answers with its index.  Printed: connections per worker, and the
balance min/max (1.0 = perfectly even).

Run: .venv/bin/python bench/accept_spread.py [--workers 2] [--connections 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _limits  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parent.parent
TWISTD = ROOT / ".venv" / "bin" / "twistd"
if not TWISTD.exists():
    TWISTD = Path(sys.executable).parent / "twistd"
#: Seconds to wait for a process to be ready, and for each connection.
START_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0


def acceptor(index: int, fd: int) -> None:
    """A child: accept on ``fd`` from an epoll loop, answer each connection with the index."""
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    answer = str(index).encode()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for _ in poller.poll():
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue  # another process took it (thundering herd)
            conn.sendall(answer)
            conn.close()


def run_raw(mode: str, workers: int, connections: int) -> list[int]:
    sockets: list[socket.socket] = []
    if mode == "shared":
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.bind(("127.0.0.1", 0))
        shared.listen(1024)
        sockets = [shared] * workers
    else:
        port = 0
        for _ in range(workers):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(1024)
            port = sock.getsockname()[1]
            sockets.append(sock)
    port = sockets[0].getsockname()[1]
    children = []
    for index, sock in enumerate(sockets):
        pid = os.fork()
        if pid == 0:
            try:
                acceptor(index, sock.fileno())
            finally:
                os._exit(0)
        children.append(pid)
    counts = [0] * workers
    try:
        time.sleep(0.3)
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT) as conn:
                counts[int(conn.recv(16))] += 1
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        for sock in set(sockets):
            sock.close()
    return counts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sipws(workers: int, connections: int) -> list[int]:
    ws_port, admin_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sipws.toml"
        config.write_text(f'[server]\nworkers = {workers}\n[ws]\nlisten = ["127.0.0.1:{ws_port}"]\n'
                          f'[http]\nrequire_origin = false\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
                          f'upstream = "sip:127.0.0.1:9;transport=udp"\n'
                          f'[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\n[log]\nlevel = "warn"\n'
                          + _limits.TOML)
        log = open(Path(tmp) / "log", "wb")
        process = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "sipws", "--config", str(config)],
                                   cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _all_ready(admin_port, workers):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("sipws did not start: " + (Path(tmp) / "log").read_text()[-2000:])
                time.sleep(0.2)
            held = []
            request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{ws_port}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n").encode()
            for _ in range(connections):
                conn = socket.create_connection(("127.0.0.1", ws_port), timeout=CONNECT_TIMEOUT)
                conn.sendall(request)
                if b" 101 " not in conn.recv(4096):
                    raise SystemExit("a handshake failed")
                held.append(conn)
            dump = _rpc(admin_port, "ws.dump", limit=connections)
            counts = [0] * workers
            for entry in dump["connections"]:
                counts[entry["worker"]] += 1
            for conn in held:
                conn.close()
            return counts
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _rpc(port: int, method: str, **params) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rpc", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["result"]


def _all_ready(port: int, workers: int) -> bool:
    try:
        listing = _rpc(port, "workers")["workers"]
    except (OSError, KeyError, ValueError):
        return False
    return sum(1 for w in listing if w["state"] == "ready") == workers


def balance(counts: list[int]) -> float:
    return min(counts) / max(counts) if max(counts) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.connections} connections opened one at a time over {args.workers} acceptors; sipws: {_limits.NOTE}")
    results = {}
    for mode in ("shared", "reuseport"):
        results[mode] = run_raw(mode, args.workers, args.connections)
    results["sipws"] = run_sipws(args.workers, min(args.connections, 1000))
    for mode, counts in results.items():
        print(f"  {mode:<10} per worker {counts}  balance min/max {balance(counts):.2f}")
    print(f"ratio reuseport/shared balance: {balance(results['reuseport']) / max(balance(results['shared']), 1e-9):.2f}")


if __name__ == "__main__":
    main()
