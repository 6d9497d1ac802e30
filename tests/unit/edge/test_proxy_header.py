"""PROXY protocol v1/v2 headers: what is accepted, what is refused and why, bounded work."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from sipws.edge import EdgeError
from sipws.edge.proxy_header import (
    MAX_HEADER_LENGTH, MAX_QUOTED, MAX_V1_LENGTH, MAX_V2_LENGTH, V2_SIGNATURE, ProxyHeader, ProxyHeaderError,
    build_v1, build_v2, parse_proxy_header,
)


def refused(data: bytes) -> str:
    with pytest.raises(ProxyHeaderError) as info:
        parse_proxy_header(data)
    assert isinstance(info.value, EdgeError)
    return info.value.reason


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, family, len(body)) + body


# -- v1 ----------------------------------------------------------------------------------


def test_v1_tcp4():
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8080\r\nGET / HTTP/1.1\r\n"
    header = parse_proxy_header(data)
    assert header == ProxyHeader(1, "PROXY", ("192.0.2.7", 40000), ("10.0.0.1", 8080), 42)
    assert data[header.length:] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_and_mapped():
    header = parse_proxy_header(b"PROXY TCP6 2001:db8::7 ::1 5 6\r\n")
    assert header.source == ("2001:db8::7", 5)
    header = parse_proxy_header(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 5 6\r\n")
    assert header.source == ("192.0.2.7", 5)  # matched as IPv4 everywhere in sipws


@pytest.mark.parametrize("data", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_keeps_socket_address(data):
    header = parse_proxy_header(data + b"rest")
    assert (header.command, header.source, header.length) == ("UNKNOWN", None, len(data))


def test_v1_longest_header_is_accepted():
    src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    data = f"PROXY TCP6 {src} {src} 65535 65535\r\n".encode()
    assert parse_proxy_header(data).source == (src, 65535)
    data = f"PROXY UNKNOWN {src} {src} 65535 65535\r\n".encode()  # the specification's longest
    assert len(data) == MAX_V1_LENGTH
    assert parse_proxy_header(data).length == MAX_V1_LENGTH


@pytest.mark.parametrize("data, words", [
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n", "6 fields"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8080 9\r\n", "6 fields"),
    (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", "source address is not IPv4"),
    (b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n", "source address is not IPv6"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.x 1 2\r\n", "destination address"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", "source port"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n", "source port"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 1 x\r\n", "destination port"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 \xd9\xa1 2\r\n", "not ASCII"),
    (b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY  TCP4 192.0.2.7 10.0.0.1 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n", "without CR"),
    (b"PROXY TCP4\t192.0.2.7\r\n", "control characters"),
    (b"PROXY " + b"A" * 200, f"without CRLF in {MAX_V1_LENGTH} bytes"),
    (b"PROXX", "not a PROXY header"),
    (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
    (b"\x16\x03\x01\x02\x00", "not a PROXY header"),  # a TLS ClientHello without a header
])
def test_v1_refusals_say_why(data, words):
    assert words in refused(data)


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY", b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8080", b"PROXY TCP4 1\r"])
def test_v1_needs_more(data):
    assert parse_proxy_header(data) is None


def test_v1_every_split_point():
    data = build_v1(("192.0.2.7", 40000)) + b"GET"
    for cut in range(len(data) - 3):
        assert parse_proxy_header(data[:cut]) is None
    assert parse_proxy_header(data).source == ("192.0.2.7", 40000)


# -- v2 ----------------------------------------------------------------------------------


def test_v2_inet_with_tlvs_skipped():
    tlvs = b"\x01\x00\x08http/1.1" + b"\x05\x00\x04abcd"
    data = build_v2(("192.0.2.7", 40000), ("10.0.0.1", 443), tlvs) + b"\x16\x03\x01"
    header = parse_proxy_header(data)
    assert header == ProxyHeader(2, "PROXY", ("192.0.2.7", 40000), ("10.0.0.1", 443), len(data) - 3)


def test_v2_inet6():
    header = parse_proxy_header(build_v2(("2001:db8::7", 5060), ("2001:db8::1", 443)))
    assert (header.source, header.destination) == (("2001:db8::7", 5060), ("2001:db8::1", 443))


def test_v2_local_keeps_socket_address_whatever_follows():
    assert parse_proxy_header(build_v2(None)) == ProxyHeader(2, "LOCAL", None, None, 16)
    # LOCAL with an address block (HAProxy fills it in for its own checks sometimes)
    data = v2(0x0, 0x11, bytes(12))
    assert parse_proxy_header(data) == ProxyHeader(2, "LOCAL", None, None, 28)


@pytest.mark.parametrize("family", [0x00, 0x30, 0x31, 0x10])
def test_v2_unspec_unix_keep_socket_address(family):
    header = parse_proxy_header(v2(0x1, family, bytes(216)))
    assert (header.command, header.source, header.length) == ("PROXY", None, 232)


@pytest.mark.parametrize("data, words", [
    (v2(0x1, 0x11, bytes(12), version=1), "version 1"),
    (v2(0x2, 0x11, bytes(12)), "command 2"),
    (v2(0x1, 0x41, bytes(12)), "family/protocol 0x41"),
    (v2(0x1, 0x13, bytes(12)), "family/protocol 0x13"),
    (v2(0x1, 0x12, bytes(12)), "UDP"),
    (v2(0x1, 0x11, bytes(11)), "AF_INET addresses need 12 bytes, got 11"),
    (v2(0x1, 0x21, bytes(12)), "AF_INET6 addresses need 36 bytes, got 12"),
    (V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_LENGTH), f"exceeds {MAX_V2_LENGTH}"),
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(20), "not a PROXY header"),
])
def test_v2_refusals_say_why(data, words):
    assert words in refused(data)


def test_v2_overlong_refused_before_it_arrives():
    """The length field alone refuses a header over the cap: nothing more is waited for."""
    assert "exceeds" in refused(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 0xFFFF))


def test_v2_every_split_point():
    data = build_v2(("192.0.2.7", 40000), tlvs=b"\x04\x00\x01z")
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None
    assert parse_proxy_header(data).length == len(data)


def test_reasons_never_echo_much_of_the_input():
    reason = refused(b"GET /" + b"x" * 10_000)
    assert len(reason) < 40 + 4 * MAX_QUOTED


def test_build_v1_unknown():
    assert build_v1(None) == b"PROXY UNKNOWN\r\n"


# -- fuzzing -------------------------------------------------------------------------------

PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                            V2_SIGNATURE + b"\x21\x11", V2_SIGNATURE + b"\x21\x21\x00\x24", V2_SIGNATURE + b"\x20"])


@settings(max_examples=600, deadline=None)
@given(PREFIXES, st.binary(max_size=3000))
def test_fuzz_only_own_error_and_bounded(prefix, tail):
    data = prefix + tail
    try:
        header = parse_proxy_header(data)
    except ProxyHeaderError as exc:
        assert len(exc.reason) < 200
        return
    if header is None:
        assert len(data) < MAX_HEADER_LENGTH
        return
    assert 0 < header.length <= min(len(data), MAX_HEADER_LENGTH)
    if header.source is not None:
        assert 0 <= header.source[1] <= 65535


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535), st.binary(max_size=40),
       st.booleans())
def test_round_trip(address, port, rest, version_two):
    host = str(address)
    expected = host
    if address.version == 6 and address.ipv4_mapped is not None:
        expected = str(address.ipv4_mapped)
    data = (build_v2((host, port)) if version_two else build_v1((host, port))) + rest
    header = parse_proxy_header(data)
    assert header.source == (expected, port)
    assert data[header.length:] == rest
