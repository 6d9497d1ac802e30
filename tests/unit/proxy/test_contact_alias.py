"""[sip] contact_mode = "alias": Contacts rewritten to sipws, restored on the way back."""

import pytest
from twisted.internet.task import Clock

from sipws.config import ConfigError, SipConfig, SipListen, config_from_dict
from sipws.proxy.contact_alias import (
    ALIAS_MAC_BYTES, MAX_ALIASED_URI, AliasAddress, ContactAliases, ContactTooLong,
)
from sipws.proxy.core import EdgeProxy
from sipws.proxy.errors import BadFlowToken
from sipws.proxy.flows import TOKEN_LENGTH, FlowTokens
from sipws.proxy.targets import LocalAddresses, Target
from sipws.sip import parse, parse_uri

from .harness import CLIENT, CORE, Output, assert_clean, capture, message, response_to

KAMAILIO = Target("sip", "127.0.0.1", 5060, "udp")
JSSIP_URI = "sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws"
HERE = AliasAddress("127.0.0.1:5062", "udp")


def make_proxy(mode="alias", listen=(("udp", "127.0.0.1", 5062), ("tcp", "127.0.0.1", 5062)),
               secret=b"test-secret"):
    config = SipConfig(listen=tuple(SipListen(*x) for x in listen),
                       upstream="sip:127.0.0.1:5060;transport=udp", contact_mode=mode)
    clock = Clock()
    out = Output()
    proxy = EdgeProxy(config, clock, FlowTokens(secret, b"nonce"), out)
    return proxy, clock, out


def aliases(secret=b"test-secret", nonce=b"nonce"):
    local = LocalAddresses([("udp", "127.0.0.1", 5062), ("udp", "::1", 5062)])
    return ContactAliases(FlowTokens(secret, nonce), local), FlowTokens(secret, nonce)


# ------------------------------------------------------------------ the alias itself


def test_alias_round_trip_and_form():
    al, tokens = aliases()
    token = tokens.make(7)
    uri = al.make_uri(token, JSSIP_URI + ";ob", HERE)
    parsed = parse_uri(uri)
    assert parsed.host == "127.0.0.1" and parsed.port == 5062 and parsed.transport == "udp"
    assert list(parsed.params) == ["transport"]  # no ob: the client's ob is inside
    assert parsed.user.startswith(token + ".")
    assert set(parsed.user[TOKEN_LENGTH + 1:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert al.parse_user(parsed.user) == (token, JSSIP_URI + ";ob")
    # deterministic: a refresh or an Expires: 0 names the same binding
    assert al.make_uri(token, JSSIP_URI + ";ob", HERE) == uri
    # upper case (an element that rewrites URIs) is accepted, as for tokens
    assert al.parse_user(parsed.user.upper()) == (token, JSSIP_URI + ";ob")
    assert tokens.check(al.parse_user(parsed.user)[0]) == 7


def test_alias_length_is_bounded():
    al, tokens = aliases()
    token = tokens.make(7)
    longest = "sip:" + "u" * (MAX_ALIASED_URI - len("sip:@h.invalid")) + "@h.invalid"
    user = al.make_user(token, longest)
    assert al.parse_user(user)[1] == longest
    assert len(user) == TOKEN_LENGTH + 1 + ((ALIAS_MAC_BYTES + MAX_ALIASED_URI) * 8 + 4) // 5
    with pytest.raises(ContactTooLong):
        al.make_user(token, longest.replace("@", "u@"))


def test_ipv6_client_uri_and_ipv6_sipws_address():
    al, tokens = aliases()
    token = tokens.make(9)
    original = "sip:abc@[2001:db8::1]:5070;transport=ws"
    uri = al.make_uri(token, original, AliasAddress("[::1]:5062", "udp"))
    parsed = parse_uri(uri)
    assert parsed.host == "::1" and parsed.port == 5062
    assert al.alias_of(parsed) == (token, original)


@pytest.mark.parametrize("mangle", [
    lambda u: u[:-1] + ("a" if u[-1] != "a" else "b"),  # last blob char changed
    lambda u: u[:TOKEN_LENGTH + 1] + "x" * 30,  # blob replaced
    lambda u: u[:TOKEN_LENGTH + 1] + "1890",  # not base32
    lambda u: u[:TOKEN_LENGTH + 1],  # nothing after the separator
    lambda u: u[:TOKEN_LENGTH + 1] + "aaaa",  # shorter than a MAC
    lambda u: ("b" if u[0] == "a" else "a") + u[1:],  # token changed: the MAC covers it
    lambda u: u + "=",
])
def test_forged_or_garbled_aliases_are_refused(mangle):
    al, tokens = aliases()
    user = al.make_user(tokens.make(7), JSSIP_URI)
    with pytest.raises(BadFlowToken):
        al.parse_user(mangle(user))


def test_alias_from_another_start_or_key_is_refused():
    al, tokens = aliases()
    user = al.make_user(tokens.make(7), JSSIP_URI)
    for other, _ in (aliases(nonce=b"other"), aliases(secret=b"other")):
        with pytest.raises(BadFlowToken):
            other.parse_user(user)


def test_only_our_address_is_an_alias():
    al, tokens = aliases()
    user = al.make_user(tokens.make(7), JSSIP_URI)
    assert al.alias_of(parse_uri(f"sip:{user}@192.0.2.1:5062")) is None
    assert al.alias_of(parse_uri(f"sip:{tokens.make(7)}@127.0.0.1:5062")) is None
    assert al.alias_of(parse_uri("sip:127.0.0.1:5062")) is None


# ------------------------------------------------------------------ through the proxy


def register(proxy, out, data=None, conn_id=7):
    proxy.receive_from_flow(conn_id, data or capture("jssip_01_REGISTER"), CLIENT, "ws")
    target, reg = out.last_sip()
    assert target == KAMAILIO
    return reg


def test_register_contact_is_rewritten_with_params_kept_and_path_still_added():
    proxy, clock, out = make_proxy()
    reg = register(proxy, out)
    (contact,) = reg.contacts
    token = proxy.tokens.make(7)
    assert contact.uri.host == "127.0.0.1" and contact.uri.port == 5062
    assert contact.uri.transport == "udp" and contact.uri.user.startswith(token + ".")
    assert proxy.aliases.parse_user(contact.uri.user) == (token, JSSIP_URI)
    assert contact.params == {"+sip.ice": None, "reg-id": "1", "expires": "600",
                              "+sip.instance": '"<urn:uuid:7d90c86b-e588-4ee1-8871-e9d2f6dc3c34>"'}
    # Path stays (harmless to a core that ignores it), with ob for an outbound client
    assert reg.get("path") == f"<sip:{token}@127.0.0.1:5062;transport=udp;lr;ob>"
    assert ".invalid" not in reg.get("contact")


def test_register_200_gets_the_clients_contact_back():
    proxy, clock, out = make_proxy()
    reg = register(proxy, out)
    stored = reg.get("contact").replace(";expires=600", ";expires=598")
    other = "<sip:bob@192.0.2.99:5060>;expires=100"
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra=f"Contact: {stored}, {other}"),
                           CORE, "udp")
    ok = out.last_flow()
    assert ok.status == 200
    mine, theirs = ok.contacts
    assert mine.raw_uri == JSSIP_URI and mine.params["expires"] == "598"
    assert mine.params["reg-id"] == "1" and "+sip.instance" in mine.params
    assert str(theirs) == other
    assert_clean(proxy, clock)


def test_register_with_several_contacts_and_compact_form():
    proxy, clock, out = make_proxy()
    text = capture("jssip_01_REGISTER").decode().replace(
        "Contact: <sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws>;+sip.ice;reg-id=1;"
        '+sip.instance="<urn:uuid:7d90c86b-e588-4ee1-8871-e9d2f6dc3c34>";expires=600',
        'm: "Tab One" <sip:one@a.invalid;transport=ws>;q=0.5, sip:two@b.invalid;expires=30\r\n'
        "Contact: <tel:+15551234>")
    reg = register(proxy, out, text.encode())
    one, two, tel = reg.contacts
    assert one.display == "Tab One" and one.params == {"q": "0.5"}
    assert proxy.aliases.alias_of(one.uri)[1] == "sip:one@a.invalid;transport=ws"
    assert two.params == {"expires": "30"}  # a header param of the bare addr-spec
    assert proxy.aliases.alias_of(two.uri)[1] == "sip:two@b.invalid"
    assert tel.raw_uri == "tel:+15551234"  # not SIP: left alone
    # all of them back in the 200
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra="Contact: " + reg.get_all("contact")[0]
                                       + ", " + reg.get_all("contact")[1] + ", <tel:+15551234>"),
                           CORE, "udp")
    uris = [c.raw_uri for c in out.last_flow().contacts]
    assert uris == ["sip:one@a.invalid;transport=ws", "sip:two@b.invalid", "tel:+15551234"]


def test_unregister_names_the_same_binding_and_star_stays():
    proxy, clock, out = make_proxy()
    first = register(proxy, out)
    unreg = capture("jssip_01_REGISTER").replace(b";expires=600", b";expires=0").replace(
        b"CSeq: 1 REGISTER", b"CSeq: 2 REGISTER").replace(b"z9hG4bK7731070", b"z9hG4bK7731071")
    second = register(proxy, out, unreg)
    assert second.contacts[0].raw_uri == first.contacts[0].raw_uri
    assert second.contacts[0].params["expires"] == "0"
    star = capture("jssip_01_REGISTER").replace(b"Expires: 600", b"Expires: 0").replace(
        b"CSeq: 1 REGISTER", b"CSeq: 3 REGISTER").replace(b"z9hG4bK7731070", b"z9hG4bK7731072")
    star = b"\r\n".join(b"Contact: *" if line.startswith(b"Contact:") else line
                        for line in star.split(b"\r\n"))
    third = register(proxy, out, star)
    assert third.get("contact") == "*" and third.get("expires") == "0"


def test_path_mode_leaves_contacts_alone():
    proxy, clock, out = make_proxy(mode="path")
    reg = register(proxy, out)
    assert reg.contacts[0].raw_uri == JSSIP_URI
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    assert out.last_sip()[1].contacts[0].raw_uri == JSSIP_URI + ";ob"


def test_too_long_contact_in_a_request_gets_400():
    proxy, clock, out = make_proxy()
    long_user = "u" * MAX_ALIASED_URI
    data = capture("jssip_01_REGISTER").replace(b"sip:7l5foh4m@", f"sip:{long_user}@".encode())
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.to_targets == []
    answer = out.last_flow()
    assert answer.status == 400 and answer.reason == "Contact URI Too Long"


def core_request(ruri, method="INVITE", route="", to_tag="", branch="z9hG4bK292e.8e23f06870"):
    route_line = f"Route: {route}\n" if route else ""
    return message(f"""
{method} {ruri} SIP/2.0
Record-Route: <sip:127.0.0.1:5060;lr>
{route_line}Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}
Via: SIP/2.0/UDP 127.0.0.1:48451;rport=48451;branch=z9hG4bK-6762-1-0
From: sipp <sip:sipp@127.0.0.1:48451>;tag=6762SIPpTag001
To: <sip:alice@example.com>{to_tag}
Call-ID: 1-6762@127.0.0.1
CSeq: 1 {method}
Contact: <sip:sipp@127.0.0.1:48451>
Max-Forwards: 69
Content-Length: 0

""")


def registered_alias(proxy, out, conn_id=7):
    reg = register(proxy, out, conn_id=conn_id)
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra="Contact: " + reg.get("contact")),
                           CORE, "udp")
    out.clear()
    return reg.contacts[0].raw_uri


def test_core_invite_to_the_stored_contact_reaches_the_client_and_the_answer_is_aliased():
    proxy, clock, out = make_proxy()
    stored = registered_alias(proxy, out)
    # A core that ignores Path: lookup() gives the stored Contact, no Route.
    proxy.receive_from_sip(core_request(stored), CORE, "udp")
    conn_id, data = out.to_flows[-1]
    inv = parse(data)
    assert conn_id == 7 and inv.uri == JSSIP_URI
    token = proxy.tokens.make(7)
    rr = inv.record_routes
    assert rr[0].uri.user == token and rr[0].uri.transport == "ws"
    # the client's answers carry its own Contact: aliased toward the core
    for status in (180, 200):
        proxy.receive_from_flow(7, response_to(inv, status, "X", extra=f"Contact: <{JSSIP_URI};ob>"),
                                CLIENT, "ws")
        answer = out.last_sip()[1]
        assert answer.status == status
        assert proxy.aliases.alias_of(answer.contacts[0].uri) == (token, JSSIP_URI + ";ob")
        alias = answer.contacts[0].raw_uri
    # the ACK and the BYE come back along the route set to the answer's Contact
    route = f"<sip:127.0.0.1:5062;transport=udp;lr>, <sip:{token}@127.0.0.1:5062;transport=ws;lr>"
    proxy.receive_from_sip(core_request(alias, "ACK", route, ";tag=callee1",
                                        branch="z9hG4bK292e.ack"), CORE, "udp")
    ack = out.last_flow()
    assert ack.method == "ACK" and ack.uri == JSSIP_URI + ";ob" and not ack.has("route")
    proxy.receive_from_sip(core_request(alias, "BYE", route, ";tag=callee1",
                                        branch="z9hG4bK292e.bye"), CORE, "udp")
    bye = out.last_flow()
    assert bye.method == "BYE" and bye.uri == JSSIP_URI + ";ob"
    proxy.receive_from_flow(7, response_to(bye, 200, "OK"), CLIENT, "ws")
    assert out.last_sip()[1].status == 200
    assert_clean(proxy, clock)


def test_core_message_to_alias_with_path_route_too():
    """A core that does honour Path: Route and Request-URI both lead here."""
    proxy, clock, out = make_proxy()
    stored = registered_alias(proxy, out)
    token = proxy.tokens.make(7)
    proxy.receive_from_sip(core_request(stored, "MESSAGE",
                                        f"<sip:{token}@127.0.0.1:5062;transport=udp;lr;ob>"),
                           CORE, "udp")
    msg = out.last_flow()
    assert msg.uri == JSSIP_URI and not msg.has("route")
    proxy.receive_from_flow(7, response_to(msg, 200, "OK"), CLIENT, "ws")
    assert_clean(proxy, clock)


def test_invite_from_client_has_its_contact_aliased_and_core_answer_untouched():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    target, inv = out.last_sip()
    token = proxy.tokens.make(7)
    assert proxy.aliases.alias_of(inv.contacts[0].uri) == (token, JSSIP_URI + ";ob")
    proxy.receive_from_sip(response_to(inv, 200, "OK", extra="Contact: <sip:bob@192.0.2.5:5060>"),
                           CORE, "udp")
    ok = out.last_flow()
    assert ok.status == 200 and ok.contacts[0].raw_uri == "sip:bob@192.0.2.5:5060"
    assert_clean(proxy, clock)


def test_too_long_contact_in_a_clients_answer_is_relayed_as_it_is():
    proxy, clock, out = make_proxy()
    stored = registered_alias(proxy, out)
    proxy.receive_from_sip(core_request(stored), CORE, "udp")
    inv = out.last_flow()
    long_contact = f"<sip:{'u' * MAX_ALIASED_URI}@x.invalid;transport=ws>"
    proxy.receive_from_flow(7, response_to(inv, 200, "OK", extra=f"Contact: {long_contact}"),
                            CLIENT, "ws")
    ok = out.last_sip()[1]
    assert ok.status == 200 and ok.get("contact") == long_contact


def test_garbled_contact_in_a_request_gets_400():
    proxy, clock, out = make_proxy()
    data = capture("jssip_04_INVITE").replace(b"Contact: <sip:7l5foh4m@", b"Contact: <sip:7l5f@oh4m@")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.last_flow().status == 400 and not [m for _, m in out.sip_msgs() if m.is_request]


def test_alias_for_a_gone_connection_gets_430():
    proxy, clock, out = make_proxy()
    stored = registered_alias(proxy, out)
    proxy.flow_closed(7)
    proxy.receive_from_sip(core_request(stored), CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [100, 430]
    assert out.to_flows == []


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "ACK"])
def test_forged_alias_gets_the_bad_token_answer(method):
    proxy, clock, out = make_proxy()
    stored = registered_alias(proxy, out)
    uri = parse_uri(stored)
    user = uri.user
    forged = stored.replace(user, user[:-3] + ("aaa" if not user.endswith("aaa") else "bbb"))
    proxy.receive_from_sip(core_request(forged, method), CORE, "udp")
    assert out.to_flows == []
    statuses = [m.status for _, m in out.sip_msgs()]
    if method == "ACK":
        assert statuses == [] and proxy.counters["acks_dropped"] == 1
    else:
        assert statuses[-1] == 403 and out.last_sip()[1].reason == "Bad Flow Token"
    # the same answer as a bad flow token in the Request-URI
    out.clear()
    if method != "ACK":
        bad = f"sip:{'a' * TOKEN_LENGTH}@127.0.0.1:5062;transport=udp"
        proxy.receive_from_sip(core_request(bad, method, branch="z9hG4bK.other"), CORE, "udp")
        assert out.last_sip()[1].status == 403


def test_hairpinned_reinvite_between_two_clients_keeps_aliases_consistent():
    proxy, clock, out = make_proxy()
    registered_alias(proxy, out, conn_id=7)
    bob_reg = capture("jssip_01_REGISTER").replace(b"7l5foh4m", b"b0b0b0b0").replace(
        b"alice", b"bob").replace(b"h0b636t6hfh82jc4o4h8ah", b"bobcallid")
    proxy.receive_from_flow(8, bob_reg, CLIENT, "ws")
    _, reg = out.last_sip()
    proxy.receive_from_sip(response_to(reg, 200, "OK"), CORE, "udp")
    out.clear()
    bob_alias = reg.contacts[0].raw_uri
    tok7, tok8 = proxy.tokens.make(7), proxy.tokens.make(8)
    # alice re-INVITEs bob within a dialog whose route set is sipws's entries only
    reinvite = message(f"""
INVITE {bob_alias} SIP/2.0
Via: SIP/2.0/WS 9t7ivgcfqmuh.invalid;branch=z9hG4bKre1
Route: <sip:127.0.0.1:5062;transport=udp;lr>, <sip:{tok8}@127.0.0.1:5062;transport=ws;lr>
Max-Forwards: 69
To: <sip:bob@example.com>;tag=bobtag
From: <sip:alice@example.com>;tag=alicetag
Call-ID: hairpin1
CSeq: 2 INVITE
Contact: <{JSSIP_URI};ob>
Content-Length: 0

""")
    proxy.receive_from_flow(7, reinvite, CLIENT, "ws")
    conn_id, data = out.to_flows[-1]
    inv = parse(data)
    assert conn_id == 8 and inv.uri == "sip:b0b0b0b0@9t7ivgcfqmuh.invalid;transport=ws"
    assert proxy.aliases.alias_of(inv.contacts[0].uri) == (tok7, JSSIP_URI + ";ob")
    proxy.receive_from_flow(8, response_to(inv, 200, "OK",
                                           extra="Contact: <sip:b0b0b0b0@x.invalid;transport=ws;ob>"),
                            CLIENT, "ws")
    conn_id, data = out.to_flows[-1]
    ok = parse(data)
    assert conn_id == 7 and ok.status == 200
    assert proxy.aliases.alias_of(ok.contacts[0].uri) == (tok8, "sip:b0b0b0b0@x.invalid;transport=ws;ob")


def test_ipv6_sip_socket_gives_ipv6_alias():
    proxy, clock, out = make_proxy(listen=(("udp", "::1", 5062),),)
    proxy.upstream = Target("sip", "::1", 5060, "udp")
    proxy.receive_from_flow(7, capture("jssip_01_REGISTER"), CLIENT, "ws")
    _, reg = out.last_sip()
    contact = reg.contacts[0]
    assert contact.raw_uri.split("@")[1] == "[::1]:5062;transport=udp"
    assert proxy.aliases.alias_of(contact.uri)[1] == JSSIP_URI
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra="Contact: " + reg.get("contact")),
                           ("::1", 5060), "udp")
    assert out.last_flow().contacts[0].raw_uri == JSSIP_URI


def test_contact_mode_config():
    assert SipConfig().contact_mode == "path"
    assert config_from_dict({"sip": {"contact_mode": "alias"}}).sip.contact_mode == "alias"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sip": {"contact_mode": "mangle"}})
    assert str(info.value) == "config: [sip] contact_mode: must be one of path, alias, got 'mangle'"
