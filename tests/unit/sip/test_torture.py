"""RFC 4475 torture messages (tests/data/sip/rfc4475, built by build.py there)."""

from pathlib import Path

import pytest

from sipws.sip import SipParseError, parse

from .helpers import DATA

TORTURE = DATA / "rfc4475"
VALID = sorted(TORTURE.glob("valid/*.dat"))
INVALID = sorted(TORTURE.glob("invalid/*.dat"))
ACCEPTED = sorted(TORTURE.glob("accepted/*.dat"))

#: Invalid per RFC 4475 yet accepted on purpose (see docs/sip.md).
ACCEPTED_ON_PURPOSE = {
    "baddate": "Date is not interpreted by a proxy; it is relayed unchanged",
}
#: Valid messages carrying bytes after the Content-Length body (RFC 3261 §18.3).
TRAILING = {"dblreq"}


def test_corpus_is_complete():
    assert len(VALID) >= 25 and len(INVALID) >= 20
    assert {p.stem for p in ACCEPTED} == set(ACCEPTED_ON_PURPOSE)


def _exercise(msg):
    """Touch every structured accessor; none may fail on a parsed message."""
    msg.vias, msg.top_via, msg.routes, msg.record_routes, msg.paths, msg.contacts
    msg.from_, msg.to, msg.call_id, msg.cseq, msg.max_forwards, msg.content_length
    msg.supported, msg.require, msg.proxy_require


@pytest.mark.parametrize("path", VALID + ACCEPTED, ids=lambda p: p.stem)
def test_valid_parse_and_roundtrip(path: Path):
    data = path.read_bytes()
    msg = parse(data)
    _exercise(msg)
    out = bytes(msg)
    if path.stem in TRAILING:
        assert data.startswith(out) and len(out) < len(data)
    else:
        assert out == data
    assert parse(out) == msg


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_rejected(path: Path):
    with pytest.raises(SipParseError):
        parse(path.read_bytes())


def test_wsinv_fields():
    msg = parse((TORTURE / "valid" / "wsinv.dat").read_bytes())
    assert msg.method == "INVITE" and msg.request_uri.params == {"unknownparam": None}
    assert msg.to.tag == "1918181833n" and msg.to.display is None
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68 and msg.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    contact = msg.contacts[0]
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.get("Subject") == ""
    assert msg.routes[0].uri.params["unknownwith"] == "value"


def test_intmeth_and_escapes():
    msg = parse((TORTURE / "valid" / "intmeth.dat").read_bytes())
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.request_uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.request_uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    esc = parse((TORTURE / "valid" / "esc01.dat").read_bytes())
    assert esc.request_uri.user == "sips:user@example.com"
    assert esc.to.uri.user == "user"
    assert esc.contacts[0].uri.user == "caller"
    null = parse((TORTURE / "valid" / "escnull.dat").read_bytes())
    assert [c.uri.user for c in null.contacts] == ["\x00", "\x00\x00"]


def test_invalid_reasons_are_the_expected_ones():
    def reason(name):
        with pytest.raises(SipParseError) as info:
            parse((TORTURE / "invalid" / f"{name}.dat").read_bytes())
        return info.value
    assert reason("badvers").status == 505
    assert "Content-Length" in reason("clerr").reason
    assert "CSeq" in reason("mismatch01").reason
    assert "Request-URI" in reason("escruri").reason
    assert "missing" in reason("insuf").reason


def test_dblreq_keeps_only_the_first_message():
    msg = parse((TORTURE / "valid" / "dblreq.dat").read_bytes())
    assert msg.method == "REGISTER" and msg.body == b""
