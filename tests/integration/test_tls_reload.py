"""Certificates rotate without dropping anyone: admin ``tls.reload`` and SIGHUP.

A renewal writes new files over the old paths (what certbot's deploy hook
does).  New handshakes must see the new certificate, open connections must
stay up, and a bad new file must leave the old certificate in service.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509

from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of
from tests.integration.test_admin import ADMIN, admin_port, ctl, ping_crlf, rpc_call
from tests.integration.test_launch import START_TIMEOUT, TWISTD, free_port
from tests.integration.wsclient import RawWs
from tests.processes import stop_process

SIGHUP_TIMEOUT = 10.0


def served_serial(port: int, ca_path: str) -> int:
    """The serial number of the certificate a TLS listener serves right now (ALPN as a browser)."""
    context = ssl.create_default_context(cafile=ca_path)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def file_serial(path: str) -> int:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


def open_wss(port: int, ca_path: str) -> RawWs:
    context = ssl.create_default_context(cafile=ca_path)
    context.set_alpn_protocols(["http/1.1"])
    client = RawWs(port, tls=context)
    client.upgrade()
    return client


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("server", ["127.0.0.1"])


def tls_overrides(server):
    return {
        "ws": {"listen": []},
        "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert, "private_key": server.key},
        "sip": {"listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"]},
        "admin": ADMIN,
    }


@pytest_twisted.inlineCallbacks
def test_reload_serves_the_new_certificate_and_keeps_open_connections(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(tls_overrides(server))
    wss_port = port_of(root, "wss")
    sip_tls_port = root.listening("sip-tls")[0].getHost().port
    first = file_serial(server.cert)
    assert (yield in_thread(served_serial, wss_port, ca.path)) == first
    open_client = yield in_thread(open_wss, wss_port, ca.path)
    try:
        renewed = ca.issue("server", ["127.0.0.1"])  # new key and certificate over the same paths
        second = file_serial(renewed.cert)
        assert second != first
        # Not re-read until asked:
        assert (yield in_thread(served_serial, wss_port, ca.path)) == first

        answer = yield rpc_call(admin_port(root), "tls.reload")
        assert answer["result"]["wss"][0]["serial"] == format(second, "x"), answer
        assert answer["result"]["sip-tls"][0]["names"] == ["127.0.0.1"], answer

        assert (yield in_thread(served_serial, wss_port, ca.path)) == second
        assert (yield in_thread(served_serial, sip_tls_port, ca.path)) == second
        # The connection opened before the reload is still up and served.
        yield in_thread(ping_crlf, open_client)
        assert len(root.connections) == 1
    finally:
        open_client.shutdown()


@pytest.mark.parametrize("broken, key", [
    ("certificate", "[wss] certificate"),
    ("private_key", "[wss] private_key"),
])
@pytest_twisted.inlineCallbacks
def test_bad_new_file_keeps_the_old_certificate_and_names_the_key(sipws_factory, pki, sipws_log, broken, key):
    ca, server = pki
    root = sipws_factory(tls_overrides(server))
    wss_port = port_of(root, "wss")
    first = file_serial(server.cert)
    Path(getattr(server, "cert" if broken == "certificate" else "key")).write_text("half-written by a renewal\n")

    answer = yield rpc_call(admin_port(root), "tls.reload")
    assert answer["error"]["code"] == -32005, answer
    assert key in answer["error"]["message"], answer
    assert (yield in_thread(served_serial, wss_port, ca.path)) == first
    failures = [line for line in sipws_log if "reload failed" in line]
    assert len(failures) == 1 and key in failures[0], sipws_log


@pytest_twisted.inlineCallbacks
def test_key_that_does_not_match_the_new_certificate_is_refused(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(tls_overrides(server))
    first = file_serial(server.cert)
    other = ca.issue("other", ["127.0.0.1"])
    Path(server.cert).write_bytes(Path(other.cert).read_bytes())  # certificate renewed, key not yet

    answer = yield rpc_call(admin_port(root), "tls.reload")
    assert "does not match" in answer["error"]["message"], answer
    assert (yield in_thread(served_serial, port_of(root, "wss"), ca.path)) == first


@pytest_twisted.inlineCallbacks
def test_sipws_ctl_tls_reload(sipws_factory, pki):
    """The command-line path: ``sipws-ctl tls.reload`` exits 0 and prints the new certificate."""
    ca, server = pki
    root = sipws_factory(tls_overrides(server))
    url = f"http://127.0.0.1:{admin_port(root)}/rpc"
    renewed = ca.issue("server", ["127.0.0.1"])
    done = yield in_thread(ctl, "--url", url, "--json", "tls.reload")
    assert done.returncode == 0, done.stderr
    assert format(file_serial(renewed.cert), "x") in done.stdout


# -- SIGHUP on a real twistd process -------------------------------------------------------


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_reloads_certificates_in_a_running_twistd(tmp_path, pki):
    ca, server = pki
    port = free_port()
    config = tmp_path / "sipws.toml"
    config.write_text(
        f'[ws]\nlisten = []\n[wss]\nlisten = ["127.0.0.1:{port}"]\n'
        f'certificate = "{server.cert}"\nprivate_key = "{server.key}"\n'
        f'[sip]\nlisten = ["udp:127.0.0.1:0"]\n[admin]\nlisten = ""\n'
    )
    log_path = tmp_path / "sipws.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "sipws", "--config", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def serial():
            try:
                return served_serial(port, ca.path)
            except OSError:
                return None

        first = wait_until(serial, START_TIMEOUT, "the wss listener")
        client = open_wss(port, ca.path)
        try:
            renewed = ca.issue("server", ["127.0.0.1"])
            second = file_serial(renewed.cert)
            os.kill(proc.pid, signal.SIGHUP)
            wait_until(lambda: serial() == second, SIGHUP_TIMEOUT, "the renewed certificate after SIGHUP")
            assert first != second
            ping_crlf(client)  # the connection opened before SIGHUP is still served

            Path(server.key).write_text("garbage\n")
            os.kill(proc.pid, signal.SIGHUP)
            wait_until(lambda: b"reload failed" in log_path.read_bytes(), SIGHUP_TIMEOUT, "the reload failure line")
            assert proc.poll() is None, "a bad file on SIGHUP must not stop sipws"
            assert serial() == second
            ping_crlf(client)
        finally:
            client.shutdown()
        text = log_path.read_text()
        assert "certificates reloaded" in text
        assert "[wss] private_key" in text
    finally:
        stop_process(proc)


@pytest_twisted.inlineCallbacks
def test_client_certificate_is_reloaded_and_a_bad_one_named(sipws_factory, pki):
    """``[client] certificate`` / ``private_key`` (the client role's identity) are re-read too."""
    ca, server = pki
    identity = ca.issue("sipws-client", ["sipws.example.com"], client=True)
    overrides = tls_overrides(server)
    overrides["client"] = {"certificate": identity.cert, "private_key": identity.key}
    root = sipws_factory(overrides)
    answer = yield rpc_call(admin_port(root), "tls.reload")
    assert answer["result"]["client"] == {"certificate": identity.cert}, answer

    Path(identity.key).write_text("not a key\n")
    answer = yield rpc_call(admin_port(root), "tls.reload")
    assert answer["error"]["code"] == -32005, answer
    assert "[client] private_key" in answer["error"]["message"], answer

    other = ca.issue("other-client", ["other.example.com"], client=True)
    Path(identity.key).write_bytes(Path(other.key).read_bytes())  # a key, but not this certificate's
    answer = yield rpc_call(admin_port(root), "tls.reload")
    assert "[client] private_key: does not match [client] certificate" in answer["error"]["message"], answer
