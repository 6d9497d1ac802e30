"""MSRP over WebSocket (RFC 7977) through a real sipws on 127.0.0.1: subprotocol
negotiation, AUTH, two clients exchanging a message and a 1 MB file with success
reports, and the refusals (400, 413, 481, malformed input)."""

from __future__ import annotations

import hashlib
import os
import ssl

import pytest
import pytest_twisted

from sipws.admin import methods
from tests.certs import CertificateAuthority
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.msrp_client import MsrpWs, build_request, build_response, relay_uri, tid
from tests.integration.wsclient import RawWs, good_headers

#: Body bytes per chunk of the 1 MB file (RFC 4975 lets the sender choose).
FILE_CHUNK = 32 * 1024
FILE_SIZE = 1024 * 1024

INSECURE = {"ws": {"subprotocols": ["sip", "msrp"]}, "msrp": {"allow_insecure": True}}


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("server", ["127.0.0.1", "localhost"])


def wss_msrp(server) -> dict:
    return {"ws": {"listen": []},
            "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert, "private_key": server.key,
                    "subprotocols": ["sip", "msrp"]}}


# -- the handshake ------------------------------------------------------------------------


def offer(port: int, protocols: str) -> tuple[int, dict[str, str]]:
    client = RawWs(port)
    try:
        status, headers, _ = client.request(headers=good_headers(protocol=protocols))
        return status, headers
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_msrp_offered_where_only_sip_is_enabled_gets_400_naming_sip(sipws_factory, sipws_log):
    root = sipws_factory()
    status, headers = yield in_thread(offer, port_of(root), "msrp")
    assert status == 400 and headers["sec-websocket-protocol"] == "sip"
    refused = [line for line in sipws_log if "handshake refused from 127.0.0.1:" in line]
    assert refused and "no enabled subprotocol offered (offered msrp, enabled sip)" in refused[0]


@pytest_twisted.inlineCallbacks
def test_the_clients_first_enabled_offer_is_chosen_and_shown(sipws_factory):
    root = sipws_factory(INSECURE)
    port = port_of(root)
    status, headers = yield in_thread(offer, port, "msrp, sip")
    assert status == 101 and headers["sec-websocket-protocol"] == "msrp"
    status, headers = yield in_thread(offer, port, "foo, sip, msrp")
    assert status == 101 and headers["sec-websocket-protocol"] == "sip"
    status, headers = yield in_thread(offer, port, "msrps, xmsrp")
    assert status == 400 and headers["sec-websocket-protocol"] == "sip, msrp"


@pytest_twisted.inlineCallbacks
def test_an_msrp_connection_shows_its_subprotocol_and_sessions_in_ws_dump(sipws_factory):
    root = sipws_factory(INSECURE)
    client = MsrpWs(port_of(root), "alice")
    try:
        yield in_thread(client.open)
        answer = yield in_thread(client.auth, relay_uri(port_of(root), tls=False))
        assert answer.status == 200
        dump = methods.ws_dump(root)["connections"]
        [entry] = dump
        assert entry["subprotocol"] == "msrp"
        [session] = entry["msrp_sessions"]
        assert session["uri"] == answer.header("Use-Path") and session["client_uri"] == client.uri
        stats = methods.stats(root)
        assert stats["msrp"]["msrp.auth_ok"] == 1 and stats["counters"]["msrp.ws_messages_in"] == 1
    finally:
        client.shutdown()


# -- AUTH ---------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_auth_is_answered_with_a_use_path_naming_sipws_and_an_expires(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(wss_msrp(server))
    port = port_of(root, "wss")
    # the TLS handshake blocks: in the thread, like every exchange
    client = yield in_thread(MsrpWs, port, "alice", tls=ssl.create_default_context(cafile=ca.path))
    try:
        headers = yield in_thread(client.open)
        assert headers["sec-websocket-protocol"] == "msrp"
        answer = yield in_thread(client.auth, relay_uri(port, tls=True), 600)
        assert answer.status == 200, answer
        use_path = answer.header("Use-Path")
        # RFC 7977 §8.1.1 / RFC 4976: msrps://HOST:PORT/SESSION;tcp, the wss listener by default
        assert use_path.startswith(f"msrps://127.0.0.1:{port}/") and use_path.endswith(";tcp"), use_path
        assert answer.header("Expires") == "600"
        assert answer.path("To-Path") == [client.uri]
    finally:
        client.shutdown()


# -- two clients ---------------------------------------------------------------------------------


def send_chunks(sender: MsrpWs, to_path: list[str], message_id: str, body: bytes, chunk: int,
                content_type: str) -> list[str]:
    """SEND ``body`` in chunks; returns the transaction ids."""
    tids = []
    total = len(body)
    for start in range(0, total, chunk):
        piece = body[start:start + chunk]
        last = start + len(piece) >= total
        transaction = tid()
        tids.append(transaction)
        sender.send_msrp(build_request(
            "SEND", transaction, to_path, [sender.uri],
            [("Message-ID", message_id), ("Success-Report", "yes"), ("Failure-Report", "yes"),
             ("Byte-Range", f"{start + 1}-{start + len(piece)}/{total}"), ("Content-Type", content_type)],
            piece, "$" if last else "+"))
    return tids


def receive_message(receiver: MsrpWs, message_id: str, total: int) -> tuple[bytes, list, list[str]]:
    """Read SENDs of one message, answer each 200, send the success REPORT; returns
    (body, opcodes, the From-Path of the last chunk)."""
    body = bytearray(total)
    received = 0
    opcodes = []
    from_path: list[str] = []
    while received < total:
        opcode, msg = receiver.read_msrp()
        if msg.method != "SEND":
            continue
        assert msg.header("Message-ID") == message_id
        assert msg.path("To-Path") == [receiver.uri]
        opcodes.append(opcode)
        start, _, rest = msg.header("Byte-Range").partition("-")
        body[int(start) - 1:int(start) - 1 + len(msg.body)] = msg.body
        received += len(msg.body)
        from_path = msg.path("From-Path")
        receiver.send_msrp(build_response(msg.tid, 200, "OK", from_path[0], receiver.uri))
    receiver.send_msrp(build_request(
        "REPORT", tid(), from_path, [receiver.uri],
        [("Message-ID", message_id), ("Byte-Range", f"1-{total}/{total}"), ("Status", "000 200 OK")]))
    return bytes(body), opcodes, from_path


def expect_report(sender: MsrpWs, message_id: str, tids: list[str]) -> tuple[set[str], object]:
    """Read the relay's 200s for every SEND, then the success REPORT."""
    answered: set[str] = set()
    while True:
        _, msg = sender.read_msrp()
        if msg.status is not None:
            assert msg.status == 200, msg
            answered.add(msg.tid)
            continue
        if msg.method == "REPORT":
            assert msg.header("Message-ID") == message_id
            return answered, msg


@pytest_twisted.inlineCallbacks
def test_two_wss_clients_exchange_a_message_and_a_1mb_file_with_success_reports(sipws_factory, pki):
    ca, server = pki
    root = sipws_factory(wss_msrp(server))
    port = port_of(root, "wss")
    context = ssl.create_default_context(cafile=ca.path)
    alice = yield in_thread(MsrpWs, port, "alice", tls=context)
    bob = yield in_thread(MsrpWs, port, "bob", tls=context)
    relay = relay_uri(port, tls=True)

    def setup():
        for client in (alice, bob):
            client.open()
            assert client.auth(relay).status == 200
    try:
        yield in_thread(setup)
        # What each puts in its SDP a=path: its Use-Path, then its own URI.
        to_alice = [bob.use_path, alice.use_path, alice.uri]

        # a text message
        tids = send_chunks(bob, to_alice, "msg-1", "Hello Alice ☺".encode(), FILE_CHUNK, "text/plain")
        body, opcodes, from_path = yield in_thread(receive_message, alice, "msg-1", len("Hello Alice ☺".encode()))
        assert body.decode() == "Hello Alice ☺" and opcodes == [0x1]  # UTF-8 goes as a text frame
        assert from_path == [alice.use_path, bob.use_path, bob.uri]
        answered, report = yield in_thread(expect_report, bob, "msg-1", tids)
        assert answered == set(tids)
        assert report.header("Status") == "000 200 OK" and report.path("To-Path") == [bob.uri]

        # a 1 MB file in 32 KiB chunks of binary data
        data = os.urandom(FILE_SIZE)
        tids = send_chunks(bob, to_alice, "file-1", data, FILE_CHUNK, "application/octet-stream")
        body, opcodes, _ = yield in_thread(receive_message, alice, "file-1", FILE_SIZE)
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        assert len(opcodes) == FILE_SIZE // FILE_CHUNK and 0x2 in opcodes  # binary frames for binary chunks
        answered, report = yield in_thread(expect_report, bob, "file-1", tids)
        assert answered == set(tids) and report.header("Byte-Range") == f"1-{FILE_SIZE}/{FILE_SIZE}"
        counters = root.msrp.relay.counters
        assert counters["msrp.sends_relayed"] == 1 + FILE_SIZE // FILE_CHUNK
        assert counters["msrp.reports_relayed"] == 2
        assert counters["msrp.bytes_relayed"] >= FILE_SIZE
    finally:
        alice.shutdown()
        bob.shutdown()


# -- refusals ------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_chunk_over_max_chunk_size_gets_413(sipws_factory):
    root = sipws_factory({**INSECURE, "msrp": {"allow_insecure": True, "max_chunk_size": 4096}})
    client = MsrpWs(port_of(root), "alice")

    def run():
        client.open()
        assert client.auth(relay_uri(port_of(root), tls=False)).status == 200
        transaction = tid()
        client.send_msrp(build_request("SEND", transaction, [client.use_path, "msrp://127.0.0.1:9/x;tcp"],
                                       [client.uri], [("Message-ID", "big"), ("Byte-Range", "1-5000/5000"),
                                                      ("Content-Type", "text/plain")], b"x" * 5000))
        _, answer = client.read_msrp()
        return transaction, answer
    try:
        transaction, answer = yield in_thread(run)
        assert answer.tid == transaction and answer.status == 413
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_a_message_over_the_websocket_limit_is_closed_1009(sipws_factory):
    root = sipws_factory({**INSECURE, "msrp": {"allow_insecure": True, "max_chunk_size": 4096}})
    client = MsrpWs(port_of(root), "alice")
    limit = root.msrp.limits.max_message_size

    def run():
        client.open()
        client.send_frame(0x2, b"MSRP x SEND\r\n" + b"x" * limit)
        return client.expect_close()
    try:
        code, _ = yield in_thread(run)
        assert code == 1009
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_unknown_session_gets_481(sipws_factory):
    root = sipws_factory(INSECURE)
    port = port_of(root)
    client = MsrpWs(port, "alice")

    def run():
        client.open()
        assert client.auth(relay_uri(port, tls=False)).status == 200
        transaction = tid()
        client.send_msrp(build_request("SEND", transaction, [f"msrp://127.0.0.1:{port}/nosuchsession;tcp", "msrp://b.invalid/x;ws"],
                                       [client.uri], [("Message-ID", "m"), ("Byte-Range", "1-2/2"),
                                                      ("Content-Type", "text/plain")], b"hi"))
        _, answer = client.read_msrp()
        return transaction, answer
    try:
        transaction, answer = yield in_thread(run)
        assert answer.tid == transaction and answer.status == 481
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_malformed_msrp_gets_400_and_a_log_line_naming_the_source(sipws_factory, sipws_log):
    root = sipws_factory(INSECURE)
    port = port_of(root)
    client = MsrpWs(port, "alice")

    def run():
        client.open()
        # readable start line and paths, a broken header line: answerable with 400
        client.send_msrp(b"MSRP abcd1234 SEND\r\nTo-Path: msrp://127.0.0.1:1/s;tcp\r\n"
                         b"From-Path: msrp://a.invalid:2855/x;ws\r\nno colon here\r\n-------abcd1234$\r\n")
        _, answer = client.read_msrp()
        # unreadable: no answer, and after enough of them the connection is closed
        for _ in range(20):
            client.send_msrp(b"GARBAGE\r\n\r\n")
        return answer, client.expect_close()
    try:
        answer, (code, _) = yield in_thread(run)
        assert answer.tid == "abcd1234" and answer.status == 400
        assert code == 1002
        lines = [line for line in sipws_log if "malformed" in line]
        assert lines and all("127.0.0.1:" in line for line in lines), lines
        assert root.msrp.relay.counters["msrp.malformed"] >= 11
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_crlf_is_not_a_keepalive_on_msrp_connections(sipws_factory):
    """RFC 7118's CRLF keep-alive is SIP's: on an msrp connection it is (malformed) MSRP."""
    root = sipws_factory(INSECURE)
    client = MsrpWs(port_of(root), "alice")
    try:
        yield in_thread(client.open)
        yield in_thread(client.send_text, b"\r\n\r\n")
        yield wait_for(lambda: root.msrp.relay.counters["msrp.malformed"] == 1)
        assert root.stats.get("ws.crlf_keepalives") == 0
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_a_closed_client_leaves_no_session_and_its_peer_gets_481(sipws_factory):
    root = sipws_factory(INSECURE)
    port = port_of(root)
    alice, bob = MsrpWs(port, "alice"), MsrpWs(port, "bob")

    def setup():
        for client in (alice, bob):
            client.open()
            assert client.auth(relay_uri(port, tls=False)).status == 200
    try:
        yield in_thread(setup)
        assert len(root.msrp.relay.dump()) == 2
        alice.close()
        yield wait_for(lambda: len(root.connections) == 1)
        assert len(root.msrp.relay.dump()) == 1

        def send():
            transaction = tid()
            bob.send_msrp(build_request("SEND", transaction, [bob.use_path, alice.use_path, alice.uri], [bob.uri],
                                        [("Message-ID", "m"), ("Byte-Range", "1-2/2"), ("Content-Type", "text/plain")],
                                        b"hi"))
            _, answer = bob.read_msrp()
            return transaction, answer
        transaction, answer = yield in_thread(send)
        assert answer.tid == transaction and answer.status == 481
    finally:
        alice.shutdown()
        bob.shutdown()


#: Chunks a sender may send toward a receiver that reads nothing before the relay must refuse.
BACKLOG_TRIES = 600


@pytest_twisted.inlineCallbacks
def test_a_receiver_that_stops_reading_gets_chunks_refused_with_413(sipws_factory):
    """Back-pressure: bytes waiting toward a stalled WebSocket client are reported to the relay,
    which refuses further SENDs toward it (413) instead of buffering without bound."""
    root = sipws_factory({**INSECURE, "msrp": {"allow_insecure": True, "max_backlog": 65536}})
    port = port_of(root)
    alice, bob = MsrpWs(port, "alice"), MsrpWs(port, "bob")

    def run():
        for client in (alice, bob):
            client.open()
            assert client.auth(relay_uri(port, tls=False)).status == 200
        chunk = b"z" * FILE_CHUNK
        total = FILE_CHUNK * BACKLOG_TRIES
        for index in range(BACKLOG_TRIES):  # bob reads nothing from here on
            start = index * FILE_CHUNK
            alice.send_msrp(build_request(
                "SEND", tid(), [alice.use_path, bob.use_path, bob.uri], [alice.uri],
                [("Message-ID", "flood"), ("Byte-Range", f"{start + 1}-{start + FILE_CHUNK}/{total}"),
                 ("Content-Type", "application/octet-stream")], chunk, "+"))
            _, answer = alice.read_msrp()
            if answer.status != 200:
                return index, answer
        return BACKLOG_TRIES, None
    try:
        sent, answer = yield in_thread(run)
        assert answer is not None, "no refusal after %d chunks" % sent
        assert answer.status == 413
        assert root.msrp.relay.counters["msrp.backlog_refused"] >= 1
    finally:
        alice.shutdown()
        bob.shutdown()


@pytest_twisted.inlineCallbacks
def test_require_auth_takes_the_identity_from_the_handshake(sipws_factory):
    """[msrp] require_auth: AUTH is challenged (401 Digest) on a connection no [auth]
    credentials authenticated, 200 (the session bound to the identity) on one they did."""
    from tests.integration.test_auth import SECRET, hmac_path

    root = sipws_factory({**INSECURE, "msrp": {"allow_insecure": True, "require_auth": True},
                          "auth": {"hmac_secrets": [SECRET]}})  # [auth] required = false: anonymous allowed in
    port = port_of(root)
    anonymous, alice = MsrpWs(port, "anon"), MsrpWs(port, "alice")

    def run():
        anonymous.upgrade(headers=good_headers(protocol="msrp"))
        refused = anonymous.auth(relay_uri(port, tls=False))
        alice.upgrade(headers=good_headers(protocol="msrp"), path=hmac_path("alice@example.com"))
        accepted = alice.auth(relay_uri(port, tls=False))
        return refused, accepted
    try:
        refused, accepted = yield in_thread(run)
        assert refused.status == 401 and refused.all("WWW-Authenticate")
        assert accepted.status == 200
        [session] = root.msrp.relay.dump()
        assert session["identity"] == "alice@example.com"
    finally:
        anonymous.shutdown()
        alice.shutdown()
