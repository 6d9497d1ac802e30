"""Digest on MSRP AUTH (RFC 4976 §5.1, §6.3): challenges, responses computed here
from the RFC 2617 / RFC 7616 formulas independently of sipws.msrp.digest."""

import base64
import hashlib
import hmac
import re

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from sipws.msrp import MsrpRelay, RelaySettings, SendToConnection, parse, parse_uri
from sipws.msrp.digest import NONCE_LIFETIME, DigestAuth
from sipws.msrp.relay import MAX_AUTH_FAILURES

from .helpers import request

RELAY = "msrps://relay.example.net:2855;ws"
ALICE_WS = "msrps://alice1.invalid/a1;ws"
SECRET = "s3cret"
NOW = 1_800_000_000


def clock_at(t=NOW):
    c = Clock()
    c.advance(t)
    return c


def make_relay(clock, secrets=(SECRET,), algorithm="sha256"):
    settings = RelaySettings(host="relay.example.net", port=2855, require_auth=True,
                             hmac_secrets=secrets, hmac_algorithm=algorithm)
    names = iter(["sessA"] + [f"sess{i}" for i in range(1000)])
    return MsrpRelay(clock, settings, token=lambda: next(names))


def turn_password(username, secret=SECRET, algorithm=hashlib.sha256):
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), algorithm).digest()).decode()


def challenge_params(value):
    assert value.startswith("Digest ")
    return dict((k, v1 or v2) for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value[7:]))


def authorization(username, password, nonce, uri=RELAY, nc="00000001", cnonce="0a4f113b",
                  algorithm="MD5", method="AUTH"):
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hx(s):
        return h(s.encode()).hexdigest()
    ha1 = hx(f"{username}:sipws:{password}")
    ha2 = hx(f"{method}:{uri}")
    resp = hx(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{username}", realm="sipws", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", qop=auth, nc={nc}, cnonce="{cnonce}", algorithm={algorithm}')


def auth(relay, conn_id=1, authz=None, tid="auth0001"):
    headers = [f"Authorization: {authz}"] if authz is not None else []
    out = [a for a in relay.received(conn_id, request("AUTH", tid, RELAY, ALICE_WS, headers))
           if isinstance(a, SendToConnection)]
    assert len(out) == 1, out
    return parse(out[0].data)


def challenges(msg):
    return [challenge_params(v) for k, v in msg.headers if k.lower() == "www-authenticate"]


def test_auth_without_credentials_is_challenged():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    m = auth(r)
    assert m.status == 401
    offered = challenges(m)
    assert [c["algorithm"] for c in offered] == ["MD5", "SHA-256"]
    for c in offered:
        assert c["realm"] == "sipws" and c["qop"] == "auth" and c["nonce"] and "stale" not in c
    assert r.counters["msrp.auth_ok"] == 0


def test_correct_response_gives_use_path_and_identity():
    for algorithm in ("MD5", "SHA-256"):
        r = make_relay(clock_at())
        r.connection_opened(1, "ws")
        nonce = challenges(auth(r))[0]["nonce"]
        username = f"{NOW + 3600}:alice"
        m = auth(r, authz=authorization(username, turn_password(username), nonce,
                                        algorithm=algorithm), tid="auth0002")
        assert m.status == 200, m
        assert m.use_path == (parse_uri("msrps://relay.example.net:2855/sessA;tcp"),)
        info = challenge_params("Digest " + m.header("Authentication-Info"))
        assert info["qop"] == "auth" and info["nc"] == "00000001" and info["cnonce"] == "0a4f113b"
        assert r.dump()[0]["identity"] == "alice"


def test_any_configured_secret_and_sha1_hmac():
    r = make_relay(clock_at(), secrets=("old", SECRET), algorithm="sha1")
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW + 60}:alice"
    m = auth(r, authz=authorization(username, turn_password(username, algorithm=hashlib.sha1), nonce))
    assert m.status == 200


def test_wrong_password_is_challenged_again():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW + 3600}:alice"
    m = auth(r, authz=authorization(username, "not-the-credential", nonce))
    assert m.status == 401 and challenges(m)


def test_expired_username_is_forbidden():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW - 1}:alice"
    assert auth(r, authz=authorization(username, turn_password(username), nonce)).status == 403


def test_stale_nonce_gets_stale_true_and_a_fresh_nonce_works():
    clock = clock_at()
    r = make_relay(clock)
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    clock.advance(NONCE_LIFETIME + 1)
    username = f"{NOW + 3600}:alice"
    m = auth(r, authz=authorization(username, turn_password(username), nonce))
    assert m.status == 401
    fresh = challenges(m)
    assert all(c["stale"] == "true" for c in fresh)
    m = auth(r, authz=authorization(username, turn_password(username), fresh[0]["nonce"]))
    assert m.status == 200


def test_forged_nonce_and_nonce_of_another_connection_are_refused():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    r.connection_opened(2, "ws")
    other = challenges(auth(r, conn_id=2))[0]["nonce"]
    username = f"{NOW + 3600}:alice"
    forged = base64.urlsafe_b64encode(NOW.to_bytes(8, "big") + b"\0" * 16).decode()
    for nonce in (forged, other):
        m = auth(r, authz=authorization(username, turn_password(username), nonce))
        assert m.status == 401 and all("stale" not in c for c in challenges(m))


def test_wrong_uri_and_replayed_nonce_count_are_refused():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW + 3600}:alice"
    pw = turn_password(username)
    assert auth(r, authz=authorization(username, pw, nonce, uri="msrps://evil.example:2855;ws")).status == 401
    good = authorization(username, pw, nonce)
    assert auth(r, authz=good).status == 200
    assert auth(r, authz=good).status == 401  # same nc again
    assert auth(r, authz=authorization(username, pw, nonce, nc="00000002")).status == 200


def test_retries_are_bounded():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW + 3600}:alice"
    statuses = [auth(r, authz=authorization(username, "wrong", nonce)).status
                for _ in range(MAX_AUTH_FAILURES)]
    assert statuses == [401] * (MAX_AUTH_FAILURES - 1) + [403]
    # even the right answer is refused now on this connection
    assert auth(r, authz=authorization(username, turn_password(username), nonce)).status == 403
    assert auth(r).status == 403
    assert r.counters["msrp.auth_refused"] >= 2


def test_no_secrets_keeps_403():
    clock = clock_at()
    r = MsrpRelay(clock, RelaySettings(host="relay.example.net", require_auth=True))
    r.connection_opened(1, "ws")
    assert auth(r).status == 403


def test_nothing_secret_is_logged():
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    nonce = challenges(auth(r))[0]["nonce"]
    username = f"{NOW + 3600}:alice"
    authz = authorization(username, "wrong", nonce)
    resp = re.search(r'response="([0-9a-f]+)"', authz).group(1)
    out = r.received(1, request("AUTH", "auth0003", RELAY, ALICE_WS, [f"Authorization: {authz}"]))
    text = " ".join(getattr(a, "text", "") for a in out)
    assert resp not in text and nonce not in text and SECRET not in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_authorization_never_raises(value):
    d = DigestAuth(clock_at(), [SECRET])
    v = d.verify(value, b"1", parse_uri(RELAY))
    assert v.status == 401


_param = st.sampled_from(["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce",
                          "algorithm", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_param, st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                            max_size=40)), max_size=10))
def test_garbage_digest_parameters_through_the_relay(params):
    r = make_relay(clock_at())
    r.connection_opened(1, "ws")
    value = "Digest " + ", ".join(f'{k}="{v}"' for k, v in params)
    out = r.received(1, request("AUTH", "auth0001", RELAY, ALICE_WS, [f"Authorization: {value}"]))
    for a in out:
        if isinstance(a, SendToConnection):
            assert parse(a.data).status in (400, 401, 403)
