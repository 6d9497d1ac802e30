"""A real server protocol: the fast path and Autobahn take turns on one connection."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport

from tests.integration.conftest import port_of
from tests.unit.test_ws_fastpath import masked

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Protocol: sip\r\nOrigin: https://example.com\r\n\r\n")


def open_protocol(root):
    port = root.listening("ws")[0]
    peer = IPv4Address("TCP", "192.0.2.1", 50000)
    proto = port.factory.buildProtocol(peer)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", port_of(root)), peerAddress=peer)
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE)
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return proto, transport


def test_fast_and_general_paths_take_turns(sipws_factory):
    root = sipws_factory()
    got = []
    root.set_message_handler(lambda record, data: got.append(data))
    proto, transport = open_protocol(root)
    one, two = masked(b"first message"), masked(b"second message")
    proto.dataReceived(one + two[:5])             # one whole frame, one partial
    proto.dataReceived(two[5:])                   # Autobahn finishes the partial one
    proto.dataReceived(masked(b"ping", 0x89))     # control frame: Autobahn answers Pong
    assert transport.value() == b"\x8a\x04ping"
    transport.clear()
    proto.dataReceived(masked(b"frag-", 0x01) + masked(b"mented", 0x80))  # fragments: Autobahn
    proto.dataReceived(masked(b"last", 0x82))     # the fast path again (binary)
    assert got == [b"first message", b"second message", b"frag-mented", b"last"]
    assert root.stats.get("ws.frames_in") == 6  # the Ping included
    assert proto.send_message(b"SIP/2.0 200 OK\r\n\r\n")
    assert transport.value() == b"\x81\x12SIP/2.0 200 OK\r\n\r\n"
    transport.clear()
    proto.dataReceived(masked(b"\xff", 0x81))     # invalid UTF-8: Autobahn closes 1007
    assert transport.value()[:1] == b"\x88" and transport.value()[2:4] == b"\x03\xef"  # Close 1007
    transport.loseConnection()
    proto.connectionLost(Failure(ConnectionDone()))
