import pytest

from sipws.msrp import MsrpParseError, PeerKey, parse_uri


@pytest.mark.parametrize("text", [
    "msrp://atlanta.example.com:7654/jshA7weztas;tcp",
    "msrps://bob@relay.example.net:443;ws",
    "msrps://df7jal23ls0d.invalid/98cjs;ws",
    "msrp://[2001:db8::1]:2855/a+b=c/d;tcp;foo=bar",
    "MSRPS://Relay.Example.com:2855/s1;TCP",
])
def test_round_trip(text):
    assert str(parse_uri(text)) == text


def test_fields():
    u = parse_uri("msrps://bob@relay.example.net:443/abc;ws;x=1")
    assert (u.scheme, u.user, u.host, u.port, u.session_id, u.transport, u.params) == (
        "msrps", "bob", "relay.example.net", 443, "abc", "ws", ("x=1",))
    assert u.secure
    assert u.peer == PeerKey("relay.example.net", 443, True)
    assert parse_uri("msrp://h/s;tcp").peer == PeerKey("h", 2855, False)
    assert parse_uri("msrp://[::1]:9/s;tcp").peer == PeerKey("::1", 9, False)


def test_equality_rfc4975_6_1():
    a = parse_uri("msrp://Atlanta.Example.com:7654/jshA7weztas;tcp")
    assert a == parse_uri("MSRP://atlanta.example.COM:7654/jshA7weztas;TCP")
    assert a == parse_uri("msrp://user@atlanta.example.com:7654/jshA7weztas;tcp;p=1")
    assert hash(a) == hash(parse_uri("msrp://atlanta.example.com:7654/jshA7weztas;tcp"))
    assert a != parse_uri("msrp://atlanta.example.com:7654/JSHA7weztas;tcp")  # session-id case
    assert a != parse_uri("msrp://atlanta.example.com/jshA7weztas;tcp")  # explicit vs absent port
    assert a != parse_uri("msrps://atlanta.example.com:7654/jshA7weztas;tcp")
    assert a != parse_uri("msrp://atlanta.example.com:7654/jshA7weztas;ws")


@pytest.mark.parametrize("text", [
    "", "sip:alice@example.com", "msrp://host/s", "msrp://host:0/s;tcp", "msrp://host:70000/s;tcp",
    "msrp://host/s;", "msrp://ho st/s;tcp", "msrp:///s;tcp", "msrp://h/s;tcp\r\n", "x" * 5000,
    "http://h/s;tcp",
])
def test_bad(text):
    with pytest.raises(MsrpParseError):
        parse_uri(text)
