"""permessage-deflate (RFC 7692) on real sockets: negotiation, relaying, bombs and garbage.

The client side is written by hand (tests/integration/wsclient.py plus zlib), so the
tests can send what no browser would: a message that inflates to megabytes, a
deflate stream that is not one, an offer with parameters sipws must decline.
"""

from __future__ import annotations

import ssl
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from sipws.sip import parse
from sipws.transport import deflate
from sipws.transport.ws_client import WsTarget
from tests.certs import CertificateAuthority
from tests.integration.conftest import WAIT, in_thread, port_of, wait_for
from tests.integration.sipcore import reply, udp_core
from tests.integration.wsclient import RawWs, good_headers

CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"
RSV1 = 4
TAIL = b"\x00\x00\xff\xff"
REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS 4r8ad2k1jv0c.invalid;branch=z9hG4bK4736523\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=q7ulfkbq0h\r\n'
    b"Call-ID: 5hcqb2l9nfdkhl4pd0i1g0\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b'Authorization: Digest algorithm=MD5, username="alice", realm="example.com", '
    b'nonce="Z8xkRmfMY0ZaQ+6C3vcXmqvYhB4Gd4rt", uri="sip:example.com", '
    b'response="0b8c1f6f2a0f9c8e4b0e9d9c4e0b4e1f", qop=auth, cnonce="ofgb6km7b8nh", nc=00000001\r\n'
    b'Contact: <sip:k1r7c2mq@4r8ad2k1jv0c.invalid;transport=ws>;+sip.ice;reg-id=1;'
    b'+sip.instance="<urn:uuid:a3b4c0d2-6f1e-4c8b-9a7d-2e5f6a7b8c9d>";expires=600\r\n'
    b"Expires: 600\r\n"
    b"Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
    b"Supported: path,gruu,outbound\r\n"
    b"User-Agent: JsSIP 3.10.1\r\n"
    b"Content-Length: 0\r\n\r\n"
)
ON = {"ws": {"compression": True}}


def deflated(data: bytes, compressor=None, wbits: int = 15) -> bytes:
    """One message's payload as a permessage-deflate sender writes it (RFC 7692 §7.2.1)."""
    compressor = compressor or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflated(payload: bytes, decompressor=None) -> bytes:
    decompressor = decompressor or zlib.decompressobj(-15)
    return decompressor.decompress(payload + TAIL)


def upgrade(port: int, offer: str | None, tls=None) -> tuple[RawWs, dict[str, str]]:
    client = RawWs(port, tls=tls)
    headers = good_headers()
    if offer is not None:
        headers["Sec-WebSocket-Extensions"] = offer
    status, answer, _ = client.request(headers)
    assert status == 101, status
    return client, answer


def answered(port: int, offer: str | None) -> str | None:
    client, headers = upgrade(port, offer)
    client.shutdown()
    return headers.get("sec-websocket-extensions")


@pytest.fixture
def echo(sipws_factory):
    """A sipws that records each message it is handed and echoes it back."""

    def make(overrides=None):
        root = sipws_factory(overrides)
        root.received = []

        def handler(record, data):
            root.received.append(data)
            record.protocol.send_message(data)

        root.set_message_handler(handler)
        return root

    return make


# ------------------------------------------------------------------ negotiation


@pytest_twisted.inlineCallbacks
def test_off_by_default_and_a_malformed_offer_does_not_fail_the_handshake(sipws_factory):
    root = sipws_factory()
    assert (yield in_thread(answered, port_of(root), CHROMIUM_OFFER)) is None
    # Autobahn alone answered 400 to this (unknown parameter, window 8): RFC 7692 §5 declines.
    for offer in ("permessage-deflate; foo=1", "permessage-deflate; server_max_window_bits=8",
                  "permessage-deflate; client_max_window_bits=99"):
        assert (yield in_thread(answered, port_of(root), offer)) is None, offer
    yield wait_for(lambda: len(root.connections) == 0)


NEGOTIATIONS = [
    # (config, offer, answer)
    ({}, CHROMIUM_OFFER,
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"),
    ({}, "permessage-deflate",  # Firefox: no client_max_window_bits, so none in the answer
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ({"compression_max_window_bits": 10, "compression_no_context_takeover": False}, CHROMIUM_OFFER,
     "permessage-deflate; client_max_window_bits=10"),
    ({"compression_no_context_takeover": False}, "permessage-deflate; server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover"),
    ({}, "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=10; client_max_window_bits=9"),
    ({"compression_max_window_bits": 9}, "permessage-deflate; server_max_window_bits=15",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"),
    # declined offers are skipped, the next acceptable one is answered
    ({}, "permessage-deflate; server_max_window_bits=8, permessage-deflate; bogus, x-webkit-deflate-frame, "
         "permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"),
    ({}, "permessage-deflate; server_max_window_bits=8", None),
    ({}, "permessage-deflate; client_max_window_bits; client_max_window_bits", None),
    ({}, "x-webkit-deflate-frame", None),
]


@pytest.mark.parametrize("config, offer, answer", NEGOTIATIONS)
@pytest_twisted.inlineCallbacks
def test_offer_answered_with_configured_bounds(sipws_factory, config, offer, answer):
    root = sipws_factory({"ws": {"compression": True, **config}})
    client, headers = yield in_thread(upgrade, port_of(root), offer)
    try:
        assert headers.get("sec-websocket-extensions") == answer
        yield wait_for(lambda: len(root.connections) == 1)
        record = next(iter(root.connections))
        # ws.dump's entry says what was negotiated
        assert record.as_dict(0.0)["extensions"] == (answer or "")
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_wss_section_has_its_own_switch(sipws_factory):
    root = sipws_factory({"wss": {"compression": True}})  # ws stays off
    assert (yield in_thread(answered, port_of(root), CHROMIUM_OFFER)) is None


@pytest_twisted.inlineCallbacks
def test_wss_compresses_with_its_own_bounds(echo, tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", ["127.0.0.1"])
    root = echo({"ws": {"listen": []},
                 "wss": {"listen": ["127.0.0.1:0"], "certificate": server.cert, "private_key": server.key,
                         "compression": True, "compression_max_window_bits": 10}})
    context = ssl.create_default_context(cafile=ca.path)
    client, headers = yield in_thread(upgrade, port_of(root, "wss"), CHROMIUM_OFFER, context)
    client.shutdown()
    assert headers["sec-websocket-extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10")
    echoes = yield in_thread(exchange, port_of(root, "wss"), [REGISTER], CHROMIUM_OFFER, 10, False, context)
    assert echoes == [(RSV1, REGISTER)] and root.received == [REGISTER]


# ------------------------------------------------------------------ messages


def exchange(port: int, messages: list[bytes], offer: str, wbits: int, takeover: bool,
             tls=None) -> list[tuple[int, bytes]]:
    """Sends each message compressed, reads each echo; (RSV bits, inflated payload) per echo."""
    client, headers = upgrade(port, offer, tls)
    try:
        assert headers.get("sec-websocket-extensions", "").startswith("permessage-deflate")
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits) if takeover else None
        decompressor = zlib.decompressobj(-15) if takeover else None
        echoes = []
        for message in messages:
            client.send_frame(0x1, deflated(message, compressor, wbits), rsv=RSV1)
            _, opcode, payload = client.read_frame()
            rsv = client.last_rsv
            echoes.append((rsv, inflated(payload, decompressor) if rsv == RSV1 else payload))
        client.close()
        client.expect_close()
        return echoes
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_compressed_register_is_handed_over_intact_and_answered_compressed(echo):
    root = echo(ON)
    echoes = yield in_thread(exchange, port_of(root), [REGISTER, REGISTER], CHROMIUM_OFFER, 12, False)
    assert root.received == [REGISTER, REGISTER]
    assert echoes == [(RSV1, REGISTER), (RSV1, REGISTER)]
    record_bytes = root.stats.get("ws.deflate_raw_bytes_in")
    assert record_bytes == 2 * len(REGISTER)
    assert root.stats.get("ws.deflate_messages_in") == 2 and root.stats.get("ws.deflate_messages_out") == 2
    assert 0 < root.stats.get("ws.deflate_wire_bytes_in") < 2 * len(REGISTER)
    assert 0 < root.stats.get("ws.deflate_wire_bytes_out") < 2 * len(REGISTER)


def send_compressed(client: RawWs, message: bytes) -> None:
    client.send_frame(0x1, deflated(message, wbits=12), rsv=RSV1)


def read_inflated(client: RawWs) -> tuple[int, bytes]:
    _, _, payload = client.read_frame()
    return client.last_rsv, inflated(payload) if client.last_rsv == RSV1 else payload


@pytest_twisted.inlineCallbacks
def test_compressed_register_is_relayed_to_the_core_and_its_200_comes_back_compressed(sipws_factory):
    core = udp_core()
    try:
        root = sipws_factory({"ws": {"compression": True},
                              "sip": {"listen": ["udp:127.0.0.1:0"],
                                      "upstream": f"sip:127.0.0.1:{core.number};transport=udp"}})
        client, _ = yield in_thread(upgrade, port_of(root), CHROMIUM_OFFER)
        yield in_thread(send_compressed, client, REGISTER)
        request, raw, source = yield core.next()
        # what the core gets is the browser's REGISTER, plus sipws's Via and Path
        assert request.method == "REGISTER" and request.get("call-id") == "5hcqb2l9nfdkhl4pd0i1g0"
        assert request.get("authorization") == parse(REGISTER).get("authorization")
        assert len(request.vias) == 2 and request.vias[1].host == "4r8ad2k1jv0c.invalid"
        assert len(request.paths) == 1
        core.send(reply(request, extra="Contact: <sip:k1r7c2mq@4r8ad2k1jv0c.invalid;transport=ws>;expires=600"),
                  source)
        rsv, answer = yield in_thread(read_inflated, client)
        assert rsv == RSV1
        response = parse(answer)
        assert response.status == 200 and [v.host for v in response.vias] == ["4r8ad2k1jv0c.invalid"]
        client.shutdown()
    finally:
        yield core.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_context_takeover_when_configured(echo):
    """Both sides keep their LZ77 window: the second REGISTER costs a fraction of the first."""
    root = echo({"ws": {"compression": True, "compression_no_context_takeover": False}})
    sizes = []
    original = deflate.BoundedDeflate.end_compress_message

    def spy(self):
        out = original(self)
        sizes.append(self._compressor is not None)
        return out

    deflate.BoundedDeflate.end_compress_message = spy
    try:
        echoes = yield in_thread(exchange, port_of(root), [REGISTER] * 3, CHROMIUM_OFFER, 12, True)
    finally:
        deflate.BoundedDeflate.end_compress_message = original
    assert root.received == [REGISTER] * 3
    assert echoes == [(RSV1, REGISTER)] * 3  # read with one inflater kept across messages
    assert sizes == [True, True, True]  # the compressor is kept
    wire = root.stats.get("ws.deflate_wire_bytes_in")
    assert wire < len(deflated(REGISTER, wbits=12)) * 2  # 3 messages cost less than 2 fresh ones


@pytest_twisted.inlineCallbacks
def test_without_context_takeover_no_zlib_stream_is_kept_between_messages(echo):
    root = echo(ON)
    client, _ = yield in_thread(upgrade, port_of(root), CHROMIUM_OFFER)
    try:
        yield in_thread(client.send_frame, 0x1, deflated(REGISTER, wbits=12), rsv=RSV1)
        yield wait_for(lambda: root.received == [REGISTER])
        yield in_thread(client.read_frame)
        record = next(iter(root.connections))
        processor = record.protocol._perMessageCompress
        assert isinstance(processor, deflate.BoundedDeflate)
        # an idle connection holds no zlib memory (Autobahn alone keeps both streams)
        assert processor._compressor is None and processor._decompressor is None
    finally:
        client.shutdown()


# ------------------------------------------------------------------ bad input


def refused(port: int, frames: list[dict], offer: str = CHROMIUM_OFFER) -> tuple[int | None, str]:
    client, _ = upgrade(port, offer)
    try:
        for frame in frames:
            client.send_frame(**frame)
        return client.expect_close()
    finally:
        client.shutdown()


@pytest.mark.parametrize("frames", [1, 14], ids=["one frame", "fragmented"])
@pytest_twisted.inlineCallbacks
def test_zip_bomb_is_refused_with_1009_without_inflating_it(echo, sipws_log, frames):
    """10 MB of zeros deflate to about 10 KB: the message is refused once its inflated
    size passes max_message_size, and no inflation step ever produced more than that."""
    root = echo({"ws": {"compression": True, "max_message_size": 65535, "max_msg_chunks": 16}})
    # Fragmented: 13 frames of 5,000 inflated bytes each (65,000, within the limit), then the
    # bomb as the last frame; nothing follows the frame that is refused, so the client reads
    # the Close instead of writing into a closed socket.
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12)
    parts = [compressor.compress(b"\x00" * 5000) + compressor.flush(zlib.Z_SYNC_FLUSH) for _ in range(frames - 1)]
    parts.append(deflated(b"\x00" * 10_000_000, compressor))
    assert all(len(part) < 65535 for part in parts)
    sent = [dict(opcode=0x1 if i == 0 else 0x0, payload=part, fin=i == len(parts) - 1, rsv=RSV1 if i == 0 else 0)
            for i, part in enumerate(parts)]
    outputs = []
    original = deflate.BoundedDeflate.decompress_message_data

    def spy(self, data, max_output_len=None):
        try:
            out = original(self, data, max_output_len)
        except Exception:
            outputs.append(max_output_len)
            raise
        outputs.append(len(out))
        return out

    deflate.BoundedDeflate.decompress_message_data = spy
    try:
        code, reason = yield in_thread(refused, port_of(root), sent)
    finally:
        deflate.BoundedDeflate.decompress_message_data = original
    assert code == 1009, reason
    assert "decompression" in reason or "exceeds" in reason, reason
    assert root.received == []
    assert outputs and max(outputs) <= 65535, outputs
    yield wait_for(lambda: len(root.connections) == 0)
    closed = [line for line in sipws_log if line.startswith("closed #") and "code=1009" in line]
    assert len(closed) == 1 and "127.0.0.1:" in closed[0] and "side=local" in closed[0], sipws_log


GARBAGE = [
    ("not deflate", [dict(opcode=0x1, payload=b"\xff\xfe\xfd\xfc" * 8, rsv=RSV1)]),
    ("stored block with a bad length check", [dict(opcode=0x1, payload=b"\x00\x05\x00\x00\x00hello", rsv=RSV1)]),
]


@pytest.mark.parametrize("name, frames", GARBAGE, ids=[g[0] for g in GARBAGE])
@pytest_twisted.inlineCallbacks
def test_malformed_deflate_data_closes_with_1007_and_a_log_line(echo, sipws_log, name, frames):
    root = echo(ON)
    code, reason = yield in_thread(refused, port_of(root), frames)
    assert code == 1007, (code, reason)
    assert root.received == []
    yield wait_for(lambda: len(root.connections) == 0)
    closed = [line for line in sipws_log if line.startswith("closed #") and "code=1007" in line]
    assert len(closed) == 1 and "cannot be decompressed" in closed[0], sipws_log
    assert not any("Traceback" in line or "Unhandled" in line for line in sipws_log)


PROTOCOL_ERRORS = [
    ("RSV1 on a continuation frame", [dict(opcode=0x1, payload=deflated(b"ab"), fin=False, rsv=RSV1),
                                      dict(opcode=0x0, payload=b"x", rsv=RSV1)], CHROMIUM_OFFER),
    ("RSV1 on a Ping", [dict(opcode=0x9, payload=b"x", rsv=RSV1)], CHROMIUM_OFFER),
    ("RSV1 without the extension", [dict(opcode=0x1, payload=deflated(b"ab"), rsv=RSV1)], None),
]


@pytest.mark.parametrize("name, frames, offer", PROTOCOL_ERRORS, ids=[p[0] for p in PROTOCOL_ERRORS])
@pytest_twisted.inlineCallbacks
def test_misplaced_compression_bit_is_a_protocol_error(echo, name, frames, offer):
    root = echo(ON)
    code, _ = yield in_thread(refused, port_of(root), frames, offer)
    assert code == 1002
    assert root.received == []


# ------------------------------------------------------------------ client role


class Capture(protocol.Protocol):
    """Records the upgrade request sipws sends, then closes."""

    def dataReceived(self, data):
        self.factory.heads.append(data)
        self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_client_role_offers_the_configured_bounds_only_when_on(sipws_factory):
    heads = []
    factory = protocol.Factory.forProtocol(Capture)
    factory.heads = heads
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        for overrides, offer in (
            ({}, None),
            (ON, "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
                 "server_no_context_takeover; server_max_window_bits=12"),
            ({"ws": {"compression": True, "compression_no_context_takeover": False,
                     "compression_max_window_bits": 10}},
             "permessage-deflate; client_max_window_bits; server_max_window_bits=10"),
        ):
            del heads[:]
            dialler = sipws_factory({"ws": {"listen": [], **overrides.get("ws", {})}})
            sent = dialler.ws_client.send(WsTarget("127.0.0.1", listener.getHost().port, False, "/"), REGISTER)
            yield defer.DeferredList([sent.addTimeout(WAIT, reactor)], consumeErrors=True)
            assert len(heads) == 1
            lines = heads[0].decode().split("\r\n")
            found = [line.split(":", 1)[1].strip() for line in lines
                     if line.lower().startswith("sec-websocket-extensions:")]
            assert found == ([offer] if offer else []), lines
    finally:
        yield listener.stopListening()


@pytest.mark.parametrize("takeover", [False, True])
@pytest_twisted.inlineCallbacks
def test_sipws_dialling_sipws_compresses_both_ways(sipws_factory, takeover):
    settings = {"compression": True, "compression_no_context_takeover": not takeover}
    server = sipws_factory({"ws": settings})
    server.received = []
    server.set_message_handler(lambda record, data: server.received.append((record, data)))
    dialler = sipws_factory({"ws": {"listen": [], **settings}})
    dialler.received = []
    dialler.set_message_handler(lambda record, data: dialler.received.append(data))
    where = WsTarget("127.0.0.1", port_of(server), False, "/")
    record = yield dialler.ws_client.send(where, REGISTER).addTimeout(WAIT, reactor)
    yield dialler.ws_client.send(where, REGISTER).addTimeout(WAIT, reactor)
    yield wait_for(lambda: len(server.received) == 2)
    server_record = server.received[0][0]
    expected = ("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12" if takeover else
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=12; client_max_window_bits=12")
    assert record.extensions == server_record.extensions == expected
    assert [data for _, data in server.received] == [REGISTER, REGISTER]
    for _ in range(2):
        server_record.protocol.send_message(REGISTER.replace(b"REGISTER sip:", b"NOTIFY sip:", 1))
    yield wait_for(lambda: len(dialler.received) == 2)
    assert dialler.received == [REGISTER.replace(b"REGISTER sip:", b"NOTIFY sip:", 1)] * 2
    assert server.stats.get("ws.deflate_messages_in") == 2 and dialler.stats.get("ws.deflate_messages_in") == 2
    processor = record.protocol._perMessageCompress
    assert isinstance(processor, deflate.BoundedDeflate)
    assert (processor._compressor is None) is (not takeover)


@pytest_twisted.inlineCallbacks
def test_dialling_a_server_without_compression_opens_uncompressed(sipws_factory):
    """Kamailio, OpenSIPS and sipws with compression off ignore the offer: no extension, plain frames."""
    server = sipws_factory()
    server.received = []
    server.set_message_handler(lambda record, data: server.received.append((record, data)))
    dialler = sipws_factory({"ws": {"listen": [], "compression": True}})
    record = yield dialler.ws_client.send(WsTarget("127.0.0.1", port_of(server), False, "/"),
                                          REGISTER).addTimeout(WAIT, reactor)
    yield wait_for(lambda: server.received)
    assert record.extensions == "" and server.received[0][0].extensions == ""
    assert record.protocol._perMessageCompress is None
    assert server.received[0][1] == REGISTER and server.stats.get("ws.deflate_messages_in") == 0
