import itertools

import pytest
from twisted.internet.task import Clock

from sipws.msrp import (
    CloseConnection, Log, MsrpRelay, PeerKey, RelaySettings, SendToConnection, SendToPeer,
    parse, parse_uri,
)

from .helpers import BOB, request, response, send

RELAY = "msrps://relay.example.net:2855"
ALICE_WS = "msrps://alice1.invalid/a1;ws"
BOB_WS = "msrps://bob1.invalid/b1;ws"
SA = f"{RELAY}/sessA;tcp"
SB = f"{RELAY}/sessB;tcp"
BOB_PEER = PeerKey("biloxi.example.com", 12763, False)


def sends(actions):
    return [a for a in actions if isinstance(a, (SendToConnection, SendToPeer))]


def only(actions, cls=SendToConnection):
    out = [a for a in actions if isinstance(a, cls)]
    assert len(out) == 1, actions
    return out[0]


@pytest.fixture
def clock():
    return Clock()


def make_relay(clock, **kw):
    settings = RelaySettings(host="relay.example.net", port=2855, max_chunk_size=4096, **kw)
    names = itertools.chain(["sessA", "sessB"], (f"sess{i}" for i in itertools.count()))
    return MsrpRelay(clock, settings, token=lambda: next(names))


def auth(relay, conn_id, frm, tid="auth0001", expires=None):
    headers = [f"Expires: {expires}"] if expires is not None else []
    return relay.received(conn_id, request("AUTH", tid, f"{RELAY};ws", frm, headers))


@pytest.fixture
def relay(clock):
    r = make_relay(clock)
    r.connection_opened(1, "ws", identity="alice")
    r.connection_opened(2, "ws", identity="bob")
    r.connection_opened(3, "peer", peer=BOB_PEER)
    auth(r, 1, ALICE_WS)
    auth(r, 2, BOB_WS)
    return r


# -- AUTH ----------------------------------------------------------------------
def test_auth_gives_use_path_and_expires(clock):
    r = make_relay(clock)
    r.connection_opened(1, "ws", identity="alice")
    out = auth(r, 1, ALICE_WS)
    a = only(out)
    assert a.conn_id == 1
    m = parse(a.data)
    assert (m.tid, m.status) == ("auth0001", 200)
    assert m.use_path == (parse_uri(SA),)
    assert m.expires == 1800
    assert m.to_path == (parse_uri(ALICE_WS),)
    assert r.counters["msrp.auth_ok"] == 1 and r.counters["msrp.sessions"] == 1
    assert r.dump() == [{"session": "sessA", "uri": SA, "conn_id": 1, "identity": "alice",
                         "client_uri": ALICE_WS, "expires_in": 1800, "bytes_relayed": 0,
                         "chunks_relayed": 0}]


def test_auth_expires_clamped_and_too_small(clock):
    r = make_relay(clock)
    r.connection_opened(1, "ws")
    assert parse(only(auth(r, 1, ALICE_WS, expires=99999)).data).expires == 3600
    m = parse(only(auth(r, 1, ALICE_WS, expires=10)).data)
    assert m.status == 423 and m.header("Min-Expires") == "60"


def test_auth_without_identity(clock):
    r = make_relay(clock, require_auth=True)
    r.connection_opened(1, "ws")
    r.connection_opened(2, "ws", identity="bob")
    r.connection_opened(3, "peer")
    assert parse(only(auth(r, 1, ALICE_WS)).data).status == 403
    assert parse(only(auth(r, 2, BOB_WS)).data).status == 200
    assert parse(only(auth(r, 3, BOB)).data).status == 403  # AUTH is for ws clients
    assert r.counters["msrp.auth_refused"] == 1
    open_relay = make_relay(clock)
    open_relay.connection_opened(1, "ws")
    assert parse(only(auth(open_relay, 1, ALICE_WS)).data).status == 200


def test_default_session_ids_are_unguessable(clock):
    r = MsrpRelay(clock, RelaySettings(host="::1", port=443, tls=False))
    r.connection_opened(1, "ws")
    uri = parse(only(auth(r, 1, ALICE_WS)).data).use_path[0]
    assert uri.scheme == "msrp" and uri.host == "[::1]" and uri.port == 443
    assert len(uri.session_id) >= 22  # 128 bits, URL-safe base64


def test_sessions_per_connection_bounded(clock):
    r = make_relay(clock)
    r.connection_opened(1, "ws")
    for i in range(20):
        auth(r, 1, ALICE_WS, tid=f"auth{i:04d}")
    assert len(r.sessions_of(1)) == 8


# -- SEND ----------------------------------------------------------------------
def test_send_between_two_ws_clients(relay):
    data = send(to=f"{SA} {SB} {BOB_WS}", frm=ALICE_WS)
    out = relay.received(1, data)
    fwd, ok = sends(out)
    assert fwd.conn_id == 2
    assert fwd.data == send(to=BOB_WS, frm=f"{SB} {SA} {ALICE_WS}")
    assert ok.conn_id == 1 and parse(ok.data).status == 200
    assert parse(ok.data).to_path == (parse_uri(ALICE_WS),)
    assert parse(ok.data).from_path == (parse_uri(SA),)
    # Bob's answer ends the transaction at the relay.
    assert sends(relay.received(2, response(to=SB, frm=BOB_WS))) == []
    assert relay.counters["msrp.pending"] == 0 and relay.counters["msrp.sends_relayed"] == 1
    # And back: Bob answers along the reverse path.
    back = relay.received(2, send(tid="b0000001", to=f"{SB} {SA} {ALICE_WS}", frm=BOB_WS,
                                  body=b"yes"))
    assert sends(back)[0] == SendToConnection(
        1, send(tid="b0000001", to=ALICE_WS, frm=f"{SA} {SB} {BOB_WS}", body=b"yes"))


def test_send_to_tcp_peer_rewrites_paths(relay):
    data = send(to=f"{SA} {BOB}", frm=ALICE_WS, fr="yes", sr="yes")
    fwd, ok = sends(relay.received(1, data))
    assert fwd == SendToPeer(BOB_PEER, send(to=BOB, frm=f"{SA} {ALICE_WS}", fr="yes", sr="yes"))
    assert parse(ok.data).status == 200
    # From the peer toward the client.
    fwd, ok = sends(relay.received(3, send(tid="p0000001", to=f"{SA} {ALICE_WS}", frm=BOB)))
    assert fwd == SendToConnection(1, send(tid="p0000001", to=ALICE_WS, frm=f"{SA} {BOB}"))
    assert ok == SendToConnection(3, b"MSRP p0000001 200 OK\r\nTo-Path: " + BOB.encode() +
                                  b"\r\nFrom-Path: " + SA.encode() + b"\r\n-------p0000001$\r\n")


def test_failure_report_no_and_partial(relay):
    out = relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS, fr="no"))
    assert [type(a) for a in sends(out)] == [SendToPeer]
    assert relay.counters["msrp.pending"] == 0
    out = relay.received(1, send(tid="t0000002", to=f"{SA} {BOB}", frm=ALICE_WS, fr="partial"))
    assert [type(a) for a in sends(out)] == [SendToPeer]  # no 200 for partial
    assert relay.counters["msrp.pending"] == 1


def test_error_response_becomes_failure_report(relay):
    relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS))
    out = relay.received(3, response(status=415, comment="no", to=SA, frm=BOB))
    rep = only(out)
    assert rep.conn_id == 1
    m = parse(rep.data)
    assert m.method == "REPORT"
    assert m.to_path == (parse_uri(ALICE_WS),) and m.from_path == (parse_uri(SA),)
    assert m.message_id == "87652491" and m.byte_range == (1, 23, 23)
    assert m.status_header == (0, 415, "no")
    assert relay.counters["msrp.reports_generated"] == 1


def test_response_from_wrong_connection_ignored(relay):
    relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS))
    assert sends(relay.received(2, response(status=481, to=SA, frm=BOB))) == []
    assert relay.counters["msrp.responses_unmatched"] == 1
    assert relay.counters["msrp.pending"] == 1


def test_timeout_gives_408_report(relay, clock):
    relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS))
    clock.advance(29)
    assert relay.tick() == []
    clock.advance(2)
    m = parse(only(relay.tick()).data)
    assert m.method == "REPORT" and m.status_header[1] == 408
    assert relay.counters["msrp.timeouts"] == 1 and relay.counters["msrp.pending"] == 0


def test_partial_timeout_is_no_failure_but_errors_are(relay, clock):
    relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS, fr="partial"))
    clock.advance(31)
    assert relay.tick() == [] and relay.counters["msrp.pending"] == 0
    relay.received(1, send(tid="t0000002", to=f"{SA} {BOB}", frm=ALICE_WS, fr="partial"))
    m = parse(only(relay.received(3, response("t0000002", 413, "", to=SA, frm=BOB))).data)
    assert m.method == "REPORT" and m.status_header[1] == 413


def test_other_methods_get_the_next_hops_response(relay, clock):
    relay.received(1, request("NICKNAME", "n0000001", f"{SA} {BOB}", ALICE_WS,
                              ["Use-Nickname: \"al\""]))
    out = relay.received(3, response("n0000001", 425, "Nickname in use", to=f"{SA} {ALICE_WS}",
                                     frm=BOB, headers=["X-Kept: 1"]))
    m = parse(only(out).data)
    assert (m.tid, m.status, m.comment) == ("n0000001", 425, "Nickname in use")
    # Back along the reverse path: the relay leaves To-Path and joins From-Path.
    assert m.to_path == (parse_uri(ALICE_WS),)
    assert m.from_path == (parse_uri(SA), parse_uri(BOB))
    assert m.header("X-Kept") == "1"
    relay.received(1, request("NICKNAME", "n0000002", f"{SA} {BOB}", ALICE_WS))
    clock.advance(31)
    m = parse(only(relay.tick()).data)
    assert (m.tid, m.status) == ("n0000002", 408)


# -- REPORT ----------------------------------------------------------------------
def test_report_relayed_and_never_answered(relay):
    rep = request("REPORT", "r0000001", f"{SB} {SA} {ALICE_WS}", BOB_WS,
                  ["Message-ID: 87652491", "Byte-Range: 1-23/23", "Status: 000 200 OK"])
    out = relay.received(2, rep)
    assert sends(out) == [SendToConnection(1, request(
        "REPORT", "r0000001", ALICE_WS, f"{SA} {SB} {BOB_WS}",
        ["Message-ID: 87652491", "Byte-Range: 1-23/23", "Status: 000 200 OK"]))]
    assert relay.counters["msrp.reports_relayed"] == 1
    bad = request("REPORT", "r0000002", f"{RELAY}/nope;tcp {ALICE_WS}", BOB_WS,
                  ["Message-ID: 1", "Status: 000 200 OK"])
    assert sends(relay.received(2, bad)) == []


# -- sessions that do not exist ---------------------------------------------------
def test_unknown_session_481(relay):
    m = parse(only(relay.received(3, send(to=f"{RELAY}/nope;tcp {ALICE_WS}", frm=BOB))).data)
    assert m.status == 481
    # The session id alone is not enough: the whole URI must be the one issued.
    m = parse(only(relay.received(3, send(to=f"msrps://other.example:2855/sessA;tcp {ALICE_WS}",
                                          frm=BOB))).data)
    assert m.status == 481
    # A ws URI of a client elsewhere cannot be reached.
    m = parse(only(relay.received(1, send(to=f"{SA} msrps://x.invalid/z;ws",
                                          frm=ALICE_WS))).data)
    assert m.status == 481


def test_closed_client_481_and_pending_fail(relay):
    relay.received(1, send(to=f"{SA} {SB} {BOB_WS}", frm=ALICE_WS))
    out = relay.connection_closed(2)
    m = parse(only(out).data)
    assert m.method == "REPORT" and m.status_header[1] == 481
    m = parse(only(relay.received(1, send(tid="t0000009", to=f"{SA} {SB} {BOB_WS}",
                                          frm=ALICE_WS))).data)
    assert m.status == 481
    assert relay.sessions_of(2) == [] and len(relay.dump()) == 1


def test_peer_unreachable_fails_pending(relay):
    relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS))
    out = relay.peer_unreachable(BOB_PEER, "connection refused")
    assert parse(only(out).data).status_header[1] == 481
    assert any(isinstance(a, Log) for a in out)


def test_session_expiry(relay, clock):
    clock.advance(1801)
    relay.tick()
    assert relay.dump() == []
    assert parse(only(relay.received(3, send(to=f"{SA} {ALICE_WS}", frm=BOB))).data).status == 481


def test_to_path_ending_at_relay(relay):
    assert parse(only(relay.received(1, send(to=SA, frm=ALICE_WS))).data).status == 403


# -- limits ----------------------------------------------------------------------
def test_chunk_too_big_413(relay):
    m = parse(only(relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS,
                                          body=b"z" * 4097))).data)
    assert m.status == 413
    assert sends(relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS, body=b"z" * 4097,
                                        fr="no"))) == []
    big = request("NICKNAME", "n0000001", f"{SA} {BOB}", ALICE_WS, body=b"n" * 10241)
    assert parse(only(relay.received(1, big)).data).status == 413


def test_backlog_refuses_with_413(relay):
    relay.buffered(BOB_PEER, 2 << 20)
    m = parse(only(relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS))).data)
    assert m.status == 413 and relay.counters["msrp.backlog_refused"] == 1
    relay.buffered(BOB_PEER, 0)
    assert isinstance(sends(relay.received(1, send(to=f"{SA} {BOB}", frm=ALICE_WS)))[0],
                      SendToPeer)


def test_malformed(relay):
    out = relay.received(3, b"garbage\r\n")
    assert sends(out) == [] and relay.counters["msrp.malformed"] == 1
    bad = send(to=f"{SA} {ALICE_WS}", frm=BOB).replace(b"Byte-Range: 1-23/23", b"Byte-Range: x")
    m = parse(only(relay.received(3, bad)).data)
    assert m.status == 400 and m.to_path == (parse_uri(BOB),)
    for _ in range(9):
        out = relay.received(3, b"MSRP x")
    assert isinstance(out[-1], CloseConnection) and out[-1].conn_id == 3
    assert relay.received(99, send()) == [Log("warning", "msrp: message on unknown connection"
                                                         " 99 ignored")]


# -- a file in chunks ---------------------------------------------------------------
def test_one_megabyte_in_chunks(relay):
    blob = bytes(i * 7 % 251 for i in range(1 << 20))
    size, got = 4096, bytearray()
    for n, start in enumerate(range(0, len(blob), size)):
        chunk = blob[start:start + size]
        last = start + size >= len(blob)
        rng = f"{start + 1}-{start + len(chunk)}/{len(blob)}"
        data = send(tid=f"c{n:07d}", to=f"{SA} {SB} {BOB_WS}", frm=ALICE_WS, body=chunk,
                    mid="file0001", rng=rng, flag="$" if last else "+")
        fwd = sends(relay.received(1, data))[0]
        m = parse(fwd.data)
        assert fwd.conn_id == 2 and m.header("Byte-Range") == rng and m.body == chunk
        got += m.body
        relay.received(2, response(f"c{n:07d}", to=SB, frm=BOB_WS))
    assert bytes(got) == blob
    assert relay.counters["msrp.sends_relayed"] == 256
    assert relay.counters["msrp.bytes_relayed"] == 1 << 20
    assert relay.counters["msrp.pending"] == 0
    assert {d["session"]: d["bytes_relayed"] for d in relay.dump()} == {
        "sessA": 1 << 20, "sessB": 1 << 20}


def test_pending_table_bounded(relay, monkeypatch):
    import sipws.msrp.relay as relay_module
    monkeypatch.setattr(relay_module, "MAX_PENDING", 5)
    for i in range(12):
        relay.received(1, send(tid=f"t{i:07d}", to=f"{SA} {BOB}", frm=ALICE_WS))
    assert relay.counters["msrp.pending"] == 5
    assert relay.counters["msrp.pending_evicted"] == 7
    # The newest are kept: a late error for the oldest is unmatched.
    relay.received(3, response("t0000000", 481, "", to=SA, frm=BOB))
    assert relay.counters["msrp.responses_unmatched"] == 1
    assert only(relay.received(3, response("t0000011", 481, "", to=SA, frm=BOB))).conn_id == 1


def test_backlog_table_bounded(relay, monkeypatch):
    import sipws.msrp.relay as relay_module
    monkeypatch.setattr(relay_module, "MAX_BACKLOG_ENTRIES", 3)
    for i in range(10):
        relay.buffered(PeerKey(f"h{i}", 1, False), 100)
    assert len(relay._backlog) == 3


def test_malformed_log_names_connection(relay):
    out = relay.received(2, b"MSRP abcd SEND\r\nTo-Path: x\r\n-------abcd$\r\n")
    assert any(isinstance(a, Log) and "connection 2" in a.text for a in out)
