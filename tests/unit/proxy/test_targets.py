"""Next-hop targets and 'is this mine?'."""

import pytest

from sipws.proxy.targets import (
    LocalAddresses, NoRoute, Target, is_invalid_host, target_for_upstream, target_for_uri,
    target_for_via,
)
from sipws.sip import parse_uri, parse_via


@pytest.mark.parametrize("uri,expected", [
    ("sip:bob@example.com", Target("sip", "example.com", None, "udp")),
    ("sip:bob@10.0.0.1:5070", Target("sip", "10.0.0.1", 5070, "udp")),
    ("sips:bob@example.com", Target("sips", "example.com", None, "tls")),
    ("sip:bob@example.com;transport=TCP", Target("sip", "example.com", None, "tcp")),
    ("sips:bob@example.com;transport=tcp", Target("sips", "example.com", None, "tls")),
    ("sip:bob@example.com;transport=tls", Target("sip", "example.com", None, "tls")),
    ("sip:x@a.invalid;transport=ws", Target("sip", "a.invalid", None, "ws")),
    ("sips:x@a.invalid;transport=ws", Target("sips", "a.invalid", None, "wss")),
    ("sip:bob@example.com;maddr=10.1.1.1", Target("sip", "10.1.1.1", None, "udp")),
    ("sip:[::1]:5060", Target("sip", "::1", 5060, "udp")),
])
def test_target_for_uri(uri, expected):
    assert target_for_uri(parse_uri(uri)) == expected


def test_unknown_transport():
    with pytest.raises(NoRoute) as info:
        target_for_uri(parse_uri("sip:bob@example.com;transport=sctp"))
    assert info.value.status == 400


def test_invalid_hosts_not_dialable():
    target = target_for_uri(parse_uri("sip:x@df7jal23ls0d.invalid;transport=ws"))
    assert target.is_ws and not target.dialable
    assert is_invalid_host("A.INVALID.") and not is_invalid_host("invalid.example.com")
    assert target_for_uri(parse_uri("sip:x@example.com")).dialable


def test_reliability_and_defaults():
    assert not Target("sip", "h", None, "udp").reliable
    assert Target("sip", "h", None, "tcp").reliable
    assert Target("sip", "h", None, "tls").port_or_default == 5061
    assert str(Target("sip", "::1", 5060, "udp")) == "udp:[::1]:5060"


def test_upstream():
    assert target_for_upstream("sip:127.0.0.1:5060;transport=udp") == Target(
        "sip", "127.0.0.1", 5060, "udp")
    assert target_for_upstream("wss://core.example.com/sip") == Target(
        "sips", "core.example.com", 443, "wss", "/sip")
    assert target_for_upstream("ws://[::1]:8081") == Target("sip", "::1", 8081, "ws", "/")


def test_target_for_via_honours_received_rport():
    via = parse_via("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;received=192.0.2.1;rport=6000")
    assert target_for_via(via) == Target("sip", "192.0.2.1", 6000, "udp")
    via = parse_via("SIP/2.0/TCP core.example.com;branch=z9hG4bK1;rport")
    assert target_for_via(via) == Target("sip", "core.example.com", None, "tcp")


def make_local(advertise=""):
    return LocalAddresses([("udp", "127.0.0.1", 5062), ("tcp", "127.0.0.1", 5062),
                           ("tls", "127.0.0.1", 5063)], advertise, also=[("ws.example.com", 8443)])


def test_is_mine():
    local = make_local("proxy.example.com")
    for text in ("sip:127.0.0.1:5062;lr", "sip:tok@proxy.example.com:5062;transport=ws;lr",
                 "sip:PROXY.example.com.:5063;transport=tls", "sip:ws.example.com:8443"):
        assert local.is_mine(parse_uri(text)), text
    for text in ("sip:127.0.0.1:5060;lr", "sip:127.0.0.2:5062", "sip:proxy.example.com",
                 "sips:127.0.0.1"):
        assert not local.is_mine(parse_uri(text)), text


def test_default_port_matching():
    local = LocalAddresses([("udp", "10.0.0.1", 5060)])
    assert local.is_mine(parse_uri("sip:10.0.0.1;lr"))
    assert not local.is_mine(parse_uri("sips:10.0.0.1;lr"))
    assert local.is_my_sent_by("10.0.0.1", None, "UDP")
    assert not local.is_my_sent_by("10.0.0.1", None, "TLS")


def test_address_for():
    local = make_local()
    assert local.address_for("udp").host_port == "127.0.0.1:5062"
    assert local.address_for("tls").port == 5063
    adv = make_local("203.0.113.9:7000")
    assert adv.address_for("tcp").host_port == "203.0.113.9:7000"
    assert adv.is_mine(parse_uri("sip:203.0.113.9:7000"))
    with pytest.raises(NoRoute) as info:
        LocalAddresses([("udp", "127.0.0.1", 5062)]).address_for("tcp")
    assert info.value.status == 503


def test_ipv6_addresses():
    local = LocalAddresses([("udp", "::1", 5062)])
    assert local.address_for("udp").host_port == "[::1]:5062"
    assert local.is_mine(parse_uri("sip:[0:0:0:0:0:0:0:1]:5062;lr"))


def test_from_config():
    from sipws.config import SipConfig
    local = LocalAddresses.from_config(SipConfig())
    assert local.transports() == {"udp", "tcp"}
    assert local.is_mine(parse_uri("sip:127.0.0.1:5062"))


def test_wildcard_listener_needs_advertise():
    assert LocalAddresses([("udp", "0.0.0.0", 5062)]).needs_advertise()
    assert LocalAddresses([("udp", "::", 5062)]).needs_advertise()
    assert not LocalAddresses([("udp", "0.0.0.0", 5062)], "sip.example.org").needs_advertise()
    assert not make_local().needs_advertise()
