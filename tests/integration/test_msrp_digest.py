"""Digest on MSRP AUTH over a real wss connection (RFC 4976 §5.1): a client that the
handshake did not authenticate is challenged, answers with the TURN-REST credential
as its Digest password, gets a Use-Path, and its SEND is relayed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time

import pytest
import pytest_twisted

from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of
from tests.integration.msrp_client import (
    MsrpWs, build_request, digest_authorization, digest_params, relay_uri, tid,
)

SECRET = "0123456789abcdef0123456789abcdef-msrp-digest"


def hmac_credential(secret: str, username: str, algorithm: str) -> str:
    """The TURN-REST credential: base64(HMAC(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), getattr(hashlib, algorithm)).digest()
    return base64.b64encode(mac).decode()


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("server", ["127.0.0.1", "localhost"])


def config(server) -> dict:
    return {"ws": {"listen": []},
            "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert, "private_key": server.key,
                    "subprotocols": ["sip", "msrp"]},
            "msrp": {"require_auth": True},
            "auth": {"hmac_secrets": [SECRET]}}


@pytest_twisted.inlineCallbacks
def test_digest_auth_then_send_over_wss(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(config(server))
    port = port_of(root, "wss")
    context = ssl.create_default_context(cafile=ca.path)
    alice = yield in_thread(MsrpWs, port, "alice", tls=context)
    bob = yield in_thread(MsrpWs, port, "bob", tls=context)
    uri = relay_uri(port, tls=True)

    def login(client: MsrpWs, user: str):
        client.open()
        challenged = client.auth(uri)
        offered = [digest_params(v) for v in challenged.all("WWW-Authenticate")]
        username = f"{int(time.time()) + 600}:{user}"
        password = hmac_credential(SECRET, username, "sha256")
        md5 = next(c for c in offered if c.get("algorithm", "MD5") == "MD5")
        accepted = client.auth(uri, authorization=digest_authorization(md5, username, password, uri))
        return challenged, offered, accepted

    def exchange():
        a = login(alice, "alice")
        b = login(bob, "bob")
        transaction = tid()
        body = b"Hello Bob, authenticated by Digest"
        alice.send_msrp(build_request(
            "SEND", transaction, [alice.use_path, bob.use_path, bob.uri], [alice.uri],
            [("Message-ID", "m1"), ("Byte-Range", f"1-{len(body)}/{len(body)}"),
             ("Failure-Report", "no"), ("Content-Type", "text/plain")], body))
        got = bob.expect(lambda m: m.method == "SEND", "SEND")
        return a, b, got, body

    try:
        (challenged, offered, accepted), (_, _, bob_ok), got, body = yield in_thread(exchange)
        assert challenged.status == 401
        assert {c.get("algorithm") for c in offered} == {"MD5", "SHA-256"}
        assert all(c["realm"] == "sipws" and c["qop"] == "auth" and c["nonce"] for c in offered)
        assert accepted.status == 200, accepted
        assert accepted.header("Use-Path").startswith(f"msrps://127.0.0.1:{port}/")
        assert "rspauth=" in accepted.header("Authentication-Info")
        assert bob_ok.status == 200
        assert got.body == body
        identities = sorted(s["identity"] for s in root.msrp.relay.dump())
        assert identities == ["alice", "bob"]
    finally:
        alice.shutdown()
        bob.shutdown()


@pytest_twisted.inlineCallbacks
def test_wrong_digest_password_is_challenged_again(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(config(server))
    port = port_of(root, "wss")
    client = yield in_thread(MsrpWs, port, "eve", tls=ssl.create_default_context(cafile=ca.path))
    uri = relay_uri(port, tls=True)

    def run():
        client.open()
        challenge = digest_params(client.auth(uri).all("WWW-Authenticate")[0])
        username = f"{int(time.time()) + 600}:eve"
        return client.auth(uri, authorization=digest_authorization(challenge, username, "guess", uri))

    try:
        answer = yield in_thread(run)
        assert answer.status == 401 and answer.all("WWW-Authenticate")
        assert root.msrp.relay.dump() == []
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_require_auth_without_hmac_secrets_keeps_403_and_says_so(sipws_factory, sipws_log, pki):
    ca, server = pki
    cfg = config(server)
    del cfg["auth"]
    root = sipws_factory(cfg)
    port = port_of(root, "wss")
    warned = [line for line in sipws_log if "require_auth without [auth] hmac_secrets" in line]
    assert len(warned) == 1, sipws_log
    client = yield in_thread(MsrpWs, port, "anon", tls=ssl.create_default_context(cafile=ca.path))

    def run():
        client.open()
        return client.auth(relay_uri(port, tls=True))
    try:
        answer = yield in_thread(run)
        assert answer.status == 403 and not answer.all("WWW-Authenticate")
    finally:
        client.shutdown()
