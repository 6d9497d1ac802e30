"""A WebSocket MSRP client and an MSRP endpoint on TCP/TLS through sipws: sipws dials
the endpoint named in To-Path (reused, TLS verified), the endpoint answers on that
connection or reaches sipws on its [msrp] listen socket (the Use-Path authority)."""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted

from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.msrp_client import (
    MsrpWs, StreamReader, build_request, build_response, read_socket_messages, relay_uri, tid,
)

TIMEOUT = 5.0


class Endpoint:
    """A small MSRP endpoint on TCP or TLS (blocking, run in a thread): the far end."""

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.tls_context = tls_context
        scheme = "msrps" if tls_context else "msrp"
        self.uri = f"{scheme}://127.0.0.1:{self.port}/endpoint1;tcp"
        self.sock: socket.socket | None = None
        self.reader = StreamReader()

    def accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.settimeout(TIMEOUT)
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True)
        self.sock = sock

    def read(self, count: int = 1):
        return read_socket_messages(self.sock, self.reader, count)

    def send(self, data: bytes, sock: socket.socket | None = None) -> None:
        (sock or self.sock).sendall(data)

    def close(self) -> None:
        for sock in (self.sock, self.listener):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def ws_to_endpoint(client: MsrpWs, endpoint: Endpoint, relay: str) -> dict:
    """The WebSocket client sends a message to the endpoint and the endpoint answers with one."""
    client.open()
    assert client.auth(relay).status == 200
    to_endpoint = [client.use_path, endpoint.uri]
    client.send_msrp(build_request("SEND", tid(), to_endpoint, [client.uri],
                                   [("Message-ID", "m1"), ("Success-Report", "yes"), ("Byte-Range", "1-5/5"),
                                    ("Content-Type", "text/plain")], b"hello"))
    endpoint.accept()  # sipws dials the first hop after itself
    [send] = endpoint.read()
    result = {"send": send}
    endpoint.send(build_response(send.tid, 200, "OK", send.path("From-Path")[0], endpoint.uri))
    back = send.path("From-Path")
    endpoint.send(build_request("REPORT", tid(), back, [endpoint.uri],
                                [("Message-ID", "m1"), ("Byte-Range", "1-5/5"), ("Status", "000 200 OK")]))
    # the client: the relay's 200 for its SEND, then the endpoint's REPORT
    result["client_200"] = client.expect(lambda m: m.status is not None, "200")
    result["report"] = client.expect(lambda m: m.method == "REPORT", "REPORT")
    # the endpoint's own message, on the connection sipws opened
    reply_tid = tid()
    endpoint.send(build_request("SEND", reply_tid, back, [endpoint.uri],
                                [("Message-ID", "e1"), ("Byte-Range", "1-6/6"), ("Content-Type", "text/plain")],
                                b"hi you"))
    incoming = client.expect(lambda m: m.method == "SEND", "SEND from the endpoint")
    result["incoming"] = incoming
    client.send_msrp(build_response(incoming.tid, 200, "OK", incoming.path("From-Path")[0], client.uri))
    [answer] = endpoint.read()
    result["endpoint_200"] = (reply_tid, answer)
    return result


@pytest_twisted.inlineCallbacks
def test_a_websocket_client_and_a_tcp_endpoint_exchange_messages(sipws_factory):
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]},
                          "msrp": {"allow_insecure": True, "listen": ["tcp:127.0.0.1:0"]}})
    msrp_port = port_of(root, "msrp-tcp")
    endpoint = Endpoint()
    client = MsrpWs(port_of(root), "alice")
    try:
        result = yield in_thread(ws_to_endpoint, client, endpoint, relay_uri(port_of(root), tls=False))
        assert client.use_path.startswith(f"msrp://127.0.0.1:{msrp_port}/")  # the [msrp] listen socket
        send = result["send"]
        assert send.body == b"hello" and send.path("To-Path") == [endpoint.uri]
        assert send.path("From-Path") == [client.use_path, client.uri]
        assert result["client_200"].status == 200
        assert result["report"].header("Status") == "000 200 OK"
        assert result["incoming"].body == b"hi you"
        assert result["incoming"].path("From-Path") == [client.use_path, endpoint.uri]
        reply_tid, answer = result["endpoint_200"]
        assert answer.tid == reply_tid and answer.status == 200  # hop by hop, from sipws
        assert root.msrp.pool.stats_snapshot()["peer_connections"] == 1
        assert root.stats.get("msrp.peer_messages_in") == 3 and root.stats.get("msrp.peer_messages_out") >= 1
    finally:
        client.shutdown()
        endpoint.close()


def endpoint_dials_in(client: MsrpWs, relay: str, msrp_port: int) -> tuple:
    """An endpoint reaching sipws on its Use-Path authority sends to the client."""
    client.open()
    assert client.auth(relay).status == 200
    sock = socket.create_connection(("127.0.0.1", msrp_port), timeout=TIMEOUT)
    endpoint_uri = "msrp://127.0.0.1:9/far;tcp"
    transaction = tid()
    sock.sendall(build_request("SEND", transaction, [client.use_path, client.uri], [endpoint_uri],
                               [("Message-ID", "x1"), ("Byte-Range", "1-3/3"), ("Content-Type", "text/plain")],
                               b"hey"))
    incoming = client.expect(lambda m: m.method == "SEND", "SEND")
    [answer] = read_socket_messages(sock, StreamReader(), 1)
    # garbage on the stream: sipws closes it, naming the peer
    sock.sendall(b"NOT MSRP AT ALL\r\n\r\n")
    sock.settimeout(TIMEOUT)
    closed = sock.recv(100) == b""
    sock.close()
    return incoming, transaction, answer, closed


@pytest_twisted.inlineCallbacks
def test_an_endpoint_reaches_the_client_through_the_msrp_listener(sipws_factory, sipws_log):
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]},
                          "msrp": {"allow_insecure": True, "listen": ["tcp:127.0.0.1:0"]}})
    client = MsrpWs(port_of(root), "alice")
    try:
        incoming, transaction, answer, closed = yield in_thread(
            endpoint_dials_in, client, relay_uri(port_of(root), tls=False), port_of(root, "msrp-tcp"))
        assert incoming.body == b"hey" and incoming.path("To-Path") == [client.uri]
        assert answer.tid == transaction and answer.status == 200
        assert closed
        yield wait_for(lambda: root.msrp.pool.stats_snapshot()["peer_connections"] == 0)
        framing = [line for line in sipws_log if "cannot frame the MSRP stream" in line]
        assert framing and "127.0.0.1:" in framing[0]
    finally:
        client.shutdown()


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("peer", ["127.0.0.1", "localhost"]), CertificateAuthority(tmp_path / "other", "other CA")


@pytest_twisted.inlineCallbacks
def test_a_tls_endpoint_is_verified_and_reached(sipws_factory, pki):
    ca, issued, _ = pki
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]}, "wss": {"ca_list": ca.path},
                          "msrp": {"allow_insecure": True}})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    endpoint = Endpoint(context)
    client = MsrpWs(port_of(root), "alice")
    try:
        result = yield in_thread(ws_to_endpoint, client, endpoint, relay_uri(port_of(root), tls=False))
        assert result["send"].body == b"hello" and result["incoming"].body == b"hi you"
    finally:
        client.shutdown()
        endpoint.close()


def untrusted_endpoint(client: MsrpWs, endpoint: Endpoint, relay: str):
    client.open()
    assert client.auth(relay).status == 200
    client.send_msrp(build_request("SEND", tid(), [client.use_path, endpoint.uri], [client.uri],
                                   [("Message-ID", "m1"), ("Byte-Range", "1-5/5"), ("Content-Type", "text/plain")],
                                   b"hello"))
    try:
        endpoint.accept()  # the handshake fails: sipws does not trust this certificate
    except (ssl.SSLError, OSError):
        pass
    return client.expect(lambda m: m.method == "REPORT", "failure REPORT")


@pytest_twisted.inlineCallbacks
def test_an_endpoint_with_an_untrusted_certificate_is_not_reached(sipws_factory, pki):
    _, _, other = pki
    stranger = other.issue("stranger", ["127.0.0.1"])
    ca, _, _ = pki
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]}, "wss": {"ca_list": ca.path},
                          "msrp": {"allow_insecure": True}})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(stranger.cert, stranger.key)
    endpoint = Endpoint(context)
    client = MsrpWs(port_of(root), "alice")
    try:
        report = yield in_thread(untrusted_endpoint, client, endpoint, relay_uri(port_of(root), tls=False))
        assert report.header("Status").startswith("000 481")
        assert root.stats.get("msrp.peer_connect_failures") == 1
    finally:
        client.shutdown()
        endpoint.close()


def silent_tls_client(port: int) -> bool:
    """Connect to a tls: [msrp] listen socket and never start TLS: True once sipws closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


@pytest_twisted.inlineCallbacks
def test_a_peer_that_never_finishes_tls_is_dropped_after_the_handshake_timeout(sipws_factory, pki, sipws_log):
    ca, issued, _ = pki
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]},
                          "wss": {"certificate": str(issued.cert), "private_key": str(issued.key),
                                  "tls_handshake_timeout": 0.5},
                          "msrp": {"allow_insecure": True, "listen": ["tls:127.0.0.1:0"]}})
    closed = yield in_thread(silent_tls_client, port_of(root, "msrp-tls"))
    assert closed
    assert root.stats.get("msrp.peer_tls_timeouts") == 1
    yield wait_for(lambda: root.msrp.pool.stats_snapshot()["peer_connections"] == 0)
    assert any("TLS handshake not finished" in line and "127.0.0.1:" in line for line in sipws_log)
