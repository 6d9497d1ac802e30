"""The tracer in memory: what each hook emits, switches, filter, queue, back-off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sipws.config import Config, TraceConfig
from sipws.stats import Stats
from sipws.trace import hep, tracer as tracer_mod
from sipws.trace.errors import TraceNotConfigured
from sipws.trace.tracer import (
    Destination,
    PacketQueue,
    TcpDestination,
    Tracer,
    UnconfiguredTracer,
    find_call_id,
)
from sipws.transport.connections import ConnectionRecord
from tests.unit.trace import filters

NOW = 1_700_000_000.25

OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK1\r\n"
    b"Call-ID: abc-123@example.com\r\n"
    b"CSeq: 1 OPTIONS\r\n\r\n"
)


class MemoryDestination(Destination):
    """Writes into a list while ``up``; the base class queues otherwise."""

    kind = "memory"

    def __init__(self, queue: PacketQueue, counters: Any) -> None:
        super().__init__(queue, counters)
        self.up = True
        self.written: list[bytes] = []

    def _ready(self) -> bool:
        return self.up

    def _write_now(self, packet: bytes) -> bool:
        self.written.append(packet)
        return True

    def packets(self) -> list[hep.HepPacket]:
        return [hep.decode(p) for p in self.written]


def make_tracer(queue_size: int = 100, max_bytes: int = tracer_mod.MAX_QUEUE_BYTES,
                **config: Any) -> tuple[Tracer, MemoryDestination, Stats, Clock]:
    clock = Clock()
    clock.advance(NOW)
    stats = Stats()
    config.setdefault("on", True)
    cfg = TraceConfig(destination="udp:127.0.0.1:9060", queue_size=queue_size, **config)
    holder: dict[str, MemoryDestination] = {}

    class Sink:
        def sent(self, count: int = 1) -> None:
            tracer.sent(count)

        def dropped(self, count: int = 1) -> None:
            tracer.dropped(count)

    dest = MemoryDestination(PacketQueue(queue_size, max_bytes), Sink())
    holder["d"] = dest
    tracer = Tracer(cfg, stats, clock, destination=dest, wall_clock=clock.seconds)
    return tracer, dest, stats, clock


def ws_record(conn_id: int = 7, role: str = "server", transport: str = "ws",
              remote: tuple[str, int] = ("192.0.2.10", 50120),
              local: tuple[str, int] = ("127.0.0.1", 8080)) -> ConnectionRecord:
    record = ConnectionRecord(transport, role, local, remote, NOW)
    record.id = conn_id
    return record


# -- SIP messages ------------------------------------------------------------------


def test_sip_message_over_ws_is_protocol_1_with_exact_bytes_and_real_addresses() -> None:
    tracer, dest, stats, _ = make_tracer(capture_id=2001, auth_key="k", node_name="edge-1")
    record = ws_record()
    tracer.connection_made(record)
    tracer.sip_message(record, "in", "ws", record.remote, record.local, OPTIONS, 1_700_000_123.5)
    [packet] = dest.packets()
    assert packet.proto_type == hep.PROTO_SIP
    assert packet.payload == OPTIONS
    assert packet.ip_family == hep.FAMILY_IPV4
    assert packet.ip_proto == hep.IPPROTO_TCP
    assert (packet.src_ipv4, packet.src_port) == ("192.0.2.10", 50120)
    assert (packet.dst_ipv4, packet.dst_port) == ("127.0.0.1", 8080)
    assert (packet.ts_sec, packet.ts_usec) == (1_700_000_123, 500_000)
    assert packet.correlation_id == b"abc-123@example.com"
    assert (packet.capture_id, packet.auth_key, packet.node_name) == (2001, b"k", b"edge-1")
    assert stats.get("trace.packets_sent") == 1
    assert tracer.stats()["packets_sent"] == 1


@pytest.mark.parametrize("transport, ip_proto", [("udp", 17), ("tcp", 6), ("tls", 6), ("wss", 6)])
def test_sip_side_messages_use_the_transport_ip_protocol(transport: str, ip_proto: int) -> None:
    tracer, dest, _, _ = make_tracer()
    tracer.sip_message(None, "out", transport, ("127.0.0.1", 5062), ("127.0.0.1", 5060), OPTIONS, None)
    [packet] = dest.packets()
    assert packet.ip_proto == ip_proto
    assert packet.timestamp == pytest.approx(NOW)  # time.time() stand-in when None


def test_sip_message_ipv6_addresses() -> None:
    tracer, dest, _, _ = make_tracer()
    tracer.sip_message(None, "in", "udp", ("2001:db8::5", 5060), ("::1", 5062), OPTIONS, NOW)
    [packet] = dest.packets()
    assert packet.ip_family == hep.FAMILY_IPV6
    assert (packet.src_ipv6, packet.dst_ipv6) == ("2001:db8::5", "::1")
    assert packet.src_ipv4 is None


def test_mixed_families_are_written_as_ipv6() -> None:
    tracer, dest, _, _ = make_tracer()
    tracer.sip_message(None, "in", "udp", ("10.1.2.3", 5060), ("::1", 5062), OPTIONS, NOW)
    [packet] = dest.packets()
    assert (packet.src_ipv6, packet.dst_ipv6) == ("::ffff:a01:203", "::1")


def test_v4_mapped_pair_is_written_as_ipv4() -> None:
    tracer, dest, _, _ = make_tracer()
    tracer.sip_message(None, "in", "tcp", ("::ffff:10.0.0.1", 5060), ("::ffff:10.0.0.2", 5062), OPTIONS, NOW)
    [packet] = dest.packets()
    assert (packet.src_ipv4, packet.dst_ipv4) == ("10.0.0.1", "10.0.0.2")


def test_correlation_id_fallbacks() -> None:
    tracer, dest, _, _ = make_tracer()
    record = ws_record(conn_id=12)
    tracer.connection_made(record)
    no_call_id = b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nCall-ID: in-body\r\n"
    tracer.sip_message(record, "in", "ws", record.remote, record.local, no_call_id, NOW)
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), no_call_id, NOW)
    first, second = dest.packets()
    assert first.correlation_id == b"12"  # the connection id when no Call-ID
    assert second.correlation_id is None  # SIP socket, no Call-ID: chunk left out


@pytest.mark.parametrize(
    "data, expected",
    [
        (OPTIONS, b"abc-123@example.com"),
        (b"INVITE sip:x SIP/2.0\r\ni: compact-1\r\n\r\n", b"compact-1"),
        (b"SIP/2.0 200 OK\r\ncall-id :  spaced \r\n\r\n", b"spaced"),
        (b"SIP/2.0 200 OK\r\nX-Call-ID: nope\r\n\r\n", None),
        (b"SIP/2.0 200 OK\r\nVia: x;i: nope\r\n\r\n", None),
        (b"\r\n\r\n", None),
        (b"", None),
        (b"BYE sip:x SIP/2.0\r\nCall-ID: " + b"x" * 1000 + b"\r\n\r\n", b"x" * 256),
    ],
)
def test_find_call_id(data: bytes, expected: bytes | None) -> None:
    assert find_call_id(data) == expected


def test_text_payload_is_traced_as_utf8() -> None:
    tracer, dest, _, _ = make_tracer()
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), "MESSAGE é", NOW)
    assert dest.packets()[0].payload == "MESSAGE é".encode()


# -- connection events -------------------------------------------------------------

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: sip\r\n\r\n"


def test_accepted_event_payload() -> None:
    tracer, dest, _, _ = make_tracer()
    record = ws_record(conn_id=3, transport="wss")
    tracer.connection_made(record)
    tls = {"protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "peer_subject": None}
    tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "Switching Protocols", tls)
    [packet] = dest.packets()
    assert packet.proto_type == hep.PROTO_NET == 0x59
    assert packet.ip_proto == hep.IPPROTO_TCP
    assert packet.correlation_id == b"3"
    assert (packet.src_ipv4, packet.src_port) == record.remote
    assert (packet.dst_ipv4, packet.dst_port) == record.local
    body = json.loads(packet.payload)
    assert body == {
        "event": "accepted", "id": 3, "transport": "wss", "role": "server",
        "local": "127.0.0.1:8080", "remote": "192.0.2.10:50120",
        "status": 101, "reason": "Switching Protocols", "subprotocol": "", "identity": "",
        "request": REQUEST.decode(), "response": RESPONSE.decode(), "tls": tls,
    }


def test_refused_and_client_connected_events() -> None:
    tracer, dest, _, _ = make_tracer()
    server = ws_record(conn_id=4)
    client = ws_record(conn_id=5, role="client", local=("127.0.0.1", 40000), remote=("127.0.0.1", 8443))
    for record in (server, client):
        tracer.connection_made(record)
    tracer.ws_handshake(server, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n",
                        400, "missing Sec-WebSocket-Protocol: sip", None)
    tracer.ws_handshake(client, REQUEST, RESPONSE, 101, "Switching Protocols", None)
    refused, connected = dest.packets()
    assert json.loads(refused.payload)["event"] == "refused"
    assert json.loads(refused.payload)["status"] == 400
    assert json.loads(connected.payload)["event"] == "connected"
    # The dialling side is the source of a client-role connection's events.
    assert (connected.src_port, connected.dst_port) == (40000, 8443)
    assert connected.correlation_id == b"5"


def test_closed_event_payload_with_counters() -> None:
    tracer, dest, _, _ = make_tracer()
    record = ws_record(conn_id=9)
    record.identity = "alice@example.com"
    record.messages_in, record.messages_out, record.bytes_in, record.bytes_out = 2, 3, 400, 500
    tracer.connection_made(record)
    tracer.ws_closed(record, 1000, "bye", "remote")
    [packet] = dest.packets()
    assert packet.correlation_id == b"9"
    body = json.loads(packet.payload)
    assert body["event"] == "closed"
    assert (body["code"], body["reason"], body["side"]) == (1000, "bye", "remote")
    assert body["identity"] == "alice@example.com"
    assert body["counters"] == {"messages_in": 2, "messages_out": 3, "bytes_in": 400, "bytes_out": 500}
    tracer.ws_closed(record, None, "connection lost", "remote")
    assert json.loads(dest.packets()[1].payload)["code"] is None


def test_unserializable_tls_details_do_not_break_the_event() -> None:
    tracer, dest, _, _ = make_tracer()
    record = ws_record()
    tracer.connection_made(record)
    tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "ok", {"peer": object()})
    assert json.loads(dest.packets()[0].payload)["tls"]["peer"].startswith("<object")


# -- switches ------------------------------------------------------------------------


def test_off_emits_nothing_and_on_resumes_for_new_packets() -> None:
    tracer, dest, stats, _ = make_tracer(on=False)
    record = ws_record()
    tracer.connection_made(record)  # decided even while off: tracing may be turned on later
    assert record.traced is True
    tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "ok", None)
    tracer.sip_message(record, "in", "ws", record.remote, record.local, OPTIONS, NOW)
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), OPTIONS, NOW)
    assert dest.written == []
    assert not tracer.enabled
    tracer.set_enabled(True)
    assert tracer.enabled and tracer.stats()["enabled"]
    tracer.sip_message(record, "in", "ws", record.remote, record.local, OPTIONS, NOW)
    assert len(dest.written) == 1
    tracer.set_enabled(False)
    tracer.ws_closed(record, 1000, "", "local")
    assert len(dest.written) == 1
    assert stats.get("trace.packets_sent") == 1
    assert stats.get("trace.packets_dropped") == 0


def test_filter_is_called_once_with_the_connection_info() -> None:
    filters.CALLS.clear()
    tracer, dest, _, _ = make_tracer(filter="tests.unit.trace.filters:only_odd_ids")
    odd, even = ws_record(conn_id=1), ws_record(conn_id=2, transport="wss", role="client")
    tracer.connection_made(odd)
    tracer.connection_made(even)
    assert filters.CALLS == [
        {"id": 1, "transport": "ws", "role": "server", "local": "127.0.0.1:8080", "remote": "192.0.2.10:50120"},
        {"id": 2, "transport": "wss", "role": "client", "local": "127.0.0.1:8080", "remote": "192.0.2.10:50120"},
    ]
    for record in (odd, even):
        tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "ok", None)
        tracer.sip_message(record, "in", "ws", record.remote, record.local, OPTIONS, NOW)
        tracer.ws_closed(record, 1000, "", "local")
    assert {p.correlation_id for p in dest.packets() if p.proto_type == 0x59} == {b"1"}
    assert len(dest.written) == 3
    assert len(filters.CALLS) == 2  # never called again
    # SIP-side sockets are not filtered.
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), OPTIONS, NOW)
    assert len(dest.written) == 4


def test_filter_exception_means_not_traced_and_is_logged() -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        tracer, dest, _, _ = make_tracer(filter="tests.unit.trace.filters:broken")
        record = ws_record(conn_id=11, remote=("198.51.100.4", 3333))
        tracer.connection_made(record)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert record.traced is False
    tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "ok", None)
    assert dest.written == []
    failures = [e for e in seen if e.get("log_namespace") == "sipws.trace" and "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["remote"] == "198.51.100.4:3333"
    failures[0]["log_failure"].trap(RuntimeError)


def test_hooks_never_raise_on_bad_input() -> None:
    tracer, dest, stats, _ = make_tracer()
    record = ws_record(remote=("not-an-address", 1))
    tracer.connection_made(record)
    tracer.sip_message(record, "in", "ws", record.remote, record.local, OPTIONS, NOW)
    tracer.ws_handshake(record, REQUEST, RESPONSE, 101, "ok", None)
    tracer.ws_closed(record, 1000, "", "local")
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), b"x" * 70000, NOW)
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), 12345, NOW)
    assert dest.written == []
    assert stats.get("trace.packets_dropped") == 5
    assert tracer.stats()["packets_dropped"] == 5


# -- queueing and dropping -------------------------------------------------------------


def test_queue_while_down_then_flush_in_order_and_drop_when_full() -> None:
    tracer, dest, stats, _ = make_tracer(queue_size=3)
    dest.up = False
    for n in range(5):
        tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1000 + n), ("127.0.0.1", 2), OPTIONS, NOW)
    assert dest.written == []
    assert tracer.stats()["queue_length"] == 3
    assert stats.get("trace.packets_dropped") == 2
    dest.up = True
    dest.flush()
    assert [p.src_port for p in dest.packets()] == [1000, 1001, 1002]
    assert stats.get("trace.packets_sent") == 3
    assert tracer.stats()["queue_length"] == 0


def test_queue_byte_cap_drops_too() -> None:
    one = len(hep.encode(hep.HepPacket(payload=OPTIONS)))
    tracer, dest, stats, _ = make_tracer(queue_size=1000, max_bytes=3 * one + 200)
    dest.up = False
    for _ in range(10):
        tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), OPTIONS, NOW)
    assert 0 < tracer.stats()["queue_length"] < 10
    assert stats.get("trace.packets_dropped") == 10 - tracer.stats()["queue_length"]
    assert tracer.stats()["queue_bytes"] <= 3 * one + 200


def test_sending_after_a_queue_keeps_order() -> None:
    tracer, dest, _, _ = make_tracer()
    dest.up = False
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), OPTIONS, NOW)
    dest.up = True
    # The queue is not empty: a new packet goes behind it, not ahead.
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 3), ("127.0.0.1", 2), OPTIONS, NOW)
    assert dest.written == []
    dest.flush()
    assert [p.src_port for p in dest.packets()] == [1, 3]


# -- TCP destination with a fake endpoint and a Clock ------------------------------------


class FakeEndpoint:
    """Each connect() fails until ``accept`` is set; then it builds a StringTransport."""

    def __init__(self) -> None:
        self.accept = False
        self.attempts = 0
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        if not self.accept:
            return defer.fail(ConnectionRefusedError("nobody home"))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.protocols.append(proto)
        return defer.succeed(proto)


class Count:
    def __init__(self) -> None:
        self.sent_n = 0
        self.dropped_n = 0

    def sent(self, count: int = 1) -> None:
        self.sent_n += count

    def dropped(self, count: int = 1) -> None:
        self.dropped_n += count


def test_tcp_backoff_queue_flush_pause_and_reconnect() -> None:
    clock = Clock()
    endpoint = FakeEndpoint()
    counts = Count()
    dest = TcpDestination(clock, "127.0.0.1", 9060, PacketQueue(10), counts, endpoint=endpoint)
    dest.start()
    assert endpoint.attempts == 1 and dest.state == "waiting"
    dest.send(b"HEP3\x00\x06")
    # Back-off doubles from 0.5 s and stops at 30 s.
    delays = []
    for _ in range(9):
        delays.append(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert endpoint.attempts == 10
    endpoint.accept = True
    clock.advance(30.0)
    assert dest.state == "connected"
    [proto] = endpoint.protocols
    assert proto.transport.value() == b"HEP3\x00\x06"  # the queued packet went first
    assert counts.sent_n == 1
    # Backed-up transport: the producer is paused, packets queue.
    proto.pauseProducing()
    dest.send(b"HEP3\x00\x06")
    assert len(dest.queue) == 1
    proto.resumeProducing()
    assert len(dest.queue) == 0 and counts.sent_n == 2
    # Connection lost: a fresh back-off starting at 0.5 s, then a new connection.
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert dest.state == "waiting"
    assert clock.getDelayedCalls()[0].getTime() - clock.seconds() == 0.5
    clock.advance(0.5)
    assert len(endpoint.protocols) == 2
    # stop() closes the connection and stops reconnecting.
    d = dest.stop()
    assert endpoint.protocols[1].transport.disconnecting
    endpoint.protocols[1].connectionLost(None)
    assert d is not None and d.called
    assert clock.getDelayedCalls() == []


def test_tcp_stop_aborts_a_stalled_connection_after_a_grace_period() -> None:
    clock = Clock()
    endpoint = FakeEndpoint()
    endpoint.accept = True
    dest = TcpDestination(clock, "127.0.0.1", 9060, PacketQueue(10), Count(), endpoint=endpoint)
    dest.start()
    [proto] = endpoint.protocols
    d = dest.stop()
    assert proto.transport.disconnecting and not proto.transport.disconnected
    clock.advance(tracer_mod.STOP_GRACE)
    assert proto.transport.disconnected  # aborted
    proto.connectionLost(None)
    assert d is not None and d.called
    assert clock.getDelayedCalls() == []


def test_tcp_stop_while_waiting_cancels_the_retry() -> None:
    clock = Clock()
    dest = TcpDestination(clock, "::1", 9060, PacketQueue(10), Count(), endpoint=FakeEndpoint())
    dest.start()
    assert len(clock.getDelayedCalls()) == 1
    assert dest.stop() is None
    assert clock.getDelayedCalls() == []
    assert dest.describe()["state"] == "stopped"


# -- install ------------------------------------------------------------------------------


class Root(MultiService):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.stats = Stats()
        self.reactor = Clock()
        self.tracer: Any = None


def test_install_without_destination_leaves_a_tracer_that_cannot_be_turned_on() -> None:
    root = Root(Config())
    tracer_mod.install(root)
    tracer = root.tracer
    assert isinstance(tracer, UnconfiguredTracer)
    assert not tracer.enabled
    record = ws_record()
    tracer.connection_made(record)
    assert record.traced is False
    tracer.sip_message(None, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), OPTIONS, None)
    tracer.set_enabled(False)
    with pytest.raises(TraceNotConfigured, match=r"\[trace\] destination"):
        tracer.set_enabled(True)
    assert tracer.stats()["state"] == "unconfigured"
    assert list(root) == []


def test_install_with_destination_adds_a_child_service() -> None:
    root = Root(Config(trace=TraceConfig(destination="tcp:[::1]:9061", on=True)))
    tracer_mod.install(root)
    assert isinstance(root.tracer, Tracer)
    assert root.getServiceNamed("trace") is root.tracer
    assert isinstance(root.tracer.destination, TcpDestination)
    assert (root.tracer.destination.host, root.tracer.destination.port) == ("::1", 9061)
    assert root.tracer.enabled


_header_names = st.sampled_from(["Call-ID", "call-id", "CALL-ID", "i", "I", "Via", "X-Call-ID",
                                 "Call-Info", "In-Reply-To", "From"])


@given(st.lists(st.tuples(_header_names, st.sampled_from(["", " ", "\t", "  "]),
                          st.text(alphabet="abc@.- 12", max_size=20)), max_size=6))
def test_find_call_id_agrees_with_a_plain_reading_of_the_headers(headers) -> None:
    lines = [f"{name}{space}: {value}" for name, space, value in headers]
    data = ("OPTIONS sip:x SIP/2.0\r\n" + "\r\n".join(lines) + "\r\n\r\nCall-ID: body").encode()
    expected = None
    full = [v for n, _, v in headers if n.lower() == "call-id"]
    compact = [v for n, _, v in headers if n.lower() == "i"]
    for value in (full[:1] or compact[:1]):
        expected = value.strip().encode() or None
    assert find_call_id(data) == expected


def test_filter_with_a_malformed_record_does_not_raise() -> None:
    tracer, _, _, _ = make_tracer(filter="tests.unit.trace.filters:only_odd_ids")

    class Odd:
        id = 1
        transport = role = "ws"
        local = remote = None
        traced = True

    record = Odd()
    tracer.connection_made(record)
    assert record.traced is False


class FakeUdpPort:
    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.written: list[bytes] = []
        self.connected_to: tuple[str, int] | None = None

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def write(self, packet: bytes) -> None:
        self.written.append(packet)

    def stopListening(self) -> None:
        return None


class UdpReactor(Clock):
    """A Clock that also hands out fake UDP ports."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUdpPort] = []

    def listenUDP(self, port: int, proto: Any, interface: str = "", maxPacketSize: int = 8192):
        fake = FakeUdpPort(proto)
        fake.interface = interface
        self.ports.append(fake)
        return fake


def test_udp_socket_reopens_with_back_off_after_icmp_errors() -> None:
    reactor = UdpReactor()
    counts = Count()
    dest = tracer_mod.UdpDestination(reactor, "::1", 9060, PacketQueue(100), counts)
    dest.start()
    [first] = reactor.ports
    assert first.connected_to == ("::1", 9060) and first.interface == "::"
    dest.send(b"a")
    assert first.written == [b"a"] and counts.sent_n == 1
    delays = []
    for _ in range(8):
        reactor.ports[-1].proto.stopProtocol()  # the reactor closed it (ICMP error)
        assert dest.describe()["state"] == "reopening"
        dest.send(b"q")  # queued meanwhile
        [call] = reactor.getDelayedCalls()
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        reactor.advance(delays[-1])
        assert dest.describe()["state"] == "connected"
        assert reactor.ports[-1].written == [b"q"]  # the queue flushed into the new socket
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert dest.describe()["icmp_errors"] == 8
    # After a quiet period the next error re-opens at once again.
    reactor.advance(tracer_mod.UDP_REOPEN_RESET + 1)
    reactor.ports[-1].proto.stopProtocol()
    assert reactor.getDelayedCalls()[0].getTime() == reactor.seconds()
    dest.stop()
    assert reactor.getDelayedCalls() == []
    # Our own stop does not trigger a re-open.
    reactor.ports[-1].proto.stopProtocol()
    assert reactor.getDelayedCalls() == []
