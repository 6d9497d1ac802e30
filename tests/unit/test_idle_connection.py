"""An idle WebSocket connection, cheap to hold and to keep alive (bench/idle_connections.py).

Keep-alive Pings written directly and lone Pongs taken without Autobahn's parser
(sipws/transport/ws_common.py ``_write_control``, ws_server.py ``_lone_pong``): the same
bytes and effects as through Autobahn, and Autobahn still handles everything else.  Once
open, a connection keeps nothing of its handshake and no per-connection copies of what
every connection shares.

In memory: sipws's own factory on a Clock, protocols upgraded on StringTransports.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipws.config import config_from_dict
from sipws.tap import build_service

UPGRADE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
    "Origin: https://phone.example.com\r\n\r\n"
)
MASK = b"\x01\x02\x03\x04"


def masked(opcode: int, payload: bytes) -> bytes:
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + MASK + body


def upgrade(root, n: int = 1):
    factory = root.ws_server.factories["ws"]
    peer = IPv4Address("TCP", f"10.0.0.{n}", 40000 + n)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return protocol, transport


@pytest.fixture
def opened():
    config = config_from_dict({"ws": {"listen": ["127.0.0.1:0"]}, "sip": {"listen": []}, "admin": {"listen": ""}})
    root = build_service(config, reactor=Clock())  # never started: nothing binds
    root.received = []
    root.set_message_handler(lambda record, data: root.received.append(data))
    protocol, transport = upgrade(root)
    return root, protocol, transport


def test_open_connection_keeps_nothing_per_connection_that_it_does_not_need(opened):
    root, protocol, transport = opened
    other, _ = upgrade(root, 2)
    assert protocol.send_queue == () and protocol.send_queue is other.send_queue
    assert "_results" not in vars(protocol) and "_valid_events" not in vars(protocol)
    assert protocol.websocket_protocols == () and protocol.websocket_extensions == ()
    assert protocol._wskey == "" and protocol.websocket_origin == ""
    assert protocol.record.local == ("127.0.0.1", 8080)
    assert protocol.record.local is other.record.local
    # and it still works: a message in, a message out, a Close
    protocol.dataReceived(masked(0x1, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    assert root.received == [b"OPTIONS sip:x SIP/2.0\r\n\r\n"]
    assert protocol.send_message(b"SIP/2.0 200 OK\r\n\r\n")
    assert transport.value() == b"\x81\x12SIP/2.0 200 OK\r\n\r\n"
    protocol.close_connection(1000, "bye")
    assert transport.value().endswith(b"\x88\x05\x03\xe8bye")


def test_ping_and_pong_are_the_frames_autobahn_would_write(opened):
    root, protocol, transport = opened
    assert protocol.send_ping(b"sipws")
    assert protocol.send_pong(b"sipws")
    direct = transport.value()
    transport.clear()
    protocol.sendPing(b"sipws")
    protocol.sendPong(b"sipws")
    assert direct == transport.value() == b"\x89\x05sipws\x8a\x05sipws"
    assert root.stats.get("ws.frames_out") == 2


def test_client_role_pings_go_through_autobahn(opened, monkeypatch):
    """Frames from a client must be masked: only the server role writes them directly."""
    root, protocol, transport = opened
    sent = []
    monkeypatch.setattr(protocol.factory, "isServer", False)
    monkeypatch.setattr(protocol, "sendPing", sent.append)
    protocol.send_ping(b"sipws")
    assert sent == [b"sipws"] and transport.value() == b""


def test_lone_pong_clears_the_wait_without_autobahn_parsing(opened, monkeypatch):
    root, protocol, transport = opened
    protocol.record.awaiting_pong = True
    protocol.record.last_used = -100.0

    def no_parse() -> bool:
        raise AssertionError("Autobahn's parser was used for a lone Pong")

    monkeypatch.setattr(protocol, "processData", no_parse)
    protocol.dataReceived(masked(0xA, b"sipws"))
    assert protocol.record.awaiting_pong is False
    assert protocol.record.last_used == 0.0
    assert root.stats.get("ws.frames_in") == 1
    assert transport.value() == b""


SIP = b"OPTIONS sip:x SIP/2.0\r\n\r\n"


@pytest.mark.parametrize("reads, messages", [
    pytest.param(lambda pong, msg: [pong[:3], pong[3:]], [], id="pong split over two reads"),
    pytest.param(lambda pong, msg: [pong + msg], [SIP], id="pong and a message in one read"),
    pytest.param(lambda pong, msg: [msg[:4], msg[4:] + pong], [SIP], id="pong after a partial frame"),
])
def test_other_reads_still_go_through_autobahn(opened, reads, messages):
    root, protocol, transport = opened
    protocol.record.awaiting_pong = True
    for chunk in reads(masked(0xA, b"sipws"), masked(0x1, SIP)):
        protocol.dataReceived(chunk)
    assert protocol.record.awaiting_pong is False
    assert root.received == messages
    assert root.stats.get("ws.frames_in") == 1 + len(messages)
    assert transport.value() == b""  # no Close: nothing was taken for a protocol error


def test_unmasked_pong_is_still_a_protocol_error(opened):
    root, protocol, transport = opened
    protocol.dataReceived(b"\x8a\x05sipws")
    code = struct.unpack("!H", transport.value()[2:4])[0]
    assert transport.value()[:1] == b"\x88" and code == 1002
