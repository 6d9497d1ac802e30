"""The relay on real sockets: WebSocket clients ↔ sipws ↔ a SIP core over UDP/TCP.

The core here is the scriptable endpoint of ``sipcore.py`` (for cases a real
core would not produce on demand); tests/interop drives Kamailio and sipp.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.names import authority, dns, server

from sipws.sip import parse
from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.sipcore import core_request, reply, tcp_core, udp_core, ws_request
from tests.integration.wsclient import RawWs


class MemoryZone(authority.FileAuthority):
    """A zone held in memory (FileAuthority without the file)."""

    def loadFile(self, filename):
        pass


def open_client(port: int) -> RawWs:
    client = RawWs(port)
    status, _, _ = client.request()
    assert status == 101
    return client


def exchange(client: RawWs, data: bytes) -> None:
    client.send_text(data)


def read_sip(client: RawWs):
    _, data = client.read_data()
    return parse(data), data


def relay_config(core_transport: str, core_port: int, **sip):
    return {"sip": {"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
                    "upstream": f"sip:127.0.0.1:{core_port};transport={core_transport}", **sip}}


def sip_port(root, transport: str = "udp") -> int:
    return root.listening(f"sip-{transport}")[0].getHost().port


@pytest.fixture
def core():
    c = udp_core()
    yield c
    c.port.stopListening()


@pytest.fixture
def core_tcp():
    c = tcp_core()
    yield c
    for conn in c.connections:
        conn.transport.abortConnection()
    c.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_register_gets_path_with_flow_token_and_the_200_comes_back(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number))
    client = yield in_thread(open_client, port_of(root))
    register = ws_request("REGISTER", "reg-1", ruri="sip:example.com",
                          extra='Contact: <sip:a@df7jal23ls0d.invalid;transport=ws>;'
                                'reg-id=1;+sip.instance="<urn:uuid:0001>"\r\nSupported: path, outbound')
    yield in_thread(exchange, client, register)
    req, raw, source = yield core.next()
    assert req.method == "REGISTER"
    assert source == ("127.0.0.1", sip_port(root))
    ours, theirs = req.vias[0], req.vias[1]
    assert ours.transport == "UDP" and ours.port == sip_port(root) and ours.branch.startswith("z9hG4bK")
    assert theirs.host == "df7jal23ls0d.invalid"
    assert theirs.received == "127.0.0.1" and isinstance(theirs.rport, int)
    [path] = req.paths
    assert path.uri.port == sip_port(root) and "lr" in path.uri.params and "ob" in path.uri.params
    assert len(path.uri.user) == 39  # the flow token
    assert req.max_forwards == 68
    core.send(reply(req, extra="Contact: <sip:a@df7jal23ls0d.invalid;transport=ws>;expires=600"), source)
    resp, _ = yield in_thread(read_sip, client)
    assert resp.status == 200
    assert [v.host for v in resp.vias] == ["df7jal23ls0d.invalid"]
    assert root.stats.get("sip.messages_in.ws") == 1 and root.stats.get("sip.messages_out.udp") == 1
    assert root.stats.get("sip.messages_in.udp") == 1 and root.stats.get("sip.messages_out.ws") == 1
    client.shutdown()


@defer.inlineCallbacks
def _registered(root, core, call_id: str = "reg-2"):
    """A client that registered; returns (client, path URI text)."""
    client = yield in_thread(open_client, port_of(root))
    yield in_thread(exchange, client, ws_request(
        "REGISTER", call_id, ruri="sip:example.com",
        extra='Contact: <sip:a@df7jal23ls0d.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:1>"'))
    req, _, source = yield core.next()
    core.send(reply(req), source)
    resp, _ = yield in_thread(read_sip, client)
    assert resp.status == 200
    return client, str(req.paths[0].uri)


@pytest_twisted.inlineCallbacks
def test_core_request_through_path_reaches_the_client_and_its_answer_returns(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number))
    client, path = yield _registered(root, core)
    core.send(core_request("MESSAGE", "msg-1", "sip:a@df7jal23ls0d.invalid;transport=ws", f"<{path}>",
                           core.number, extra="Content-Type: text/plain", body="hi"),
              ("127.0.0.1", sip_port(root)))
    req, raw = yield in_thread(read_sip, client)
    assert req.method == "MESSAGE" and req.body == b"hi"
    assert req.vias[0].transport == "WS" and len(req.vias) == 2
    assert not req.routes  # our Route was popped
    yield in_thread(exchange, client, reply(req))
    resp, _, _ = yield core.next()
    assert resp.status == 200 and len(resp.vias) == 1 and resp.vias[0].port == core.number
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_closed_connection_gives_430_and_a_bad_token_403(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number))
    client, path = yield _registered(root, core)
    client.close(1000, b"bye")
    yield in_thread(client.expect_close)
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)
    core.send(core_request("MESSAGE", "msg-gone", "sip:a@x.invalid", f"<{path}>", core.number),
              ("127.0.0.1", sip_port(root)))
    resp, _, _ = yield core.next()
    assert resp.status == 430
    assert not root.relay.proxy.flows  # no flow outlives its connection
    forged = path.replace(path.split(":", 1)[1].split("@")[0], "a" * 39)
    core.send(core_request("MESSAGE", "msg-forged", "sip:a@x.invalid", f"<{forged}>", core.number),
              ("127.0.0.1", sip_port(root)))
    resp, _, _ = yield core.next()
    assert resp.status == 403


@pytest_twisted.inlineCallbacks
def test_invite_over_udp_is_retransmitted_until_provisional_and_100_is_sent(sipws_factory, core):
    root = sipws_factory({**relay_config("udp", core.number, t1=0.1)})
    client = yield in_thread(open_client, port_of(root))
    yield in_thread(exchange, client, ws_request("INVITE", "inv-1", extra="Contact: <sip:a@x.invalid;transport=ws>"
                                                 "\r\nContent-Type: application/sdp", body="v=0\r\n"))
    trying, _ = yield in_thread(read_sip, client)
    assert trying.status == 100
    first, raw1, source = yield core.next()
    again, raw2, _ = yield core.next()  # timer A: the same bytes again
    assert raw1 == raw2
    assert len(first.record_routes) == 2
    top, bottom = (str(r.uri) for r in first.record_routes)
    assert "transport=ws" not in top and "transport=ws" in bottom
    core.send(reply(first, 180, "Ringing"), source)
    ringing, _ = yield in_thread(read_sip, client)
    assert ringing.status == 180
    core.send(reply(first, 486, "Busy Here"), source)
    busy, _ = yield in_thread(read_sip, client)
    assert busy.status == 486
    ack, _, _ = yield core.next()  # hop-by-hop ACK for the non-2xx
    assert ack.method == "ACK" and ack.vias[0].branch == first.vias[0].branch
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_upstream_over_tcp_reuses_one_connection(sipws_factory, core_tcp):
    root = sipws_factory(relay_config("tcp", core_tcp.number))
    client = yield in_thread(open_client, port_of(root))
    for n in range(3):
        yield in_thread(exchange, client, ws_request("OPTIONS", f"opt-{n}"))
        req, _, conn = yield core_tcp.next()
        assert req.vias[0].transport == "TCP"
        conn.send(reply(req))
        resp, _ = yield in_thread(read_sip, client)
        assert resp.status == 200 and resp.call_id == f"opt-{n}"
    assert len(core_tcp.connections) == 1
    assert root.stats.get("sip.messages_out.tcp") == 3
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_core_request_over_tcp_answered_on_the_same_connection(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number))
    client, path = yield _registered(root, core)
    from twisted.internet.protocol import ClientCreator

    from tests.integration.sipcore import _CoreStream, CoreTcp

    factory = CoreTcp()
    proto = _CoreStream()
    proto.factory = factory
    creator = ClientCreator(reactor, lambda: proto)
    yield creator.connectTCP("127.0.0.1", sip_port(root, "tcp")).addTimeout(10, reactor)
    local_port = proto.transport.getHost().port
    proto.send(core_request("MESSAGE", "tcp-msg", "sip:a@x.invalid", f"<{path}>", local_port, transport="TCP"))
    req, _ = yield in_thread(read_sip, client)
    yield in_thread(exchange, client, reply(req, 202, "Accepted"))
    resp, _, conn = yield factory.next()
    assert resp.status == 202 and conn is proto
    proto.transport.loseConnection()
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_unreachable_tcp_upstream_gives_503_without_waiting_for_timer_f(sipws_factory):
    closed = tcp_core()
    dead_port = closed.number
    yield closed.port.stopListening()
    root = sipws_factory(relay_config("tcp", dead_port))
    client = yield in_thread(open_client, port_of(root))
    yield in_thread(exchange, client, ws_request("OPTIONS", "dead-1"))
    resp, _ = yield in_thread(read_sip, client)
    assert resp.status == 503
    assert root.stats.get("sip.connect_failures") == 1
    assert len(root.relay.proxy.table) <= 1  # only the server transaction's short linger, if any
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_large_datagram_from_the_core_is_read_whole(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number))
    client, path = yield _registered(root, core)
    body = "x" * 20000
    core.send(core_request("MESSAGE", "big-1", "sip:a@x.invalid", f"<{path}>", core.number,
                           extra="Content-Type: text/plain", body=body), ("127.0.0.1", sip_port(root)))
    req, _ = yield in_thread(read_sip, client)
    assert req.body == body.encode()
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_malformed_from_the_core_is_answered_or_dropped_and_logged(sipws_factory, core, sipws_log):
    root = sipws_factory(relay_config("udp", core.number))
    core.send(b"MESSAGE sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n"
              b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: bad-1\r\nCSeq: 1 MESSAGE\r\n"
              b"Max-Forwards: abc\r\nContent-Length: 0\r\n\r\n", ("127.0.0.1", sip_port(root)))
    resp, _, _ = yield core.next()
    assert resp.status == 400
    core.send(b"\x00\x01garbage", ("127.0.0.1", sip_port(root)))
    yield wait_for(lambda: root.relay.proxy.counters["malformed"] == 2)
    malformed = [line for line in sipws_log if "malformed" in line]
    assert len(malformed) == 2 and all(f"127.0.0.1:{core.number}" in line for line in malformed)


@pytest_twisted.inlineCallbacks
def test_upstream_name_resolved_by_srv(sipws_factory, core):
    """RFC 3263: a host name without port → SRV _sip._udp → A, against a real DNS server."""
    zone = MemoryZone("core.test")  # served by twisted.names' real DNS server
    zone.soa = (b"core.test", dns.Record_SOA(mname=b"ns.core.test", rname=b"root.core.test", ttl=60))
    zone.records = {
        b"core.test": [dns.Record_SOA(mname=b"ns.core.test", rname=b"root.core.test", ttl=60)],
        b"_sip._udp.core.test": [dns.Record_SRV(10, 1, core.number, b"pbx.core.test", ttl=60)],
        b"pbx.core.test": [dns.Record_A("127.0.0.1", ttl=60)],
    }
    dns_factory = server.DNSServerFactory(authorities=[zone])
    dns_udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(dns_factory), interface="127.0.0.1")
    try:
        from twisted.names import client as dns_client

        root = sipws_factory({"sip": {"listen": ["udp:127.0.0.1:0"], "upstream": "sip:core.test"}})
        root.relay.resolver.resolver = dns_client.Resolver(
            servers=[("127.0.0.1", dns_udp.getHost().port)], resolv=None)
        client = yield in_thread(open_client, port_of(root))
        for n in range(2):
            yield in_thread(exchange, client, ws_request("OPTIONS", f"srv-{n}", ruri="sip:core.test"))
            req, _, source = yield core.next()
            core.send(reply(req), source)
            resp, _ = yield in_thread(read_sip, client)
            assert resp.status == 200
        assert root.relay.resolver.queries == 1  # the second request used the cache
        yield in_thread(exchange, client, ws_request("OPTIONS", "srv-x", ruri="sip:nowhere.test",
                                                     extra="Route: <sip:nowhere.test;lr>"))
        resp, _ = yield in_thread(read_sip, client)
        assert resp.status == 503
        client.shutdown()
    finally:
        yield dns_udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_transactions_do_not_outlive_their_lifetime(sipws_factory, core):
    root = sipws_factory(relay_config("udp", core.number, t1=0.02, t4=0.05))
    client = yield in_thread(open_client, port_of(root))
    yield in_thread(exchange, client, ws_request("OPTIONS", "life-1"))
    req, _, source = yield core.next()
    core.send(reply(req), source)
    resp, _ = yield in_thread(read_sip, client)
    assert resp.status == 200
    # Timer K (T4) ends the client transaction; the server transaction ends at its final response.
    yield wait_for(lambda: len(root.relay.proxy.table) == 0)
    yield sleep(0.05)
    assert root.relay.stats()["transactions"] == 0
    client.shutdown()


@pytest.mark.parametrize("core_transport", ["udp", "tcp"])
@pytest_twisted.inlineCallbacks
def test_both_legs_are_traced_with_their_real_addresses(sipws_factory, core, core_tcp, core_transport):
    """HEP: the WebSocket leg as IP protocol 6, the SIP side as 17 (UDP) or 6 (TCP),
    each message once per direction, with the sockets' real addresses."""
    from sipws.trace import hep
    from tests.integration.test_trace import UdpCollector

    collector = UdpCollector()
    collector_port = reactor.listenUDP(0, collector, interface="127.0.0.1", maxPacketSize=65535)
    try:
        core_port = core.number if core_transport == "udp" else core_tcp.number
        root = sipws_factory({**relay_config(core_transport, core_port),
                              "trace": {"destination": f"udp:127.0.0.1:{collector_port.getHost().port}",
                                        "on": True}})
        client = yield in_thread(open_client, port_of(root))
        yield in_thread(exchange, client, ws_request("OPTIONS", f"traced-{core_transport}"))
        if core_transport == "udp":
            req, _, source = yield core.next()
            core.send(reply(req), source)
        else:
            req, _, conn = yield core_tcp.next()
            conn.send(reply(req))
        resp, _ = yield in_thread(read_sip, client)
        assert resp.status == 200
        call_id = f"traced-{core_transport}".encode()

        def sip_packets():
            return [p for p in collector.packets if p.proto_type == hep.PROTO_SIP and p.correlation_id == call_id]

        yield wait_for(lambda: len(sip_packets()) == 4)
        ws_port, client_port = port_of(root), client.sock.getsockname()[1]
        sip_side = sip_port(root, core_transport)
        legs = [(p.ip_proto, p.src_port, p.dst_port, p.payload.split(b" ", 2)[:2]) for p in sip_packets()]
        stream = 6
        side = 17 if core_transport == "udp" else 6
        assert legs[0] == (stream, client_port, ws_port, [b"OPTIONS", b"sip:bob@example.com"])
        assert legs[1][:2] == (side, sip_side if core_transport == "udp" else legs[1][1])
        assert legs[1][2] == core_port and legs[1][3][0] == b"OPTIONS"
        assert legs[2][0] == side and legs[2][1] == core_port and legs[2][3] == [b"SIP/2.0", b"200"]
        assert legs[3] == (stream, ws_port, client_port, [b"SIP/2.0", b"200"])
        client.shutdown()
    finally:
        yield collector_port.stopListening()


def _tcp_exchange(port: int, data: bytes) -> bytes:
    """Send bytes on a fresh TCP connection; everything read until the peer closes or 2 s pass."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(2)
        received = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return received + b"<closed>"
                received += chunk
        except (TimeoutError, OSError):
            return received


@pytest_twisted.inlineCallbacks
def test_tcp_keepalive_ping_gets_a_pong_and_bad_framing_closes_with_a_log_line(sipws_factory, core, sipws_log):
    root = sipws_factory(relay_config("udp", core.number))
    port = sip_port(root, "tcp")
    answer = yield in_thread(_tcp_exchange, port, b"\r\n\r\n")
    assert answer == b"\r\n"  # RFC 5626 §3.5.1 pong, connection kept open
    answer = yield in_thread(_tcp_exchange, port, b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\n\r\n")
    assert answer == b"<closed>"  # no Content-Length on a stream: framing lost, connection closed
    assert any("framing error" in line and "127.0.0.1:" in line for line in sipws_log)
    assert root.stats.get("sip.framing_errors") == 1
    yield wait_for(lambda: not root.relay.pool.connections)


@pytest_twisted.inlineCallbacks
def test_srv_failover_to_the_next_address_when_a_connection_is_refused(sipws_factory, core_tcp):
    """RFC 3263 §4.3: the first SRV target refuses TCP; the request reaches the second."""
    dead = tcp_core()
    dead_port = dead.number
    yield dead.port.stopListening()
    zone = MemoryZone("core.test")
    zone.soa = (b"core.test", dns.Record_SOA(mname=b"ns.core.test", rname=b"root.core.test", ttl=60))
    zone.records = {
        b"core.test": [dns.Record_SOA(mname=b"ns.core.test", rname=b"root.core.test", ttl=60)],
        b"_sip._tcp.core.test": [dns.Record_SRV(10, 1, dead_port, b"pbx.core.test", ttl=60),
                                 dns.Record_SRV(20, 1, core_tcp.number, b"pbx.core.test", ttl=60)],
        b"pbx.core.test": [dns.Record_A("127.0.0.1", ttl=60)],
    }
    dns_udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[zone])),
                                interface="127.0.0.1")
    try:
        from twisted.names import client as dns_client

        root = sipws_factory({"sip": {"listen": ["tcp:127.0.0.1:0"], "upstream": "sip:core.test;transport=tcp"}})
        root.relay.resolver.resolver = dns_client.Resolver(servers=[("127.0.0.1", dns_udp.getHost().port)],
                                                           resolv=None)
        client = yield in_thread(open_client, port_of(root))
        for n in range(2):
            yield in_thread(exchange, client, ws_request("OPTIONS", f"failover-{n}", ruri="sip:core.test"))
            req, _, conn = yield core_tcp.next()
            conn.send(reply(req))
            resp, _ = yield in_thread(read_sip, client)
            assert resp.status == 200
        assert root.stats.get("sip.connect_failures") == 1  # the second request went to the live one first
        client.shutdown()
    finally:
        yield dns_udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_transport_ws_route_without_port_uses_the_ws_port_setting(sipws_factory, core):
    """RFC 7118 next hop ``sip:host;transport=ws`` with no port: the client role
    dials ``[ws] port`` (not a built-in 80)."""
    server = sipws_factory()
    received = []
    server.set_message_handler(lambda record, data: received.append(parse(data)))
    dialler = sipws_factory({"ws": {"listen": [], "port": port_of(server)},
                             "sip": {"listen": ["udp:127.0.0.1:0"]}})
    core.send(core_request("OPTIONS", "ws-port-1", "sip:ws.example.com", "<sip:127.0.0.1;transport=ws;lr>",
                           core.number), ("127.0.0.1", sip_port(dialler)))
    yield wait_for(lambda: received)
    assert received[0].call_id == "ws-port-1" and received[0].top_via.transport == "WS"
