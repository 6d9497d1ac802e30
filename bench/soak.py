"""Soak benchmark (not a test): sipws in standalone mode as a real subprocess
(``.venv/bin/sipws --config F``) under a steady mix of SIP traffic for a long time.

N WebSocket clients (one asyncio process, raw sockets, bench/_sipload.py) register with
sipws and exchange, through it: REGISTER refreshes, OPTIONS to the server, MESSAGEs to
each other, and calls (INVITE / 180 / 200 / ACK / BYE / 200).  A call counts only when
both ends saw the right messages (the callee the INVITE, ACK and BYE; the caller the 180,
200 and the BYE's 200); a MESSAGE only when the peer saw it and the sender got 200.
Every minute a share of the clients closes its connection (Close 1000), reconnects and
registers again (connection churn); ``[keepalive] timeout`` is short so Pings flow.

First the capacity of the mix is measured (closed loop, ``--capacity-seconds``), then the
soak runs open loop at ``--fraction`` of it (or at ``--rate`` operations/s).  Every
interval one line: sipws RSS, open descriptors (/proc/PID/fd), the tables (admin ``stats``
as ``sipws-ctl --json stats`` prints it: connections, edge transactions, the standalone
core's transactions, bindings), operations/s, p50/p99 of the request/response round trips
(REGISTER, OPTIONS, MESSAGE, BYE; INVITE to 200 separately), errors by kind.

At the end, each with its figure, PASS or FAIL:
- RSS growth from the end of the warm-up to the end of the load (target < 5 MB);
- tables back to zero after the clients leave (connections, transactions once their
  timers expire, bindings);
- p99 flat: last interval within 20 % of the first interval after the warm-up;
- no errors.
Exit status 0 when every verdict passes.

The transaction tables fill for 64*T1 = 32 s (RFC 6026: an INVITE transaction stays
after its 2xx) before they are steady, so the warm-up must be longer than that.

Run: nice -n 10 .venv/bin/python bench/soak.py [--minutes 60] [--warmup 2] [--clients 40]
     [--fraction 0.5 | --rate OPS] [--churn 0.2] [--interval 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sipload import (Phone, Sampler, SipFailure, Sipws, cpu_seconds, percentile, raise_file_limit, stop_on_sigterm,  # noqa: E402
                      wait_tables_zero)

CONFIG = """
[ws]
listen = ["127.0.0.1:{ws}"]

[sip]
listen = ["tcp:127.0.0.1:0"]
t1 = %(t1)s

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[keepalive]
timeout = %(keepalive)s

[log]
level = "warn"
"""

#: The operation mix: weight of each kind.
MIX = {"message": 5, "options": 2, "register": 2, "call": 2}
#: Seconds a client's REGISTER lives (refreshed by the mix, renewed on reconnect).
EXPIRES = 600
#: Most operations in flight at once in the open loop (beyond: counted as "overload" and skipped).
MAX_IN_FLIGHT = 400
#: Closed-loop workers while measuring capacity.
CAPACITY_WORKERS = 24
#: RSS growth allowed after warm-up (KiB), p99 drift allowed.
RSS_TARGET_KB = 5 * 1024
P99_DRIFT = 0.20
#: Seconds for the tables to empty after the clients leave (INVITE transactions wait 64*T1 = 32 s).
DRAIN_TIMEOUT = 60.0
#: Tables that must come back to zero (stream_connections, the loopback hop to the core, stays).
ZERO_TABLES = ("connections", "transactions", "core_transactions", "bindings")


class Soak:
    def __init__(self, sipws: Sipws, args: argparse.Namespace) -> None:
        self.sipws = sipws
        self.args = args
        self.sampler = Sampler()
        self.invite_rtts: list[float] = []
        self.phones: list[Phone] = []
        #: Registered clients outside the mix: idle, so sipws's keep-alive Pings them.
        self.idle: list[Phone] = []
        self.busy: Counter = Counter()
        self.ready: set[int] = set()
        self.in_flight = 0
        self.totals: Counter = Counter()
        self.error_totals: Counter = Counter()

    async def start_clients(self) -> None:
        for index in range(self.args.clients):
            phone = await Phone(self.sipws.ws_port, f"u{index}", self.sampler).connect()
            await phone.register(EXPIRES)
            self.phones.append(phone)
            self.ready.add(index)
        for index in range(self.args.idle_clients):
            phone = await Phone(self.sipws.ws_port, f"idle{index}", self.sampler).connect()
            await phone.register(EXPIRES)
            self.idle.append(phone)

    def _pick(self, count: int) -> list[int]:
        choices = list(self.ready)
        if len(choices) < count:
            return []
        return random.sample(choices, count)

    async def operation(self, kind: str, hold: float) -> None:
        """One operation of the mix between ready clients (none of them churns meanwhile)."""
        picked = self._pick(1 if kind in ("options", "register") else 2)
        if not picked:
            self.sampler.errors["no ready client"] += 1
            return
        for index in picked:
            self.busy[index] += 1
        try:
            first = self.phones[picked[0]]
            if kind == "options":
                self.sampler.latencies.append(await first.options())
            elif kind == "register":
                self.sampler.latencies.append(await first.register(EXPIRES))
            elif kind == "message":
                self.sampler.latencies.append(await first.message(self.phones[picked[1]]))
            else:
                invite, bye = await first.call(self.phones[picked[1]], hold)
                self.invite_rtts.append(invite)
                self.sampler.latencies.append(bye)
            self.sampler.counts[kind] += 1
        except SipFailure as exc:
            self.sampler.errors[str(exc)] += 1
        except (ConnectionError, OSError) as exc:
            self.sampler.errors[type(exc).__name__] += 1
        finally:
            for index in picked:
                self.busy[index] -= 1

    def _kind(self) -> str:
        return random.choices(list(MIX), weights=list(MIX.values()))[0]

    async def capacity(self, seconds: float) -> float:
        """Operations/s of the mix in a closed loop (calls without hold)."""
        stop = time.monotonic() + seconds
        done = [0]

        async def worker() -> None:
            while time.monotonic() < stop:
                await self.operation(self._kind(), 0.0)
                done[0] += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CAPACITY_WORKERS)))
        rate = done[0] / (time.monotonic() - began)
        self.sampler.take()
        self.invite_rtts = []
        return rate

    async def churn(self, share: float) -> None:
        """Close a share of the idle clients and bring each back on a new connection."""
        idle = [i for i in self.ready if self.busy[i] == 0]
        chosen = random.sample(idle, min(len(idle), max(1, round(share * len(self.phones)))))
        for index in chosen:
            self.ready.discard(index)

        async def cycle(index: int) -> None:
            old = self.phones[index]
            while self.busy[index]:
                await asyncio.sleep(0.05)
            await old.close()
            try:
                phone = await Phone(self.sipws.ws_port, old.user, self.sampler, instance=old.instance).connect()
                phone.reg_call_id, phone.reg_cseq = old.reg_call_id, old.reg_cseq
                await phone.register(EXPIRES)
                self.phones[index] = phone
                self.ready.add(index)
                self.sampler.counts["reconnects"] += 1
            except (SipFailure, ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self.sampler.errors[f"reconnect: {exc}"[:60]] += 1

        await asyncio.gather(*(cycle(i) for i in chosen))

    async def run(self, rate: float, seconds: float, interval: float, warmup: float) -> list[dict]:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        began = time.monotonic()
        next_report = began + interval
        next_churn = began + self.args.churn_every
        next_op = began
        rows: list[dict] = []
        cpu_before = cpu_seconds(self.sipws.pid)
        ops_in_interval = 0
        while time.monotonic() - began < seconds:
            now = time.monotonic()
            while next_op <= now:
                next_op += random.expovariate(rate)
                if len(tasks) >= MAX_IN_FLIGHT:
                    self.sampler.errors["overload (op skipped)"] += 1
                    continue
                task = loop.create_task(self.operation(self._kind(), random.uniform(0, self.args.hold)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                ops_in_interval += 1
            if now >= next_churn:
                next_churn += self.args.churn_every
                churn = loop.create_task(self.churn(self.args.churn))
                tasks.add(churn)
                churn.add_done_callback(tasks.discard)
            if now >= next_report:
                next_report += interval
                sample = self.sampler.take()
                invites, self.invite_rtts = self.invite_rtts, []
                tables = await loop.run_in_executor(None, self.sipws.tables)
                cpu_now = cpu_seconds(self.sipws.pid)
                row = {
                    "t": now - began, "rss_kb": self.sipws.rss_kb(), "fds": self.sipws.fds(), **tables,
                    "ops_s": ops_in_interval / interval, "req": len(sample.latencies),
                    "p50": percentile(sample.latencies, 0.5), "p99": percentile(sample.latencies, 0.99),
                    "invite_p99": percentile(invites, 0.99), "errors": dict(sample.errors),
                    "counts": dict(sample.counts), "cpu": (cpu_now - cpu_before) / interval,
                    "warm": now - began <= warmup + interval / 2,
                }
                cpu_before, ops_in_interval = cpu_now, 0
                self.totals.update(sample.counts)
                self.error_totals.update(sample.errors)
                rows.append(row)
                print_row(row)
            await asyncio.sleep(min(0.005, max(0.0, next_op - time.monotonic())))
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        rest = self.sampler.take()
        self.totals.update(rest.counts)
        self.error_totals.update(rest.errors)
        return rows

    async def leave(self) -> None:
        await asyncio.gather(*(phone.close() for phone in self.phones + self.idle if phone.open))
        self.error_totals.update(self.sampler.take().errors)


def print_row(row: dict) -> None:
    counts = row["counts"]
    print(f"[{row['t'] / 60:5.1f} min]{' warm-up' if row['warm'] else ''} RSS {row['rss_kb'] / 1024:6.1f} MB  "
          f"fds {row['fds']:4d}  conns {row['connections']:3d}  txns {row['transactions']:3d}+"
          f"{row['core_transactions']:<3d} bindings {row['bindings']:3d}  {row['ops_s']:6.1f} ops/s "
          f"({row['req']} round trips)  p50 {row['p50'] * 1e3:5.1f} ms  p99 {row['p99'] * 1e3:6.1f} ms  "
          f"INVITE p99 {row['invite_p99'] * 1e3:6.1f} ms  sipws CPU {row['cpu']:4.2f}  "
          f"calls {counts.get('call', 0)} msgs {counts.get('message', 0)} reconnects {counts.get('reconnects', 0)} "
          f"pings {counts.get('pings', 0)}  errors {row['errors'] or 0}", flush=True)


def verdict(ok: bool, text: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)
    return ok


async def soak(args: argparse.Namespace) -> int:
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="sipws-soak-") as tmp:
        sipws = Sipws(Path(tmp), CONFIG % {"keepalive": args.keepalive, "t1": args.t1})
        try:
            return await _soak(sipws, args)
        finally:
            code = sipws.stop()
            warnings = sipws.log_lines("#warn", "#error", "#critical", "Traceback")
            print(f"sipws exited {code}; {len(warnings)} warning/error line(s) in its log"
                  + (f"; first: {warnings[0][:200]}" if warnings else ""))


async def _soak(sipws: Sipws, args: argparse.Namespace) -> int:
    run = Soak(sipws, args)
    await run.start_clients()
    print(f"soak: sipws pid {sipws.pid} standalone, {args.clients} clients + {args.idle_clients} idle, mix {MIX}, churn "
          f"{args.churn:.0%} every {args.churn_every:.0f}s, [keepalive] timeout {args.keepalive}s, "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.rate:
        rate = args.rate
        print(f"rate: {rate:.1f} ops/s (--rate)", flush=True)
    else:
        capacity = await run.capacity(args.capacity_seconds)
        rate = capacity * args.fraction
        print(f"capacity: {capacity:.1f} ops/s of the mix (closed loop, {CAPACITY_WORKERS} workers, "
              f"{args.capacity_seconds:.0f}s); soak at {args.fraction:.0%}: {rate:.1f} ops/s", flush=True)
    seconds = args.minutes * 60
    rows = await run.run(rate, seconds, args.interval, args.warmup * 60)
    final_rss = sipws.rss_kb()
    await run.leave()
    drained, tables, waited = await wait_tables_zero(sipws, DRAIN_TIMEOUT, {"stream_connections": tables_keep(sipws)})
    total = run.totals
    print(f"totals: {dict(total)}; errors {dict(run.error_totals) or 0}")
    measured = [row for row in rows if not row["warm"]]
    results = []
    if measured:
        base = rows[rows.index(measured[0]) - 1]["rss_kb"] if rows.index(measured[0]) > 0 else measured[0]["rss_kb"]
        growth = final_rss - base
        results.append(verdict(growth < RSS_TARGET_KB, f"RSS growth after warm-up {growth / 1024:+.2f} MB "
                               f"({base / 1024:.1f} -> {final_rss / 1024:.1f} MB; target < {RSS_TARGET_KB // 1024} MB)"))
        first, last = measured[0]["p99"], measured[-1]["p99"]
        drift = (last - first) / first if first else float("inf")
        results.append(verdict(abs(drift) <= P99_DRIFT, f"p99 flat: first interval {first * 1e3:.1f} ms, last "
                               f"{last * 1e3:.1f} ms ({drift:+.0%}; limit +/-{P99_DRIFT:.0%})"))
    else:
        print("no interval after the warm-up: RSS growth and p99 drift not judged")
    results.append(verdict(drained, "tables back to zero after the clients left: "
                           + ", ".join(f"{k} {tables[k]}" for k in ZERO_TABLES) + f" after {waited:.1f}s "
                           f"(stream_connections {tables['stream_connections']}: the loopback hop to the core)"))
    errors = sum(run.error_totals.values())
    results.append(verdict(errors == 0, f"errors: {errors} ({dict(run.error_totals) or 'none'}); "
                           f"calls checked end to end {total.get('call', 0)}, messages {total.get('message', 0)}, "
                           f"registers {total.get('register', 0)}, options {total.get('options', 0)}, "
                           f"reconnects {total.get('reconnects', 0)}, pings answered {total.get('pings', 0)}"))
    return 0 if all(results) else 1


def tables_keep(sipws: Sipws) -> int:
    """The loopback hop between edge and standalone core: its stream connections stay open."""
    return sipws.tables()["stream_connections"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="load duration")
    parser.add_argument("--warmup", type=float, default=None, help="minutes of warm-up (default: 2, or 1 interval)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between report lines")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the measured capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="operations/s (skips the capacity measurement)")
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--churn", type=float, default=0.2, help="share of clients reconnected each churn period")
    parser.add_argument("--churn-every", type=float, default=60.0, help="seconds between churns")
    parser.add_argument("--idle-clients", type=int, default=4, help="registered clients outside the mix (pinged)")
    parser.add_argument("--keepalive", type=float, default=5.0, help="[keepalive] timeout")
    parser.add_argument("--t1", type=float, default=0.5, help="[sip] t1 (timers after a 2xx are 64*T1)")
    parser.add_argument("--hold", type=float, default=2.0, help="longest call hold (s)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(2.0, args.interval / 60.0) if args.minutes > 2 * args.interval / 60 else 0.0
    stop_on_sigterm()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
