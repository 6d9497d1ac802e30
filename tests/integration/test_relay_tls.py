"""SIP over TLS toward the core: certificate and host-name checks, the TLS listener."""

from __future__ import annotations

import ssl as stdlib_ssl
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, ssl

from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of
from tests.integration.sipcore import CoreTcp, reply, ws_request
from tests.integration.test_relay import exchange, open_client, read_sip


def tls_core(issued) -> CoreTcp:
    """A SIP core listening on TLS with the given certificate."""
    pem = Path(issued.cert).read_bytes() + Path(issued.key).read_bytes()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    core = CoreTcp()
    core.port = reactor.listenSSL(0, core, options, interface="127.0.0.1")
    return core


def tls_config(ca: CertificateAuthority, core_port: int, host: str = "localhost"):
    own = ca.issue("sipws", ["127.0.0.1"])
    return {
        "sip": {"listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"], "upstream": f"sips:{host}:{core_port}"},
        "wss": {"certificate": own.cert, "private_key": own.key, "ca_list": ca.path},
    }


@pytest_twisted.inlineCallbacks
def test_request_relayed_over_verified_tls(sipws_factory, tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    core = tls_core(ca.issue("core", ["localhost"]))
    try:
        root = sipws_factory(tls_config(ca, core.number))
        client = yield in_thread(open_client, port_of(root))
        yield in_thread(exchange, client, ws_request("OPTIONS", "tls-1"))
        req, _, conn = yield core.next()
        assert req.vias[0].transport == "TLS"
        conn.send(reply(req))
        resp, _ = yield in_thread(read_sip, client)
        assert resp.status == 200
        assert root.stats.get("sip.messages_out.tls") == 1 and root.stats.get("sip.messages_in.tls") == 1
        client.shutdown()
    finally:
        for c in core.connections:
            c.transport.abortConnection()
        yield core.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_core_certificate_for_another_host_gives_503_and_a_log_line(sipws_factory, tmp_path, sipws_log):
    ca = CertificateAuthority(tmp_path / "pki")
    core = tls_core(ca.issue("core", ["other.example.com"]))
    try:
        root = sipws_factory(tls_config(ca, core.number))
        client = yield in_thread(open_client, port_of(root))
        yield in_thread(exchange, client, ws_request("OPTIONS", "tls-bad"))
        resp, _ = yield in_thread(read_sip, client)
        assert resp.status == 503
        assert any("TLS certificate verification failed" in line and f":{core.number}" in line
                   for line in sipws_log), sipws_log[-5:]
        assert root.stats.get("sip.connect_failures") == 1
        client.shutdown()
    finally:
        yield core.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_tls_listener_answers_the_core_on_the_same_connection(sipws_factory, tmp_path):
    """The core reaches sipws over TLS (an OPTIONS ping to sipws itself): 200 back on that connection."""
    ca = CertificateAuthority(tmp_path / "pki")
    root = sipws_factory(tls_config(ca, 5061))
    port = root.listening("sip-tls")[0].getHost().port

    def ping() -> bytes:
        import socket

        context = stdlib_ssl.create_default_context(cafile=ca.path)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(
                    b"OPTIONS sip:127.0.0.1:%d;transport=tls SIP/2.0\r\n"
                    b"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bKping1\r\n"
                    b"From: <sip:core@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
                    b"Call-ID: tls-ping\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    b"Content-Length: 0\r\n\r\n" % port)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data

    answer = yield in_thread(ping)
    assert answer.startswith(b"SIP/2.0 200 ")
