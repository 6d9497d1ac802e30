"""Keep-alive, back-pressure, the connection table and the closed event."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted

from tests.integration import closed_hook
from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.wsclient import RawWs, good_headers


def open_client(port: int) -> RawWs:
    client = RawWs(port)
    client.upgrade()
    return client


def answer_pings(client: RawWs, seconds: int) -> int:
    """Answer every Ping for a while; returns how many came."""
    import time

    pings = 0
    end = time.monotonic() + seconds
    client.sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            _, opcode, payload = client.read_frame()
        except socket.timeout:
            continue
        if opcode == 0x9:
            pings += 1
            client.send_frame(0xA, payload)
    return pings


@pytest_twisted.inlineCallbacks
def test_ping_keepalive_keeps_live_peer_and_uses_ping_data(sipws_factory):
    root = sipws_factory({"keepalive": {"timeout": 0.3, "interval": 0.05, "ping_data": "hello"}})
    client = yield in_thread(open_client, port_of(root))
    pings = yield in_thread(answer_pings, client, 2)
    assert pings >= 2
    assert len(root.connections) == 1
    client.shutdown()


def read_ping(client: RawWs) -> tuple[int, bytes]:
    _, opcode, payload = client.read_frame()
    return opcode, payload


@pytest_twisted.inlineCallbacks
def test_dead_peer_closed_within_two_timeouts(sipws_factory):
    root = sipws_factory({"keepalive": {"timeout": 0.3, "interval": 0.05, "ping_data": "hello"}})
    client = yield in_thread(open_client, port_of(root))
    opcode, payload = yield in_thread(read_ping, client)
    assert (opcode, payload) == (0x9, b"hello")
    start = root.reactor.seconds()
    # no Pong: the peer is dead
    code, reason = yield in_thread(client.expect_close)
    assert code == 1001 and "keep-alive" in reason
    assert root.reactor.seconds() - start < 1.0
    assert root.stats.get("ws.keepalive_timeouts") == 1
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_any_traffic_counts_as_alive(sipws_factory):
    root = sipws_factory({"keepalive": {"timeout": 0.4, "interval": 0.05}})
    root.set_message_handler(lambda record, data: None)
    client = yield in_thread(open_client, port_of(root))
    for _ in range(10):  # 2 s of traffic every 0.2 s, never answering a Ping
        yield in_thread(client.send_text, "MESSAGE sip:a SIP/2.0\r\n\r\n")
        yield sleep(0.2)
    assert len(root.connections) == 1
    assert root.stats.get("ws.keepalive_timeouts") == 0
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_pong_mechanism_sends_unsolicited_pongs(sipws_factory):
    root = sipws_factory({"keepalive": {"mechanism": "pong", "timeout": 0.2, "interval": 0.05, "ping_data": "pp"}})
    client = yield in_thread(open_client, port_of(root))
    first = yield in_thread(read_ping, client)
    second = yield in_thread(read_ping, client)
    assert first == second == (0xA, b"pp")
    assert len(root.connections) == 1
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_mechanism_none_sends_nothing(sipws_factory):
    root = sipws_factory({"keepalive": {"mechanism": "none", "timeout": 0.1, "interval": 0.05}})
    client = yield in_thread(open_client, port_of(root))
    yield sleep(0.6)
    client.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        client.read_frame()
    assert len(root.connections) == 1
    client.shutdown()


def stalled_reader(port: int) -> RawWs:
    client = RawWs(port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.upgrade()
    return client


@pytest_twisted.inlineCallbacks
def test_peer_that_stops_reading_is_closed_after_send_timeout(sipws_factory):
    root = sipws_factory({"ws": {"send_timeout": 0.5}, "keepalive": {"interval": 0.05}})
    client = yield in_thread(stalled_reader, port_of(root))
    yield wait_for(lambda: len(root.connections) == 1)
    record = next(iter(root.connections))
    chunk = b"x" * 65000
    sent = [0]

    def push():
        # keep writing (bounded: 400 x 4 x 65 KB) until the kernel buffers fill too
        if record.protocol is not None and sent[0] < 400:
            for _ in range(4):
                record.protocol.send_message(chunk)
            sent[0] += 1
            root.reactor.callLater(0.01, push)

    push()
    yield wait_for(lambda: len(root.connections) == 0, timeout=10)
    assert root.stats.get("ws.send_timeouts") == 1
    assert sent[0] < 400, "closed only because the writer gave up"
    client.shutdown()


def churn(port: int, cycles: int) -> int:
    """Connect and reset, half after a completed handshake, some refused."""
    for i in range(cycles):
        client = RawWs(port)
        if i % 3 == 1:
            client.upgrade()
        elif i % 3 == 2:
            client.request(headers=good_headers(protocol="msrp"))
        client.reset()
    return cycles


@pytest_twisted.inlineCallbacks
def test_table_empty_after_thousands_of_abort_cycles(sipws_factory):
    root = sipws_factory()
    ids = []
    root.connections.on_added(lambda record: ids.append(record.id))
    yield in_thread(churn, port_of(root), 1500).addTimeout(60, root.reactor)
    yield wait_for(lambda: len(root.connections) == 0)
    assert len(ids) == 1500 and len(set(ids)) == 1500 and ids == sorted(ids) and ids[0] >= 1
    assert root.connections.by_address("127.0.0.1", 1, "ws") is None


@pytest_twisted.inlineCallbacks
def test_lookup_by_id_and_address(sipws_factory):
    root = sipws_factory()
    client = yield in_thread(open_client, port_of(root))
    yield wait_for(lambda: len(root.connections) == 1)
    record = next(iter(root.connections))
    local_port = client.sock.getsockname()[1]
    assert root.connections.get(record.id) is record
    assert root.connections.by_address("127.0.0.1", local_port, "ws") is record
    assert record.role == "server" and record.transport == "ws" and record.subprotocol == "sip"
    assert record.origin == "https://phone.example.com"
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)
    assert root.connections.get(record.id) is None


@pytest.fixture
def hook_events():
    closed_hook.EVENTS.clear()
    yield closed_hook.EVENTS
    closed_hook.EVENTS.clear()


@pytest_twisted.inlineCallbacks
def test_closed_event_fires_once_for_every_way_of_ending(sipws_factory, hook_events):
    root = sipws_factory({"events": {"on_closed": "tests.integration.closed_hook:record_closed"},
                          "keepalive": {"timeout": 0.3, "interval": 0.05}})
    port = port_of(root)

    def scenarios():
        a = open_client(port)          # remote close handshake
        a.close(4000, b"bye")
        a.expect_close()
        a.shutdown()
        b = open_client(port)          # RST
        b.reset()
        c = RawWs(port)                # refused handshake
        c.request(path="/nope")
        c.shutdown()
        d = open_client(port)          # keep-alive timeout (never answers)
        d.expect_close()
        d.shutdown()

    yield in_thread(scenarios)
    yield wait_for(lambda: len(hook_events) == 4 and len(root.connections) == 0)
    by_id = sorted(hook_events)
    assert len({event[0] for event in by_id}) == 4
    assert by_id[0][1:] == (4000, "bye", "remote")
    assert by_id[1][1] is None and by_id[1][3] == "remote"
    assert by_id[2][1] is None and by_id[2][3] == "local" and "404" in by_id[2][2]
    assert by_id[3][1] == 1001 and by_id[3][3] == "local"


@pytest_twisted.inlineCallbacks
def test_closed_event_exception_is_logged_not_raised(sipws_factory, hook_events, sipws_log):
    root = sipws_factory({"events": {"on_closed": "tests.integration.closed_hook:explode"}})
    client = yield in_thread(open_client, port_of(root))
    client.reset()
    yield wait_for(lambda: hook_events and len(root.connections) == 0)
    # the server still works afterwards
    client = yield in_thread(open_client, port_of(root))
    client.shutdown()
    assert any("on_closed raised" in line for line in sipws_log)
    assert any(line.startswith("closed #") for line in sipws_log)
