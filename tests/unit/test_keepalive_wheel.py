"""The keep-alive sweep's timing wheel (sipws/transport/keepalive.py), on a Clock with stub
connections: each idle connection is looked at about once per timeout, not once per interval,
and still pinged, closed and aborted on time."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock

from sipws.config import config_from_dict
from sipws.stats import Stats
from sipws.transport.connections import CLOSING, OPEN, SERVER, ConnectionRecord, ConnectionTable
from sipws.transport.keepalive import KeepaliveSweeper

TIMEOUT = 30.0


class StubFactory:
    send_timeout = 10.0


class StubProtocol:
    """What the sweeper touches; counts how often it is looked at; answers Pings at once."""

    def __init__(self, clock: Clock, answer: bool = True) -> None:
        self.clock = clock
        self.answer = answer
        self.factory = StubFactory()
        self._paused_since = None
        self.keepalive_at = 0.0
        self.keepalive_slot = -1
        self.looks = 0
        self.pings: list[float] = []
        self.closed: list[float] = []
        self.aborted: list[float] = []
        self.record: ConnectionRecord | None = None

    @property
    def paused_since(self):
        self.looks += 1  # read once per look, by the old walk as by the wheel
        return self._paused_since

    def send_ping(self, payload: bytes) -> bool:
        self.pings.append(self.clock.seconds())
        if self.answer:  # the Pong arrives before the next look
            self.clock.callLater(0, self._pong)
        return True

    def _pong(self) -> None:
        self.record.last_used = self.clock.seconds()
        self.record.awaiting_pong = False

    def send_pong(self, payload: bytes) -> bool:
        return True

    def close_connection(self, code: int = 1000, reason: str = "") -> None:
        self.closed.append(self.clock.seconds())
        self.record.state = CLOSING

    def abort(self, why: str) -> None:
        self.aborted.append(self.clock.seconds())


def build(count: int, spread: bool = True, answer: bool = True):
    clock = Clock()
    config = config_from_dict({"keepalive": {"timeout": TIMEOUT}})
    root = SimpleNamespace(config=config, reactor=clock, stats=Stats(), connections=ConnectionTable())
    sweeper = KeepaliveSweeper(root)
    sweeper.start()
    protocols = []
    for n in range(count):
        if spread:  # connections open at different moments over one timeout
            clock.advance(TIMEOUT / count)
        protocol = StubProtocol(clock, answer)
        record = ConnectionRecord("ws", SERVER, ("127.0.0.1", 8080), ("10.0.0.1", 1000 + n), clock.seconds(),
                                  protocol=protocol)
        protocol.record = record
        record.state = OPEN
        root.connections.add(record)
        protocols.append(protocol)
    return clock, root, sweeper, protocols


def run(clock: Clock, seconds: float, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)


def test_idle_connections_are_looked_at_once_per_timeout_not_every_interval():
    count = 300
    clock, root, sweeper, protocols = build(count)
    looks_before = sum(p.looks for p in protocols)
    run(clock, 4 * TIMEOUT)
    looks = sum(p.looks for p in protocols) - looks_before
    # a walk every 1 s interval would be 120 looks per connection
    assert looks <= 6 * count
    assert sweeper.passes == 0
    # and every connection was pinged every timeout, answered, never closed
    for protocol in protocols:
        assert 3 <= len(protocol.pings) <= 4
        assert protocol.closed == []


def test_ping_goes_out_one_timeout_after_the_last_traffic():
    clock, root, sweeper, (protocol,) = build(1, spread=False)
    run(clock, TIMEOUT - 5)
    traffic = protocol.record.last_used = clock.seconds()  # traffic: the deadline moves
    run(clock, TIMEOUT - 1)
    assert protocol.pings == []
    run(clock, 2)
    assert len(protocol.pings) == 1
    assert traffic + TIMEOUT <= protocol.pings[0] <= traffic + TIMEOUT + 1


def test_unanswered_ping_closes_one_timeout_later():
    clock, root, sweeper, (protocol,) = build(1, spread=False, answer=False)
    run(clock, 2 * TIMEOUT + 2)
    assert len(protocol.pings) == 1
    assert len(protocol.closed) == 1
    assert protocol.pings[0] + TIMEOUT <= protocol.closed[0] <= protocol.pings[0] + TIMEOUT + 1
    assert root.stats.get("ws.keepalive_timeouts") == 1


def test_wake_at_with_a_connection_brings_its_send_timeout_forward():
    clock, root, sweeper, (protocol,) = build(1, spread=False)
    run(clock, 3)
    protocol._paused_since = clock.seconds()
    sweeper.wake_at(clock.seconds() + protocol.factory.send_timeout, protocol.record)
    run(clock, protocol.factory.send_timeout + 2)
    assert len(protocol.aborted) == 1
    assert protocol.aborted[0] <= protocol._paused_since + protocol.factory.send_timeout + 1
    assert protocol.pings == []  # long before its idle timeout


def test_a_clock_jump_handles_every_booked_connection_once():
    count = 50
    clock, root, sweeper, protocols = build(count)
    clock.advance(100_000)
    clock.advance(0)  # the Pongs
    assert all(len(p.pings) == 1 for p in protocols)


def test_closed_connections_leave_nothing_to_do():
    clock, root, sweeper, protocols = build(10, spread=False)
    for protocol in protocols:
        root.connections.remove(protocol.record)
    run(clock, 3 * TIMEOUT)
    assert all(p.pings == [] and p.looks == 0 for p in protocols)
    assert sweeper._wheel == {}
