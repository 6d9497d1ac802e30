"""Requests from WebSocket clients (JsSIP-shaped) toward the core, and their responses."""

import pytest

from sipws.proxy.core import FLOW_VIA_PARAM
from sipws.proxy.targets import Target
from sipws.sip import parse

from .harness import (
    CLIENT, CORE, assert_clean, capture, make_proxy, message, response_to, step,
)

UPSTREAM = Target("sip", "127.0.0.1", 5060, "udp")


def test_register_with_outbound_gets_path_with_token_and_ob():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_01_REGISTER"), CLIENT, "ws")
    target, reg = out.last_sip()
    assert target == UPSTREAM
    path = reg.paths
    assert len(path) == 1
    uri = path[0].uri
    assert proxy.tokens.check(uri.user) == 7
    assert (uri.host, uri.port, uri.transport) == ("127.0.0.1", 5062, "udp")
    assert "lr" in uri.params and "ob" in uri.params
    # JsSIP already says Supported: path; nothing added
    assert reg.get_all("supported") == ["path", "gruu", "outbound"]
    top, client = reg.vias[:2]
    assert top.transport == "UDP" and top.sent_by == "127.0.0.1:5062"
    assert top.branch.startswith("z9hG4bKsw")
    assert proxy.tokens.check(top.params[FLOW_VIA_PARAM]) == 7
    assert client.received == "192.0.2.10" and client.rport == 56143
    assert reg.max_forwards == 68
    assert not reg.has("record-route")
    # the registrar's 200 goes back to the flow without our Via
    proxy.receive_from_sip(response_to(reg, 200, "OK", extra=f"Path: {reg.get('path')}"),
                           CORE, "udp")
    ok = out.last_flow()
    assert out.to_flows[-1][0] == 7
    assert ok.status == 200 and len(ok.vias) == 1 and ok.top_via.host == "9t7ivgcfqmuh.invalid"
    assert_clean(proxy, clock)


def test_register_without_outbound_or_supported_path():
    proxy, clock, out = make_proxy()
    data = capture("sipjs_01_REGISTER").replace(b"Supported: outbound, path, gruu",
                                                 b"Supported: gruu")
    proxy.receive_from_flow(3, data, CLIENT, "wss")
    _, reg = out.last_sip()
    uri = reg.paths[0].uri
    assert "ob" not in uri.params  # no reg-id / +sip.instance in the Contact
    assert "path" in reg.get_all("supported")
    proxy.receive_from_sip(response_to(reg, 200, "OK"), CORE, "udp")
    assert_clean(proxy, clock)


def test_invite_gets_100_two_record_routes_and_is_retransmitted_on_udp():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    trying = out.last_flow()
    assert trying.status == 100 and trying.cseq == (3690, "INVITE")
    target, inv = out.last_sip()
    assert target == UPSTREAM
    rr = inv.record_routes
    assert len(rr) == 2
    # RFC 7118 §8.2: the core-facing entry on top, the ws one with the token below
    assert rr[0].uri.transport == "udp" and rr[0].uri.user is None
    assert rr[1].uri.transport == "ws" and proxy.tokens.check(rr[1].uri.user) == 7
    assert inv.body.startswith(b"v=0")
    # timer A: the same bytes again after T1, 2*T1 ...
    first = out.to_targets[-1][1]
    step(clock, 0.5)
    assert out.to_targets[-1][1] == first and len(out.to_targets) == 2
    step(clock, 1.0)
    assert len(out.to_targets) == 3
    # the callee answers: 100 is not relayed, 180 and 200 are
    proxy.receive_from_sip(response_to(inv, 100, "Trying", to_tag=None), CORE, "udp")
    assert len(out.to_flows) == 1
    proxy.receive_from_sip(response_to(inv, 180, "Ringing"), CORE, "udp")
    proxy.receive_from_sip(response_to(inv, 200, "OK"), CORE, "udp")
    ringing, ok = out.flow_msgs(7)[1:]
    assert ringing.status == 180 and ok.status == 200
    assert len(ok.vias) == 1 and len(ok.record_routes) == 2
    step(clock, 10)
    assert len(out.to_targets) == 3  # no more retransmissions
    assert_clean(proxy, clock)


def test_ack_for_2xx_relayed_statelessly_along_route_set():
    proxy, clock, out = make_proxy()
    token = proxy.tokens.make(7)
    ack = message(f"""
ACK sip:bob@10.0.0.9:5080 SIP/2.0
Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK143601
Route: <sip:{token}@127.0.0.1:5062;transport=ws;lr>
Route: <sip:127.0.0.1:5062;transport=udp;lr>
Route: <sip:10.0.0.5:5070;lr>
Max-Forwards: 69
To: <sip:bob@example.com>;tag=srv1
From: <sip:alice@example.com>;tag=a1
Call-ID: call1
CSeq: 3690 ACK
Content-Length: 0

""")
    proxy.receive_from_flow(7, ack, CLIENT, "ws")
    target, fwd = out.last_sip()
    assert target == Target("sip", "10.0.0.5", 5070, "udp")
    assert fwd.method == "ACK" and [r.uri.host for r in fwd.routes] == ["10.0.0.5"]
    assert len(fwd.vias) == 2
    assert len(proxy.table) == 0
    # the same ACK again (stateless) gets the same branch
    proxy.receive_from_flow(7, ack, CLIENT, "ws")
    assert out.sip_msgs()[-1][1].top_via.branch == fwd.top_via.branch
    assert out.to_flows == []
    assert_clean(proxy, clock)


def test_invite_unanswered_on_udp_gets_408_after_timer_b():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    step(clock, 31.9)
    assert len(out.to_targets) == 7  # initial + timer A at 0.5, 1.5 ... 31.5
    assert out.last_flow().status == 100
    step(clock, 0.2)
    timeout = out.last_flow()
    assert timeout.status == 408 and timeout.to.tag
    # the client ACKs the 408 (hop by hop): absorbed
    ack = message(f"""
ACK sip:bob@example.com SIP/2.0
Via: SIP/2.0/WS 9t7ivgcfqmuh.invalid;branch=z9hG4bK759866
Max-Forwards: 69
To: {timeout.get('to')}
From: {timeout.get('from')}
Call-ID: {timeout.call_id}
CSeq: 3690 ACK
Content-Length: 0

""")
    proxy.receive_from_flow(7, ack, CLIENT, "ws")
    assert len(proxy.table) == 0
    assert len(out.to_targets) == 7
    assert_clean(proxy, clock)


def test_message_unanswered_timer_e_then_408():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    assert out.to_flows == []  # no 100 for non-INVITE
    step(clock, 31.9)
    # 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5
    assert len(out.to_targets) == 11
    step(clock, 0.2)
    assert out.last_flow().status == 408
    assert_clean(proxy, clock)


def test_transport_error_gives_503_at_once():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    on_error = out.to_targets[-1][2]
    on_error("connection refused")
    assert out.last_flow().status == 503
    assert len(proxy.table) == 0
    assert_clean(proxy, clock)


def test_tcp_upstream_no_retransmissions():
    proxy, clock, out = make_proxy(upstream="sip:core.example.com;transport=tcp")
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    target, msg = out.last_sip()
    assert target == Target("sip", "core.example.com", None, "tcp")
    assert msg.top_via.transport == "TCP" and msg.content_length == len(msg.body)
    step(clock, 20)
    assert len(out.to_targets) == 1
    step(clock, 12.1)
    assert out.last_flow().status == 408
    assert_clean(proxy, clock)


def test_preloaded_route_followed_and_own_route_removed():
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE").replace(
        b"Max-Forwards:", b"Route: <sip:127.0.0.1:5062;lr>, <sip:edge.example.net:5070;lr>\r\n"
        b"Max-Forwards:")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    target, msg = out.last_sip()
    assert target == Target("sip", "edge.example.net", 5070, "udp")
    assert [r.uri.host for r in msg.routes] == ["edge.example.net"]
    proxy.receive_from_sip(response_to(msg, 200, "OK"), CORE, "udp")
    assert out.last_flow().status == 200
    assert_clean(proxy, clock)


def test_route_to_invalid_host_is_never_dialled():
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE").replace(
        b"Max-Forwards:", b"Route: <sip:x@abc.invalid;transport=ws;lr>\r\nMax-Forwards:")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.to_targets == []
    assert out.last_flow().status == 404
    assert_clean(proxy, clock)


def test_max_forwards_zero_gets_483():
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE").replace(b"Max-Forwards: 69", b"Max-Forwards: 0")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.last_flow().status == 483 and out.to_targets == []
    assert_clean(proxy, clock)



def test_request_with_max_vias_gets_483_not_a_response_we_would_refuse():
    """70 Vias (the parser's max_vias) parse; with ours pushed the request left with 71, and the
    answer coming back (which carries every Via) was refused by our own parser and dropped: the
    client waited for its timeout.  Found by bench/fuzz.py (sip target, seed 20240613, input
    320933: a captured INVITE with its Via line repeated to 70)."""
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE")
    via = b"Via: SIP/2.0/WS 9t7ivgcfqmuh.invalid;branch=z9hG4bK1259671\r\n"
    relayed = b"Via: SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKhop\r\n"
    many = data.replace(via, via + relayed * 69)
    assert len(parse(many).vias) == 70
    proxy.receive_from_flow(7, many, CLIENT, "ws")
    assert out.last_flow().status == 483 and out.to_targets == []
    assert_clean(proxy, clock)
    # one fewer still goes through
    proxy.receive_from_flow(7, data.replace(via, via + relayed * 68), CLIENT, "ws")
    _, forwarded = out.last_sip()
    assert len(forwarded.vias) == 70

def test_absent_max_forwards_counts_as_70():
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE").replace(b"Max-Forwards: 69\r\n", b"")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.last_sip()[1].max_forwards == 69
    out.to_targets[-1][2]("x")
    assert_clean(proxy, clock)


def test_loop_back_to_us_gets_482():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    _, fwd = out.last_sip()
    # a misconfigured core sends it straight back to us, Request-URI unchanged
    fwd.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcore1")
    proxy.receive_from_sip(bytes(fwd), CORE, "udp")
    target, answer = out.last_sip()
    assert answer.status == 482 and target == Target("sip", "127.0.0.1", 5060, "udp")
    proxy.receive_from_sip(response_to(fwd, 482, "Loop Detected").replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcore1\r\n", b""), CORE, "udp")
    assert out.last_flow().status == 482
    assert_clean(proxy, clock)


def test_malformed_request_gets_400_with_reason_and_flow_stays_usable():
    proxy, clock, out = make_proxy()
    bad = capture("jssip_02_MESSAGE").replace(b"Max-Forwards: 69", b"Max-Forwards: lots")
    proxy.receive_from_flow(7, bad, CLIENT, "ws")
    answer = out.last_flow()
    assert answer.status == 400 and answer.reason == "Bad Max-Forwards"
    request = parse(capture("jssip_02_MESSAGE"))
    assert answer.get("via") == request.get("via") and answer.call_id == request.call_id
    assert answer.cseq == request.cseq
    assert out.to_targets == []
    # a CSeq the parser refuses is copied as written: the client can match it
    proxy.receive_from_flow(7, bad.replace(b"CSeq: ", b"CSeq: x"), CLIENT, "ws")
    assert out.to_flows[-1][1].startswith(b"SIP/2.0 400 ")
    assert b"\r\nCSeq: x" in out.to_flows[-1][1]
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    assert len(out.to_targets) == 1
    out.to_targets[-1][2]("x")
    assert_clean(proxy, clock)


@pytest.mark.parametrize("data", [
    b"garbage", b"\x00\xff" * 20, b"INVITE sip:x SIP/2.0\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: broken\r\n\r\n",
])
def test_unanswerable_garbage_is_dropped(data):
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.to_flows == [] and out.to_targets == []
    assert proxy.counters["malformed"] == 1
    assert_clean(proxy, clock)


def test_keepalive_is_ignored():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, b"\r\n\r\n", CLIENT, "ws")
    assert out.to_flows == [] and out.to_targets == [] and not proxy.counters


def test_non_sip_route_gets_416():
    proxy, clock, out = make_proxy()
    data = capture("jssip_02_MESSAGE").replace(
        b"Max-Forwards:", b"Route: <tel:+123>\r\nMax-Forwards:")
    proxy.receive_from_flow(7, data, CLIENT, "ws")
    assert out.last_flow().status == 416
    assert_clean(proxy, clock)


def test_response_with_foreign_top_via_dropped():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(capture("uac_03_received_200").replace(b"\n", b"\n"), CORE, "udp")
    assert out.to_flows == [] and out.to_targets == []
    assert proxy.counters["responses_dropped"] == 1


def test_malformed_response_dropped():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    _, fwd = out.last_sip()
    bad = response_to(fwd, 200, "OK").replace(b"CSeq: ", b"CSeq: zz")
    proxy.receive_from_sip(bad, CORE, "udp")
    assert out.to_flows == [] and len(out.to_targets) == 1
    proxy.receive_from_sip(response_to(fwd, 200, "OK"), CORE, "udp")
    assert out.last_flow().status == 200
    assert_clean(proxy, clock)


def test_2xx_retransmission_after_transaction_reaches_the_flow():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_04_INVITE"), CLIENT, "ws")
    _, inv = out.last_sip()
    ok = response_to(inv, 200, "OK")
    proxy.receive_from_sip(ok, CORE, "udp")
    assert not proxy.table.clients  # the client INVITE transaction ends with the 2xx
    proxy.receive_from_sip(ok, CORE, "udp")  # the UAS did not get the ACK yet
    again = out.flow_msgs(7)
    assert [m.status for m in again] == [100, 200, 200]
    assert bytes(again[1]) == bytes(again[2])
    # a late non-2xx without transaction is not relayed
    proxy.receive_from_sip(response_to(inv, 486, "Busy"), CORE, "udp")
    assert len(out.to_flows) == 3
    assert_clean(proxy, clock)


def test_response_to_closed_flow_is_dropped():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    _, fwd = out.last_sip()
    out.gone.add(7)
    proxy.flow_closed(7)
    proxy.receive_from_sip(response_to(fwd, 200, "OK"), CORE, "udp")
    assert out.to_flows == []
    assert proxy.counters["response_to_gone_flow"] == 1
    assert_clean(proxy, clock)
    assert proxy.flows == {}


def test_advertise_written_in_via_path_and_record_route():
    proxy, clock, out = make_proxy(advertise="sip.example.org:5099")
    proxy.receive_from_flow(7, capture("jssip_01_REGISTER"), CLIENT, "ws")
    _, reg = out.last_sip()
    assert reg.top_via.sent_by == "sip.example.org:5099"
    assert reg.paths[0].uri.host_port == "sip.example.org:5099"
    proxy.receive_from_sip(response_to(reg, 200, "OK"), CORE, "udp")
    assert out.last_flow().status == 200
    assert_clean(proxy, clock)


def test_websocket_upstream_target_and_via():
    proxy, clock, out = make_proxy(upstream="wss://core.example.com:8443/sip")
    proxy.receive_from_flow(7, capture("jssip_01_REGISTER"), CLIENT, "ws")
    target, reg = out.last_sip()
    assert target == Target("sips", "core.example.com", 8443, "wss", "/sip")
    assert reg.top_via.transport == "WSS"
    assert reg.paths[0].uri.transport == "ws"
    # the upstream WebSocket server answers on the connection sipws dialled
    proxy.receive_from_sip(response_to(reg, 200, "OK"), ("10.1.1.1", 8443), "wss")
    assert out.last_flow().status == 200
    assert_clean(proxy, clock)


def test_route_to_our_websocket_address_is_ours():
    from sipws.proxy.core import EdgeProxy
    from sipws.proxy.flows import FlowTokens
    from sipws.proxy.targets import LocalAddresses
    from sipws.config import SipConfig
    from twisted.internet.task import Clock
    from .harness import Output

    config = SipConfig(upstream="sip:127.0.0.1:5060;transport=udp")
    local = LocalAddresses.from_config(config, also=[("ws.example.com", 443)])
    clock, out = Clock(), Output()
    proxy = EdgeProxy(config, clock, FlowTokens(b"k", b"n"), out, local=local)
    data = capture("jssip_02_MESSAGE").replace(
        b"Max-Forwards:", b"Route: <sip:ws.example.com:443;transport=ws;lr>\r\nMax-Forwards:")
    proxy.receive_from_flow(7, data, CLIENT, "wss")
    target, msg = out.last_sip()
    assert target == UPSTREAM and not msg.has("route")
    out.to_targets[-1][2]("x")
    assert_clean(proxy, clock)
