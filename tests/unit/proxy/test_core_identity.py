"""[auth] bind_identity in the edge proxy: 403 from sipws, nothing relayed, counted."""

from sipws.proxy.toward_core import IDENTITY_MISMATCH_REASON

from .harness import CLIENT, CORE, make_proxy, message, response_to


def req(method, from_user, to_user, to_tag="", call="c1"):
    tag = f";tag={to_tag}" if to_tag else ""
    return message(f"""
{method} sip:{to_user}@example.com SIP/2.0
Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK{call}
From: <sip:{from_user}@example.com>;tag=f1
To: <sip:{to_user}@example.com>{tag}
Call-ID: {call}
CSeq: 1 {method}
Max-Forwards: 70
Content-Length: 0

""")


def test_register_as_other_is_refused_not_relayed():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, req("REGISTER", "alice", "bob"), CLIENT, "ws", identity="alice")
    assert out.to_targets == []
    answer = out.last_flow()
    assert answer.status == 403 and answer.reason == IDENTITY_MISMATCH_REASON
    assert proxy.counters["identity_mismatch"] == 1


def test_register_as_self_and_other_requests_are_relayed():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, req("REGISTER", "alice", "alice"), CLIENT, "ws", identity="alice")
    proxy.receive_from_flow(7, req("INVITE", "alice", "bob", call="c2"), CLIENT, "ws", identity="alice")
    assert [m.method for _, m in out.sip_msgs()] == ["REGISTER", "INVITE"]
    assert proxy.counters["identity_mismatch"] == 0


def test_initial_request_from_other_refused_in_dialog_not():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, req("INVITE", "bob", "carol"), CLIENT, "ws", identity="alice@example.com")
    assert out.last_flow().status == 403
    proxy.receive_from_flow(7, req("MESSAGE", "bob", "carol", call="c3"), CLIENT, "ws",
                            identity="alice@example.com")
    assert out.last_flow().status == 403
    assert out.to_targets == []
    # in dialog (To tag): the dialog's From/To, not checked
    proxy.receive_from_flow(7, req("BYE", "carol", "alice", to_tag="t9", call="c4"), CLIENT, "ws",
                            identity="alice@example.com")
    assert [m.method for _, m in out.sip_msgs()] == ["BYE"]
    assert proxy.counters["identity_mismatch"] == 2


def test_requests_toward_the_flow_unaffected():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, req("REGISTER", "alice", "alice"), CLIENT, "ws", identity="alice")
    _, reg = out.last_sip()
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra=f"Path: {reg.get('path')}"), CORE, "udp")
    assert out.last_flow().status == 200


def test_no_identity_no_check():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, req("REGISTER", "alice", "bob"), CLIENT, "ws")
    assert [m.method for _, m in out.sip_msgs()] == ["REGISTER"]
