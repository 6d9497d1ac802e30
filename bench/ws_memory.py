"""Benchmark: server memory per idle WebSocket connection (not a test).

sipws (``build_service`` with ``config_from_dict``: ws and wss on 127.0.0.1:0, no SIP
sockets, no admin) runs in a subprocess; a load generator in another process opens N idle
connections (upgrade with ``Sec-WebSocket-Protocol: sip`` and an Origin, from many
127.0.0.x source addresses).  The server's VmRSS is read from /proc before (after a
warm-up of 50 connections opened and reset) and after; the growth divided by N is the
cost of one idle connection.  Reference, in the same run, with the same load generator:
a bare Autobahn ``WebSocketServerProtocol`` echo server accepting subprotocol "sip".
Every server starts fresh, so no measurement reuses memory freed by another.

Targets (issue 2): at most 12 KB per ws connection and 40 KB per wss connection.
Kernel socket buffers are not in RSS and are not counted (for either server).

Run: .venv/bin/python bench/ws_memory.py [--count 10000] [--wss-count 2000] [--quick]
     [--diagnose]  (sipws again under tracemalloc: where the per-connection memory goes)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _wsload  # noqa: E402

TARGET_KB = {"ws": 12.0, "wss": 40.0}
#: Seconds the server is left alone before its RSS is read.
SETTLE = 1.0
WARMUP = 50
QUICK = {"count": 1000, "wss_count": 200}


def measure(kind: str, transport: str, count: int, cert: str, key: str, logdir: Path) -> dict:
    """Open ``count`` idle connections to a fresh server; RSS before and after, in KiB."""
    tls = transport == "wss"
    server, ws_port, wss_port = _wsload.start_server(
        kind, cert if tls else "", key if tls else "", log=str(logdir / f"{kind}-{transport}.log")
    )
    load = None
    try:
        port = wss_port if tls else ws_port
        args = ["hold", "--port", str(port), "--count", str(count), "--warmup", str(WARMUP)]
        load = _wsload.Child(args + (["--tls"] if tls else []), "load generator")
        load.expect("WARM")
        time.sleep(SETTLE)
        before = _wsload.rss_kb(server.pid)
        load.send("go")
        opened = load.expect("OPEN")
        fields = dict(part.split("=") for part in opened.split()[1:])
        ok, failed = int(fields["ok"]), int(fields["failed"])
        time.sleep(SETTLE)
        seen = int(server.ask("count"))
        after = _wsload.rss_kb(server.pid)
        anatomy = json.loads(server.ask("anatomy"))
        load.send("close")
        load.expect("CLOSED")
    finally:
        if load is not None:
            load.stop()
        server.stop()
    if failed or seen != ok:
        print(f"  warning: {kind} {transport}: {failed} connections failed, server sees {seen} of {ok}")
    return {
        "kind": kind,
        "transport": transport,
        "count": ok,
        "before_kb": before,
        "after_kb": after,
        "per_conn_kb": (after - before) / max(ok, 1) * 1024 / 1000,  # KiB -> KB (1000 bytes)
        "open_seconds": float(fields["seconds"]),
        "anatomy": anatomy,
    }


def report(transport: str, sipws: dict, bare: dict) -> None:
    ratio = sipws["per_conn_kb"] / bare["per_conn_kb"] if bare["per_conn_kb"] > 0 else float("nan")
    target = TARGET_KB[transport]
    verdict = "MET" if sipws["per_conn_kb"] <= target else "NOT MET"
    for row in (bare, sipws):
        name = "bare autobahn (reference)" if row["kind"] == "bare" else "sipws"
        print(f"  {transport} {name:26s}: {row['count']:6d} conns, RSS {row['before_kb'] / 1024:7.1f} -> "
              f"{row['after_kb'] / 1024:7.1f} MiB, {row['per_conn_kb']:6.2f} KB/conn "
              f"(opened in {row['open_seconds']:.1f} s)")
    print(f"  {transport} sipws / reference ratio: {ratio:.2f}; target <= {target:.0f} KB/conn: {verdict}")


def diagnose(count: int, logdir: Path) -> None:
    """sipws with tracemalloc: the allocation sites that grow with idle ws connections."""
    server, ws_port, _ = _wsload.start_server("sipws", log=str(logdir / "diagnose.log"), trace_memory=True)
    load = None
    try:
        load = _wsload.Child(["hold", "--port", str(ws_port), "--count", str(count), "--warmup", str(WARMUP)],
                             "load generator")
        load.expect("WARM")
        server.ask("snap")
        load.send("go")
        load.expect("OPEN")
        time.sleep(SETTLE)
        rows = json.loads(server.ask("top 20"))
        load.send("close")
        load.expect("CLOSED")
    finally:
        if load is not None:
            load.stop()
        server.stop()
    total = sum(row["size_diff"] for row in rows)
    print(f"tracemalloc, sipws ws, {count} idle connections: top allocation sites "
          f"(bytes per connection; listed total {total / count:.0f} B/conn)")
    for row in rows:
        print(f"  {row['size_diff'] / count:8.0f} B  {row['count_diff'] / count:5.1f} blocks  {row['where']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="RSS per idle WebSocket connection, sipws vs bare Autobahn")
    parser.add_argument("--count", type=int, default=10_000, help="idle ws connections (default 10000)")
    parser.add_argument("--wss-count", type=int, default=2_000, help="idle wss connections (default 2000)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run: {QUICK['count']} ws, {QUICK['wss_count']} wss")
    parser.add_argument("--diagnose", action="store_true", help="also run sipws under tracemalloc")
    parser.add_argument("--anatomy", action="store_true", help="print what one connection's objects hold")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.wss_count = QUICK["count"], QUICK["wss_count"]
    _wsload.raise_file_limit()
    print(_wsload._limits.NOTE)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sipws-bench-") as tmp:
        tmpdir = Path(tmp)
        cert, key = _wsload.make_certificate(tmpdir / "pki")
        results = {}
        for transport, count in (("ws", args.count), ("wss", args.wss_count)):
            if count <= 0:
                continue
            print(f"{transport}: {count} idle connections per server")
            bare = measure("bare", transport, count, cert, key, tmpdir)
            sipws = measure("sipws", transport, count, cert, key, tmpdir)
            report(transport, sipws, bare)
            results[transport] = (sipws, bare)
        if args.anatomy:
            for transport, (sipws, bare) in results.items():
                for row in (sipws, bare):
                    print(f"objects of one open {transport} connection, {row['kind']} (bytes, shallow):")
                    for name, size in row["anatomy"].items():
                        print(f"  {size:7d}  {name}")
        if args.diagnose:
            diagnose(min(args.count, 2000), tmpdir)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
