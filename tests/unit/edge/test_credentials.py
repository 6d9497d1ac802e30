"""HMAC (TURN REST form) and JWT handshake credentials, with an injected clock."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipws.config import AuthConfig
from sipws.edge import Denied
from sipws.edge.credentials import (
    JWT_LEEWAY, Authenticated, CredentialChecker, KeyFileError, Presented, challenges, cookies_of,
    load_jwks, load_public_key, presented, query_of, redact,
)
from tests.unit.edge.keys import (
    EC384_KEY, EC_KEY, ED_KEY, OTHER_RSA_KEY, RSA_KEY, hmac_credential, jwk, private_pem, public_pem,
    token, write_jwks, write_pem,
)

NOW = 1_800_000_000.0
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"  # >= 32 bytes (RFC 7518 §3.2)


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def checker(clock=None, **auth) -> CredentialChecker:
    return CredentialChecker(AuthConfig(**auth), clock or FakeClock())


def hmac_checker(**extra) -> CredentialChecker:
    return checker(hmac_secrets=(SECRET,), **extra)


def refused(outcome, status=403) -> str:
    assert isinstance(outcome, Denied), outcome
    assert outcome.status == status
    return outcome.reason


# ---------------------------------------------------------------- HMAC


def test_hmac_valid_gives_the_user():
    username = f"{int(NOW) + 600}:alice"
    outcome = hmac_checker().check_hmac(username, hmac_credential(SECRET, username))
    assert outcome == Authenticated("alice", "hmac")


def test_hmac_user_may_be_user_at_domain_and_contain_colons():
    username = f"{int(NOW) + 1}:alice@example.com"
    assert hmac_checker().check_hmac(username, hmac_credential(SECRET, username)).identity == "alice@example.com"
    username = f"{int(NOW) + 1}:a:b"
    assert hmac_checker().check_hmac(username, hmac_credential(SECRET, username)).identity == "a:b"


def test_hmac_expiry_against_the_injected_clock():
    clock = FakeClock()
    check = hmac_checker(clock=clock)
    username = f"{int(NOW) + 10}:alice"
    credential = hmac_credential(SECRET, username)
    assert isinstance(check.check_hmac(username, credential), Authenticated)
    clock.now = NOW + 10
    assert isinstance(check.check_hmac(username, credential), Authenticated)
    clock.now = NOW + 11
    reason = refused(check.check_hmac(username, credential))
    assert "expired" in reason and credential not in reason


def test_hmac_bad_signature_never_says_expired():
    """Expiry is reported only for a genuine credential (no oracle for forgers)."""
    username = f"{int(NOW) - 10}:alice"
    reason = refused(hmac_checker().check_hmac(username, hmac_credential("other", username)))
    assert "bad HMAC" in reason


def test_hmac_sha1_when_configured():
    username = f"{int(NOW) + 60}:bob"
    sha1 = hmac_credential(SECRET, username, "sha1")
    assert isinstance(hmac_checker(hmac_algorithm="sha1").check_hmac(username, sha1), Authenticated)
    refused(hmac_checker().check_hmac(username, sha1))  # sha256 configured: a sha1 MAC is wrong


def test_hmac_any_of_the_rotated_secrets():
    check = checker(hmac_secrets=("new", "old"))
    username = f"{int(NOW) + 60}:carol"
    for secret in ("new", "old"):
        assert isinstance(check.check_hmac(username, hmac_credential(secret, username)), Authenticated)
    refused(check.check_hmac(username, hmac_credential("older", username)))


def test_hmac_credential_forms_tolerated():
    """Unpadded, URL-safe, and a '+' that an unencoded query turned into a space."""
    for n in range(200):
        username = f"{int(NOW) + 60}:u{n}"
        good = hmac_credential(SECRET, username)
        if "+" in good and "/" in good:
            break
    check = hmac_checker()
    for form in (good, good.rstrip("="), good.replace("+", " "),
                 good.replace("+", "-").replace("/", "_")):
        assert isinstance(check.check_hmac(username, form), Authenticated), form


@pytest.mark.parametrize("username, credential, words", [
    ("alice", "AAAA", "EXPIRY:USER"),
    ("x:alice", "AAAA", "EXPIRY:USER"),
    ("-5:alice", "AAAA", "EXPIRY:USER"),
    ("１２３:alice", "AAAA", "EXPIRY:USER"),  # non-ASCII digits
    ("1234567890123:alice", "AAAA", "EXPIRY:USER"),
    ("1900000000:", "AAAA", "usable identity"),
    ("1900000000:al ice", "AAAA", "usable identity"),
    ("1900000000:alice", "!!!!", "not base64"),
    ("1900000000:alice", "é", "not base64"),
    ("1900000000:alice", "", "username without credential"),
    ("", "AAAA", "credential without username"),
])
def test_hmac_malformed(username, credential, words):
    assert words in refused(hmac_checker().check_hmac(username, credential))


# ---------------------------------------------------------------- JWT


def claims(**extra):
    base = {"sub": "alice", "exp": int(NOW) + 300}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def test_jwt_hs256():
    check = checker(jwt_secret=SECRET)
    assert check.check_jwt(token(SECRET, "HS256", **claims())) == Authenticated("alice", "jwt")
    assert "bad signature" in refused(check.check_jwt(token("other-other-other-other-other-other", "HS256", **claims())))


@pytest.mark.parametrize("key, alg", [(RSA_KEY, "RS256"), (EC_KEY, "ES256"), (EC384_KEY, "ES384")])
def test_jwt_public_keys(tmp_path, key, alg):
    check = checker(jwt_public_key=write_pem(tmp_path, "pub.pem", key))
    assert check.check_jwt(token(key, alg, **claims())).identity == "alice"


def test_jwt_wrong_rsa_key(tmp_path):
    check = checker(jwt_public_key=write_pem(tmp_path, "pub.pem", RSA_KEY))
    assert refused(check.check_jwt(token(OTHER_RSA_KEY, "RS256", **claims()))) == "bad signature"


def test_jwt_algorithm_confusion_hs256_signed_with_the_public_key(tmp_path):
    """The classic attack: HMAC with the (public) PEM as secret. The key type pins RS256."""
    path = write_pem(tmp_path, "pub.pem", RSA_KEY)
    forged = jwt.api_jws.PyJWS()
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac
    signature = base64.urlsafe_b64encode(
        hmac.new(public_pem(RSA_KEY), header + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    attack = (header + b"." + payload + b"." + signature).decode()
    assert forged  # PyJWS would refuse to build it itself; done by hand above
    reason = refused(checker(jwt_public_key=path).check_jwt(attack))
    assert "not allowed" in reason


def test_jwt_alg_none_refused():
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert "not allowed" in refused(checker(jwt_secret=SECRET).check_jwt(unsigned))


def test_jwt_expiry_with_leeway():
    clock = FakeClock()
    check = checker(clock, jwt_secret=SECRET)
    good = token(SECRET, "HS256", **claims(exp=int(NOW)))
    clock.now = NOW + JWT_LEEWAY
    assert isinstance(check.check_jwt(good), Authenticated)
    clock.now = NOW + JWT_LEEWAY + 1
    assert "expired" in refused(check.check_jwt(good))


def test_jwt_exp_required_and_numeric():
    check = checker(jwt_secret=SECRET)
    assert "no exp claim" in refused(check.check_jwt(token(SECRET, "HS256", **claims(exp=None))))
    assert "not a number" in refused(check.check_jwt(token(SECRET, "HS256", **claims(exp="soon"))))


def test_jwt_nbf_in_the_future():
    check = checker(jwt_secret=SECRET)
    early = token(SECRET, "HS256", **claims(nbf=int(NOW) + 3600))
    assert "not valid yet" in refused(check.check_jwt(early))


def test_jwt_audience_and_issuer():
    check = checker(jwt_secret=SECRET, jwt_audience="sipws", jwt_issuer="https://auth.example.com")
    ok = claims(aud="sipws", iss="https://auth.example.com")
    assert isinstance(check.check_jwt(token(SECRET, "HS256", **ok)), Authenticated)
    assert refused(check.check_jwt(token(SECRET, "HS256", **{**ok, "aud": "other"}))) == "wrong audience"
    assert refused(check.check_jwt(token(SECRET, "HS256", **{**ok, "iss": "evil"}))) == "wrong issuer"
    no_aud = {k: v for k, v in ok.items() if k != "aud"}
    no_iss = {k: v for k, v in ok.items() if k != "iss"}
    assert "no aud claim" in refused(check.check_jwt(token(SECRET, "HS256", **no_aud)))
    assert "no iss claim" in refused(check.check_jwt(token(SECRET, "HS256", **no_iss)))


def test_jwt_audience_in_token_but_not_configured_is_accepted():
    check = checker(jwt_secret=SECRET)
    assert isinstance(check.check_jwt(token(SECRET, "HS256", **claims(aud="x"))), Authenticated)


def test_jwt_identity_claim():
    check = checker(jwt_secret=SECRET, jwt_identity_claim="sip_user")
    assert check.check_jwt(token(SECRET, "HS256", **claims(sip_user="bob@example.com"))).identity \
        == "bob@example.com"
    assert "sip_user claim" in refused(check.check_jwt(token(SECRET, "HS256", **claims())))
    assert "sip_user claim" in refused(check.check_jwt(token(SECRET, "HS256", **claims(sip_user=7))))
    assert "sip_user claim" in refused(check.check_jwt(token(SECRET, "HS256", **claims(sip_user="a b"))))


def test_jwks_key_by_kid(tmp_path):
    path = write_jwks(tmp_path, [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1", "ES256")])
    check = checker(jwt_jwks=path)
    assert isinstance(check.check_jwt(token(RSA_KEY, "RS256", {"kid": "r1"}, **claims())), Authenticated)
    assert isinstance(check.check_jwt(token(EC_KEY, "ES256", {"kid": "e1"}, **claims())), Authenticated)
    assert "kid" in refused(check.check_jwt(token(RSA_KEY, "RS256", {"kid": "nope"}, **claims())))
    assert "kid" in refused(check.check_jwt(token(RSA_KEY, "RS256", **claims())))  # several keys, no kid
    # the EC key's kid with an RSA signature: its key pins ES256
    assert "not allowed" in refused(check.check_jwt(token(RSA_KEY, "RS256", {"kid": "e1"}, **claims())))


def test_jwks_single_key_without_kid(tmp_path):
    entry = jwk(RSA_KEY, "x")
    del entry["kid"]
    check = checker(jwt_jwks=write_jwks(tmp_path, [entry]))
    assert isinstance(check.check_jwt(token(RSA_KEY, "RS256", **claims())), Authenticated)


# ---------------------------------------------------------------- key files


def test_public_key_file_checks(tmp_path):
    assert load_public_key(write_pem(tmp_path, "r.pem", RSA_KEY))[1] == "RS256"
    assert load_public_key(write_pem(tmp_path, "e.pem", EC_KEY))[1] == "ES256"
    with pytest.raises(KeyFileError, match="not an RSA or EC"):
        load_public_key(write_pem(tmp_path, "ed.pem", ED_KEY))
    private = tmp_path / "private.pem"
    private.write_bytes(private_pem(RSA_KEY))
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(str(private))
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(str(junk))


@pytest.mark.parametrize("document, words", [
    ("not json", "not JSON"),
    ("{}", "no \"keys\""),
    ('{"keys": []}', "no \"keys\""),
    ('{"keys": [1]}', "not an object"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "kty 'oct' not accepted"),
    (json.dumps({"keys": [jwk(RSA_KEY, "a"), {k: v for k, v in jwk(EC_KEY, "b").items() if k != "kid"}]}),
     "needs a string kid"),
    (json.dumps({"keys": [jwk(RSA_KEY, "a"), jwk(EC_KEY, "a")]}), "kid given twice"),
    ('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}', "unusable key"),
])
def test_jwks_file_checks(tmp_path, document, words):
    path = tmp_path / "jwks.json"
    path.write_text(document)
    with pytest.raises(KeyFileError, match=words):
        load_jwks(str(path))


def test_jwks_refuses_private_parts_and_wrong_alg(tmp_path):
    entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY))
    entry["kid"] = "p"
    with pytest.raises(KeyFileError, match="private key"):
        load_jwks(write_jwks(tmp_path, [entry]))
    with pytest.raises(KeyFileError, match="does not fit"):
        load_jwks(write_jwks(tmp_path, [jwk(RSA_KEY, "a", "HS256")]))


# ---------------------------------------------------------------- where credentials come from


def test_query_then_cookies():
    query = query_of("/?username=1%3Aa&credential=Zm9v%2B&x=1")
    assert query["username"] == ["1:a"] and query["credential"] == ["Zm9v+"]
    cookies = cookies_of(['a=b; sipws_username="2:b"; sipws_credential=QQ==', "sipws_token=tok"])
    assert cookies["sipws_username"] == "2:b" and cookies["sipws_credential"] == "QQ=="
    given = presented(query, cookies)
    assert given == Presented("1:a", "Zm9v+", "tok")
    assert presented({}, cookies) == Presented("2:b", "QQ==", "tok")
    assert presented({}, {}) == Presented()


def test_duplicate_query_parameter_refused():
    given = presented(query_of("/?access_token=a&access_token=b"), {})
    assert "given 2 times" in given.problem
    assert refused(hmac_checker().check(given))


def test_check_order_and_none():
    check = checker(hmac_secrets=(SECRET,), jwt_secret=SECRET)
    assert check.check(Presented()) is None
    assert check.check(Presented(token="")) is None
    username = f"{int(NOW) + 60}:alice"
    both = Presented(username, hmac_credential(SECRET, username), token(SECRET, "HS256", **claims(sub="bob")))
    assert check.check(both).identity == "alice"
    half = Presented(username, "AAAA", token(SECRET, "HS256", **claims(sub="bob")))
    assert check.check(half).identity == "bob"  # the good one of the two counts
    assert "bad HMAC" in refused(check.check(Presented(username, "AAAA", "junk")))
    # a kind that is not configured is not read
    assert checker(jwt_secret=SECRET).check(Presented(username, "AAAA")) is None


def test_challenges():
    assert challenges(("jwt",)) == (("WWW-Authenticate", 'Bearer realm="sipws"'),)
    assert [v for _, v in challenges(("hmac", "jwt", "hook"))] == ['Bearer realm="sipws"',
                                                                 'Sipws-HMAC realm="sipws"']
    assert challenges(("hook",)) == (("WWW-Authenticate", 'Sipws realm="sipws"'),)


def test_redact_query_and_cookies():
    head = (b"GET /ws?username=1%3Aalice&credential=SECRET1&access_token=SECRET2 HTTP/1.1\r\n"
            b"Host: x\r\nCookie: a=1; sipws_credential=SECRET3; sipws_token=SECRET4\r\n\r\n")
    out = redact(head)
    assert b"SECRET" not in out
    assert out.startswith(b"GET /ws?username=1%3Aalice&credential=REDACTED&access_token=REDACTED HTTP/1.1\r\n")
    assert b"Cookie: a=1; sipws_credential=REDACTED; sipws_token=REDACTED\r\n" in out
    plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert redact(plain) == plain


# ---------------------------------------------------------------- garbage in


TEXT = st.text(max_size=300) | st.sampled_from(["", ":", "1:", "9999999999:a", "a.b.c", "e30.e30.",
                                                 "eyJhbGciOiJIUzI1NiJ9.e30.x"])


@settings(max_examples=300, deadline=None)
@given(username=TEXT, credential=TEXT, tok=TEXT, target=st.text(max_size=200),
       cookie=st.text(max_size=200))
def test_garbage_gives_only_our_outcomes(tmp_path_factory, username, credential, tok, target, cookie):
    tmp = tmp_path_factory.getbasetemp()
    pem = tmp / "garbage-rsa.pem"
    if not pem.exists():
        pem.write_bytes(public_pem(RSA_KEY))
    for check in (checker(hmac_secrets=(SECRET,), jwt_secret=SECRET),
                  checker(hmac_secrets=(SECRET,), hmac_algorithm="sha1", jwt_public_key=str(pem))):
        for creds in (Presented(username, credential, tok),
                      presented(query_of(target), cookies_of([cookie]))):
            outcome = check.check(creds)
            assert outcome is None or isinstance(outcome, (Denied, Authenticated))
            if isinstance(outcome, Denied):
                assert outcome.status == 403
                for secret in (credential, tok):
                    if len(secret) > 8:
                        assert secret not in outcome.reason
    redact(target.encode("utf-8", "replace") + b"\r\nCookie: " + cookie.encode("utf-8", "replace"))


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit"]),
                              st.one_of(st.text(max_size=10), st.integers(), st.none(),
                                        st.lists(st.integers(), max_size=2))),
       payload=st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "iat"]),
                               st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.none(),
                                         st.booleans(), st.lists(st.text(max_size=3), max_size=2))))
def test_structured_garbage_tokens(header, payload):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    import hashlib
    import hmac
    signing = f"{b64(header)}.{b64(payload)}"
    signature = base64.urlsafe_b64encode(
        hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    check = checker(jwt_secret=SECRET, jwt_audience="sipws", jwt_issuer="me")
    outcome = check.check_jwt(f"{signing}.{signature}")
    assert isinstance(outcome, (Denied, Authenticated))
