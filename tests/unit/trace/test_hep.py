"""HEPv3 codec: chunk round trips, golden packets written by hand, bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from sipws.errors import SipwsError
from sipws.trace import hep
from sipws.trace.errors import HepError
from sipws.trace.hep import HepPacket, decode, encode


# Golden packet 1, written byte by byte from the HEPv3 layout (not produced by
# the encoder): a SIP datagram 10.0.0.1:5060 -> 10.0.0.2:5080 with every
# identity chunk.  Each chunk: vendor(2) type(2) length(2, header included) body.
GOLDEN_SIP_V4 = bytes.fromhex(
    "48455033" "0085"                      # "HEP3", total length 133
    "0000" "0001" "0007" "02"              # IP family: 2 (IPv4)
    "0000" "0002" "0007" "11"              # IP protocol: 17 (UDP)
    "0000" "0003" "000a" "0a000001"        # IPv4 source 10.0.0.1
    "0000" "0004" "000a" "0a000002"        # IPv4 destination 10.0.0.2
    "0000" "0007" "0008" "13c4"            # source port 5060
    "0000" "0008" "0008" "13d8"            # destination port 5080
    "0000" "0009" "000a" "5f5e1000"        # timestamp seconds 1600000000
    "0000" "000a" "000a" "0001e240"        # timestamp microseconds 123456
    "0000" "000b" "0007" "01"              # protocol type 1 (SIP)
    "0000" "000c" "000a" "000007d1"        # capture agent id 2001
    "0000" "000e" "000a" "6b657931"        # auth key "key1"
    "0000" "000f" "000d" "4f5054494f4e53"  # payload "OPTIONS"
    "0000" "0011" "0009" "616263"          # correlation id "abc"
    "0000" "0013" "0008" "6e31"            # node name "n1"
)
GOLDEN_SIP_V4_PACKET = HepPacket(
    ip_family=2, ip_proto=17, src_ipv4="10.0.0.1", dst_ipv4="10.0.0.2",
    src_port=5060, dst_port=5080, ts_sec=1_600_000_000, ts_usec=123456,
    proto_type=1, capture_id=2001, auth_key=b"key1", payload=b"OPTIONS",
    correlation_id=b"abc", node_name=b"n1",
)

# Golden packet 2: IPv6 over TCP, a "net" event type 0x59, the chunks the
# first one lacks (IPv6 addresses, keep-alive timer, compressed payload,
# VLAN id) and one vendor-specific chunk carried through as-is.
GOLDEN_NET_V6 = bytes.fromhex(
    "48455033" "0076"                      # "HEP3", total length 118
    "0000" "0001" "0007" "0a"              # IP family: 10 (IPv6)
    "0000" "0002" "0007" "06"              # IP protocol: 6 (TCP)
    "0000" "0005" "0016" "20010db8000000000000000000000001"  # 2001:db8::1
    "0000" "0006" "0016" "00000000000000000000000000000001"  # ::1
    "0000" "0007" "0008" "01bb"            # source port 443
    "0000" "0008" "0008" "c350"            # destination port 50000
    "0000" "000b" "0007" "59"              # protocol type 0x59 (net event)
    "0000" "000d" "0008" "000f"            # keep-alive timer 15
    "0000" "0010" "0008" "789c"            # compressed payload (2 bytes)
    "0000" "0012" "0008" "0064"            # VLAN id 100
    "0001" "0002" "0007" "78"              # vendor 1, type 2, body "x"
)
GOLDEN_NET_V6_PACKET = HepPacket(
    ip_family=10, ip_proto=6, src_ipv6="2001:db8::1", dst_ipv6="::1",
    src_port=443, dst_port=50000, proto_type=0x59, keepalive_timer=15,
    compressed_payload=b"\x78\x9c", vlan_id=100, extra=((1, 2, b"x"),),
)


@pytest.mark.parametrize(
    "golden, packet",
    [(GOLDEN_SIP_V4, GOLDEN_SIP_V4_PACKET), (GOLDEN_NET_V6, GOLDEN_NET_V6_PACKET)],
    ids=["sip-v4", "net-v6"],
)
def test_golden_packets_byte_by_byte(golden: bytes, packet: HepPacket) -> None:
    assert encode(packet) == golden
    assert decode(golden) == packet


def test_golden_lengths_match_hand_count() -> None:
    assert len(GOLDEN_SIP_V4) == 133
    assert len(GOLDEN_NET_V6) == 118


def test_hep_error_is_a_sipws_error_and_a_value_error() -> None:
    assert issubclass(HepError, SipwsError)
    assert issubclass(HepError, ValueError)


# One example value per generic chunk, with its expected body on the wire.
CHUNK_EXAMPLES = {
    hep.IP_FAMILY: (10, b"\x0a"),
    hep.IP_PROTO: (17, b"\x11"),
    hep.IPV4_SRC: ("192.0.2.7", b"\xc0\x00\x02\x07"),
    hep.IPV4_DST: ("255.255.255.255", b"\xff\xff\xff\xff"),
    hep.IPV6_SRC: ("fe80::1", bytes.fromhex("fe800000000000000000000000000001")),
    hep.IPV6_DST: ("::", bytes(16)),
    hep.SRC_PORT: (65535, b"\xff\xff"),
    hep.DST_PORT: (0, b"\x00\x00"),
    hep.TS_SEC: (2**32 - 1, b"\xff\xff\xff\xff"),
    hep.TS_USEC: (999_999, struct.pack(">I", 999_999)),
    hep.PROTO_TYPE: (0x59, b"\x59"),
    hep.CAPTURE_ID: (0xDEADBEEF, b"\xde\xad\xbe\xef"),
    hep.KEEPALIVE_TIMER: (30, b"\x00\x1e"),
    hep.AUTH_KEY: (b"secret", b"secret"),
    hep.PAYLOAD: (b"INVITE sip:a@b SIP/2.0\r\n\r\n", b"INVITE sip:a@b SIP/2.0\r\n\r\n"),
    hep.COMPRESSED_PAYLOAD: (b"\x1f\x8b\x08", b"\x1f\x8b\x08"),
    hep.CORRELATION_ID: (b"42", b"42"),
    hep.VLAN_ID: (4094, b"\x0f\xfe"),
    hep.NODE_NAME: (b"edge-1", b"edge-1"),
}


def test_every_generic_chunk_has_an_example() -> None:
    assert set(CHUNK_EXAMPLES) == set(hep.CHUNKS) == set(range(0x01, 0x14))


@pytest.mark.parametrize("ctype", sorted(CHUNK_EXAMPLES), ids=lambda t: f"0x{t:02x}")
def test_each_chunk_round_trips_with_its_wire_body(ctype: int) -> None:
    name, _ = hep.CHUNKS[ctype]
    value, body = CHUNK_EXAMPLES[ctype]
    packet = HepPacket(**{name: value})
    wire = encode(packet)
    expected = b"HEP3" + struct.pack(">H", 12 + len(body)) + struct.pack(">HHH", 0, ctype, 6 + len(body)) + body
    assert wire == expected
    assert decode(wire) == packet
    assert list(hep.iter_chunks(wire)) == [(0, ctype, body)]


def test_empty_packet_is_just_the_header() -> None:
    assert encode(HepPacket()) == b"HEP3\x00\x06"
    assert decode(b"HEP3\x00\x06") == HepPacket()


def test_convenience_properties() -> None:
    assert GOLDEN_SIP_V4_PACKET.src_ip == "10.0.0.1"
    assert GOLDEN_NET_V6_PACKET.dst_ip == "::1"
    assert GOLDEN_SIP_V4_PACKET.timestamp == pytest.approx(1_600_000_000.123456)
    assert HepPacket().timestamp is None


# -- the decoder rejects bad input with HepError ------------------------------------


def _with_total(body: bytes) -> bytes:
    return b"HEP3" + struct.pack(">H", 6 + len(body)) + body


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "truncated header"),
        (b"HEP", "truncated header"),
        (b"HEP2\x00\x06", "bad magic"),
        (b"EEP3\x00\x06", "bad magic"),
        (b"HEP3\x00\x07", "total length"),            # says 7, is 6
        (b"HEP3\x00\x06\x00", "total length"),        # says 6, is 7
        (GOLDEN_SIP_V4[:-1], "total length"),          # truncated packet
        (_with_total(b"\x00\x00\x00"), "truncated chunk header"),
        (_with_total(b"\x00\x00\x00\x0f\x00\x05"), "chunk length 5"),
        (_with_total(b"\x00\x00\x00\x0f\x00\x00"), "chunk length 0"),
        (_with_total(b"\x00\x00\x00\x0f\x00\x09ab"), "runs past the end"),
        (_with_total(b"\x00\x00\x00\x01\x00\x08\x02\x00"), "must be 1 bytes"),
        (_with_total(b"\x00\x00\x00\x07\x00\x07\x01"), "must be 2 bytes"),
        (_with_total(b"\x00\x00\x00\x0c\x00\x08\x01\x02"), "must be 4 bytes"),
        (_with_total(b"\x00\x00\x00\x03\x00\x09\x01\x02\x03"), "must be 4 bytes"),
        (_with_total(b"\x00\x00\x00\x05\x00\x0a\x01\x02\x03\x04"), "must be 16 bytes"),
        (_with_total(b"\x00\x00\x00\x0b\x00\x07\x01" * 2), "given twice"),
    ],
)
def test_decoder_rejects(data: bytes, why: str) -> None:
    with pytest.raises(HepError, match=why):
        decode(data)


@pytest.mark.parametrize(
    "packet, why",
    [
        (HepPacket(src_port=65536), "out of range"),
        (HepPacket(ip_family=-1), "out of range"),
        (HepPacket(capture_id=True), "integer"),
        (HepPacket(src_ipv4="::1"), "IPv4"),
        (HepPacket(dst_ipv6="10.0.0.1"), "IPv6"),
        (HepPacket(payload="text"), "bytes"),
        (HepPacket(payload=b"x" * 65530), "too long"),
        (HepPacket(extra=((0, 1, b"\x02"),)), "named field"),
        (HepPacket(extra=((70000, 1, b""),)), "bad extra"),
        (HepPacket(extra=(("x",),)), "extra chunk"),
    ],
)
def test_encoder_rejects(packet: HepPacket, why: str) -> None:
    with pytest.raises(HepError, match=why):
        encode(packet)


def test_build_rejects_unknown_field_names() -> None:
    with pytest.raises(HepError, match="bogus"):
        hep.build(bogus=1)
    assert hep.build(proto_type=1) == encode(HepPacket(proto_type=1))


def test_largest_packet_fits_exactly() -> None:
    # 6 header + 6 chunk header + body = 65535
    packet = HepPacket(payload=b"a" * (65535 - 12))
    wire = encode(packet)
    assert len(wire) == 65535
    assert decode(wire) == packet


# -- TCP stream splitting ---------------------------------------------------------


def test_split_stream_cuts_back_to_back_packets_at_any_boundary() -> None:
    stream = GOLDEN_SIP_V4 + GOLDEN_NET_V6 + GOLDEN_SIP_V4
    for cut in range(len(stream) + 1):
        first, rest = hep.split_stream(stream[:cut])
        second, rest = hep.split_stream(rest + stream[cut:])
        assert first + second == [GOLDEN_SIP_V4, GOLDEN_NET_V6, GOLDEN_SIP_V4]
        assert rest == b""


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n", b"X", b"HEP3\x00\x02"])
def test_split_stream_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(HepError):
        hep.split_stream(garbage)


# -- properties ------------------------------------------------------------------

_u8 = st.integers(0, 0xFF)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)
_octets = st.binary(max_size=200)


def _opt(strategy):
    return st.none() | strategy


packets = st.builds(
    HepPacket,
    ip_family=_opt(_u8), ip_proto=_opt(_u8),
    src_ipv4=_opt(_v4), dst_ipv4=_opt(_v4), src_ipv6=_opt(_v6), dst_ipv6=_opt(_v6),
    src_port=_opt(_u16), dst_port=_opt(_u16), ts_sec=_opt(_u32), ts_usec=_opt(_u32),
    proto_type=_opt(_u8), capture_id=_opt(_u32), keepalive_timer=_opt(_u16),
    auth_key=_opt(_octets), payload=_opt(st.binary(max_size=2000)),
    compressed_payload=_opt(_octets), correlation_id=_opt(_octets), vlan_id=_opt(_u16),
    node_name=_opt(_octets),
    extra=st.lists(
        st.tuples(st.integers(1, 0xFFFF), _u16, _octets)
        | st.tuples(st.just(0), st.integers(0x14, 0xFFFF), _octets)
        | st.tuples(st.just(0), st.just(0), _octets),
        max_size=3,
    ).map(tuple),
)


@given(packets)
@settings(max_examples=300)
def test_decode_inverts_encode(packet: HepPacket) -> None:
    wire = encode(packet)
    assert decode(wire) == packet
    assert encode(decode(wire)) == wire


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_only_hep_error(data: bytes) -> None:
    try:
        decode(data)
    except HepError:
        pass


@given(packets, st.binary(min_size=1, max_size=64), st.integers(0, 10_000))
@settings(max_examples=300)
def test_corrupted_packets_raise_only_hep_error(packet: HepPacket, junk: bytes, where: int) -> None:
    wire = bytearray(encode(packet))
    where %= len(wire)
    wire[where : where + len(junk)] = junk
    try:
        decode(bytes(wire))
    except HepError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_streams_raise_only_hep_error(data: bytes) -> None:
    try:
        packets_out, rest = hep.split_stream(data)
    except HepError:
        return
    assert b"".join(packets_out) + rest == data


# -- the tracer's fast encoder gives the same bytes as the general one -------------

_capture_args = st.fixed_dictionaries({
    "ip_proto": _u8, "src_port": _u16, "dst_port": _u16, "ts_sec": _u32,
    "ts_usec": _u32, "proto_type": _u8, "capture_id": _u32,
    "payload": st.binary(max_size=3000), "auth_key": _opt(_octets),
    "correlation_id": _opt(_octets), "node_name": _opt(_octets),
})


@given(_capture_args, st.sampled_from([4, 6]), st.data())
@settings(max_examples=300)
def test_encode_capture_matches_encode(args, version, data) -> None:
    import ipaddress

    src = data.draw(st.ip_addresses(v=version))
    dst = data.draw(st.ip_addresses(v=version))
    family = {4: ("src_ipv4", "dst_ipv4", 2), 6: ("src_ipv6", "dst_ipv6", 10)}[version]
    packet = HepPacket(ip_family=family[2], **{family[0]: str(src), family[1]: str(dst)}, **args)
    fast = hep.encode_capture(src_addr=ipaddress.ip_address(src).packed,
                              dst_addr=ipaddress.ip_address(dst).packed, **args)
    assert fast == encode(packet)
    assert decode(fast) == packet


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"src_addr": b"\x00" * 16}, "both 4 or both 16"),
        ({"src_port": 70000}, "out of range"),
        ({"capture_id": -1}, "out of range"),
        ({"payload": b"x" * 65500}, "too long"),
    ],
)
def test_encode_capture_rejects(changes, why) -> None:
    args = dict(ip_proto=17, src_addr=b"\x7f\x00\x00\x01", dst_addr=b"\x7f\x00\x00\x01",
                src_port=1, dst_port=2, ts_sec=3, ts_usec=4, proto_type=1, capture_id=0,
                payload=b"x")
    args.update(changes)
    with pytest.raises(HepError, match=why):
        hep.encode_capture(**args)
