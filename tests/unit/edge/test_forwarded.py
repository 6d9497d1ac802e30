"""The client address from a trusted proxy's X-Forwarded-For / Forwarded (RFC 7239)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sipws.edge.forwarded import MAX_HOPS, ClientAddress, client_address
from sipws.edge.networks import NetworkSet

PEER = ("10.0.0.2", 40000)
TRUSTED = NetworkSet(["10.0.0.0/8", "2001:db8:ffff::/48"])


def resolve(peer=PEER, **headers):
    lines = {name.replace("_", "-"): value if isinstance(value, list) else [value] for name, value in headers.items()}
    return client_address(peer, TRUSTED, lines)


def test_untrusted_sender_headers_ignored():
    assert resolve(("192.0.2.9", 5000), x_forwarded_for="198.51.100.1") == ClientAddress(("192.0.2.9", 5000))
    assert resolve(("192.0.2.9", 5000), forwarded="for=198.51.100.1") == ClientAddress(("192.0.2.9", 5000))


def test_trusted_sender_without_headers_keeps_peer():
    assert resolve() == ClientAddress(PEER)


def test_xff_single_no_port_gives_port_zero():
    assert resolve(x_forwarded_for="198.51.100.1") == ClientAddress(("198.51.100.1", 0), "x-forwarded-for")


def test_xff_chain_skips_trusted_and_ignores_spoofed_left():
    # client forged "1.2.3.4"; real client 198.51.100.1; then two trusted proxies
    found = resolve(x_forwarded_for="1.2.3.4, 198.51.100.1, 10.1.1.1, 10.2.2.2")
    assert found.address == ("198.51.100.1", 0)


def test_xff_across_header_lines_in_order():
    found = resolve(x_forwarded_for=["1.2.3.4, 198.51.100.1", "10.1.1.1"])
    assert found.address == ("198.51.100.1", 0)
    found = resolve(x_forwarded_for=["198.51.100.1", "203.0.113.5"])
    assert found.address == ("203.0.113.5", 0)


def test_xff_all_trusted_gives_left_most():
    assert resolve(x_forwarded_for="10.9.9.9, 10.1.1.1").address == ("10.9.9.9", 0)


@pytest.mark.parametrize("entry, address", [
    ("198.51.100.1:4711", ("198.51.100.1", 4711)),
    ("[2001:db8::7]:4711", ("2001:db8::7", 4711)),
    ("[2001:db8::7]", ("2001:db8::7", 0)),
    ("2001:db8::7", ("2001:db8::7", 0)),
    ("::ffff:198.51.100.1", ("198.51.100.1", 0)),
])
def test_xff_entry_forms(entry, address):
    assert resolve(x_forwarded_for=entry).address == address


@pytest.mark.parametrize("value, words", [
    ("not-an-ip", "not an address"),
    ("198.51.100.1, garbage", "not an address"),
    ("198.51.100.1:99999", "bad port"),
    ("[198.51.100.1]:5", "brackets"),
    ("[2001:db8::7", "malformed"),
    ("unknown", "hides its address"),
    (",,", "no entries"),
])
def test_xff_malformed_keeps_peer_and_says_why(value, words):
    found = resolve(x_forwarded_for=value)
    assert found.address == PEER and found.header is None
    assert found.problem.startswith("x-forwarded-for: ") and words in found.problem


def test_malformed_left_of_client_is_never_read():
    """Only the proxies' entries are walked: garbage a client put on the left does not matter."""
    assert resolve(x_forwarded_for="<script>, 198.51.100.1").address == ("198.51.100.1", 0)


def test_forwarded_basic_and_params():
    found = resolve(forwarded='for=198.51.100.1;proto=https;by=10.0.0.2')
    assert found == ClientAddress(("198.51.100.1", 0), "forwarded")


def test_forwarded_quoted_ipv6_with_port_and_chain():
    found = resolve(forwarded='for=1.2.3.4, For="[2001:db8:cafe::17]:4711", for=10.1.1.1;proto=https')
    assert found.address == ("2001:db8:cafe::17", 4711)


def test_forwarded_quoted_comma_does_not_split():
    found = resolve(forwarded='for=198.51.100.1;host="a,b", for="10.1.1.1:80"')
    assert found.address == ("198.51.100.1", 0)


def test_forwarded_obfuscated_port():
    assert resolve(forwarded='for="198.51.100.1:_abc"').address == ("198.51.100.1", 0)


@pytest.mark.parametrize("value, words", [
    ("for=unknown", "hides its address"),
    ("for=_hidden", "hides its address"),
    ("proto=https", "without for="),
    ("for=1.2.3.4;for=5.6.7.8", "two for="),
    ("for", "malformed parameter"),
    ('for="198.51.100.1', "unterminated"),
])
def test_forwarded_problems(value, words):
    found = resolve(forwarded=value)
    assert found.address == PEER and words in found.problem and found.problem.startswith("forwarded: ")


def test_x_forwarded_for_wins_over_forwarded():
    """nginx appends X-Forwarded-For and passes a client's Forwarded through: that one is forgeable."""
    found = resolve(x_forwarded_for="198.51.100.1", forwarded="for=6.6.6.6")
    assert found == ClientAddress(("198.51.100.1", 0), "x-forwarded-for")


def test_ipv6_trusted_peer():
    found = client_address(("2001:db8:ffff::2", 1), TRUSTED, {"x-forwarded-for": ["2001:db8::5"]})
    assert found.address == ("2001:db8::5", 0)


def test_hop_limit():
    chain = ", ".join(["10.0.0.9"] * (MAX_HOPS + 5))
    found = resolve(x_forwarded_for="198.51.100.1, " + chain)
    assert found.address == PEER and "trusted hops" in found.problem


def test_problem_quotes_are_short():
    found = resolve(x_forwarded_for="x" * 5000)
    assert len(found.problem) < 120


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=4), st.lists(st.text(max_size=60), max_size=4))
def test_fuzz_never_raises(xff, forwarded):
    headers = {}
    if xff:
        headers["x-forwarded-for"] = xff
    if forwarded:
        headers["forwarded"] = forwarded
    found = client_address(PEER, TRUSTED, headers)
    host, port = found.address
    assert isinstance(host, str) and 0 <= port <= 65535
    assert (found.problem is None) or found.address == PEER
