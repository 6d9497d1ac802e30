"""Flood benchmark (not a test): sipws in standalone mode as a real subprocess while one
legitimate pair of clients keeps registering and sending MESSAGE and OPTIONS, its round
trips sampled all the time; floods run in turn:

- ``half-open``: connections that never send a byte (plain TCP, and TCP to the wss port
  that never starts TLS), held past ``[ws] handshake_timeout``;
- ``slow-headers``: upgrade requests written one byte per second;
- ``handshake-burst``: hundreds of connect + upgrade at once, then Close;
- ``message-burst``: thousands of OPTIONS written at once on one connection;
- ``oversized``: a frame header declaring 2^16 ... 2^63 bytes for every opcode (text,
  binary, continuation after a fragment, ping, pong, close), then data streamed until
  sipws closes.

For each flood: the legitimate client's p50/p99 and errors before / during / after, sipws
RSS and descriptors before / after, what the flood saw (closed by sipws, close codes), and
that the tables come back to the legitimate pair (2 connections, 2 bindings, no
transaction left once its timers ran).  Exit status 0 when the legitimate client had no
error during any flood and every table came back.

Run: nice -n 10 .venv/bin/python bench/floods.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sipload import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ROOT_DIR, Phone, Sampler,  # noqa: E402
                      SipFailure, Sipws, client_frame, raise_file_limit, raw_connect, stop_on_sigterm, upgrade_request,
                      wait_tables_zero)

CONFIG = """
[ws]
listen = ["127.0.0.1:{ws}"]
handshake_timeout = %(handshake)s

[wss]
listen = ["127.0.0.1:%(wss)s"]
certificate = "%(cert)s"
private_key = "%(key)s"
handshake_timeout = %(handshake)s
tls_handshake_timeout = %(handshake)s

[sip]
listen = ["tcp:127.0.0.1:0"]

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[log]
level = "warn"
"""

#: Seconds between two operations of the legitimate client.
LEGIT_PERIOD = 0.05
#: Seconds sampled before and after each flood.
QUIET_SECONDS = 5.0
HANDSHAKE_TIMEOUT = 3.0
#: Declared lengths of the oversized frames.
OVERSIZED_LENGTHS = (1 << 16, 1 << 24, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63)
OPCODES = {"text": OP_TEXT, "binary": OP_BINARY, "continuation": 0x0, "ping": OP_PING, "pong": OP_PONG,
           "close": OP_CLOSE}
#: Bytes streamed after an oversized header at most, and per write.
STREAM_LIMIT = 1 << 20
STREAM_CHUNK = 16384
#: Seconds for the tables to come back after a flood.
SETTLE_TIMEOUT = 40.0


class Legit:
    """alice and bob: MESSAGE alice -> bob, OPTIONS, REGISTER refresh, in turn, forever."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sampler = Sampler()
        self.running = True

    async def start(self) -> None:
        self.alice = await Phone(self.port, "alice", self.sampler).connect()
        self.bob = await Phone(self.port, "bob", self.sampler).connect()
        await self.alice.register()
        await self.bob.register()
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self) -> None:
        turn = 0
        while self.running:
            turn += 1
            began = time.monotonic()
            try:
                if turn % 3 == 0:
                    rtt = await self.alice.options()
                elif turn % 3 == 1:
                    rtt = await self.alice.message(self.bob)
                else:
                    rtt = await self.bob.register()
                self.sampler.latencies.append(rtt)
            except SipFailure as exc:
                self.sampler.errors[str(exc)] += 1
            await asyncio.sleep(max(0.0, LEGIT_PERIOD - (time.monotonic() - began)))

    async def stop(self) -> None:
        self.running = False
        await self.task
        await self.alice.close()
        await self.bob.close()


# -- the floods: each returns what it saw ---------------------------------------------------


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> str:
    """How the connection ended: "closed by sipws" (FIN or RST) or still open after ``timeout``."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return "closed by sipws"
    except asyncio.TimeoutError:
        return f"still open after {timeout:.0f}s"
    except (ConnectionError, OSError):
        return "closed by sipws (reset)"


async def half_open(ctx: dict) -> dict:
    counts = Counter()
    conns = []
    for port, label in ((ctx["ws"], "ws"), (ctx["wss"], "wss")):
        for _ in range(ctx["n_half_open"] if label == "ws" else ctx["n_half_open"] // 2):
            try:
                conns.append((label, await raw_connect(port)))
                counts[f"{label} opened"] += 1
            except (OSError, asyncio.TimeoutError):
                counts[f"{label} connect failed"] += 1
    waited = HANDSHAKE_TIMEOUT * 3
    results = await asyncio.gather(*(_closed_by_server(r, waited) for _, (r, _w) in conns))
    for (label, (_r, writer)), closed in zip(conns, results):
        counts[f"{label} {closed}"] += 1
        writer.transport.abort()
    return dict(counts)


async def slow_headers(ctx: dict) -> dict:
    counts = Counter()
    request = upgrade_request(ctx["ws"])

    async def one() -> None:
        try:
            reader, writer = await raw_connect(ctx["ws"])
        except (OSError, asyncio.TimeoutError):
            counts["connect failed"] += 1
            return
        began = time.monotonic()
        read = asyncio.get_running_loop().create_task(_closed_by_server(reader, HANDSHAKE_TIMEOUT * 4))
        sent = 0
        for byte in request:
            if read.done():
                break
            try:
                writer.write(bytes([byte]))
            except (ConnectionError, OSError):
                break
            sent += 1
            await asyncio.sleep(1.0)
        closed = await read
        counts[closed] += 1
        counts["most bytes sent before the close"] = max(counts["most bytes sent before the close"], sent)
        counts["longest life s"] = max(counts["longest life s"], round(time.monotonic() - began))
        writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(ctx["n_slow"])))
    return dict(counts)


async def handshake_burst(ctx: dict) -> dict:
    counts = Counter()
    durations: list[float] = []
    sampler = Sampler()

    async def one() -> None:
        began = time.monotonic()
        phone = Phone(ctx["ws"], "burst", sampler)
        try:
            await phone.connect()
            durations.append(time.monotonic() - began)
            counts["upgraded"] += 1
            await phone.close()
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            counts[f"failed: {type(exc).__name__} {exc}"[:70]] += 1
            if phone.transport is not None:
                phone.transport.abort()

    rounds = ctx["burst_rounds"]
    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(ctx["n_burst"])))
    durations.sort()
    counts["slowest upgrade ms"] = int(durations[-1] * 1e3) if durations else 0
    counts["median upgrade ms"] = int(durations[len(durations) // 2] * 1e3) if durations else 0
    return dict(counts)


async def message_burst(ctx: dict) -> dict:
    sampler = Sampler()
    phone = await Phone(ctx["ws"], "burster", sampler).connect()
    count = ctx["n_messages"]
    loop = asyncio.get_running_loop()
    futures = []
    frames = []
    for index in range(count):
        call_id = f"burst{index}-{random.getrandbits(32):x}"
        data = phone.build("OPTIONS", "sip:example.com", "<sip:example.com>", call_id, 1)
        future = loop.create_future()
        phone.pending[(call_id, 1, "OPTIONS")] = (future, [])
        futures.append(future)
        frames.append(client_frame(data))
    began = time.monotonic()
    phone.transport.write(b"".join(frames))
    done, _ = await asyncio.wait(futures, timeout=60)
    elapsed = time.monotonic() - began
    statuses = Counter(f.result().status for f in done if not f.exception())
    await phone.close()
    return {"sent": count, "answered": len(done), "statuses": dict(statuses), "seconds": round(elapsed, 2),
            "connection errors": dict(sampler.errors)}


async def _oversized_one(port: int, opcode: int, length: int) -> tuple[str, int]:
    """Upgrade, send a header declaring ``length`` bytes, stream; (close code seen, bytes streamed)."""
    reader, writer = await raw_connect(port, upgrade_request(port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            return "closed before 101", 0
        head += chunk
    rest = head.split(b"\r\n\r\n", 1)[1]
    if opcode == 0:  # a continuation needs a fragment before it to be legal at all
        writer.write(client_frame(b"INVITE", OP_TEXT, fin=False))
    writer.write(struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length) + os.urandom(4))
    streamed = 0
    read = asyncio.get_running_loop().create_task(reader.read(65536))
    code = "no close"
    zeros = bytes(STREAM_CHUNK)
    try:
        while streamed < STREAM_LIMIT:
            if read.done():
                break
            writer.write(zeros)
            streamed += STREAM_CHUNK
            await asyncio.wait_for(writer.drain(), 10)
            await asyncio.sleep(0)
        data = rest + await asyncio.wait_for(read, 10)
        if len(data) >= 4 and data[0] & 0x0F == OP_CLOSE:
            code = f"Close {struct.unpack('!H', data[2:4])[0]}"
        elif not data:
            code = "TCP close without Close frame"
        else:
            code = f"other bytes {data[:8]!r}"
    except (ConnectionError, OSError):
        code = "reset while streaming" if not read.done() or read.exception() else "reset"
    except asyncio.TimeoutError:
        code = "no answer (timeout)"
    finally:
        writer.transport.abort()
        if not read.done():
            read.cancel()
    return code, streamed


async def oversized(ctx: dict) -> dict:
    out: dict[str, Any] = {}
    for name, opcode in OPCODES.items():
        seen = Counter()
        most = 0
        for length in ctx["lengths"]:
            code, streamed = await _oversized_one(ctx["ws"], opcode, length)
            seen[code] += 1
            most = max(most, streamed)
        out[name] = f"{dict(seen)}; at most {most // 1024} KiB streamed before the close"
    return out


FLOODS: dict[str, Callable[[dict], Awaitable[dict]]] = {
    "half-open": half_open, "slow-headers": slow_headers, "handshake-burst": handshake_burst,
    "message-burst": message_burst, "oversized": oversized,
}


async def sample(legit: Legit, seconds: float) -> Sampler:
    legit.sampler.take()
    await asyncio.sleep(seconds)
    return legit.sampler.take()


async def run_flood(name: str, sipws: Sipws, legit: Legit, ctx: dict) -> bool:
    quiet = ctx["quiet"]
    before = await sample(legit, quiet)
    rss0, fds0 = sipws.rss_kb(), sipws.fds()
    legit.sampler.take()
    began = time.monotonic()
    seen = await FLOODS[name](ctx)
    during = legit.sampler.take()
    flood_seconds = time.monotonic() - began
    peak_rss = sipws.rss_kb()
    settled, tables, waited = await settle(sipws)
    after = await sample(legit, quiet)
    rss1, fds1 = sipws.rss_kb(), sipws.fds()
    ok = settled and not during.errors and not after.errors
    print(f"== {name} ({flood_seconds:.1f}s)", flush=True)
    print(f"   flood saw: {seen}")
    print(f"   legitimate client before: {before.line()}")
    print(f"   legitimate client during: {during.line()}")
    print(f"   legitimate client after:  {after.line()}")
    print(f"   sipws RSS {rss0 / 1024:.1f} MB -> {peak_rss / 1024:.1f} MB right after -> {rss1 / 1024:.1f} MB; "
          f"fds {fds0} -> {fds1}")
    print(f"   {'PASS' if settled else 'FAIL'} tables back to the legitimate pair after {waited:.1f}s: {tables}")
    print(f"   {'PASS' if ok else 'FAIL'} legitimate client answered throughout", flush=True)
    return ok


async def settle(sipws: Sipws) -> tuple[bool, dict, float]:
    """Connections and bindings back to the legitimate pair's 2; transactions at most what it has in flight."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    while True:
        tables = await loop.run_in_executor(None, sipws.tables)
        if (tables["connections"] == 2 and tables["bindings"] == 2 and tables["transactions"] <= 8
                and tables["core_transactions"] <= 8):
            return True, tables, time.monotonic() - began
        if time.monotonic() - began > SETTLE_TIMEOUT:
            return False, tables, time.monotonic() - began
        await asyncio.sleep(0.25)


async def floods(args: argparse.Namespace) -> int:
    raise_file_limit()
    sys.path.insert(0, str(ROOT_DIR))
    from tests.certs import CertificateAuthority

    with tempfile.TemporaryDirectory(prefix="sipws-floods-") as tmp:
        issued = CertificateAuthority(Path(tmp) / "ca").issue("server", ["localhost", "127.0.0.1"])
        from _sipload import free_port

        wss = free_port()
        sipws = Sipws(Path(tmp), CONFIG % {"handshake": HANDSHAKE_TIMEOUT, "wss": wss, "cert": issued.cert,
                                           "key": issued.key})
        legit = Legit(sipws.ws_port)
        quick = args.quick
        ctx = {"ws": sipws.ws_port, "wss": wss, "quiet": 1.0 if quick else QUIET_SECONDS,
               "n_half_open": 50 if quick else 1000, "n_slow": 10 if quick else 200,
               "n_burst": 50 if quick else 500, "burst_rounds": 1 if quick else 4,
               "n_messages": 300 if quick else 5000,
               "lengths": (1 << 16, 1 << 63) if quick else OVERSIZED_LENGTHS}
        results = []
        try:
            await legit.start()
            print(f"floods: sipws pid {sipws.pid} standalone, [ws]/[wss] handshake_timeout {HANDSHAKE_TIMEOUT}s; "
                  f"legitimate pair alice/bob: MESSAGE, OPTIONS, REGISTER every {LEGIT_PERIOD * 1e3:.0f} ms; "
                  f"{'quick' if quick else 'full'} sizes {ctx}", flush=True)
            for name in args.only or list(FLOODS):
                results.append(await run_flood(name, sipws, legit, ctx))
            await legit.stop()
            drained, tables, waited = await wait_tables_zero(sipws, 60.0, {"stream_connections":
                                                                                sipws.tables()["stream_connections"]})
            print(f"{'PASS' if drained else 'FAIL'} all tables back to zero after the legitimate pair left "
                  f"({waited:.1f}s): {tables}")
            results.append(drained)
            print(f"sipws RSS at the end {sipws.rss_kb() / 1024:.1f} MB, fds {sipws.fds()}")
        finally:
            code = sipws.stop()
            warnings = sipws.log_lines("Traceback", "Unhandled")
            print(f"sipws exited {code}; {len(warnings)} traceback line(s) in its log")
            if warnings:
                results.append(False)
    return 0 if all(results) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small floods (the make test slice)")
    parser.add_argument("--only", nargs="*", choices=list(FLOODS), help="run only these floods")
    stop_on_sigterm()
    return asyncio.run(floods(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
