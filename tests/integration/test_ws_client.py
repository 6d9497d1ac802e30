"""The WebSocket client role on real sockets: one sipws dialling another."""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, protocol, reactor

from sipws.transport.connections import CLIENT
from sipws.transport.ws_client import ClientConnectError, WsTarget, target_from_uri, target_from_url
from sipws.sip import parse_uri
from tests.certs import CertificateAuthority
from tests.integration.conftest import WAIT, port_of, wait_for

MESSAGE = b"OPTIONS sip:remote.example SIP/2.0\r\nCall-ID: %d\r\n\r\n"


@pytest.fixture
def pair(sipws_factory):
    """(dialler, server): the server records every message it receives."""

    def make(dialler_overrides=None, server_overrides=None):
        server = sipws_factory(server_overrides)
        server.received = []
        server.set_message_handler(lambda record, data: server.received.append((record.id, data)))
        dialler = sipws_factory({"ws": {"listen": []}, **(dialler_overrides or {})})
        dialler.received = []
        dialler.set_message_handler(lambda record, data: dialler.received.append((record.id, data)))
        return dialler, server

    return make


def target(root, port, secure=False, host="127.0.0.1"):
    return WsTarget(host, port, secure, "/")


def timed(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(WAIT, reactor)


@pytest_twisted.inlineCallbacks
def test_messages_sent_while_connecting_arrive_once_in_order_on_one_connection(pair):
    dialler, server = pair()
    where = target(dialler, port_of(server))
    sends = [dialler.ws_client.send(where, MESSAGE % i) for i in range(10)]
    records = yield timed(defer.gatherResults(sends))
    assert len({r.id for r in records}) == 1
    yield wait_for(lambda: len(server.received) == 10)
    assert [data for _, data in server.received] == [MESSAGE % i for i in range(10)]
    assert len({conn for conn, _ in server.received}) == 1
    record = records[0]
    assert record.role == CLIENT and record.transport == "ws" and record.subprotocol == "sip"
    # reuse once open
    again = yield timed(dialler.ws_client.send(where, MESSAGE % 10))
    assert again is record
    assert dialler.stats.get("ws.client_connects_ok") == 1


@pytest_twisted.inlineCallbacks
def test_server_messages_down_a_client_connection_are_delivered(pair):
    dialler, server = pair()
    record = yield timed(dialler.ws_client.send(target(dialler, port_of(server)), MESSAGE % 1))
    yield wait_for(lambda: server.received)
    server_record = server.connections.get(server.received[0][0])
    server_record.protocol.send_message(b"NOTIFY sip:x SIP/2.0\r\n\r\n")
    yield wait_for(lambda: dialler.received)
    assert dialler.received == [(record.id, b"NOTIFY sip:x SIP/2.0\r\n\r\n")]


@pytest_twisted.inlineCallbacks
def test_closed_connection_is_redialled_by_next_message(pair):
    dialler, server = pair()
    where = target(dialler, port_of(server))
    first = yield timed(dialler.ws_client.send(where, MESSAGE % 1))
    yield wait_for(lambda: len(server.connections) == 1)
    next(iter(server.connections)).protocol.close_connection(1000, "bye")
    yield wait_for(lambda: first.id not in dialler.connections)
    second = yield timed(dialler.ws_client.send(where, MESSAGE % 2))
    assert second.id != first.id
    yield wait_for(lambda: len(server.received) == 2)


@pytest_twisted.inlineCallbacks
def test_refused_port_fails_promptly_with_503(pair, sipws_factory):
    dialler, server = pair()
    port = port_of(server)
    yield server.stopService()
    with pytest.raises(ClientConnectError) as info:
        yield timed(dialler.ws_client.send(target(dialler, port), MESSAGE % 1))
    assert info.value.status == 503
    assert len(dialler.connections) == 0 and dialler.ws_client.links == {}


class Silent(protocol.Protocol):
    def dataReceived(self, data):
        pass


@pytest_twisted.inlineCallbacks
def test_handshake_timeout_fails_with_408(sipws_factory):
    dialler = sipws_factory({"ws": {"listen": [], "handshake_timeout": 0.3}})
    listener = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        with pytest.raises(ClientConnectError) as info:
            yield timed(dialler.ws_client.send(target(dialler, listener.getHost().port), MESSAGE % 1))
        assert info.value.status == 408
        yield wait_for(lambda: len(dialler.connections) == 0)
    finally:
        yield listener.stopListening()


class NoSubprotocol(WebSocketServerProtocol):
    def onConnect(self, request):
        return None  # accepts the upgrade without choosing "sip"


@pytest_twisted.inlineCallbacks
def test_server_without_sip_subprotocol_fails_with_503(sipws_factory):
    dialler = sipws_factory({"ws": {"listen": []}})
    factory = WebSocketServerFactory()
    factory.protocol = NoSubprotocol
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        with pytest.raises(ClientConnectError) as info:
            yield timed(dialler.ws_client.send(target(dialler, listener.getHost().port), MESSAGE % 1))
        assert info.value.status == 503 and "subprotocol" in info.value.reason
        yield wait_for(lambda: len(dialler.connections) == 0)
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_queue_bound(pair):
    dialler, server = pair({"client": {"max_queued_messages": 2}})
    where = target(dialler, port_of(server))
    ok = [dialler.ws_client.send(where, MESSAGE % i) for i in range(2)]
    with pytest.raises(ClientConnectError) as info:
        yield dialler.ws_client.send(where, MESSAGE % 3)
    assert info.value.status == 503 and "full" in info.value.reason
    yield timed(defer.gatherResults(ok))


def wss_server(sipws_factory, cert):
    server = sipws_factory({"ws": {"listen": []}, "wss": {"listen": ["127.0.0.1:0"], "certificate": cert.cert,
                                                          "private_key": cert.key}})
    server.received = []
    server.set_message_handler(lambda record, data: server.received.append(data))
    return server


@pytest_twisted.inlineCallbacks
def test_wss_verified_against_ca_list(sipws_factory, tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = wss_server(sipws_factory, ca.issue("server", ["localhost"]))
    dialler = sipws_factory({"ws": {"listen": []}, "wss": {"ca_list": ca.path}})
    record = yield timed(dialler.ws_client.send(WsTarget("localhost", port_of(server, "wss"), True, "/"), MESSAGE % 1))
    assert record.transport == "wss"
    yield wait_for(lambda: server.received == [MESSAGE % 1])


@pytest_twisted.inlineCallbacks
def test_wss_certificate_for_another_host_is_refused_and_sipws_log(sipws_factory, tmp_path, sipws_log):
    ca = CertificateAuthority(tmp_path / "pki")
    server = wss_server(sipws_factory, ca.issue("server", ["other.example.com"]))
    dialler = sipws_factory({"ws": {"listen": []}, "wss": {"ca_list": ca.path}})
    with pytest.raises(ClientConnectError) as info:
        yield timed(dialler.ws_client.send(WsTarget("localhost", port_of(server, "wss"), True, "/"), MESSAGE % 1))
    assert info.value.status == 503
    assert server.received == []
    assert any("cannot connect to wss://localhost" in line and "certificate" in line.lower() for line in sipws_log), sipws_log


@pytest_twisted.inlineCallbacks
def test_verify_server_false_connects_and_warns(sipws_factory, tmp_path, sipws_log):
    ca = CertificateAuthority(tmp_path / "pki")
    server = wss_server(sipws_factory, ca.issue("server", ["other.example.com"]))
    dialler = sipws_factory({"ws": {"listen": []}, "wss": {"verify_server": False}})
    assert any("verify_server = false" in line for line in sipws_log)
    yield timed(dialler.ws_client.send(WsTarget("localhost", port_of(server, "wss"), True, "/"), MESSAGE % 1))
    yield wait_for(lambda: server.received == [MESSAGE % 1])


@pytest_twisted.inlineCallbacks
def test_connect_api_and_table_cleanup(pair):
    dialler, server = pair()
    record = yield timed(dialler.ws_client.connect(f"ws://127.0.0.1:{port_of(server)}/"))
    assert dialler.connections.get(record.id) is record and record.role == CLIENT
    same = yield timed(dialler.ws_client.connect(f"ws://127.0.0.1:{port_of(server)}/"))
    assert same is record
    yield timed(dialler.stopService())
    assert len(dialler.connections) == 0
    yield wait_for(lambda: len(server.connections) == 0)


def test_targets_from_urls_and_uris(sipws_factory):
    from sipws.config import config_from_dict

    config = config_from_dict({"ws": {"port": 8080, "resource": "/ws"}, "wss": {"port": 8443}})
    assert target_from_url("ws://Example.com", config) == WsTarget("example.com", 8080, False, "/ws")
    assert target_from_url("wss://[::1]:9000/sip", config) == WsTarget("::1", 9000, True, "/sip")
    assert target_from_uri(parse_uri("sips:ws.example.com;transport=ws"), config) == WsTarget("ws.example.com", 8443, True, "/")
    assert target_from_uri(parse_uri("sip:ws.example.com:81;transport=ws"), config) == WsTarget("ws.example.com", 81, False, "/ws")
    with pytest.raises(ValueError):
        target_from_url("http://example.com", config)
