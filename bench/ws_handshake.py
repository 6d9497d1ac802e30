"""Benchmark: WebSocket opening handshakes per second and server CPU per handshake (not a test).

sipws (``build_service`` with ``config_from_dict``, info-level logging to a file, as an
operator runs it) and, as the reference measured in the same run with the same load
generator, a bare Autobahn ``WebSocketServerProtocol`` echo server (subprotocol "sip",
same Twisted epoll reactor, logging to a file too) each run in a subprocess.  The load
generator (another process, asyncio) runs N complete connection cycles, C at a time:
TCP connect (TLS too for wss), upgrade with ``Sec-WebSocket-Protocol: sip`` and an Origin,
check the 101, send Close 1000, wait until the server closes TCP.  A warm-up of
``WARMUP`` cycles precedes the measurement.  bare and sipws runs alternate ``ROUNDS`` times
and the run with the least CPU per handshake of each is reported.  Server CPU is utime + stime from
/proc/PID/stat (10 ms ticks) over the measured cycles.

Both ``handshakes/s`` and ``CPU per handshake`` are printed with the sipws / reference
ratio.  On a 2-core machine the Python load generator can be the limit for the rate; its
CPU use is printed so this can be seen, and CPU per handshake is the steadier figure.

Run: .venv/bin/python bench/ws_handshake.py [--count 3000] [--wss-count 1000]
     [--concurrency 8] [--rounds 3] [--quick]
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

WARMUP = 200
#: Alternating bare / sipws runs; the best of each is kept (the machine may be shared).
ROUNDS = 3
QUICK = {"count": 600, "wss_count": 200}
#: What sipws may cost per handshake relative to bare Autobahn before it is worth a look;
#: printed for comparison only (the issue asks for the ratio, not a bound).
WATCH_RATIO = 1.5


def measure(kind: str, transport: str, count: int, concurrency: int, cert: str, key: str, logdir: Path) -> dict:
    tls = transport == "wss"
    server, ws_port, wss_port = _wsload.start_server(
        kind, cert if tls else "", key if tls else "", log=str(logdir / f"hs-{kind}-{transport}.log")
    )
    try:
        port = wss_port if tls else ws_port
        extra = ["--tls"] if tls else []
        warm = _wsload.Child(["cycle", "--port", str(port), "--count", str(min(WARMUP, count)),
                              "--concurrency", str(concurrency), *extra], "warm-up")
        warm.expect("{")
        warm.stop()
        time.sleep(0.3)
        cpu_before = _wsload.cpu_seconds(server.pid)
        load = _wsload.Child(["cycle", "--port", str(port), "--count", str(count),
                              "--concurrency", str(concurrency), *extra], "load generator")
        line = load.expect("{")
        client_cpu = _wsload.cpu_seconds(load.pid)
        time.sleep(0.3)  # let the last closes finish on the server side
        cpu = _wsload.cpu_seconds(server.pid) - cpu_before
        load.stop()
        open_left = int(server.ask("count"))
    finally:
        server.stop()
    result = json.loads(line)
    if result["failed"] or open_left:
        print(f"  warning: {kind} {transport}: {result['failed']} cycles failed, {open_left} left open")
    ok = max(result["ok"], 1)
    return {
        "kind": kind,
        "count": result["ok"],
        "rate": ok / result["seconds"],
        "cpu_ms": cpu / ok * 1e3,
        "server_busy": cpu / result["seconds"],
        "client_busy": client_cpu / result["seconds"],
        "median_ms": result["median_upgrade_ms"],
    }


def report(transport: str, sipws: dict, bare: dict) -> None:
    for row in (bare, sipws):
        name = "bare autobahn (reference)" if row["kind"] == "bare" else "sipws"
        print(f"  {transport} {name:26s}: {row['rate']:7.0f} handshakes/s, {row['cpu_ms']:6.3f} ms server CPU "
              f"per handshake (server {row['server_busy'] * 100:3.0f}% of a core, load generator "
              f"{row['client_busy'] * 100:3.0f}%), median connect+upgrade {row['median_ms']:.2f} ms")
    cpu_ratio = sipws["cpu_ms"] / bare["cpu_ms"] if bare["cpu_ms"] else float("nan")
    rate_ratio = sipws["rate"] / bare["rate"]
    note = "within" if cpu_ratio <= WATCH_RATIO else "above"
    print(f"  {transport} sipws / reference: CPU per handshake x{cpu_ratio:.2f} ({note} the x{WATCH_RATIO} "
          f"watch line), handshakes/s x{rate_ratio:.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="WebSocket handshakes/s and CPU per handshake, sipws vs bare Autobahn")
    parser.add_argument("--count", type=int, default=3000, help="ws cycles per server (default 3000)")
    parser.add_argument("--wss-count", type=int, default=1000, help="wss cycles per server (default 1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="cycles in flight (default 8)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"alternate bare/sipws runs, keep each one's best (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run: {QUICK['count']} ws, {QUICK['wss_count']} wss")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.wss_count = QUICK["count"], QUICK["wss_count"]
    _wsload.raise_file_limit()
    print(_wsload._limits.NOTE)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sipws-bench-") as tmp:
        tmpdir = Path(tmp)
        cert, key = _wsload.make_certificate(tmpdir / "pki")
        for transport, count in (("ws", args.count), ("wss", args.wss_count)):
            if count <= 0:
                continue
            print(f"{transport}: {count} connect/upgrade/close cycles per server, {args.concurrency} at a time")
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for kind in ("bare", "sipws"):
                    row = measure(kind, transport, count, args.concurrency, cert, key, tmpdir)
                    if kind not in best or row["cpu_ms"] < best[kind]["cpu_ms"]:
                        best[kind] = row
            report(transport, best["sipws"], best["bare"])
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
