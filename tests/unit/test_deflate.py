"""permessage-deflate negotiation (RFC 7692 §5, §7.1) and the bounded processor, in memory."""

from __future__ import annotations

import zlib

import pytest
from autobahn.websocket.compress_deflate import PerMessageDeflateResponse
from autobahn.websocket.protocol import WebSocketProtocol

from sipws.config import ConfigError, config_from_dict
from sipws.transport import deflate
from sipws.transport.deflate import DeflateSettings, NegotiationError

DEFAULTS = DeflateSettings(enabled=True, max_window_bits=12, no_context_takeover=True, mem_level=5,
                           max_message_size=65535)
TAKEOVER = DeflateSettings(enabled=True, max_window_bits=12, no_context_takeover=False, mem_level=5,
                           max_message_size=65535)


def offers(header: str):
    """What Autobahn's header parser makes of a Sec-WebSocket-Extensions value."""
    return WebSocketProtocol._parseExtensionsHeader(None, header)


def answer(header: str, settings: DeflateSettings = DEFAULTS):
    agreement, declined = deflate.accept_offer(offers(header), settings)
    return agreement, declined


def test_config_keys_defaults_and_bounds():
    ws = config_from_dict({}).ws
    assert (ws.compression, ws.compression_max_window_bits, ws.compression_no_context_takeover,
            ws.compression_mem_level) == (False, 12, True, 5)
    assert config_from_dict({"wss": {"compression": True}}).wss.compression is True
    for key, value, problem in (("compression", "yes", "must be"), ("compression_max_window_bits", 8, "zlib"),
                                ("compression_max_window_bits", 16, "<= 15"), ("compression_mem_level", 0, ">= 1"),
                                ("compression_no_context_takeover", 1, "must be")):
        for section in ("ws", "wss"):
            with pytest.raises(ConfigError) as info:
                config_from_dict({section: {key: value}})
            assert str(info.value).startswith(f"config: [{section}] {key}: ") and problem in str(info.value)


@pytest.mark.parametrize("header, settings, local, remote, local_bits, remote_bits", [
    ("permessage-deflate; client_max_window_bits", DEFAULTS, True, True, 12, 12),
    ("permessage-deflate", DEFAULTS, True, True, 12, 15),  # the client may use 15: the inflater must too
    ("permessage-deflate; client_max_window_bits", TAKEOVER, False, False, 12, 12),
    ("permessage-deflate; client_no_context_takeover", TAKEOVER, False, True, 12, 15),
    ("permessage-deflate; server_max_window_bits=10", TAKEOVER, False, False, 10, 15),
    # a zlib peer told 8 compresses with 9: sipws inflates with at least 9
    ("permessage-deflate; client_max_window_bits=8", DEFAULTS, True, True, 12, 9),
    ('permessage-deflate; server_max_window_bits="11"', DEFAULTS, True, True, 11, 15),
])
def test_agreement(header, settings, local, remote, local_bits, remote_bits):
    agreement, _ = answer(header, settings)
    assert (agreement.local_no_context_takeover, agreement.remote_no_context_takeover,
            agreement.local_window_bits, agreement.remote_window_bits) == (local, remote, local_bits, remote_bits)


@pytest.mark.parametrize("header, why", [
    ("permessage-deflate; server_max_window_bits=8", "zlib cannot compress"),
    ("permessage-deflate; server_max_window_bits", "needs a value"),
    ("permessage-deflate; server_max_window_bits=07", "not a window size"),
    ("permessage-deflate; client_max_window_bits=16", "not a window size"),
    ("permessage-deflate; server_no_context_takeover=1", "takes no value"),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", "more than once"),
    ("permessage-deflate; mux", "unknown parameter"),
])
def test_offers_rfc7692_says_to_decline(header, why):
    agreement, declined = answer(header)
    assert agreement is None and len(declined) == 1 and why in declined[0], declined


def test_client_offer_and_response_checks():
    assert deflate.client_offer(DEFAULTS).get_extension_string() == (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover; server_max_window_bits=12")
    assert deflate.client_offer(TAKEOVER).get_extension_string() == (
        "permessage-deflate; client_max_window_bits; server_max_window_bits=12")
    accept = deflate.ClientAccept(DEFAULTS, "ws://x/")
    good = PerMessageDeflateResponse.parse({"server_max_window_bits": ["10"], "client_max_window_bits": ["9"],
                                            "server_no_context_takeover": [True]})
    accepted = accept(good)
    assert accepted.window_bits == 9 and accepted.no_context_takeover is True and accepted.mem_level == 5
    assert accept(PerMessageDeflateResponse.parse({"server_max_window_bits": ["13"]})) is None
    with pytest.raises(NegotiationError):
        deflate.check_response(PerMessageDeflateResponse.parse({"server_max_window_bits": ["15"]}), DEFAULTS)


@pytest.mark.parametrize("settings", [DEFAULTS, TAKEOVER], ids=["no context takeover", "context takeover"])
def test_processor_round_trip_and_stream_lifetime(settings):
    counts: dict[str, int] = {}

    def count(name, amount):
        counts[name] = counts.get(name, 0) + amount

    agreement, _ = answer("permessage-deflate; client_max_window_bits", settings)
    server = agreement.processor(True, settings, count)
    message = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS a.invalid\r\n\r\n" * 4
    peer_out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12)
    peer_in = zlib.decompressobj(-15)
    for _ in range(2):
        if settings.no_context_takeover:
            peer_out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12)
            peer_in = zlib.decompressobj(-15)
        wire = peer_out.compress(message) + peer_out.flush(zlib.Z_SYNC_FLUSH)
        server.start_decompress_message()
        assert server.decompress_message_data(wire[:-4], 65535) == message
        server.end_decompress_message()
        server.start_compress_message()
        sent = server.compress_message_data(message) + server.end_compress_message()
        assert peer_in.decompress(sent + b"\x00\x00\xff\xff") == message
        kept = not settings.no_context_takeover
        assert (server._compressor is not None, server._decompressor is not None) == (kept, kept)
    assert counts["ws.deflate_messages_in"] == counts["ws.deflate_messages_out"] == 2
    assert counts["ws.deflate_raw_bytes_in"] == counts["ws.deflate_raw_bytes_out"] == 2 * len(message)
    assert counts["ws.deflate_wire_bytes_in"] < counts["ws.deflate_raw_bytes_in"]
