"""HEP tracing end to end: a real sipws, real WebSocket clients, collectors on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from sipws.trace import hep
from tests.integration import trace_filters
from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.wsclient import RawWs, good_headers


class UdpCollector(protocol.DatagramProtocol):
    """A HEP collector on UDP: every datagram must decode as one packet."""

    def __init__(self) -> None:
        self.packets: list[hep.HepPacket] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.packets.append(hep.decode(data))


class TcpCollectorProtocol(protocol.Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        packets, self.buffer = hep.split_stream(self.buffer + data)
        self.factory.packets.extend(hep.decode(p) for p in packets)


class TcpCollector(protocol.Factory):
    protocol = TcpCollectorProtocol

    def __init__(self) -> None:
        self.packets: list[hep.HepPacket] = []
        self.connections = 0


@pytest.fixture
def udp_collector():
    collector = UdpCollector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1", maxPacketSize=65535)
    collector.port = port.getHost().port
    yield collector
    port.stopListening()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sip_options(call_id: str) -> bytes:
    """A SIP message to trace: a response the relay drops (its Via is not ours),
    so nothing but the test's own messages crosses the connection."""
    return (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-" + call_id + "\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        "Call-ID: " + call_id + "\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def raw_request() -> bytes:
    lines = ["GET / HTTP/1.1"] + [f"{k}: {v}" for k, v in good_headers().items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_session(port: int, call_id: str) -> dict[str, Any]:
    """Handshake, one SIP message, wait for the server's message, Close 1000."""
    client = RawWs(port)
    request = raw_request()
    status, _, response = client.request(raw=request)
    assert status == 101
    client.send_text(sip_options(call_id))
    return {"client": client, "request": request, "response": response,
            "local_port": client.sock.getsockname()[1]}


def finish(client: RawWs) -> tuple[int | None, str]:
    client.close(1000, b"done")
    result = client.expect_close()
    client.shutdown()
    return result


def net_events(packets: list[hep.HepPacket]) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in packets if p.proto_type == hep.PROTO_NET]


def sip_packets(packets: list[hep.HepPacket]) -> list[hep.HepPacket]:
    return [p for p in packets if p.proto_type == hep.PROTO_SIP]


@pytest_twisted.inlineCallbacks
def _traced_session(root, packets: list[hep.HepPacket], call_id: str):
    """One full client session while tracing; checks the handshake, messages, close."""
    ws_port = port_of(root)
    session = yield in_thread(ws_session, ws_port, call_id)
    yield wait_for(lambda: len(sip_packets(packets)) >= 1 and root.connections)
    [record] = list(root.connections)
    outgoing = sip_options(call_id + "-back")
    assert record.protocol.send_message(outgoing)
    client: RawWs = session["client"]
    opcode, data = yield in_thread(client.read_data)
    assert data == outgoing
    code, _ = yield in_thread(finish, client)
    assert code == 1000
    yield wait_for(lambda: any(e["event"] == "closed" for e in net_events(packets)))

    accepted, closed = net_events(packets)
    conn_id = accepted["id"]
    assert conn_id == record.id
    assert accepted["event"] == "accepted" and accepted["status"] == 101
    assert accepted["request"].encode() == session["request"]
    assert accepted["response"].encode() == session["response"]
    assert accepted["remote"] == f"127.0.0.1:{session['local_port']}"
    assert closed["event"] == "closed" and closed["id"] == conn_id
    assert (closed["code"], closed["reason"], closed["side"]) == (1000, "done", "remote")
    assert closed["counters"]["messages_in"] == 1 and closed["counters"]["messages_out"] == 1
    for packet in packets:
        if packet.proto_type == hep.PROTO_NET:
            assert packet.correlation_id == str(conn_id).encode()
            assert (packet.src_ipv4, packet.src_port) == ("127.0.0.1", session["local_port"])
            assert (packet.dst_ipv4, packet.dst_port) == ("127.0.0.1", ws_port)
            assert packet.ip_proto == hep.IPPROTO_TCP

    received, sent = sip_packets(packets)
    assert received.payload == sip_options(call_id)
    assert received.correlation_id == call_id.encode()
    assert (received.src_port, received.dst_port) == (session["local_port"], ws_port)
    assert sent.payload == outgoing
    assert sent.correlation_id == (call_id + "-back").encode()
    assert (sent.src_port, sent.dst_port) == (ws_port, session["local_port"])
    for packet in (received, sent):
        assert packet.ip_proto == hep.IPPROTO_TCP
        assert (packet.src_ipv4, packet.dst_ipv4) == ("127.0.0.1", "127.0.0.1")
        assert abs(packet.timestamp - reactor.seconds()) < 60
    for packet in packets:
        assert (packet.capture_id, packet.auth_key, packet.node_name) == (2001, b"s3cret", b"edge-a")
    return conn_id


IDENTITY = {"capture_id": 2001, "auth_key": "s3cret", "node_name": "edge-a"}


@pytest_twisted.inlineCallbacks
def test_udp_collector_sees_handshake_messages_and_close(sipws_factory, udp_collector):
    root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}",
                                    "on": True, **IDENTITY}})
    yield _traced_session(root, udp_collector.packets, "udp-call-1")
    assert len(udp_collector.packets) == 4
    assert root.stats.get("trace.packets_sent") == 4
    assert root.tracer.stats()["packets_dropped"] == 0


@pytest_twisted.inlineCallbacks
def test_tcp_collector_started_late_gets_the_queued_packets(sipws_factory):
    port = free_tcp_port()
    root = sipws_factory({"trace": {"destination": f"tcp:127.0.0.1:{port}", "on": True, **IDENTITY}})
    # The collector is not up: the handshake and message queue up.
    session = yield in_thread(ws_session, port_of(root), "tcp-early")
    yield wait_for(lambda: root.tracer.stats()["queue_length"] >= 2)
    assert root.tracer.stats()["state"] in ("waiting", "connecting")
    assert root.stats.get("trace.packets_sent") == 0
    collector = TcpCollector()
    listener = reactor.listenTCP(port, collector, interface="127.0.0.1")
    try:
        # Reconnect with back-off (0.5 s, 1 s, ...), then the queue drains in order.
        yield wait_for(lambda: len(collector.packets) >= 2)
        accepted = json.loads(collector.packets[0].payload)
        assert accepted["event"] == "accepted"
        assert collector.packets[1].payload == sip_options("tcp-early")
        assert root.tracer.stats()["state"] == "connected"
        assert root.tracer.stats()["queue_length"] == 0
        code, _ = yield in_thread(finish, session["client"])
        assert code == 1000
        yield wait_for(lambda: len(collector.packets) >= 3)
        assert json.loads(collector.packets[2].payload)["event"] == "closed"
        # A second session over the live connection: the full set of checks.
        del collector.packets[:]
        yield _traced_session(root, collector.packets, "tcp-call-2")
        assert collector.connections == 1
    finally:
        yield root.stopService()
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_tracing_off_sends_nothing_until_turned_on(sipws_factory, udp_collector):
    root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}",
                                    "on": False, **IDENTITY}})
    session = yield in_thread(ws_session, port_of(root), "while-off")
    yield wait_for(lambda: root.stats.get("ws.messages_in") == 1)
    yield in_thread(finish, session["client"])
    yield wait_for(lambda: len(root.connections) == 0)
    assert root.stats.get("trace.packets_sent") == 0
    # Turned on (as the admin `trace on` does): later traffic shows up, and
    # nothing from the earlier connection arrived before it.
    root.tracer.set_enabled(True)
    yield _traced_session(root, udp_collector.packets, "while-on")
    assert all(b"while-off" not in (p.payload or b"") for p in udp_collector.packets)
    root.tracer.set_enabled(False)
    session = yield in_thread(ws_session, port_of(root), "off-again")
    yield wait_for(lambda: root.stats.get("ws.messages_in") == 3)
    yield in_thread(finish, session["client"])
    yield sleep(0.2)
    assert len(udp_collector.packets) == 4


@pytest_twisted.inlineCallbacks
def test_filter_excludes_a_connection(sipws_factory, udp_collector):
    trace_filters.CALLS.clear()
    root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}",
                                    "on": True, "filter": "tests.integration.trace_filters:odd_ids_only",
                                    **IDENTITY}})
    ports = []
    for n in (1, 2, 3):  # connection ids 1, 2, 3: the filter keeps the odd ones
        session = yield in_thread(ws_session, port_of(root), f"filtered-{n}")
        ports.append(session["local_port"])
        yield wait_for(lambda: root.stats.get("ws.messages_in") == n)
        yield in_thread(finish, session["client"])
        yield wait_for(lambda: len(root.connections) == 0)
    yield wait_for(lambda: len(net_events(udp_collector.packets)) == 4)
    yield sleep(0.1)
    assert [c["id"] for c in trace_filters.CALLS] == [1, 2, 3]
    assert trace_filters.CALLS[1]["remote"] == f"127.0.0.1:{ports[1]}"
    assert trace_filters.CALLS[1]["local"] == f"127.0.0.1:{port_of(root)}"
    assert {(c["transport"], c["role"]) for c in trace_filters.CALLS} == {("ws", "server")}
    assert {e["id"] for e in net_events(udp_collector.packets)} == {1, 3}
    assert [p.correlation_id for p in sip_packets(udp_collector.packets)] == [b"filtered-1", b"filtered-3"]
    assert all(ports[1] not in (p.src_port, p.dst_port) for p in udp_collector.packets)


def refused_handshake(port: int) -> tuple[bytes, int, bytes]:
    client = RawWs(port)
    request = ("\r\n".join(["GET / HTTP/1.1"] + [f"{k}: {v}" for k, v in
                            good_headers(protocol="msrp").items()]) + "\r\n\r\n").encode()
    status, _, response = client.request(raw=request)
    client.shutdown()
    return request, status, response


@pytest_twisted.inlineCallbacks
def test_refused_handshake_is_traced_with_status_and_raw_http(sipws_factory, udp_collector):
    root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}", "on": True}})
    request, status, response = yield in_thread(refused_handshake, port_of(root))
    assert status >= 400
    yield wait_for(lambda: len(net_events(udp_collector.packets)) >= 2)
    refused, closed = net_events(udp_collector.packets)
    assert refused["event"] == "refused"
    assert refused["status"] == status and refused["reason"]
    assert refused["request"].encode() == request
    assert refused["response"].encode().startswith(response)
    assert closed["event"] == "closed" and closed["id"] == refused["id"]
    assert {p.correlation_id for p in udp_collector.packets} == {str(refused["id"]).encode()}


def self_signed(directory) -> tuple[str, str]:
    """A throw-away certificate for CN=sipws-test (cryptography ships with pyOpenSSL)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipws-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def wss_session(port: int) -> int:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = RawWs(port, tls=context)
    status, _, _ = client.request(raw=raw_request())
    assert status == 101
    client.send_text(sip_options("wss-call"))
    code, _ = finish(client)
    return code


@pytest_twisted.inlineCallbacks
def test_wss_accepted_event_carries_tls_details(sipws_factory, udp_collector, tmp_path):
    cert, key = self_signed(tmp_path)
    root = sipws_factory({
        "ws": {"listen": []},
        "wss": {"listen": ["127.0.0.1:0"], "certificate": cert, "private_key": key},
        "trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}", "on": True},
    })
    code = yield in_thread(wss_session, port_of(root, "wss"))
    assert code == 1000
    yield wait_for(lambda: len(net_events(udp_collector.packets)) >= 2)
    accepted, closed = net_events(udp_collector.packets)
    assert accepted["transport"] == "wss"
    tls = accepted["tls"]
    assert tls["protocol"].startswith("TLSv1.")
    assert tls["cipher"]
    assert "sipws-test" in json.dumps(tls["local_subject"])
    assert closed["transport"] == "wss"
    [sip] = sip_packets(udp_collector.packets)
    assert sip.payload == sip_options("wss-call") and sip.ip_proto == hep.IPPROTO_TCP


SIP_SIDE = sip_options("sip-side-1")


@pytest_twisted.inlineCallbacks
def test_ipv6_udp_and_tcp_destinations(sipws_factory):
    udp = UdpCollector()
    udp_port = reactor.listenUDP(0, udp, interface="::1", maxPacketSize=65535)
    tcp = TcpCollector()
    tcp_port = reactor.listenTCP(0, tcp, interface="::1")
    try:
        roots = [
            sipws_factory({"trace": {"destination": f"udp:[::1]:{udp_port.getHost().port}", "on": True}}),
            sipws_factory({"trace": {"destination": f"tcp:[::1]:{tcp_port.getHost().port}", "on": True}}),
        ]
        for root in roots:
            # As the SIP-side UDP transport reports a datagram from the core.
            root.tracer.sip_message(None, "in", "udp", ("2001:db8::7", 5060), ("::1", 5062), SIP_SIDE, None)
        yield wait_for(lambda: len(udp.packets) == 1 and len(tcp.packets) == 1)
        for packet in (udp.packets[0], tcp.packets[0]):
            assert packet.payload == SIP_SIDE
            assert packet.ip_family == hep.FAMILY_IPV6 and packet.ip_proto == hep.IPPROTO_UDP
            assert (packet.src_ipv6, packet.src_port) == ("2001:db8::7", 5060)
            assert (packet.dst_ipv6, packet.dst_port) == ("::1", 5062)
            assert packet.correlation_id == b"sip-side-1"
        for root in roots:
            yield root.stopService()
    finally:
        yield udp_port.stopListening()
        yield tcp_port.stopListening()


@pytest_twisted.inlineCallbacks
def test_udp_collector_down_is_counted_never_raised(sipws_factory):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # closed again: nobody listens there
    root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{dead}", "on": True}})
    for _ in range(20):
        root.tracer.sip_message(None, "out", "udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060), SIP_SIDE, None)
        yield sleep(0.01)
    yield wait_for(lambda: root.tracer.stats()["icmp_errors"] > 0)
    yield wait_for(lambda: root.tracer.stats()["state"] == "connected")
    stats = root.tracer.stats()
    assert stats["packets_sent"] + stats["packets_dropped"] + stats["queue_length"] == 20
    # The collector comes up on that port: tracing resumes by itself.
    collector = UdpCollector()
    port = reactor.listenUDP(dead, collector, interface="127.0.0.1", maxPacketSize=65535)
    try:
        # Re-opening backs off (at most UDP_REOPEN_MAX) while errors repeat.
        deadline = reactor.seconds() + 15
        while not collector.packets and reactor.seconds() < deadline:
            root.tracer.sip_message(None, "out", "udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060),
                                    SIP_SIDE, None)
            yield sleep(0.05)
        assert collector.packets and collector.packets[0].payload == SIP_SIDE
    finally:
        yield port.stopListening()


class StalledCollector(TcpCollector):
    """Accepts one connection and does not read from it until ``resume``."""

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        proto = super().buildProtocol(addr)
        self.proto = proto
        return proto

    def stall(self) -> None:
        self.proto.transport.pauseProducing()

    def resume(self) -> None:
        self.proto.transport.resumeProducing()


@pytest_twisted.inlineCallbacks
def test_backed_up_tcp_collector_queues_then_drops_and_counts(sipws_factory):
    collector = StalledCollector()
    listener = reactor.listenTCP(0, collector, interface="127.0.0.1")
    big = sip_options("big") + b"x" * 60_000
    try:
        root = sipws_factory({"trace": {"destination": f"tcp:127.0.0.1:{listener.getHost().port}",
                                        "on": True, "queue_size": 5}})
        yield wait_for(lambda: root.tracer.stats()["state"] == "connected")
        collector.stall()
        calls = 0
        # Kernel buffers fill, then the transport's buffer, then our queue.
        while root.tracer.stats()["packets_dropped"] == 0 and calls < 2000:
            root.tracer.sip_message(None, "in", "udp", ("127.0.0.1", 5060), ("127.0.0.1", 5062), big, None)
            calls += 1
            if calls % 20 == 0:
                yield sleep(0.01)
        stats = root.tracer.stats()
        assert stats["packets_dropped"] > 0
        assert stats["queue_length"] == 5
        assert root.stats.get("trace.packets_dropped") == stats["packets_dropped"]
        # The collector reads again: the queue drains, everything written arrives.
        collector.resume()
        yield wait_for(lambda: root.tracer.stats()["queue_length"] == 0)
        sent = root.tracer.stats()["packets_sent"]
        yield wait_for(lambda: len(collector.packets) == sent, timeout=20)
        assert sent + root.tracer.stats()["packets_dropped"] == calls
        assert all(p.payload == big for p in collector.packets)
        yield root.stopService()
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_stop_does_not_hang_on_a_stalled_collector(sipws_factory):
    collector = StalledCollector()
    listener = reactor.listenTCP(0, collector, interface="127.0.0.1")
    big = sip_options("stall") + b"x" * 60_000
    try:
        root = sipws_factory({"trace": {"destination": f"tcp:127.0.0.1:{listener.getHost().port}",
                                        "on": True, "queue_size": 5}})
        yield wait_for(lambda: root.tracer.stats()["state"] == "connected")
        collector.stall()
        for n in range(400):
            root.tracer.sip_message(None, "in", "udp", ("127.0.0.1", 5060), ("127.0.0.1", 5062), big, None)
            if root.tracer.stats()["packets_dropped"]:
                break
            if n % 20 == 0:
                yield sleep(0.01)
        assert root.tracer.stats()["packets_dropped"] > 0
        # The graceful close cannot finish; the tracer aborts after its grace period.
        yield defer.maybeDeferred(root.stopService).addTimeout(10, reactor)
        assert root.tracer.stats()["state"] == "stopped"
    finally:
        yield listener.stopListening()
