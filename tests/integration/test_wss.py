"""wss on real sockets: TLS versions, client certificates, SNI, policy over TLS, IPv6."""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted

from sipws.config import ConfigError, config_from_dict
from sipws.transport.tls import server_tls_options
from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.wsclient import RawWs


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", ["127.0.0.1", "localhost"])
    return ca, server


def wss_overrides(server, **extra):
    return {"ws": {"listen": []}, "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert,
                                          "private_key": server.key, **extra}}


def client_context(ca, minimum=None, maximum=None, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.path)
    if minimum:
        context.minimum_version = minimum
    if maximum:
        context.maximum_version = maximum
    if cert:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def tls_upgrade(port, context, server_hostname="127.0.0.1"):
    client = RawWs(port, tls=context, server_hostname=server_hostname)
    try:
        status, headers, _ = client.request()
        return status, client.sock.version(), client.sock.getpeercert()
    finally:
        client.shutdown()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest_twisted.inlineCallbacks
def test_wss_handshake_over_tls12_and_13(sipws_factory, pki, version):
    ca, server = pki
    root = sipws_factory(wss_overrides(server))
    status, negotiated, _ = yield in_thread(tls_upgrade, port_of(root, "wss"),
                                            client_context(ca, minimum=version, maximum=version))
    assert status == 101
    assert negotiated == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_min_tls_version_13_refuses_12_client(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(wss_overrides(server, min_tls_version="1.3"))
    with pytest.raises(ssl.SSLError):
        yield in_thread(tls_upgrade, port_of(root, "wss"), client_context(ca, maximum=ssl.TLSVersion.TLSv1_2))
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_policy_applies_over_wss(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(wss_overrides(server))

    def wrong_path(port):
        client = RawWs(port, tls=client_context(ca))
        try:
            return client.request(path="/elsewhere")[0]
        finally:
            client.shutdown()

    assert (yield in_thread(wrong_path, port_of(root, "wss"))) == 404
    record_transports = []
    root.connections.on_added(lambda record: record_transports.append(record.transport))
    yield in_thread(tls_upgrade, port_of(root, "wss"), client_context(ca))
    assert record_transports == ["wss"]


@pytest_twisted.inlineCallbacks
def test_require_client_cert(sipws_factory, pki):
    ca, server = pki
    good_client = ca.issue("alice", ["alice.example.com"], client=True)
    stranger = CertificateAuthority(pki[0].directory / "other").issue("mallory", ["mallory.example.com"], client=True)
    root = sipws_factory(wss_overrides(server, ca_list=ca.path, require_client_cert=True))
    port = port_of(root, "wss")
    status, _, _ = yield in_thread(tls_upgrade, port, client_context(ca, cert=good_client))
    assert status == 101
    for bad in (None, stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            yield in_thread(tls_upgrade, port, client_context(ca, cert=bad))
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_sni_directory_serves_each_name_its_certificate(sipws_factory, tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    sni = tmp_path / "sni"
    ca.issue("a", ["a.example.com"], target=sni)
    ca.issue("b", ["b.example.com", "*.b.example.org"], target=sni)
    (sni / "ca-only.pem").write_text(open(ca.path).read())  # a chain file without a key is skipped
    root = sipws_factory({"ws": {"listen": []}, "wss": {"listen": ["127.0.0.1:0"], "certificate": str(sni)}})
    port = port_of(root, "wss")
    for name, expected_cn in (("a.example.com", "a.example.com"), ("b.example.com", "b.example.com"),
                              ("x.b.example.org", "b.example.com")):
        status, _, peer = yield in_thread(tls_upgrade, port, client_context(ca), server_hostname=name)
        assert status == 101
        assert dict(item[0] for item in peer["subject"])["commonName"] == expected_cn


def test_key_not_matching_certificate_is_config_error(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    one, two = ca.issue("one", ["one.example"]), ca.issue("two", ["two.example"])
    config = config_from_dict({"wss": {"listen": ["127.0.0.1:0"], "certificate": one.cert, "private_key": two.key}})
    with pytest.raises(ConfigError) as info:
        server_tls_options(config.wss)
    assert str(info.value) == "config: [wss] private_key: does not match [wss] certificate"


def test_empty_sni_directory_is_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    config = config_from_dict({"wss": {"listen": ["127.0.0.1:0"], "certificate": str(tmp_path / "empty")}})
    with pytest.raises(ConfigError) as info:
        server_tls_options(config.wss)
    assert "no PEM file with a certificate and its key" in str(info.value)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest_twisted.inlineCallbacks
def test_ipv6_listeners_for_ws_and_wss(sipws_factory, pki):
    assert has_ipv6_loopback(), "this machine has no ::1; the IPv6 listener test needs it"
    ca, server = pki
    six = ca.issue("six", ["::1"])
    root = sipws_factory({"ws": {"listen": ["[::1]:0"]},
                          "wss": {"listen": ["[::1]:0"], "certificate": six.cert, "private_key": six.key}})

    def plain(port):
        client = RawWs(port, host="::1")
        try:
            return client.request()[0]
        finally:
            client.shutdown()

    assert (yield in_thread(plain, port_of(root, "ws"))) == 101

    def secure(port):
        client = RawWs(port, host="::1", tls=client_context(ca), server_hostname="::1")
        try:
            return client.request()[0]
        finally:
            client.shutdown()

    assert (yield in_thread(secure, port_of(root, "wss"))) == 101
