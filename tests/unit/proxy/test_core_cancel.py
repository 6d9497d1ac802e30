"""CANCEL (RFC 3261 §9, §16.10) in both directions, and timer C."""

from sipws.proxy.transaction import TIMER_C
from sipws.sip import parse

from .harness import CLIENT, CORE, assert_clean, capture, make_proxy, message, response_to, step
from .test_core_from_core import core_invite, registered


def client_cancel(invite: bytes) -> bytes:
    req = parse(invite)
    return message(f"""
CANCEL {req.uri} SIP/2.0
Via: {req.get('via')}
Max-Forwards: 69
To: {req.get('to')}
From: {req.get('from')}
Call-ID: {req.call_id}
CSeq: {req.cseq[0]} CANCEL
Content-Length: 0

""")


def client_ack(invite: bytes, response) -> bytes:
    req = parse(invite)
    return message(f"""
ACK {req.uri} SIP/2.0
Via: {req.get('via')}
Max-Forwards: 69
To: {response.get('to')}
From: {req.get('from')}
Call-ID: {req.call_id}
CSeq: {req.cseq[0]} ACK
Content-Length: 0

""")


def test_cancel_from_client_of_a_ringing_call():
    proxy, clock, out = make_proxy()
    invite = capture("jssip_04_INVITE")
    proxy.receive_from_flow(7, invite, CLIENT, "ws")
    target, inv = out.last_sip()
    proxy.receive_from_sip(response_to(inv, 180, "Ringing"), CORE, "udp")
    proxy.receive_from_flow(7, client_cancel(invite), CLIENT, "ws")
    ok = out.last_flow()
    assert ok.status == 200 and ok.cseq[1] == "CANCEL"
    cancel_target, cancel = out.last_sip()
    assert cancel_target == target and cancel.method == "CANCEL"
    assert cancel.top_via.branch == inv.top_via.branch and len(cancel.vias) == 1
    assert cancel.cseq == (inv.cseq[0], "CANCEL") and cancel.uri == inv.uri
    # the core's 200 to our CANCEL stays with us
    proxy.receive_from_sip(response_to(cancel, 200, "OK"), CORE, "udp")
    assert out.last_flow().cseq[1] == "CANCEL"
    # 487 for the INVITE: relayed, and ACKed hop by hop toward the core
    proxy.receive_from_sip(response_to(inv, 487, "Request Terminated"), CORE, "udp")
    terminated = out.last_flow()
    assert terminated.status == 487
    _, ack = out.last_sip()
    assert ack.method == "ACK" and ack.top_via.branch == inv.top_via.branch
    # the client's own ACK for the 487 ends our server transaction
    proxy.receive_from_flow(7, client_ack(invite, terminated), CLIENT, "ws")
    # not forwarded: INVITE, CANCEL and our ACK are all that went to the core
    assert [m.method for _, m in out.sip_msgs()] == ["INVITE", "CANCEL", "ACK"]
    assert not proxy.table.servers
    assert proxy.counters["cancels_sent"] == 1
    assert_clean(proxy, clock)


def test_cancel_before_any_provisional_waits_for_one():
    proxy, clock, out = make_proxy()
    invite = capture("jssip_04_INVITE")
    proxy.receive_from_flow(7, invite, CLIENT, "ws")
    _, inv = out.last_sip()
    proxy.receive_from_flow(7, client_cancel(invite), CLIENT, "ws")
    assert out.last_flow().status == 200
    assert all(m.method != "CANCEL" for _, m in out.sip_msgs() if hasattr(m, "method")
               and m.is_request)
    proxy.receive_from_sip(response_to(inv, 180, "Ringing"), CORE, "udp")
    _, cancel = out.last_sip()
    assert cancel.method == "CANCEL"
    proxy.receive_from_sip(response_to(inv, 180, "Ringing"), CORE, "udp")
    assert sum(1 for _, m in out.sip_msgs() if m.is_request and m.method == "CANCEL") == 1
    proxy.receive_from_sip(response_to(cancel, 200, "OK"), CORE, "udp")
    proxy.receive_from_sip(response_to(inv, 487, "Request Terminated"), CORE, "udp")
    assert out.last_flow().status == 487
    proxy.receive_from_flow(7, client_ack(invite, out.last_flow()), CLIENT, "ws")
    assert_clean(proxy, clock)


def test_cancel_without_transaction_gets_481():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, client_cancel(capture("jssip_04_INVITE")), CLIENT, "ws")
    assert out.last_flow().status == 481 and out.to_targets == []
    assert_clean(proxy, clock)


def test_cancel_after_final_answered_but_not_forwarded():
    proxy, clock, out = make_proxy()
    invite = capture("jssip_04_INVITE")
    proxy.receive_from_flow(7, invite, CLIENT, "ws")
    _, inv = out.last_sip()
    proxy.receive_from_sip(response_to(inv, 486, "Busy Here"), CORE, "udp")
    proxy.receive_from_flow(7, client_cancel(invite), CLIENT, "ws")
    assert out.last_flow().status == 200
    assert all(not (m.is_request and m.method == "CANCEL") for _, m in out.sip_msgs())
    proxy.receive_from_flow(7, client_ack(invite, out.flow_msgs()[1]), CLIENT, "ws")
    assert_clean(proxy, clock)


def test_cancel_from_core_toward_flow_and_retransmitted_cancel():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    invite = core_invite(path)
    proxy.receive_from_sip(invite, CORE, "udp")
    inv = out.last_flow()
    proxy.receive_from_flow(7, response_to(inv, 180, "Ringing"), CLIENT, "ws")
    cancel = core_invite(path, method="CANCEL").replace(b"Content-Type: application/sdp\r\n", b"")
    proxy.receive_from_sip(cancel, CORE, "udp")
    proxy.receive_from_sip(cancel, CORE, "udp")  # UDP retransmission: 200 again
    oks = [m for _, m in out.sip_msgs() if not m.is_request and m.cseq[1] == "CANCEL"]
    assert [m.status for m in oks] == [200, 200]
    to_flow = out.last_flow()
    assert to_flow.method == "CANCEL" and to_flow.top_via.branch == inv.top_via.branch
    proxy.receive_from_flow(7, response_to(to_flow, 200, "OK"), CLIENT, "ws")
    assert all(key[1] != "CANCEL" for key in proxy.table.clients)  # its 200 ended it
    proxy.receive_from_flow(7, response_to(inv, 487, "Request Terminated"), CLIENT, "ws")
    assert out.last_flow().method == "ACK"  # hop-by-hop ACK toward the client
    final = out.last_sip()[1]
    assert final.status == 487
    kack = core_invite(path, method="ACK").replace(b"To: <sip:alice@example.com>",
                                                  f"To: {final.get('to')}".encode())
    proxy.receive_from_sip(kack, CORE, "udp")
    assert_clean(proxy, clock)


def test_timer_c_cancels_and_answers_408():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    _, inv = out.last_sip()
    proxy.receive_from_sip(response_to(inv, 180, "Ringing"), CORE, "udp")
    step(clock, TIMER_C + 1)
    assert out.last_flow().status == 408
    cancels = [m for _, m in out.sip_msgs() if m.is_request and m.method == "CANCEL"]
    assert cancels and cancels[0].top_via.branch == inv.top_via.branch
    # the callee's late 487 is not relayed a second time
    proxy.receive_from_sip(response_to(inv, 487, "Request Terminated"), CORE, "udp")
    assert [m.status for m in out.flow_msgs()] == [100, 180, 408]
    assert_clean(proxy, clock)
