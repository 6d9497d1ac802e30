"""ALPN as browsers offer it, on every TLS listener, and TLS failures named truthfully.

Every browser offers ALPN ``http/1.1`` when it opens wss://.  Twisted 26 with
pyOpenSSL 26 answered any offer that did not overlap its (empty) list with
alert 80 (internal error); Python's ``ssl`` offers no ALPN unless told to,
which is why the older tests never saw it.  These tests offer ALPN as browsers
do, with Python's ``ssl`` and with ``openssl s_client``.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
import pytest_twisted

from tests.certs import CertificateAuthority
from tests.conftest import require_peer
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.test_ws_client import MESSAGE, timed, wss_server
from tests.integration.wsclient import RawWs
from sipws.transport.ws_client import WsTarget

S_CLIENT_TIMEOUT = 10.0


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("server", ["127.0.0.1", "localhost"])


def tls_listeners(server):
    return {
        "ws": {"listen": []},
        "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert, "private_key": server.key},
        "sip": {"listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"]},
    }


def context(ca, alpn=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca.path)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def wss_upgrade(port, ctx):
    """(HTTP status, ALPN the server selected) for one wss handshake."""
    client = RawWs(port, tls=ctx)
    try:
        status, headers, _ = client.request()
        return status, client.sock.selected_alpn_protocol(), headers.get("sec-websocket-protocol")
    finally:
        client.shutdown()


def tls_handshake(port, ctx):
    """The ALPN selected by a plain TLS handshake (the SIP-side listener), after a SIP ping round trip."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\r\n\r\n")  # RFC 5626 keep-alive ping: answered with CRLF
            answer = tls.recv(16)
            return tls.selected_alpn_protocol(), answer


@pytest.mark.parametrize("offer, selected", [
    (["http/1.1"], "http/1.1"),                 # what Chromium, Firefox and Safari offer
    (["h2", "http/1.1"], "http/1.1"),           # an HTTP/2-capable client: HTTP/1.1 picked
    (["h2"], None),                             # only an unknown protocol: ignored (RFC 7301 §3.2)
    (None, None),                               # no ALPN at all
])
@pytest_twisted.inlineCallbacks
def test_wss_accepts_browser_alpn_offers(sipws_factory, pki, offer, selected):
    ca, server = pki
    root = sipws_factory(tls_listeners(server))
    status, alpn, protocol = yield in_thread(wss_upgrade, port_of(root, "wss"), context(ca, offer))
    assert (status, alpn, protocol) == (101, selected, "sip")


@pytest.mark.parametrize("offer", [["http/1.1"], ["h2"], ["sip"]])
@pytest_twisted.inlineCallbacks
def test_sip_tls_listener_ignores_alpn_offers(sipws_factory, pki, offer):
    ca, server = pki
    root = sipws_factory(tls_listeners(server))
    port = root.listening("sip-tls")[0].getHost().port
    alpn, answer = yield in_thread(tls_handshake, port, context(ca, offer))
    assert alpn is None
    assert answer == b"\r\n"


def s_client(port: int, ca_path: str, alpn: str) -> str:
    openssl = require_peer("openssl", "Debian package openssl")
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-alpn", alpn, "-CAfile", ca_path, "-verify_return_error"],
        input=b"", capture_output=True, timeout=S_CLIENT_TIMEOUT,
    )
    return (result.stdout + result.stderr).decode("utf-8", "replace")


@pytest.mark.parametrize("kind, selected", [("wss", "ALPN protocol: http/1.1"), ("sip-tls", "No ALPN negotiated")])
@pytest_twisted.inlineCallbacks
def test_openssl_s_client_with_alpn_completes_the_handshake(sipws_factory, pki, kind, selected):
    ca, server = pki
    root = sipws_factory(tls_listeners(server))
    port = root.listening(kind)[0].getHost().port
    output = yield in_thread(s_client, port, ca.path, "http/1.1")
    assert "alert" not in output.lower(), output
    assert "Verify return code: 0 (ok)" in output, output
    assert selected in output, output


@pytest_twisted.inlineCallbacks
def test_client_role_offers_http11_like_a_browser(sipws_factory, tmp_path):
    """The wss client role offers ALPN http/1.1, and the listener (sipws's own) selects it."""
    ca = CertificateAuthority(tmp_path / "pki")
    server = wss_server(sipws_factory, ca.issue("server", ["localhost"]))
    dialler = sipws_factory({"ws": {"listen": []}, "wss": {"ca_list": ca.path}})
    yield timed(dialler.ws_client.send(WsTarget("localhost", port_of(server, "wss"), True, "/"), MESSAGE % 1))
    yield wait_for(lambda: len(server.connections) == 1)
    (accepted,) = list(server.connections)
    assert accepted.protocol.transport.getHandle().get_alpn_proto_negotiated() == b"http/1.1"


# -- the log tells the real cause of a TLS failure, and its side ----------------------------


def failed_handshake(port, ctx):
    try:
        wss_upgrade(port, ctx)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return exc
    raise AssertionError("the TLS handshake should have failed")


def closed_lines(lines):
    return [line for line in lines if line.startswith("closed #")]


@pytest_twisted.inlineCallbacks
def test_client_that_distrusts_our_certificate_is_logged_as_its_alert(sipws_factory, pki, sipws_log):
    _, server = pki
    root = sipws_factory(tls_listeners(server))
    distrusting = ssl.create_default_context(cafile=CertificateAuthority(pki[0].directory / "other", name="another CA").path)
    distrusting.set_alpn_protocols(["http/1.1"])
    yield in_thread(failed_handshake, port_of(root, "wss"), distrusting)
    yield wait_for(lambda: closed_lines(sipws_log))
    (line,) = closed_lines(sipws_log)
    assert "side=remote" in line and "the peer sent alert 'unknown ca'" in line, line
    assert "lost during handshake" not in line


@pytest_twisted.inlineCallbacks
def test_tls_version_refused_here_is_logged_as_local_with_the_key(sipws_factory, pki, sipws_log):
    ca, server = pki
    overrides = tls_listeners(server)
    overrides["wss"]["min_tls_version"] = "1.3"
    root = sipws_factory(overrides)
    old = context(ca, ["http/1.1"])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    yield in_thread(failed_handshake, port_of(root, "wss"), old)
    yield wait_for(lambda: closed_lines(sipws_log))
    (line,) = closed_lines(sipws_log)
    assert "side=local" in line and "[wss] min_tls_version" in line, line


@pytest_twisted.inlineCallbacks
def test_sip_tls_listener_logs_tls_failures_with_the_source(sipws_factory, pki, sipws_log):
    ca, server = pki
    overrides = tls_listeners(server)
    overrides["wss"]["min_tls_version"] = "1.3"
    root = sipws_factory(overrides)
    port = root.listening("sip-tls")[0].getHost().port
    old = context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2

    def attempt():
        try:
            tls_handshake(port, old)
        except (ssl.SSLError, OSError) as exc:
            return exc
        raise AssertionError("the TLS handshake should have failed")

    yield in_thread(attempt)
    yield wait_for(lambda: any("min_tls_version" in line for line in sipws_log))
    (line,) = [line for line in sipws_log if "min_tls_version" in line]
    assert line.startswith("tls 127.0.0.1:") and "side=local" in line, line
