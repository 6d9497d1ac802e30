"""Benchmark: the keep-alive sweep with 20,000 connections open (not a test).

In one process: sipws's ``KeepaliveSweeper`` over a real ``ConnectionTable`` holding
20,000 ``ConnectionRecord``s in state open, each with a stub protocol (the attributes
the sweeper reads, ``send_ping`` / ``send_pong`` / ``close_connection`` that only count),
driven the way the service drives it: its ``LoopingCall`` on a
``twisted.internet.task.Clock`` that the bench advances by one ``[keepalive] interval``.
Since the sweep keeps a timing wheel (each connection looked at when it may be due, about
once per timeout), a full pass over the table is only forced by ``wake_at()`` without a
connection; rows 2-5 time such forced passes.  The verdict uses the steady state (6).
Timed, best of ``REPEATS`` (state reset between runs, outside the timing):

1. a tick with nothing due (the sweeper's next deadline is in the future: what almost
   every tick costs);
2. a full pass with nothing due (the walk forced, as ``wake_at`` does);
3. a full pass with every connection due: 20,000 Pings sent to the stubs;
4. a full pass with every Pong overdue: 20,000 closes (stubs);
5. for scale, a full pass with every connection due over ``REAL_CONNECTIONS`` real
   ``SipServerProtocol``s (sipws's own factory, upgraded through the real handshake, on
   ``StringTransport``s: sipws writes each Ping frame, no syscall);
6. steady state: 20,000 connections opened at moments spread over one timeout, each
   answering its Ping at once, the clock advanced one interval at a time for two timeouts:
   the sweep's cost per tick (every connection pinged twice).

References, same process and run: bare Autobahn's own keep-alive
(``autoPingInterval``, per-connection timers batched by txaio) pinging
``REAL_CONNECTIONS`` real protocols in one interval, against sipws's pass over
as many real protocols; and a plain Python loop over 20,000 slotted objects doing
one attribute comparison each (``now >= obj.last_used + timeout``).  Printed: µs per
connection and the ratio to the reference, and what share of one ``[keepalive] interval``
(1 s by default) a tick takes in the steady state: the issue asks that the one sweep "stay
cheap with 20,000 connections open"; the printed target is under 1 % of the interval.

Run: .venv/bin/python bench/ws_keepalive.py [--connections 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from sipws.config import config_from_dict
from sipws.stats import Stats
from sipws.transport.connections import OPEN, SERVER, ConnectionRecord, ConnectionTable
from sipws.transport.keepalive import KeepaliveSweeper

CONNECTIONS = 20_000
REAL_CONNECTIONS = 2_000
REPEATS = 7
#: Share of one [keepalive] interval a full pass with nothing due may take (printed only).
TARGET_SHARE = 0.01
UPGRADE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
    "Origin: https://phone.example.com\r\n\r\n"
)


class StubFactory:
    send_timeout = 10.0


class StubProtocol:
    """What the sweeper touches on a protocol; sending only counts."""

    __slots__ = ("paused_since", "keepalive_at", "keepalive_slot", "factory", "sent")

    def __init__(self, factory: StubFactory) -> None:
        self.paused_since = None
        self.keepalive_at = 0.0
        self.keepalive_slot = -1
        self.factory = factory
        self.sent = 0

    def send_ping(self, payload: bytes) -> bool:
        self.sent += 1
        return True

    def send_pong(self, payload: bytes) -> bool:
        self.sent += 1
        return True

    def close_connection(self, code: int = 1000, reason: str = "") -> None:
        self.sent += 1


class Plain:
    __slots__ = ("last_used",)

    def __init__(self, last_used: float) -> None:
        self.last_used = last_used


def build(count: int, mechanism: str) -> tuple[Any, KeepaliveSweeper, list[ConnectionRecord]]:
    config = config_from_dict({"keepalive": {"mechanism": mechanism}})
    root = SimpleNamespace(config=config, reactor=Clock(), stats=Stats(), connections=ConnectionTable())
    factory = StubFactory()
    records = []
    for n in range(count):
        remote = (f"10.0.{n >> 8 & 255}.{n & 255}", 40000 + n % 20000)
        record = ConnectionRecord("ws", SERVER, ("127.0.0.1", 8080), remote, 0.0, protocol=StubProtocol(factory))
        record.state = OPEN
        root.connections.add(record)
        records.append(record)
    sweeper = KeepaliveSweeper(root)
    sweeper.start()
    return root, sweeper, records


def time_tick(root: Any, sweeper: KeepaliveSweeper, prepare) -> float:
    """Best time in seconds of one ``clock.advance(interval)`` (one sweep call)."""
    best = float("inf")
    for _ in range(REPEATS):
        prepare(root.reactor.seconds() + sweeper.interval)
        started = time.perf_counter()
        root.reactor.advance(sweeper.interval)
        best = min(best, time.perf_counter() - started)
    return best


def build_real(count: int) -> tuple[Any, KeepaliveSweeper, list[Any]]:
    """sipws's service tree on a Clock, ``count`` protocols upgraded on StringTransports."""
    import base64
    import os

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from sipws.tap import build_service

    config = config_from_dict({"ws": {"listen": ["127.0.0.1:0"]}, "sip": {"listen": []}, "admin": {"listen": ""}})
    root = build_service(config, reactor=Clock())  # never started: nothing binds
    factory = root.ws_server.factories["ws"]
    local = IPv4Address("TCP", "127.0.0.1", 8080)
    protocols = []
    for n in range(count):
        peer = IPv4Address("TCP", f"10.1.{n >> 8 & 255}.{n & 255}", 40000 + n % 20000)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=local)
        protocol.makeConnection(transport)
        protocol.dataReceived(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
        if not transport.value().startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"bench error: upgrade refused: {transport.value()[:80]!r}")
        transport.clear()
        protocols.append(protocol)
    sweeper = root.ws_server.sweeper
    sweeper.start()
    return root, sweeper, protocols


def time_bare_autobahn(count: int, timeout: float) -> float:
    """Bare Autobahn's own keep-alive (``autoPingInterval``) over ``count`` real
    protocols on StringTransports, its timers on a Clock: seconds for the
    interval in which every connection sends its Ping."""
    import base64
    import os

    import txaio
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    class Bare(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> str:
            return "sip"

    clock = Clock()
    saved, txaio.config.loop = txaio.config.loop, clock
    try:
        factory = WebSocketServerFactory("ws://127.0.0.1:8080")
        factory.protocol = Bare
        factory.setProtocolOptions(autoPingInterval=timeout, autoPingTimeout=timeout)
        local = IPv4Address("TCP", "127.0.0.1", 8080)
        protocols = []
        for n in range(count):
            peer = IPv4Address("TCP", f"10.2.{n >> 8 & 255}.{n & 255}", 40000 + n % 20000)
            protocol = factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer, hostAddress=local)
            protocol.makeConnection(transport)
            protocol.dataReceived(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
            transport.clear()
            protocols.append(protocol)
        started = time.perf_counter()
        clock.advance(timeout)
        for _ in range(20):  # txaio's batched timer rounds due times up to its bucket
            if all(p.transport.value().startswith(b"\x89") for p in protocols):
                break
            clock.advance(0.1)
        elapsed = time.perf_counter() - started
        if not all(p.transport.value().startswith(b"\x89") for p in protocols):
            raise SystemExit("bench error: bare Autobahn did not send every Ping in one interval")
        return elapsed
    finally:
        txaio.config.loop = saved


#: Records whose Ping the AnsweringStub peers answer once the current tick is over.
PENDING_PONGS: list[ConnectionRecord] = []


class AnsweringStub(StubProtocol):
    """A stub whose peer answers each Ping at once (the Pong is traffic: last_used moves)."""

    __slots__ = ("record", "clock")

    def send_ping(self, payload: bytes) -> bool:
        self.sent += 1
        PENDING_PONGS.append(self.record)  # answered after the tick (outside the timing)
        return True


def time_steady(count: int) -> tuple[float, float, int]:
    """Steady state: ``count`` connections whose deadlines are spread over one timeout, each
    pinged (and answering) once per timeout; (seconds of sweep per tick, ticks, pings)."""
    config = config_from_dict({"keepalive": {"mechanism": "ping"}})
    clock = Clock()
    root = SimpleNamespace(config=config, reactor=clock, stats=Stats(), connections=ConnectionTable())
    sweeper = KeepaliveSweeper(root)
    sweeper.start()
    timeout, interval = sweeper.timeout, sweeper.interval
    factory = StubFactory()
    protocols = []
    for n in range(count):
        clock.advance(timeout / count)  # connections open at different moments
        protocol = AnsweringStub(factory)
        protocol.clock = clock
        record = ConnectionRecord("ws", SERVER, ("127.0.0.1", 8080), (f"10.3.{n >> 8 & 255}.{n & 255}", 40000),
                                  clock.seconds(), protocol=protocol)
        protocol.record = record
        record.state = OPEN
        root.connections.add(record)
        protocols.append(protocol)
    ticks = int(2 * timeout / interval)
    sent = sum(p.sent for p in protocols)
    elapsed = 0.0
    for _ in range(ticks):
        started = time.perf_counter()
        clock.advance(interval)
        elapsed += time.perf_counter() - started
        for record in PENDING_PONGS:  # the Pongs arrive between two ticks
            record.last_used = clock.seconds()
            record.awaiting_pong = False
        PENDING_PONGS.clear()
    if root.stats.get("ws.keepalive_timeouts"):
        raise SystemExit("bench error: answered Pings timed out in the steady state")
    return elapsed / ticks, ticks, sum(p.sent for p in protocols) - sent


def time_reference(count: int, timeout: float) -> float:
    objects = [Plain(float(n % 100)) for n in range(count)]

    def loop(now: float) -> int:
        due = 0
        for obj in objects:
            if now >= obj.last_used + timeout:
                due += 1
        return due

    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        loop(1000.0)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="keep-alive sweep cost vs a plain Python loop")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args(argv)
    count = args.connections
    root, sweeper, records = build(count, "ping")
    timeout = sweeper.timeout
    reference = time_reference(count, timeout)

    def idle_tick(now: float) -> None:
        sweeper.next_due = now + timeout  # the state after any full pass

    def nothing_due(now: float) -> None:
        for record in records:
            record.last_used = now - 1.0
            record.awaiting_pong = False
        sweeper.next_due = 0.0

    def all_due(now: float) -> None:
        for record in records:
            record.last_used = now - timeout - 1.0
            record.awaiting_pong = False
        sweeper.next_due = 0.0

    def pong_overdue(now: float) -> None:
        for record in records:
            record.last_used = now - 2 * timeout - 1.0
            record.awaiting_pong = True
            record.protocol.keepalive_at = now - timeout - 1.0
        sweeper.next_due = 0.0

    passes = sweeper.passes
    tick = time_tick(root, sweeper, idle_tick)
    if sweeper.passes != passes:
        raise SystemExit("bench error: the idle tick walked the table")
    none = time_tick(root, sweeper, nothing_due)
    sent = sum(r.protocol.sent for r in records)
    due = time_tick(root, sweeper, all_due)
    pings = sum(r.protocol.sent for r in records) - sent
    if pings != REPEATS * count or root.stats.get("ws.keepalive_timeouts"):
        raise SystemExit(f"bench error: {pings} pings for {REPEATS} x {count} due connections")
    overdue = time_tick(root, sweeper, pong_overdue)
    closes = root.stats.get("ws.keepalive_timeouts")
    if closes != REPEATS * count:
        raise SystemExit(f"bench error: {closes} keep-alive closes for {REPEATS} x {count} overdue connections")
    sweeper.stop()

    real_root, real_sweeper, protocols = build_real(min(REAL_CONNECTIONS, count))

    def real_all_due(now: float) -> None:
        for protocol in protocols:
            protocol.record.last_used = now - timeout - 1.0
            protocol.record.awaiting_pong = False
            protocol.transport.clear()
        real_sweeper.next_due = 0.0

    real = time_tick(real_root, real_sweeper, real_all_due)
    if not all(p.transport.value().startswith(b"\x89") for p in protocols):
        raise SystemExit("bench error: a real protocol did not send its Ping")
    real_sweeper.stop()
    bare = time_bare_autobahn(len(protocols), timeout)
    steady, ticks, steady_pings = time_steady(count)

    per = 1e6 / count
    ref_us = reference * per
    interval = sweeper.interval
    print(f"keep-alive sweep, {count} open connections, mechanism ping, timeout {timeout:g} s, best of {REPEATS}")
    print(f"  reference: plain loop, one attribute comparison each : {reference * 1e3:8.3f} ms/pass "
          f"{ref_us:7.3f} us/conn")
    rows = (
        ("tick, nothing due (no walk)", tick),
        ("full pass, nothing due", none),
        ("full pass, all due: Ping to each (stub)", due),
        ("full pass, all Pongs overdue: close each (stub)", overdue),
    )
    for label, seconds in rows:
        print(f"  {label:47s}: {seconds * 1e3:8.3f} ms/pass {seconds * per:7.3f} us/conn  "
              f"ratio {seconds / reference:6.2f}")
    real_per = real / len(protocols)
    label = f"full pass, all due: Ping to each ({len(protocols)} real)"
    print(f"  {label:47s}: {real * 1e3:8.3f} ms/pass "
          f"{real_per * 1e6:7.3f} us/conn  ratio {real_per / (reference / count):6.2f} "
          f"(x {count} = {real_per * count * 1e3:.0f} ms)")
    bare_per = bare / len(protocols)
    label = f"bare Autobahn autoPing: Ping to each ({len(protocols)} real)"
    print(f"  {label:47s}: {bare * 1e3:8.3f} ms/pass {bare_per * 1e6:7.3f} us/conn")
    print(f"  ratio sipws sweep / bare Autobahn autoPing, every connection pinged: {real_per / bare_per:.2f}")
    share = steady / interval
    verdict = "MET" if share <= TARGET_SHARE else "NOT MET"
    print(f"  steady state, deadlines spread, {ticks} ticks over 2 timeouts, {steady_pings} Pings (stub, answered): "
          f"{steady * 1e6:.1f} us per tick = {share * 100:.3f} % of the {interval:g} s interval "
          f"(target <= {TARGET_SHARE * 100:g} %: {verdict})")
    print(f"  (a full pass is only forced by wake_at() without a connection: {none / interval * 100:.2f} % of "
          f"the interval; a tick with nothing due costs {tick * 1e6:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
