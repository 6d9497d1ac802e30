"""Close frames that break the rules, control frames that declare huge lengths, and
what the closed line says: real sockets, frames written by hand."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
import pytest_twisted

from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.test_trace import udp_collector  # noqa: F401 - a fixture
from tests.integration.wsclient import RawWs

READ_TIMEOUT = 5.0
#: Bytes streamed after a control frame that declares 2**40 bytes.
BOMB_STREAM = 8 * 1024 * 1024


def opened(port: int) -> RawWs:
    client = RawWs(port)
    client.upgrade()
    client.sock.settimeout(READ_TIMEOUT)
    return client


def close_answer(port: int, payload: bytes, fin: bool = True, continuation: bytes | None = None):
    """Send one Close frame as given; return (the Close code sipws sent, whether TCP then closed)."""
    client = opened(port)
    try:
        client.send_frame(0x8, payload, fin=fin)
        if continuation is not None:
            client.send_frame(0x0, continuation)
        code, _ = client.expect_close()
        return code, client.closed_by_peer()
    finally:
        client.shutdown()


BAD_CLOSES = [
    ("reserved close code 999", struct.pack("!H", 999), 1002),
    ("close code 1005 on the wire", struct.pack("!H", 1005), 1002),
    ("close code 1006 on the wire", struct.pack("!H", 1006), 1002),
    ("close code 2999", struct.pack("!H", 2999), 1002),
    ("close code 5000", struct.pack("!H", 5000), 1002),
    ("1-byte close payload", b"\x03", 1002),
    ("non-UTF-8 close reason", struct.pack("!H", 1000) + b"\xc3\x28", 1007),
    ("close over 125 bytes", struct.pack("!H", 1000) + b"r" * 124, 1002),
]


@pytest.mark.parametrize("name, payload, code", BAD_CLOSES, ids=[c[0] for c in BAD_CLOSES])
@pytest_twisted.inlineCallbacks
def test_bad_close_frames_get_the_rfc_code_then_tcp_close(sipws_factory, sipws_log, name, payload, code):
    root = sipws_factory()
    got, tcp_closed = yield in_thread(close_answer, port_of(root), payload)
    assert (got, tcp_closed) == (code, True)
    yield wait_for(lambda: len(root.connections) == 0)
    (line,) = [line for line in sipws_log if line.startswith("closed #")]
    assert f"code={code}" in line and "side=local" in line, line


@pytest_twisted.inlineCallbacks
def test_fragmented_close_gets_1002(sipws_factory):
    root = sipws_factory()
    got, tcp_closed = yield in_thread(close_answer, port_of(root), struct.pack("!H", 1000), False, b"x")
    assert (got, tcp_closed) == (1002, True)


@pytest_twisted.inlineCallbacks
def test_valid_close_is_echoed_and_logged_as_remote(sipws_factory, sipws_log):
    root = sipws_factory()
    got, tcp_closed = yield in_thread(close_answer, port_of(root), struct.pack("!H", 4001) + b"bye")
    assert got in (1000, 4001) and tcp_closed
    yield wait_for(lambda: len(root.connections) == 0)
    (line,) = [line for line in sipws_log if line.startswith("closed #")]
    assert "code=4001" in line and "side=remote" in line and "reason=bye" in line, line


#: Most bytes the server may hold for one connection at any time during the bomb.
BOMB_BUFFER_LIMIT = 256 * 1024


def bomb(client: RawWs, opcode: int) -> tuple[int | None, bool]:
    """A control frame declaring 2**40 bytes, then megabytes of data; (Close code, TCP closed)."""
    sent = 0
    try:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, 2 ** 40) + os.urandom(4)
        client.sock.sendall(header)
        chunk = os.urandom(64 * 1024)
        client.sock.settimeout(0.5)
        deadline = time.monotonic() + READ_TIMEOUT
        while sent < BOMB_STREAM and time.monotonic() < deadline:
            try:
                sent += client.sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break  # closed, or nobody reads any more
        client.sock.settimeout(READ_TIMEOUT)
        try:
            code, _ = client.expect_close()
        except (ConnectionError, OSError):
            code = None
        return code, client.closed_by_peer()
    finally:
        client.shutdown()


@pytest.mark.parametrize("opcode", [0x9, 0x8, 0xA], ids=["ping", "close", "pong"])
@pytest_twisted.inlineCallbacks
def test_control_frame_declaring_2_to_the_40_is_not_buffered(sipws_factory, opcode):
    """The server answers 1002, closes, and never holds more than a read or two of what follows."""
    root = sipws_factory()
    client = yield in_thread(opened, port_of(root))
    yield wait_for(lambda: len(root.connections) == 1)
    (record,) = list(root.connections)
    protocol = record.protocol
    peaks: list[int] = []
    original = protocol.dataReceived

    def measured(data: bytes) -> None:
        original(data)
        # Unparsed input, and the payload Autobahn collects for the current control frame.
        peaks.append(len(protocol.data) + sum(map(len, getattr(protocol, "control_frame_data", None) or ())))

    protocol.dataReceived = measured
    code, tcp_closed = yield in_thread(bomb, client, opcode)
    assert code == 1002 and tcp_closed
    yield wait_for(lambda: len(root.connections) == 0)
    assert peaks and max(peaks) < BOMB_BUFFER_LIMIT, f"server buffered up to {max(peaks)} bytes"


# -- the close reason tells how a connection ended: log, closed event and HEP agree -----------


@pytest_twisted.inlineCallbacks
def test_abrupt_loss_of_an_open_connection_is_not_called_a_handshake_failure(sipws_factory, sipws_log,
                                                                             udp_collector):
    from tests.integration import closed_hook
    from tests.integration.test_trace import net_events

    closed_hook.EVENTS.clear()
    root = sipws_factory({"events": {"on_closed": "tests.integration.closed_hook:record_closed"},
                          "trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}", "on": True}})
    port = port_of(root)

    def endings():
        dropped = opened(port)             # open, then a TCP reset mid-session
        dropped.reset()
        half = RawWs(port)                 # a handshake cut off half-way
        half.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        half.reset()
        polite = opened(port)              # remote close handshake
        polite.close(4000, b"bye")
        polite.expect_close()
        polite.shutdown()

    yield in_thread(endings)
    yield wait_for(lambda: len(closed_hook.EVENTS) == 3 and len(root.connections) == 0)
    # Connection ids follow the order the connections were opened in.
    by_id = {conn_id: (reason, side) for conn_id, _, reason, side in closed_hook.EVENTS}
    reasons = [by_id[conn_id] for conn_id in sorted(by_id)]
    assert reasons == [("connection lost without a Close frame", "remote"),
                       ("connection lost during the opening handshake", "remote"),
                       ("bye", "remote")], reasons
    for conn_id, (reason, side) in by_id.items():
        (line,) = [line for line in sipws_log if line.startswith(f"closed #{conn_id} ")]
        assert f"side={side} reason={reason}" in line, (reason, line)
    yield wait_for(lambda: sum(1 for e in net_events(udp_collector.packets) if e.get("event") == "closed") == 3)
    traced = [e for e in net_events(udp_collector.packets) if e.get("event") == "closed"]
    assert sorted(e.get("reason") for e in traced) == sorted(r for r, _ in reasons), traced
    closed_hook.EVENTS.clear()
