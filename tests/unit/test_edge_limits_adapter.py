"""The limits adapter's decisions with a fake connection: what a handshake gets, what is counted.

The real-socket behaviour is in tests/integration/test_limits.py; this covers
what needs no socket, notably the address known only at the handshake (set by
a trusted proxy's header after accept).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from twisted.internet.task import Clock

from sipws.config import Config, LimitsConfig
from sipws.edge.limits import parse_ban_network
from sipws.stats import Stats
from sipws.transport.edge_limits import EdgeLimits


def make(**limits):
    config = Config().replace(limits=dataclasses.replace(LimitsConfig(), **limits))
    root = SimpleNamespace(config=config, reactor=Clock(), stats=Stats(), connections={})
    return root, EdgeLimits(root)


def connection(host: str):
    return SimpleNamespace(record=SimpleNamespace(remote=(host, 5000), id=1), limit_source=None)


def test_forwarded_address_banned_at_handshake_gets_403():
    root, limits = make()
    limits.bans.add(parse_ban_network("198.51.100.0/24"), 0, "", 0)
    proxied = connection("10.0.0.2")  # accepted from the proxy: not banned
    proxied.record.remote = ("198.51.100.7", 0)  # the proxy's header named the client
    refusal = limits.admit(proxied)
    assert refusal.status == 403 and "198.51.100.0/24" in refusal.reason
    assert root.stats.get("limits.banned_refused") == 1
    assert next(iter(limits.bans)).drops == 1


def test_counts_by_the_address_at_handshake_and_releases_it():
    root, limits = make(max_connections_per_ip=1, handshakes_per_ip_per_second=0)
    first = connection("192.0.2.1")
    assert limits.admit(first) is None and first.limit_source == "192.0.2.1"
    assert limits.admit(connection("192.0.2.1")).status == 429
    assert limits.admit(connection("192.0.2.2")) is None
    limits.released(first)
    assert first.limit_source is None
    assert limits.admit(connection("192.0.2.1")) is None
    assert root.stats.get("limits.connections_refused") == 1


def test_ipv6_counted_per_64():
    _, limits = make(max_connections_per_ip=2, handshakes_per_ip_per_second=0)
    assert limits.admit(connection("2001:db8:1:2::1")) is None
    assert limits.admit(connection("2001:db8:1:2::ffff")) is None
    assert limits.admit(connection("2001:db8:1:2:abcd::9")).status == 429
    assert limits.admit(connection("2001:db8:1:3::1")) is None


def test_rate_refusal_has_retry_after_and_off_means_off():
    root, limits = make(max_connections_per_ip=0, handshakes_per_ip_per_second=0.25, handshakes_per_ip_burst=1)
    assert limits.admit(connection("192.0.2.9")) is None
    refusal = limits.admit(connection("192.0.2.9"))
    assert refusal.status == 429 and dict(refusal.headers)["Retry-After"] == "4"
    root.reactor.advance(4)
    assert limits.admit(connection("192.0.2.9")) is None
    _, off = make(max_connections_per_ip=0, handshakes_per_ip_per_second=0, messages_per_connection_per_second=0)
    assert not off.counting and off.message_bucket(0.0) is None
    assert all(off.admit(connection("192.0.2.9")) is None for _ in range(1000))
