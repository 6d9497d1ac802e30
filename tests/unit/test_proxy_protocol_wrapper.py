"""The PROXY header wrapper in memory: hand-over, replay, refusals, timeout, pass-through."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipws.edge.networks import NetworkSet
from sipws.edge.proxy_header import build_v1, build_v2
from sipws.stats import Stats
from sipws.transport.connections import ConnectionRecord, ConnectionTable
from sipws.transport.proxy_protocol import ProxyHeaderFactory, ProxyHeaderProtocol, proxy_peer_of

BALANCER = IPv4Address("TCP", "10.0.0.2", 40000)


class Recorder(Protocol):
    def __init__(self, addr):
        self.addr = addr
        self.data = b""
        self.peer = None

    def connectionMade(self):
        self.peer = self.transport.getPeer()

    def dataReceived(self, data):
        self.data += data


class RecorderFactory(Factory):
    def buildProtocol(self, addr):
        return Recorder(addr)


def wrapper(timeout=5.0):
    clock = Clock()
    stats = Stats()
    factory = ProxyHeaderFactory(RecorderFactory(), NetworkSet(["10.0.0.0/8"]), timeout, clock, stats, "ws")
    return factory, clock, stats


def connect(factory, addr=BALANCER):
    protocol = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def test_unlisted_peer_gets_the_real_protocol_directly():
    factory, _, _ = wrapper()
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    assert isinstance(protocol, Recorder)


def test_header_split_then_hand_over_with_replay():
    factory, clock, stats = wrapper()
    protocol, transport = connect(factory)
    assert isinstance(protocol, ProxyHeaderProtocol)
    data = build_v2(("198.51.100.7", 4711)) + b"GET / HTTP/1.1\r\n"
    for i in range(0, 20):
        protocol.dataReceived(data[i:i + 1])
    protocol.dataReceived(data[20:])
    inner = transport.protocol
    assert isinstance(inner, Recorder)
    assert inner.peer == IPv4Address("TCP", "198.51.100.7", 4711) == inner.addr
    assert inner.data == b"GET / HTTP/1.1\r\n"
    assert proxy_peer_of(transport) == ("10.0.0.2", 40000)
    assert not clock.getDelayedCalls() and not transport.disconnecting
    assert stats.get("ws.proxy_header_failed") == 0


def test_v1_ipv6_source():
    factory, _, _ = wrapper()
    protocol, transport = connect(factory)
    protocol.dataReceived(build_v1(("2001:db8::7", 5)))
    assert transport.protocol.peer == IPv6Address("TCP", "2001:db8::7", 5)


def test_local_keeps_socket_address():
    factory, _, stats = wrapper()
    protocol, transport = connect(factory)
    protocol.dataReceived(build_v2(None) + b"x")
    assert transport.protocol.peer == BALANCER and transport.protocol.data == b"x"
    assert proxy_peer_of(transport) is None and stats.get("ws.proxy_header_local") == 1


def test_health_check_alone_builds_nothing():
    factory, clock, stats = wrapper()
    protocol, transport = connect(factory)
    protocol.dataReceived(build_v1(None))
    assert transport.protocol is protocol and stats.get("ws.proxy_header_local") == 1
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls() and stats.get("ws.proxy_header_failed") == 0


def test_bytes_after_a_lone_local_header_start_the_real_protocol():
    factory, clock, _ = wrapper()
    protocol, transport = connect(factory)
    protocol.dataReceived(build_v2(None))
    protocol.dataReceived(b"GET")
    assert isinstance(transport.protocol, Recorder) and transport.protocol.data == b"GET"
    assert transport.protocol.peer == BALANCER and not clock.getDelayedCalls()


def test_idle_after_a_local_header_hands_over_at_the_timeout():
    factory, clock, stats = wrapper(timeout=2.0)
    protocol, transport = connect(factory)
    protocol.dataReceived(build_v2(None))
    clock.advance(2.1)
    assert isinstance(transport.protocol, Recorder) and not transport.disconnecting
    assert stats.get("ws.proxy_header_failed") == 0


def test_garbage_dropped_and_counted_once():
    factory, clock, stats = wrapper()
    protocol, transport = connect(factory)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    protocol.dataReceived(b"more")
    assert transport.disconnecting and transport.protocol is protocol
    assert stats.get("ws.proxy_header_failed") == 1 and not clock.getDelayedCalls()


def test_timeout_drops():
    factory, clock, stats = wrapper(timeout=2.0)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"PROXY TCP4")
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and stats.get("ws.proxy_header_failed") == 1


def test_connection_lost_before_header_cancels_timer():
    factory, clock, stats = wrapper()
    protocol, _ = connect(factory)
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls() and stats.get("ws.proxy_header_failed") == 0


def test_record_set_remote_keeps_the_index_and_describes_the_proxy():
    table = ConnectionTable()
    record = ConnectionRecord("ws", "server", ("127.0.0.1", 80), ("10.0.0.2", 40000), 0.0)
    table.add(record)
    record.proxy_peer = record.remote
    table.set_remote(record, ("198.51.100.7", 0))
    assert table.by_address("10.0.0.2", 40000, "ws") is None
    assert table.by_address("198.51.100.7", 0, "ws") is record
    assert record.describe() == f"#{record.id} ws 198.51.100.7:0->127.0.0.1:80 via 10.0.0.2:40000"
    assert record.as_dict(0.0)["proxy_peer"] == "10.0.0.2:40000"
    table.remove(record)
    assert table.by_address("198.51.100.7", 0, "ws") is None
