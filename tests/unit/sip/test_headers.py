"""Header names, list splitting, Via, name-addr and CSeq parsing."""

import pytest

from sipws.sip import NameAddr, SipParseError, Via, parse_name_addr, parse_via
from sipws.sip.headers import COMPACT_FORMS, header_key, parse_cseq, split_comma


@pytest.mark.parametrize("compact,full", sorted(COMPACT_FORMS.items()))
def test_compact_forms_map_to_full_names(compact, full):
    assert header_key(compact) == full.lower()
    assert header_key(compact.upper()) == full.lower()
    assert header_key(full) == full.lower()


def test_required_compact_forms_are_known():
    for letter in "imelcftvksourbxy":
        assert letter in COMPACT_FORMS


def test_header_key_allows_space_before_colon_and_rejects_non_tokens():
    assert header_key("Via  ") == "via"
    for bad in ("", " ", "Bad Name", "Na:me", "Caf\u00e9", "a(b)"):
        with pytest.raises(SipParseError):
            header_key(bad)


def test_split_comma_respects_quotes_and_angles():
    value = '"Bell, Alexander" <sip:a,b@x.com>;p="1,2", <sip:c@d.com> ,sip:e@f.com'
    assert split_comma(value) == [
        '"Bell, Alexander" <sip:a,b@x.com>;p="1,2"', "<sip:c@d.com>", "sip:e@f.com"]
    assert split_comma("path, gruu,outbound") == ["path", "gruu", "outbound"]
    assert split_comma('"a\\",b" <sip:x@y>') == ['"a\\",b" <sip:x@y>']
    for bad in ('"unterminated, x', "<sip:a@b, c", "sip:a@b>", "<<sip:a@b>>"):
        with pytest.raises(SipParseError):
            split_comma(bad)


def test_via_fields():
    via = parse_via("SIP/2.0/wss df7jal23ls0d.invalid;branch=z9hG4bKabc;rport;Alias")
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0", "WSS", "df7jal23ls0d.invalid", None)
    assert via.branch == "z9hG4bKabc"
    assert via.rport is True
    assert via.received is None
    assert via.params == {"branch": "z9hG4bKabc", "rport": None, "alias": None}


def test_via_with_lws_ipv6_received_and_rport_value():
    via = parse_via("SIP / 2.0 / UDP [2001:DB8::9] : 5062 ; received=2001:db8::1 ; rport=5070 ;"
                    " branch=z9hG4bK1")
    assert via.host == "2001:db8::9" and via.port == 5062
    assert via.received == "2001:db8::1"
    assert via.rport == 5070
    assert via.sent_by == "[2001:db8::9]:5062"
    assert str(via) == ("SIP/2.0/UDP [2001:db8::9]:5062;received=2001:db8::1;rport=5070;"
                        "branch=z9hG4bK1")


def test_via_build_and_format():
    via = Via("udp", "192.0.2.10", 5062, {"branch": "z9hG4bKx", "rport": None})
    assert str(via) == "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKx;rport"
    assert parse_via(str(via)) == via


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP", "SIP/2.0 UDP host", "SIP/3.0/UDP host", "HTTP/2.0/UDP host",
    "SIP/2.0/UDP host:99999", "SIP/2.0/UDP host;", "SIP/2.0/UDP host;branch=",
    "SIP/2.0/UDP host;rport=abc", "SIP/2.0/UDP host;rport=70000", "SIP/2.0/UDP [::zz]",
    "SIP/2.0/UDP host junk", "SIP/2.0/UDP host;a=b c",
])
def test_bad_vias(text):
    with pytest.raises(SipParseError):
        parse_via(text)


def test_name_addr_with_utf8_quoted_display_and_contact_params():
    na = parse_name_addr('"Alice \\"Ñandú\\"" <sip:alice@example.com;transport=ws;ob>'
                         ';+sip.instance="<urn:uuid:9b1c>";reg-id=1;expires=600')
    assert na.display == 'Alice "Ñandú"'
    assert na.uri.user == "alice" and na.uri.params == {"transport": "ws", "ob": None}
    assert na.params == {"+sip.instance": '"<urn:uuid:9b1c>"', "reg-id": "1", "expires": "600"}
    assert na.tag is None and not na.is_star
    assert parse_name_addr(str(na)) == na


def test_name_addr_forms():
    bare = parse_name_addr("sip:bob@example.com;tag=12")
    assert bare.display is None and bare.tag == "12" and bare.uri.params == {}
    tokens = parse_name_addr("Bob  Smith<sip:bob@example.com>")
    assert tokens.display == "Bob  Smith"
    other = parse_name_addr("<tel:+15551234;phone-context=x>;tag=9")
    assert other.uri is None and other.raw_uri == "tel:+15551234;phone-context=x"
    assert other.tag == "9"
    star = parse_name_addr(" * ", allow_star=True)
    assert star.is_star and str(star) == "*"
    built = NameAddr(parse_name_addr("<sip:a@b.com>").uri, "A", {"tag": "x"})
    assert str(built) == '"A" <sip:a@b.com>;tag=x'


@pytest.mark.parametrize("text", [
    "", "*", '"unterminated <sip:a@b.com>', '"A" sip:a@b.com', "Bell, Alexander <sip:a@b.com>",
    "< sip:a@b.com >", "<sip:a@b.com", "sip:a@b.com>", "sip:a@b.com?x=y",
    "<sip:a@b.com> junk", "<sip:a@b.com>;", "<sip:a@b.com>;tag=a b", "<sip:@b.com>", "<>",
])
def test_bad_name_addrs(text):
    with pytest.raises(SipParseError):
        parse_name_addr(text)


def test_cseq():
    assert parse_cseq("0009\r\n  INVITE".replace("\r\n", "")) == (9, "INVITE")
    assert parse_cseq("4294967295 ACK") == (4294967295, "ACK")
    for bad in ("", "1", "INVITE", "x INVITE", "-1 INVITE", "4294967296 INVITE",
                "1 INV ITE", "1 INV@TE", "36893488147419103232 REGISTER"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_comma_in_addr_spec_user_needs_angle_brackets():
    from sipws.sip.validate import FAST_NAME_ADDR
    assert FAST_NAME_ADDR.fullmatch("sip:carol,x@a.example.com;tag=9") is None
    with pytest.raises(SipParseError):
        parse_name_addr("sip:carol,x@a.example.com;tag=9")
    assert parse_name_addr("<sip:carol,x@a.example.com>;tag=9").uri.user == "carol,x"
