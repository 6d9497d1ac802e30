"""[auth] on real sockets: HMAC and JWT credentials, the hook, 401 vs 403 and their log lines,
the identity in ws.dump, the opened line and HEP, and identity binding in both modes."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipws.admin import methods
from tests.integration import auth_hooks
from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.sipcore import udp_core
from tests.integration.test_standalone import Phone, standalone
from tests.integration.test_trace import UdpCollector, net_events
from tests.integration.wsclient import RawWs, good_headers
from tests.unit.edge.keys import (
    EC_KEY, RSA_KEY, hmac_credential, jwk, public_pem, token, write_jwks, write_pem,
)

SECRET = "0123456789abcdef0123456789abcdef-hmac"
JWT_SECRET = "0123456789abcdef0123456789abcdef-jwt"
HMAC = {"auth": {"required": True, "hmac_secrets": [SECRET]}}


def hmac_path(user: str, lifetime: int = 600, secret: str = SECRET, algorithm: str = "sha256") -> str:
    username = f"{int(time.time()) + lifetime}:{user}"
    credential = hmac_credential(secret, username, algorithm)
    return "/?" + urllib.parse.urlencode({"username": username, "credential": credential})


def jwt_path(tok: str) -> str:
    return "/?access_token=" + urllib.parse.quote(tok)


def claims(**extra):
    base = {"sub": "alice", "exp": int(time.time()) + 300}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def exchange(port: int, path: str = "/", headers: dict | None = None):
    client = RawWs(port)
    try:
        return client.request(path=path, headers=headers)
    finally:
        client.shutdown()


def with_cookie(cookie: str) -> dict:
    headers = good_headers()
    headers["Cookie"] = cookie
    return headers


@pytest_twisted.inlineCallbacks
def handshake(root, path="/", headers=None):
    """(status, response headers, the open record's identity or None)."""
    status, got, _ = yield in_thread(exchange, port_of(root), path, headers)
    yield wait_for(lambda: len(root.connections) == 0)
    return status, got


def refusals(log):
    return [line for line in log if "handshake refused from 127.0.0.1:" in line]


def opened_identity(log) -> str:
    [line] = [line for line in log if line.startswith("opened #")]
    return line.rsplit("identity=", 1)[1]


# ---------------------------------------------------------------- HMAC


HMAC_CASES = [
    ("valid", {}, lambda: hmac_path("alice"), None, 101, "alice"),
    ("expired", {}, lambda: hmac_path("alice", lifetime=-5), None, 403, "expired"),
    ("bad", {}, lambda: hmac_path("alice", secret="not-the-secret"), None, 403, "bad HMAC"),
    ("missing", {}, lambda: "/", None, 401, "no credentials"),
    ("sha1", {"hmac_algorithm": "sha1"}, lambda: hmac_path("bob", algorithm="sha1"), None, 101, "bob"),
    ("sha1 expected", {"hmac_algorithm": "sha1"}, lambda: hmac_path("bob"), None, 403, "bad HMAC"),
    ("rotated secret", {"hmac_secrets": ["new-secret", SECRET]}, lambda: hmac_path("carol"), None, 101, "carol"),
    ("cookie", {}, lambda: "/", "cookie", 101, "dave"),
    ("only username", {}, lambda: "/?username=1:x", None, 403, "username without credential"),
]


@pytest.mark.parametrize("name, auth, path, cookie, status, expect", HMAC_CASES, ids=[c[0] for c in HMAC_CASES])
@pytest_twisted.inlineCallbacks
def test_hmac(sipws_factory, sipws_log, name, auth, path, cookie, status, expect):
    root = sipws_factory({"auth": {**HMAC["auth"], **auth}})
    path = path()
    headers = None
    if cookie:
        username = f"{int(time.time()) + 60}:dave"
        headers = with_cookie(f"other=1; sipws_username={username}; "
                              f"sipws_credential={hmac_credential(SECRET, username)}")
    got, response = yield handshake(root, path, headers)
    assert got == status
    secret_part = urllib.parse.parse_qs(path[2:]).get("credential", ["-"])[0]
    if status == 101:
        assert opened_identity(sipws_log) == expect
        assert root.stats.get("auth.accepted") == 1
    else:
        [line] = refusals(sipws_log)
        assert f"status={status}" in line and expect in line
        assert root.stats.get(f"auth.refused_{status}") == 1
    if status == 401:
        assert response["www-authenticate"] == 'Sipws-HMAC realm="sipws"'
    else:
        assert "www-authenticate" not in response
    assert secret_part == "-" or not any(secret_part in line for line in sipws_log)


@pytest_twisted.inlineCallbacks
def test_identity_in_ws_dump_and_closed_and_not_required(sipws_factory):
    root = sipws_factory({"auth": {"hmac_secrets": [SECRET]}})  # required = false
    port = port_of(root)
    alice = yield in_thread(RawWs, port)
    yield in_thread(alice.upgrade, path=hmac_path("alice@example.com"))
    anonymous = yield in_thread(RawWs, port)
    yield in_thread(anonymous.upgrade)
    yield wait_for(lambda: len(root.connections) == 2
                   and all(r.state == "open" for r in root.connections))
    dump = methods.call(root, "ws.dump", {})
    assert sorted(c["identity"] for c in dump["connections"]) == ["", "alice@example.com"]
    assert root.stats.get("auth.anonymous") == 1
    # not required, but a bad credential is still refused (docs/authentication.md)
    status, _, _ = yield in_thread(exchange, port, hmac_path("alice", secret="wrong"))
    assert status == 403
    alice.shutdown()
    anonymous.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)


# ---------------------------------------------------------------- JWT


def _jwt_cases(tmp):
    rsa_pem = write_pem(tmp, "rsa.pem", RSA_KEY)
    ec_pem = write_pem(tmp, "ec.pem", EC_KEY)
    jwks = write_jwks(tmp, [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1")])
    hs = {"jwt_secret": JWT_SECRET}
    hs_aud = {**hs, "jwt_audience": "sipws", "jwt_issuer": "https://auth.example.com"}
    good_aud = claims(aud="sipws", iss="https://auth.example.com")
    # alg confusion: HS256 keyed with the public PEM the server verifies RS256 with
    forged = token(public_pem(RSA_KEY).decode(), "HS256", **claims()) if _pyjwt_signs_pem() else None
    cases = [
        ("HS256", hs, token(JWT_SECRET, "HS256", **claims()), 101, "alice"),
        ("RS256", {"jwt_public_key": rsa_pem}, token(RSA_KEY, "RS256", **claims()), 101, "alice"),
        ("ES256", {"jwt_public_key": ec_pem}, token(EC_KEY, "ES256", **claims(sub="bob")), 101, "bob"),
        ("JWKS RS256", {"jwt_jwks": jwks}, token(RSA_KEY, "RS256", {"kid": "r1"}, **claims()), 101, "alice"),
        ("JWKS ES256", {"jwt_jwks": jwks}, token(EC_KEY, "ES256", {"kid": "e1"}, **claims()), 101, "alice"),
        ("JWKS unknown kid", {"jwt_jwks": jwks}, token(RSA_KEY, "RS256", {"kid": "zz"}, **claims()), 403, "kid"),
        ("aud and iss", hs_aud, token(JWT_SECRET, "HS256", **good_aud), 101, "alice"),
        ("wrong aud", hs_aud, token(JWT_SECRET, "HS256", **{**good_aud, "aud": "other"}), 403, "wrong audience"),
        ("wrong iss", hs_aud, token(JWT_SECRET, "HS256", **{**good_aud, "iss": "evil"}), 403, "wrong issuer"),
        ("expired", hs, token(JWT_SECRET, "HS256", **claims(exp=int(time.time()) - 120)), 403, "expired"),
        ("missing exp", hs, token(JWT_SECRET, "HS256", **claims(exp=None)), 403, "no exp claim"),
        ("alg none", hs, token(None, "none", **claims()), 403, "not allowed"),
        ("RS256 against HS key", hs, token(RSA_KEY, "RS256", **claims()), 403, "not allowed"),
        ("missing", hs, None, 401, "no credentials"),
    ]
    if forged is not None:
        cases.append(("alg confusion", {"jwt_public_key": rsa_pem}, forged, 403, "not allowed"))
    else:
        cases.append(("alg confusion", {"jwt_public_key": rsa_pem}, _hs256_by_hand(public_pem(RSA_KEY)),
                      403, "not allowed"))
    return cases


def _pyjwt_signs_pem() -> bool:
    """PyJWT itself refuses to HMAC-sign with a PEM (its own alg-confusion guard)."""
    try:
        token(public_pem(RSA_KEY).decode(), "HS256", **claims())
        return True
    except Exception:  # noqa: BLE001
        return False


def _hs256_by_hand(key: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims()).encode())
    return (signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode()


JWT_IDS = [c[0] for c in _jwt_cases(__import__("pathlib").Path("/tmp"))]


@pytest.mark.parametrize("index", range(len(JWT_IDS)), ids=JWT_IDS)
@pytest_twisted.inlineCallbacks
def test_jwt(sipws_factory, sipws_log, tmp_path, index):
    name, auth, tok, status, expect = _jwt_cases(tmp_path)[index]
    root = sipws_factory({"auth": {"required": True, **auth}})
    got, response = yield handshake(root, jwt_path(tok) if tok else "/")
    assert got == status, name
    if status == 101:
        assert opened_identity(sipws_log) == expect
    else:
        [line] = refusals(sipws_log)
        assert expect in line, line
    if status == 401:
        assert response["www-authenticate"] == 'Bearer realm="sipws"'
    if tok:
        signature = tok.split(".")[-1]
        assert not any(tok in line or (signature and signature in line) for line in sipws_log)


@pytest_twisted.inlineCallbacks
def test_jwt_cookie_and_query_wins(sipws_factory, sipws_log):
    root = sipws_factory({"auth": {"required": True, "jwt_secret": JWT_SECRET}})
    got, _ = yield handshake(root, "/", with_cookie("sipws_token=" + token(JWT_SECRET, "HS256", **claims(sub="eve"))))
    assert got == 101 and opened_identity(sipws_log) == "eve"
    sipws_log.clear()
    got, _ = yield handshake(root, jwt_path(token(JWT_SECRET, "HS256", **claims(sub="query"))),
                             with_cookie("sipws_token=" + token(JWT_SECRET, "HS256", **claims(sub="cookie"))))
    assert got == 101 and opened_identity(sipws_log) == "query"


@pytest_twisted.inlineCallbacks
def test_hep_events_carry_identity_and_no_credential(sipws_factory):
    udp_collector = UdpCollector()
    listening = reactor.listenUDP(0, udp_collector, interface="127.0.0.1", maxPacketSize=65535)
    udp_collector.port = listening.getHost().port
    try:
        yield _hep_session(sipws_factory, udp_collector)
    finally:
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def _hep_session(sipws_factory, udp_collector):
    root = sipws_factory({"auth": {"required": True, "jwt_secret": JWT_SECRET},
                          "trace": {"destination": f"udp:127.0.0.1:{udp_collector.port}", "on": True}})
    tok = token(JWT_SECRET, "HS256", **claims(sub="alice"))
    got, _ = yield handshake(root, jwt_path(tok))
    assert got == 101
    got, _ = yield handshake(root, jwt_path(tok[:-4] + "AAAA"))
    assert got == 403
    yield wait_for(lambda: len(net_events(udp_collector.packets)) >= 4)
    events = net_events(udp_collector.packets)
    accepted = [e for e in events if e["event"] == "accepted"]
    refused = [e for e in events if e["event"] == "refused"]
    closed = [e for e in events if e["event"] == "closed"]
    assert accepted[0]["identity"] == "alice" and closed[0]["identity"] == "alice"
    assert "access_token=REDACTED" in accepted[0]["request"]
    assert refused[0]["status"] == 403 and "access_token=REDACTED" in refused[0]["request"]
    assert not any(tok.split(".")[-1] in json.dumps(e) for e in events)


# ---------------------------------------------------------------- hook


def hook_config(name: str, **extra) -> dict:
    return {"auth": {"required": True, "hook": f"tests.integration.auth_hooks:{name}", **extra}}


HOOK_CASES = [
    ("identity", "from_query", "/?user=alice", 101, "alice"),
    ("none", "from_query", "/", 401, "hook gave no identity"),
    ("deferred", "later", "/?user=bob", 101, "bob"),
    ("deferred denial", "later", "/?user=deny", 403, "user deny"),
    ("coroutine", "coroutine", "/", 101, "carol"),
    ("returned denial", "deny", "/", 429, "slow down"),
    ("failed deferred denial", "deny_later", "/", 403, "not today"),
    ("raising", "raising", "/", 500, "raised RuntimeError"),
    ("wrong type", "wrong_type", "/", 500, "answered a int"),
]


@pytest.mark.parametrize("name, hook, path, status, expect", HOOK_CASES, ids=[c[0] for c in HOOK_CASES])
@pytest_twisted.inlineCallbacks
def test_hook(sipws_factory, sipws_log, name, hook, path, status, expect):
    auth_hooks.SEEN.clear()
    root = sipws_factory(hook_config(hook))
    headers = good_headers()
    headers["X-User"] = "carol"
    got, response = yield handshake(root, path, headers)
    assert got == status
    [seen] = auth_hooks.SEEN  # called once per handshake
    assert seen.peer[0] == "127.0.0.1" and seen.peer[1] > 0 and seen.path == "/"
    assert seen.headers["x-user"] == "carol" and seen.transport == "ws"
    if status == 101:
        assert opened_identity(sipws_log) == expect
    else:
        [line] = refusals(sipws_log)
        assert expect in line, line
    if status == 401:
        assert response["www-authenticate"] == 'Sipws realm="sipws"'
    if status == 500:
        assert any("[auth] hook tests.integration.auth_hooks:" in line for line in sipws_log)
        assert root.stats.get("auth.hook_errors") == 1


@pytest_twisted.inlineCallbacks
def test_hook_raising_logs_the_traceback(sipws_factory):
    from twisted.logger import globalLogPublisher
    failures = []

    def observer(event):
        if "log_failure" in event and "[auth] hook" in event.get("log_format", ""):
            failures.append(event["log_failure"])
    globalLogPublisher.addObserver(observer)
    try:
        root = sipws_factory(hook_config("raising"))
        got, _ = yield handshake(root)
        assert got == 500
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures and "auth service exploded" in failures[0].getTraceback()


@pytest_twisted.inlineCallbacks
def test_hook_never_answering_is_bounded_by_the_handshake_timeout(sipws_factory, sipws_log):
    auth_hooks.SEEN.clear()
    root = sipws_factory({**hook_config("never"), "ws": {"listen": ["127.0.0.1:0"], "handshake_timeout": 1.5}})

    def connect_and_ask() -> RawWs:  # one thread hop: the timeout runs from the TCP accept
        client = RawWs(port_of(root))
        client.sock.sendall(_request_bytes("/"))
        return client
    client = yield in_thread(connect_and_ask)
    yield wait_for(lambda: any("handshake timeout" in line for line in sipws_log), timeout=5)
    yield wait_for(lambda: len(root.connections) == 0)
    assert any("waiting for the [auth] hook" in line for line in sipws_log)
    assert (yield in_thread(client.closed_by_peer))
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_hook_not_reentered_by_further_reads_and_early_bytes_kept(sipws_factory):
    """Autobahn calls processHandshake on every read while connecting: the hook runs once,
    and a frame sent before the 101 is read after it."""
    auth_hooks.SEEN.clear()
    root = sipws_factory(hook_config("later"))
    client = yield in_thread(RawWs, port_of(root))
    client.sock.sendall(_request_bytes("/?user=alice"))
    yield sleep(0.05)
    yield in_thread(client.send_frame, 0x9, b"early")  # a Ping, while the hook decides
    yield sleep(0.05)
    yield in_thread(client.send_frame, 0x9, b"again")
    status, _, _ = yield in_thread(client.read_response)
    assert status == 101
    _, opcode, payload = yield in_thread(client.read_frame)
    assert (opcode, payload) == (0xA, b"early")
    assert len(auth_hooks.SEEN) == 1
    [record] = list(root.connections)
    assert record.identity == "alice"
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_client_gone_while_the_hook_decides(sipws_factory, sipws_log):
    auth_hooks.SEEN.clear()
    root = sipws_factory(hook_config("later"))
    client = yield in_thread(RawWs, port_of(root))
    client.sock.sendall(_request_bytes("/?user=alice"))
    yield wait_for(lambda: len(auth_hooks.SEEN) == 1)
    client.reset()
    yield wait_for(lambda: len(root.connections) == 0)
    yield sleep(auth_hooks.DELAY + 0.1)  # the hook answers to nobody: nothing breaks
    assert not any(line.startswith("opened") for line in sipws_log)
    assert root.stats.get("auth.accepted") == 0


@pytest_twisted.inlineCallbacks
def test_flood_while_the_hook_decides_is_refused(sipws_factory, sipws_log):
    auth_hooks.SEEN.clear()
    root = sipws_factory(hook_config("later"))
    client = yield in_thread(RawWs, port_of(root))
    client.sock.sendall(_request_bytes("/?user=alice") + b"x" * 20000)
    status, _, _ = yield in_thread(client.read_response)
    assert status == 400
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)


def _request_bytes(path: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in good_headers().items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- identity binding


def bound_phone(root, user: str, as_user: str | None = None):
    return in_thread(Phone, port_of(root), as_user or user, path=hmac_path(user))


@pytest_twisted.inlineCallbacks
def test_bind_identity_standalone(sipws_factory, sipws_log):
    root = sipws_factory(standalone(auth={**HMAC["auth"], "bind_identity": True}))
    alice = yield bound_phone(root, "alice")
    ok = yield in_thread(alice.register)
    assert ok.status == 200
    # the same connection claiming bob: To of a REGISTER, From of an initial request
    mallory = yield bound_phone(root, "alice", as_user="bob")
    refused = yield in_thread(mallory.register)
    assert refused.status == 403
    invite = mallory.request("INVITE", "sip:alice@example.com", "sip:alice@example.com", "inv-1",
                             body="v=0\r\n", extra="Content-Type: application/sdp")
    yield in_thread(mallory.send, invite)
    answer = yield in_thread(mallory.recv_final)
    assert answer.status == 403 and answer.call_id == "inv-1"
    dump = methods.call(root, "registrar.dump", {})
    assert [b["aor"] for b in dump["bindings"]] == ["sip:alice@example.com"]  # bob never registered
    lines = [line for line in sipws_log if line.startswith("identity binding:")]
    assert len(lines) == 2
    assert "REGISTER" in lines[0] and "To sip:bob@example.com" in lines[0] and "bound to alice" in lines[0]
    assert "127.0.0.1:" in lines[0] and f"conn {mallory_id(root, exclude=alice)}" in lines[0]
    assert methods.call(root, "stats", {})["sip"]["events"]["identity_mismatch"] == 2
    alice.close()
    mallory.close()
    yield wait_for(lambda: len(root.connections) == 0)


def mallory_id(root, exclude) -> int:
    """The connection id that is not alice's first one (the newest open connection)."""
    return max(record.id for record in root.connections)


@pytest_twisted.inlineCallbacks
def test_bind_identity_with_upstream_core(sipws_factory, sipws_log):
    core = udp_core()
    try:
        root = sipws_factory({"sip": {"listen": ["udp:127.0.0.1:0"],
                                      "upstream": f"sip:127.0.0.1:{core.number};transport=udp"},
                              "auth": {**HMAC["auth"], "bind_identity": True}})
        alice = yield bound_phone(root, "alice")
        yield in_thread(alice.send, _register(alice, "alice"))
        request, _, _ = yield core.next()
        assert request.method == "REGISTER" and "sip:alice@example.com" in request.get("to")
        yield in_thread(alice.send, _register(alice, "bob"))
        answer = yield in_thread(alice.recv_final)
        assert answer.status == 403 and answer.call_id == "reg-bob"
        yield sleep(0.2)
        assert core.inbox.pending == []  # the core never saw bob's REGISTER
        assert any(line.startswith("identity binding: REGISTER") for line in sipws_log)
        alice.close()
        yield wait_for(lambda: len(root.connections) == 0)
    finally:
        yield core.port.stopListening()


def _register(phone: Phone, user: str) -> bytes:
    return (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS {phone.host};branch=z9hG4bK{user}1\r\n"
            f"Max-Forwards: 69\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag=x\r\n"
            f"Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nContact: <{phone.contact}>\r\nExpires: 60\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


# ---------------------------------------------------------------- workers


def test_two_workers_each_authenticate_and_bind(tmp_path):
    """[server] workers = 2: each worker checks handshakes and binds identities by itself."""
    from tests.integration.test_workers import WAIT as WORKER_WAIT
    from tests.integration.test_workers import Instance, register, sip_of

    extra = (f'[auth]\nrequired = true\nbind_identity = true\nhmac_secrets = ["{SECRET}"]\n')
    instance = Instance(tmp_path, "", extra=extra)
    try:
        status, headers, _ = exchange(instance.ws_port)
        assert status == 401 and headers["www-authenticate"] == 'Sipws-HMAC realm="sipws"'
        clients = {}
        for n in range(16):  # the kernel spreads connections over both workers
            user = f"user{n}"
            client = RawWs(instance.ws_port)
            client.sock.settimeout(WORKER_WAIT)
            client.upgrade(path=hmac_path(user))
            instance.clients.append(client)
            clients[user] = client
        dump = instance.result("ws.dump", limit=1000)["connections"]
        workers = {entry["worker"] for entry in dump}
        assert workers == {0, 1}, dump
        assert sorted(entry["identity"] for entry in dump) == sorted(clients)
        by_worker = {}
        for entry in dump:
            by_worker.setdefault(entry["worker"], entry["identity"])
        for identity in by_worker.values():
            client = clients[identity]
            client.send_text(register(identity))
            assert sip_of(client).status == 200
            client.send_text(register("someone-else").replace(b"reg-someone-else", f"reg-x{identity}".encode()))
            assert sip_of(client).status == 403
        assert instance.log_text().count("identity binding: REGISTER") == 2
    finally:
        instance.stop()
