"""The pure per-source limit rules: token bucket, bans, throttled log lines, the shared sketch."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from sipws.edge import sketch
from sipws.edge.limits import (
    BadBan, BanList, LogThrottle, MAX_BANS, OTHER_SOURCES, TokenBucket, ban_until, parse_ban_network, source_key,
)

KEY = b"k" * sketch.KEY_BYTES


# -- token bucket -------------------------------------------------------------------------


def test_bucket_allows_burst_then_rate():
    clock = Clock()
    bucket = TokenBucket(10.0, 5, clock.seconds())
    assert all(bucket.take(clock.seconds()) for _ in range(5))
    assert not bucket.take(clock.seconds())
    clock.advance(0.1)  # one token back
    assert bucket.take(clock.seconds())
    assert not bucket.take(clock.seconds())
    clock.advance(100)  # refills to the burst, not beyond
    assert sum(bucket.take(clock.seconds()) for _ in range(20)) == 5


def test_bucket_ignores_a_clock_stepping_back():
    bucket = TokenBucket(1.0, 2, 1000.0)
    assert bucket.take(1000.0) and bucket.take(1000.0)
    assert not bucket.take(500.0)
    assert bucket.take(1001.0)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 500),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_bucket_never_admits_more_than_burst_plus_rate_times_time(rate, burst, gaps):
    now = 0.0
    bucket = TokenBucket(rate, burst, now)
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)
    assert admitted <= burst + rate * now + 1e-6


# -- source keys ---------------------------------------------------------------------------


def test_source_key_ipv4_is_the_same_object_ipv6_is_its_64():
    host = "192.0.2.7"
    assert source_key(host) is host
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("not an address") == "not an address"


# -- bans ----------------------------------------------------------------------------------


def test_ban_address_and_cidr_and_narrowest_match():
    bans = BanList()
    bans.add(parse_ban_network("192.0.2.0/24"), 0, "net", 0)
    bans.add(parse_ban_network("192.0.2.7"), 0, "host", 0)
    assert bans.match("192.0.2.7", 1).reason == "host"
    assert bans.match("192.0.2.8", 1).reason == "net"
    assert bans.match("::ffff:192.0.2.9", 1).reason == "net"
    assert bans.match("192.0.3.1", 1) is None
    assert bans.match("2001:db8::1", 1) is None
    assert bans.match("garbage", 1) is None
    bans.add(parse_ban_network("2001:db8::/32"), 0, "v6", 0)
    assert bans.match("2001:db8:ff::1", 1).reason == "v6"
    assert len(bans) == 3


def test_ban_expires_by_the_clock_and_rebanning_keeps_drops():
    clock = Clock()
    bans = BanList()
    net = parse_ban_network("198.51.100.0/24")
    ban = bans.add(net, ban_until(5, clock.seconds()), "", clock.seconds())
    ban.drops = 3
    assert bans.add(net, ban_until(10, clock.seconds()), "again", clock.seconds()) is ban
    assert ban.drops == 3 and ban.reason == "again"
    clock.advance(9.9)
    assert bans.match("198.51.100.1", clock.seconds()) is ban
    assert ban.as_dict(clock.seconds())["remaining"] == pytest.approx(0.1)
    clock.advance(0.1)
    assert bans.match("198.51.100.1", clock.seconds()) is None
    assert len(bans) == 0


def test_ban_without_end_and_unban():
    bans = BanList()
    net = parse_ban_network("203.0.113.5")
    bans.add(net, ban_until(0, 100), "", 100)
    assert bans.listing(10 ** 9)[0]["remaining"] is None
    assert bans.remove(net) is not None
    assert bans.remove(net) is None
    assert bans.match("203.0.113.5", 0) is None


def test_ban_list_is_bounded():
    bans = BanList(max_bans=3)
    for i in range(3):
        bans.add(ipaddress.ip_network(f"10.0.0.{i}/32"), 0, "", 0)
    with pytest.raises(BadBan):
        bans.add(ipaddress.ip_network("10.0.0.9/32"), 0, "", 0)
    assert MAX_BANS >= 1000


def test_expired_bans_make_room():
    bans = BanList(max_bans=1)
    bans.add(ipaddress.ip_network("10.0.0.1/32"), 5.0, "", 0)
    bans.add(ipaddress.ip_network("10.0.0.2/32"), 0, "", 6.0)
    assert len(bans) == 1


@pytest.mark.parametrize("text", ["", "x", "300.1.1.1", "10.0.0.0/33", "1.2.3.4/24/1", 7, None, "a" * 100])
def test_bad_networks(text):
    with pytest.raises(BadBan):
        parse_ban_network(text)


def test_network_host_bits_are_cleared():
    assert str(parse_ban_network("192.0.2.77/24")) == "192.0.2.0/24"
    assert str(parse_ban_network("::ffff:192.0.2.7")) == "192.0.2.7/32"


@pytest.mark.parametrize("duration", [-1, float("nan"), 10 ** 12])
def test_bad_durations(duration):
    with pytest.raises(BadBan):
        ban_until(duration, 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 32)), max_size=30),
       st.integers(0, 2 ** 32 - 1))
def test_ban_match_agrees_with_ipaddress(networks, address):
    bans = BanList()
    nets = []
    for number, prefix in networks:
        net = ipaddress.IPv4Network((number, prefix), strict=False)
        nets.append(net)
        bans.add(net, 0, "", 0)
    host = str(ipaddress.IPv4Address(address))
    covering = [n for n in nets if ipaddress.IPv4Address(address) in n]
    found = bans.match(host, 0)
    if not covering:
        assert found is None
    else:
        assert found is not None and found.network.prefixlen == max(n.prefixlen for n in covering)


# -- throttled log lines -------------------------------------------------------------------


def test_log_throttle_one_line_per_interval_with_count():
    throttle = LogThrottle(interval=10, max_keys=4)
    assert throttle.note("a", 0) == 1
    assert [throttle.note("a", t) for t in (1, 2, 3)] == [0, 0, 0]
    assert throttle.note("a", 10) == 4  # three held back plus this one
    assert throttle.note("a", 11) == 0


def test_log_throttle_is_bounded_under_a_flood_of_sources():
    throttle = LogThrottle(interval=10, max_keys=100)
    lines = sum(1 for i in range(100_000) if throttle.note(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1.0))
    assert len(throttle) <= 101
    assert lines == 101  # one per remembered source, one for the others
    assert OTHER_SOURCES in throttle._seen


# -- the shared sketch ---------------------------------------------------------------------


def counters(rows: int = 2, buffer=None):
    buffer = buffer if buffer is not None else bytearray(sketch.block_size(rows))
    return buffer, [sketch.SharedCounters(buffer, rows, row, KEY) for row in range(rows)]


def test_connections_counted_across_rows_and_released():
    _, (w0, w1) = counters()
    cells = w0.cells("192.0.2.1")
    assert cells == w1.cells("192.0.2.1")  # the same key: the same cells in every worker
    assert w0.try_open(cells, 3) and w1.try_open(cells, 3) and w1.try_open(cells, 3)
    assert not w0.try_open(cells, 3) and not w1.try_open(cells, 3)
    assert w0.open_count(cells) == 3
    w1.add_open(cells, -1)
    assert w0.try_open(cells, 3)
    assert w0.open_count(w0.cells("192.0.2.2")) == 0


def test_cleared_row_frees_its_connections():
    _, (w0, w1) = counters()
    cells = w0.cells("192.0.2.1")
    for _ in range(2):
        assert w1.try_open(cells, 2)
    assert not w0.try_open(cells, 2)
    w0.clear_row(1)
    assert w0.try_open(cells, 2)


def test_handshake_rate_is_a_bucket_shared_by_the_workers():
    clock = Clock()
    clock.advance(1000.0)
    _, (w0, w1) = counters()
    cells = w0.cells("198.51.100.1")
    rate, burst = 2.0, 20
    admitted = [(w0 if i % 2 else w1).try_handshake(cells, clock.seconds(), rate, burst) for i in range(30)]
    assert sum(admitted) == 20
    assert w0.retry_after(cells, clock.seconds(), rate, burst) == pytest.approx(0.5)
    clock.advance(1.0)  # two more per second, whichever worker asks
    assert w1.try_handshake(cells, clock.seconds(), rate, burst)
    assert w0.try_handshake(cells, clock.seconds(), rate, burst)
    assert not w0.try_handshake(cells, clock.seconds(), rate, burst)
    clock.advance(10.0)  # a full bucket again, not more
    assert sum(w1.try_handshake(cells, clock.seconds(), rate, burst) for _ in range(30)) == 20
    other = w0.cells("198.51.100.2")
    assert w0.try_handshake(other, clock.seconds(), rate, burst)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 1)), min_size=1, max_size=200),
       st.floats(0.5, 50), st.integers(1, 20))
def test_handshake_rate_never_beyond_burst_plus_rate_times_time(events, rate, burst):
    _, rows = counters()
    cells = rows[0].cells("203.0.113.9")
    now, admitted = 0.0, 0
    for gap, row in events:
        now += gap
        admitted += rows[row].try_handshake(cells, now, rate, burst)
    assert admitted <= burst + rate * now + 1e-6


def test_sketch_never_under_counts_and_is_fixed_size():
    rng = random.Random(7)
    _, (w0,) = counters(rows=1)
    truth: dict[str, int] = {}
    for _ in range(20_000):
        source = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        w0.add_open(w0.cells(source), 1)
        truth[source] = truth.get(source, 0) + 1
    for source, count in list(truth.items())[:2000]:
        assert w0.open_count(w0.cells(source)) >= count
    assert sketch.block_size(1) == 12 * sketch.DEPTH * sketch.WIDTH  # 384 KiB, however many sources


def test_block_too_small_and_bad_row_are_refused():
    with pytest.raises(ValueError):
        sketch.SharedCounters(bytearray(10), 1, 0, KEY)
    with pytest.raises(ValueError):
        sketch.SharedCounters(bytearray(sketch.block_size(2)), 2, 2, KEY)
