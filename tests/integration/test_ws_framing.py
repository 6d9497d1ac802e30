"""Framing on a real socket, with frames written by hand."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.wsclient import RawWs

OPTIONS = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\n\r\n"


@pytest.fixture
def echo(sipws_factory):
    """A sipws whose message handler records each message and echoes it back."""

    def make(overrides=None):
        root = sipws_factory(overrides)
        root.received = []

        def handler(record, data):
            root.received.append(data)
            record.protocol.send_message(data)

        root.set_message_handler(handler)
        return root

    return make


def opened(port: int) -> RawWs:
    client = RawWs(port)
    client.upgrade()
    return client


def violation(port: int, frames) -> tuple[int | None, str]:
    client = opened(port)
    try:
        for frame in frames:
            client.send_frame(**frame)
        return client.expect_close()
    finally:
        client.shutdown()


CASES = [
    ("unmasked frame", [dict(opcode=1, payload=b"hi", mask=False)], 1002),
    ("RSV1 set", [dict(opcode=1, payload=b"hi", rsv=4)], 1002),
    ("RSV3 set", [dict(opcode=1, payload=b"hi", rsv=1)], 1002),
    ("opcode 3", [dict(opcode=3, payload=b"hi")], 1002),
    ("opcode 0xB", [dict(opcode=0xB, payload=b"hi")], 1002),
    ("ping over 125 bytes", [dict(opcode=9, payload=b"p" * 126)], 1002),
    ("fragmented ping", [dict(opcode=9, payload=b"p", fin=False)], 1002),
    ("orphan continuation", [dict(opcode=0, payload=b"hi")], 1002),
    ("new data frame inside a message", [dict(opcode=1, payload=b"a", fin=False), dict(opcode=1, payload=b"b")], 1002),
    ("invalid UTF-8", [dict(opcode=1, payload=b"\xc3\x28")], 1007),
    ("invalid UTF-8 across fragments", [dict(opcode=1, payload=b"ok", fin=False), dict(opcode=0, payload=b"\xff")], 1007),
    ("message too big", [dict(opcode=2, payload=b"x" * 1025)], 1009),
    ("too many frames", [dict(opcode=1, payload=b"a", fin=False)] + [dict(opcode=0, payload=b"a", fin=False)] * 4
     + [dict(opcode=0, payload=b"a")], 1009),
    ("too big across fragments", [dict(opcode=2, payload=b"x" * 600, fin=False), dict(opcode=0, payload=b"x" * 600)], 1009),
]


@pytest.mark.parametrize("name, frames, code", CASES, ids=[c[0] for c in CASES])
@pytest_twisted.inlineCallbacks
def test_violations_close_with_rfc_code(echo, name, frames, code):
    root = echo({"ws": {"max_message_size": 1024, "max_msg_chunks": 4}})
    got, _ = yield in_thread(violation, port_of(root), frames)
    assert got == code
    assert root.received == []
    yield wait_for(lambda: len(root.connections) == 0)


def roundtrip(port: int, frames) -> tuple[int, bytes]:
    client = opened(port)
    try:
        for frame in frames:
            client.send_frame(**frame)
        return client.read_data()
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_text_and_binary_accepted_text_sent_for_utf8(echo):
    root = echo()
    opcode, payload = yield in_thread(roundtrip, port_of(root), [dict(opcode=2, payload=OPTIONS)])
    assert (opcode, payload) == (1, OPTIONS)  # binary in, valid UTF-8 → text out
    opcode, payload = yield in_thread(roundtrip, port_of(root), [dict(opcode=1, payload=OPTIONS)])
    assert (opcode, payload) == (1, OPTIONS)


@pytest_twisted.inlineCallbacks
def test_non_utf8_is_sent_as_binary(echo):
    root = echo()
    body = OPTIONS + b"\xff\xfe"
    opcode, payload = yield in_thread(roundtrip, port_of(root), [dict(opcode=2, payload=body)])
    assert (opcode, payload) == (2, body)


@pytest_twisted.inlineCallbacks
def test_fragmented_message_reassembled_with_pings_between(echo):
    root = echo()
    parts = [OPTIONS[:10], OPTIONS[10:40], OPTIONS[40:]]
    frames = [dict(opcode=1, payload=parts[0], fin=False), dict(opcode=9, payload=b"hello"),
              dict(opcode=0, payload=parts[1], fin=False), dict(opcode=0, payload=parts[2])]
    opcode, payload = yield in_thread(roundtrip, port_of(root), frames)
    assert payload == OPTIONS
    assert root.received == [OPTIONS]


def ping_pong(port: int) -> bytes:
    client = opened(port)
    try:
        client.send_frame(opcode=9, payload=b"are you there")
        fin, opcode, payload = client.read_frame()
        assert opcode == 0xA
        return payload
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_ping_answered_with_pong(echo):
    root = echo()
    assert (yield in_thread(ping_pong, port_of(root))) == b"are you there"


@pytest.mark.parametrize("keepalive, fragmented", [(b"\r\n", False), (b"\r\n\r\n", False), (b"\r\n\r\n", True)])
@pytest_twisted.inlineCallbacks
def test_crlf_keepalive_answered_not_delivered(echo, keepalive, fragmented):
    root = echo()
    if fragmented:
        frames = [dict(opcode=1, payload=keepalive[:1], fin=False), dict(opcode=0, payload=keepalive[1:])]
    else:
        frames = [dict(opcode=1, payload=keepalive)]
    opcode, payload = yield in_thread(roundtrip, port_of(root), frames)
    assert (opcode, payload) == (1, b"\r\n")
    assert root.received == []
    assert root.stats.get("ws.crlf_keepalives") == 1


def close_with(port: int, code: int) -> tuple[int | None, str]:
    client = opened(port)
    try:
        client.close(code, b"bye")
        return client.expect_close()
    finally:
        client.shutdown()


@pytest.mark.parametrize("code", [1000, 1001, 4321])
@pytest_twisted.inlineCallbacks
def test_peer_close_is_echoed(sipws_factory, code):
    root = sipws_factory()
    closed = []
    root.connections.on_removed(lambda record: closed.append(record.id))
    got, _ = yield in_thread(close_with, port_of(root), code)
    assert got == code
    yield wait_for(lambda: closed and len(root.connections) == 0)
    assert root.stats.get("ws.closed_remote") == 1


@pytest_twisted.inlineCallbacks
def test_abrupt_loss_removes_connection_at_once(sipws_factory):
    root = sipws_factory()
    client = RawWs(port_of(root))
    yield in_thread(client.upgrade)
    yield wait_for(lambda: len(root.connections) == 1)
    client.reset()
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_server_close_codes_reach_client(sipws_factory):
    root = sipws_factory()
    client = RawWs(port_of(root))
    yield in_thread(client.upgrade)
    yield wait_for(lambda: len(root.connections) == 1)
    record = next(iter(root.connections))
    record.protocol.close_connection(1008, "policy")
    code, reason = yield in_thread(client.expect_close)
    assert (code, reason) == (1008, "policy")
    with pytest.raises(ValueError):
        record.protocol.close_connection(1005, "reserved")
    client.shutdown()
