"""SIP URIs: parsing, formatting, RFC 3261 §19.1.4 comparison."""

import pytest

from sipws.sip import Limits, SipParseError, SipUri, parse_uri


def test_full_uri_parts():
    uri = parse_uri("sips:alice:secret@[2001:DB8::1]:5061;transport=TCP;lr;maddr=10.0.0.1"
                    "?Subject=hi&Priority=urgent")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert uri.host == "2001:db8::1"
    assert uri.port == 5061
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "10.0.0.1"}
    assert uri.transport == "tcp"
    assert uri.headers == {"Subject": "hi", "Priority": "urgent"}
    assert uri.host_port == "[2001:db8::1]:5061"


def test_host_only_and_ipv4_and_case():
    uri = parse_uri("SIP:Example.COM")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", None, "example.com", None)
    assert parse_uri("sip:192.0.2.1:5060;lr").host == "192.0.2.1"


def test_user_is_unescaped_and_may_hold_user_unreserved():
    assert parse_uri("sip:%61lice@example.com").user == "alice"
    assert parse_uri("sip:I%20have%20spaces@example.net").user == "I have spaces"
    uri = parse_uri("sip:+1-212-555-1212;phone-context=example.com@gw.example.com;user=phone")
    assert uri.user == "+1-212-555-1212;phone-context=example.com"
    assert uri.params == {"user": "phone"}


def test_str_keeps_original_text_and_format_rebuilds():
    text = "sip:%61lice@EXAMPLE.com;LR"
    uri = parse_uri(text)
    assert str(uri) == text
    assert uri.format() == "sip:alice@example.com;lr"
    built = SipUri("sip", user="a b", host="h.example", port=5080, params={"lr": None})
    assert str(built) == "sip:a%20b@h.example:5080;lr"
    assert parse_uri(str(built)).user == "a b"


def test_copy_changes_parts():
    uri = parse_uri("sip:bob@example.com;transport=ws")
    moved = uri.copy(host="192.0.2.7", port=5062)
    assert str(moved) == "sip:bob@192.0.2.7:5062;transport=ws"
    with pytest.raises(TypeError):
        uri.copy(colour="blue")


@pytest.mark.parametrize("text", [
    "sip:", "sip:@example.com", "sip:alice@", "sip:alice@exa mple.com", "sip:a@b.com:99999",
    "sip:a@[2001:db8::zz]", "sip:a@256.1.1.1", "sip:a@-bad-.com", "sip:a@b..com",
    "sip:a@b.com;", "sip:a@b.com;=x", "sip:a@b.com?", "sip:a%2@b.com", "sip:a@b@c.com",
    "<sip:a@b.com>", " sip:a@b.com", "sip:a@b.com ",
])
def test_malformed_uris_raise(text):
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_other_scheme_is_refused_with_416():
    with pytest.raises(SipParseError) as info:
        parse_uri("tel:+15551234")
    assert info.value.status == 416


def test_length_limit():
    long = "sip:" + "a" * 3000 + "@example.com"
    with pytest.raises(SipParseError) as info:
        parse_uri(long)
    assert info.value.status == 414
    assert parse_uri(long, Limits(max_uri_length=4096)).user == "a" * 3000


# RFC 3261 §19.1.4 examples
@pytest.mark.parametrize("a,b", [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
])
def test_equivalent(a, b):
    assert parse_uri(a) == parse_uri(b)
    assert hash(parse_uri(a)) == hash(parse_uri(b))


@pytest.mark.parametrize("a,b", [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
])
def test_not_equivalent(a, b):
    assert parse_uri(a) != parse_uri(b)


def test_matches_host_port_for_route_checks():
    route = parse_uri("sip:192.0.2.10;lr")
    assert route.matches_host_port("192.0.2.10", 5060)
    assert route.matches_host_port("192.0.2.10", None)
    assert not route.matches_host_port("192.0.2.10", 5062)
    assert parse_uri("sip:192.0.2.10:5062;lr").matches_host_port("192.0.2.10", 5062)
    assert parse_uri("sips:proxy.example.com").matches_host_port("PROXY.example.com.", 5061)
    assert parse_uri("sip:[2001:db8::1];lr").matches_host_port("2001:0db8:0::1", 5060)
    assert parse_uri("sip:h;transport=ws").matches_host_port("h", 80, default_port=80)
