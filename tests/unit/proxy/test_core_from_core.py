"""Requests from the SIP core (Kamailio/sipp-shaped) toward WebSocket flows."""

import pytest

from sipws.proxy.flows import FlowTokens
from sipws.proxy.targets import Target
from sipws.sip import parse

from .harness import (
    CLIENT, CORE, assert_clean, capture, make_proxy, message, response_to, step,
)

KAMAILIO = Target("sip", "127.0.0.1", 5060, "udp")


def core_invite(route: str, ruri="sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws",
                method="INVITE", to_tag="", branch="z9hG4bK292e.8e23f06870", extra=""):
    route_line = f"Route: {route}\n" if route else ""
    body = "v=0\no=user1 53655765 2353687637 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\n" \
           "t=0 0\nm=audio 6004 RTP/AVP 0\n" if method == "INVITE" else ""
    body = body.replace("\n", "\r\n")
    return message(f"""
{method} {ruri} SIP/2.0
Record-Route: <sip:127.0.0.1:5060;lr>
{route_line}Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}
Via: SIP/2.0/UDP 127.0.0.1:48451;rport=48451;branch=z9hG4bK-6762-1-0
From: sipp <sip:sipp@127.0.0.1:48451>;tag=6762SIPpTag001
To: <sip:alice@example.com>{to_tag}
Call-ID: 1-6762@127.0.0.1
CSeq: 1 {method}
Contact: sip:sipp@127.0.0.1:48451
Max-Forwards: 69
{extra}Content-Type: application/sdp
Content-Length: {len(body)}

{body}""")


def registered(proxy, out, conn_id=7):
    """A flow that registered: the core knows its Path."""
    proxy.receive_from_flow(conn_id, capture("jssip_01_REGISTER"), CLIENT, "ws")
    _, reg = out.last_sip()
    proxy.receive_from_sip(response_to(reg, 200, "OK"), CORE, "udp")
    out.clear()
    return reg.get("path")


def test_invite_with_path_route_reaches_the_flow():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    proxy.receive_from_sip(core_invite(path), CORE, "udp")
    target, trying = out.last_sip()
    assert trying.status == 100 and target == KAMAILIO
    conn_id, data = out.to_flows[-1]
    assert conn_id == 7
    inv = parse(data)
    assert inv.method == "INVITE" and not inv.has("route")
    top = inv.top_via
    assert top.transport == "WS" and top.branch.startswith("z9hG4bKsw")
    # RFC 7118 §8.2 mirrored: the ws entry (facing the client) on top
    rr = inv.record_routes
    assert rr[0].uri.transport == "ws" and proxy.tokens.check(rr[0].uri.user) == 7
    assert rr[1].uri.transport == "udp" and rr[1].uri.user is None
    assert rr[2].uri.port == 5060  # Kamailio's own
    assert inv.max_forwards == 68
    # the client answers on its connection; responses go to Kamailio by Via
    proxy.receive_from_flow(7, response_to(inv, 180, "Ringing"), CLIENT, "ws")
    proxy.receive_from_flow(7, response_to(inv, 200, "OK"), CLIENT, "ws")
    statuses = [(t, m.status) for t, m in out.sip_msgs()]
    assert statuses == [(KAMAILIO, 100), (KAMAILIO, 180), (KAMAILIO, 200)]
    ok = out.last_sip()[1]
    assert len(ok.vias) == 2 and ok.top_via.branch == "z9hG4bK292e.8e23f06870"
    assert_clean(proxy, clock)


def test_token_in_request_uri_without_route():
    proxy, clock, out = make_proxy()
    token = proxy.tokens.make(7)
    proxy.receive_from_flow(7, capture("jssip_03_OPTIONS"), CLIENT, "ws")
    out.to_targets[-1][2]("x")  # that OPTIONS fails; only the flow matters here
    out.clear()
    proxy.receive_from_sip(core_invite("", ruri=f"sip:{token}@127.0.0.1:5062;transport=udp",
                                       method="MESSAGE"), CORE, "udp")
    assert out.to_flows[-1][0] == 7
    msg = out.last_flow()
    proxy.receive_from_flow(7, response_to(msg, 200, "OK"), CLIENT, "ws")
    assert out.last_sip()[1].status == 200
    assert_clean(proxy, clock)


def test_in_dialog_request_pops_both_our_routes():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    token = proxy.tokens.make(7)
    route = f"<sip:127.0.0.1:5062;transport=udp;lr>, <sip:{token}@127.0.0.1:5062;transport=ws;lr>"
    proxy.receive_from_sip(core_invite(route, method="BYE", to_tag=";tag=abc"), CORE, "udp")
    bye = out.last_flow()
    assert bye.method == "BYE" and not bye.has("route")
    # BYE creates no dialog: no Record-Route of ours (Kamailio's stays as it came)
    assert bye.get_all("record-route") == ["<sip:127.0.0.1:5060;lr>"]
    proxy.receive_from_flow(7, response_to(bye, 200, "OK"), CLIENT, "ws")
    assert out.last_sip()[1].status == 200
    assert path
    assert_clean(proxy, clock)


def test_gone_connection_gets_430():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    proxy.flow_closed(7)
    proxy.receive_from_sip(core_invite(path), CORE, "udp")
    statuses = [m.status for _, m in out.sip_msgs()]
    assert statuses == [100, 430]
    assert out.to_flows == []
    # Kamailio ACKs the 430 hop by hop: absorbed
    answer = out.last_sip()[1]
    ack = core_invite(path, method="ACK").replace(b"To: <sip:alice@example.com>",
                                                 f"To: {answer.get('to')}".encode())
    proxy.receive_from_sip(ack, CORE, "udp")
    (server,) = proxy.table.servers.values()
    assert server.state == "confirmed" and out.to_flows == []
    sent = len(out.to_targets)
    step(clock, 4)
    assert len(out.to_targets) == sent  # no timer G retransmission after the ACK
    assert_clean(proxy, clock)


def test_connection_lost_without_notice_gets_430():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    out.gone.add(7)  # the socket is gone; flow_closed not called yet
    proxy.receive_from_sip(core_invite(path, method="MESSAGE"), CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [430]
    assert 7 not in proxy.flows
    assert_clean(proxy, clock)


def test_flow_closing_while_invite_pending_gets_430():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    proxy.receive_from_sip(core_invite(path), CORE, "udp")
    inv = out.last_flow()
    proxy.receive_from_flow(7, response_to(inv, 180, "Ringing"), CLIENT, "ws")
    proxy.flow_closed(7)
    assert [m.status for _, m in out.sip_msgs()] == [100, 180, 430]
    assert_clean(proxy, clock)


@pytest.mark.parametrize("user", [
    "aaaaaaaaaaaaposuvy2y2aw4pv3c764jedhsfxz",   # tampered
    FlowTokens(b"other-key", b"nonce").make(7),  # another key
    FlowTokens(b"test-secret", b"other").make(7),  # another start
    "alice",                                     # not a token
])
def test_bad_token_gets_403(user):
    proxy, clock, out = make_proxy()
    registered(proxy, out)
    proxy.receive_from_sip(core_invite(f"<sip:{user}@127.0.0.1:5062;transport=udp;lr;ob>",
                                       method="MESSAGE"), CORE, "udp")
    answer = out.last_sip()[1]
    assert answer.status == 403 and answer.reason == "Bad Flow Token"
    assert out.to_flows == []
    assert_clean(proxy, clock)


def test_no_token_gets_404_and_invalid_host_never_dialled():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(core_invite(""), CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [100, 404]
    assert all(not t.host.endswith(".invalid") for t, _, _ in out.to_targets)
    assert out.to_flows == []
    assert_clean(proxy, clock)


def test_options_to_us_answered_200():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(core_invite("", ruri="sip:127.0.0.1:5062", method="OPTIONS"),
                           CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [200]
    assert_clean(proxy, clock)


def test_udp_retransmission_absorbed_and_last_response_resent():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    invite = core_invite(path)
    proxy.receive_from_sip(invite, CORE, "udp")
    proxy.receive_from_sip(invite, CORE, "udp")
    assert len(out.to_flows) == 1
    assert [m.status for _, m in out.sip_msgs()] == [100, 100]
    inv = out.last_flow()
    proxy.receive_from_flow(7, response_to(inv, 486, "Busy Here"), CLIENT, "ws")
    # the WS side ACK for the 486 is ours to send (hop by hop)
    ack = out.last_flow()
    assert ack.method == "ACK" and ack.top_via.branch == inv.top_via.branch
    # timer G retransmits the 486 toward Kamailio until its ACK
    step(clock, 0.5)
    assert [m.status for _, m in out.sip_msgs()] == [100, 100, 486, 486]
    busy = out.last_sip()[1]
    proxy.receive_from_sip(invite, CORE, "udp")  # INVITE again: the 486 again
    assert out.last_sip()[1].status == 486
    kack = core_invite(path, method="ACK").replace(b"To: <sip:alice@example.com>",
                                                  f"To: {busy.get('to')}".encode())
    proxy.receive_from_sip(kack, CORE, "udp")
    sent = len(out.to_targets)
    step(clock, 4)
    assert len(out.to_targets) == sent
    assert_clean(proxy, clock)


def test_received_set_when_source_differs_and_rport_honoured():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    data = core_invite(path, method="MESSAGE").replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK292e.8e23f06870",
        b"Via: SIP/2.0/UDP core.example.com;branch=z9hG4bK292e.8e23f06870;rport")
    proxy.receive_from_sip(data, ("10.9.9.9", 5999), "udp")
    msg = out.last_flow()
    core_via = msg.vias[1]
    assert core_via.received == "10.9.9.9" and core_via.rport == 5999
    proxy.receive_from_flow(7, response_to(msg, 200, "OK"), CLIENT, "ws")
    target, ok = out.last_sip()
    assert target == Target("sip", "10.9.9.9", 5999, "udp")
    assert_clean(proxy, clock)


def test_tcp_responses_go_to_the_connection_source():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    data = core_invite(path, method="MESSAGE").replace(b"SIP/2.0/UDP 127.0.0.1:5060",
                                                       b"SIP/2.0/TCP 127.0.0.1:5060")
    proxy.receive_from_sip(data, ("127.0.0.1", 40001), "tcp")
    msg = out.last_flow()
    proxy.receive_from_flow(7, response_to(msg, 202, "Accepted"), CLIENT, "ws")
    target, _ = out.last_sip()
    assert target == Target("sip", "127.0.0.1", 40001, "tcp")
    assert_clean(proxy, clock)


def test_flow_unanswered_invite_gets_408_from_timer_b():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    proxy.receive_from_sip(core_invite(path), CORE, "udp")
    step(clock, 32.5)
    assert len(out.to_flows) == 1  # WebSocket is reliable: no retransmission
    assert [m.status for _, m in out.sip_msgs()][-1] == 408
    assert_clean(proxy, clock)


def test_ack_for_2xx_from_core_relayed_to_flow():
    proxy, clock, out = make_proxy()
    registered(proxy, out)
    token = proxy.tokens.make(7)
    route = f"<sip:127.0.0.1:5062;transport=udp;lr>, <sip:{token}@127.0.0.1:5062;transport=ws;lr>"
    proxy.receive_from_sip(core_invite(route, method="ACK", to_tag=";tag=x"), CORE, "udp")
    ack = out.last_flow()
    assert ack.method == "ACK" and not ack.has("route") and ack.top_via.transport == "WS"
    assert out.to_targets == [] and proxy.table.servers == {}
    proxy.flow_closed(7)
    proxy.receive_from_sip(core_invite(route, method="ACK", to_tag=";tag=x"), CORE, "udp")
    assert proxy.counters["acks_dropped"] == 1
    assert_clean(proxy, clock)


def test_wss_flow_gets_wss_via():
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(9, capture("jssip_03_OPTIONS"), CLIENT, "wss")
    out.to_targets[-1][2]("x")
    token = proxy.tokens.make(9)
    proxy.receive_from_sip(core_invite(f"<sip:{token}@127.0.0.1:5062;lr>", method="MESSAGE"),
                           CORE, "udp")
    assert out.last_flow().top_via.transport == "WSS"
    proxy.flow_closed(9)
    assert_clean(proxy, clock)


def test_message_between_two_flows_through_the_core():
    """Alice (flow 1) sends MESSAGE to Bob (flow 2); the core routes it by Bob's Path."""
    proxy, clock, out = make_proxy()
    bob_path = registered(proxy, out, conn_id=2)
    proxy.receive_from_flow(1, capture("jssip_02_MESSAGE"), ("192.0.2.11", 4000), "ws")
    _, msg = out.last_sip()
    # the core: its own Via on top, Request-URI = Bob's contact, Route = Bob's Path
    msg.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkam1")
    msg.set_request_uri("sip:0sg3kutv@7846ob3kpnpc.invalid;transport=ws")
    msg.push_header("Route", bob_path)
    proxy.receive_from_sip(bytes(msg), CORE, "udp")
    conn_id, data = out.to_flows[-1]
    assert conn_id == 2
    at_bob = parse(data)
    assert len(at_bob.vias) == 4
    proxy.receive_from_flow(2, response_to(at_bob, 200, "OK"), CLIENT, "ws")
    target, ok = out.last_sip()
    assert target == KAMAILIO and len(ok.vias) == 3
    ok.pop_via()
    proxy.receive_from_sip(bytes(ok), CORE, "udp")
    conn_id, data = out.to_flows[-1]
    assert conn_id == 1 and parse(data).status == 200 and len(parse(data).vias) == 1
    assert_clean(proxy, clock)


def two_flow_bye(proxy, route_set: str) -> bytes:
    return message(f"""
BYE sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws SIP/2.0
Via: SIP/2.0/WS bob.invalid;branch=z9hG4bKbye1
Route: {route_set}
Max-Forwards: 70
From: <sip:bob@example.com>;tag=b1
To: <sip:alice@example.com>;tag=a1
Call-ID: dialog1
CSeq: 2 BYE
Content-Length: 0

""")


def test_in_dialog_request_through_the_core_is_not_a_loop():
    """Bob (flow 2) to Alice (flow 1), the core record-routed: the request passes
    us twice with the same Request-URI; that is a spiral, not a loop."""
    proxy, clock, out = make_proxy()
    registered(proxy, out, conn_id=1)
    registered(proxy, out, conn_id=2)
    t1, t2 = proxy.tokens.make(1), proxy.tokens.make(2)
    me = "127.0.0.1:5062"
    routes = (f"<sip:{t2}@{me};transport=ws;lr>, <sip:{me};transport=udp;lr>, "
              f"<sip:127.0.0.1:5060;lr>, <sip:{me};transport=udp;lr>, "
              f"<sip:{t1}@{me};transport=ws;lr>")
    proxy.receive_from_flow(2, two_flow_bye(proxy, routes), ("192.0.2.12", 4002), "ws")
    target, bye = out.last_sip()
    assert target.port == 5060 and bye.method == "BYE"
    bye.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkam2")
    bye.pop_route()  # the core removes its own entry
    proxy.receive_from_sip(bytes(bye), CORE, "udp")
    conn_id, data = out.to_flows[-1]
    assert conn_id == 1 and parse(data).method == "BYE"
    at_alice = parse(data)
    proxy.receive_from_flow(1, response_to(at_alice, 200, "OK"), CLIENT, "ws")
    _, ok = out.last_sip()
    ok.pop_via()
    proxy.receive_from_sip(bytes(ok), CORE, "udp")
    conn_id, data = out.to_flows[-1]
    assert conn_id == 2 and parse(data).status == 200
    assert_clean(proxy, clock)


def test_route_set_between_two_flows_without_the_core_hairpins():
    """The core did not record-route: every Route entry is ours; the request goes
    from flow 2 to flow 1 directly, never to a *.invalid host or back to the core."""
    proxy, clock, out = make_proxy()
    registered(proxy, out, conn_id=1)
    registered(proxy, out, conn_id=2)
    t1, t2 = proxy.tokens.make(1), proxy.tokens.make(2)
    me = "127.0.0.1:5062"
    routes = (f"<sip:{t2}@{me};transport=ws;lr>, <sip:{me};transport=udp;lr>, "
              f"<sip:{me};transport=udp;lr>, <sip:{t1}@{me};transport=ws;lr>")
    proxy.receive_from_flow(2, two_flow_bye(proxy, routes), ("192.0.2.12", 4002), "ws")
    assert out.to_targets == []
    conn_id, data = out.to_flows[-1]
    bye = parse(data)
    assert conn_id == 1 and bye.method == "BYE" and not bye.has("route")
    assert bye.vias[1].received == "192.0.2.12"
    proxy.receive_from_flow(1, response_to(bye, 200, "OK"), CLIENT, "ws")
    conn_id, data = out.to_flows[-1]
    assert conn_id == 2 and parse(data).status == 200 and len(parse(data).vias) == 1
    # and the ACK of a re-INVITE would hairpin the same way
    ack = two_flow_bye(proxy, routes).replace(b"BYE", b"ACK")
    proxy.receive_from_flow(2, ack, ("192.0.2.12", 4002), "ws")
    assert out.to_flows[-1][0] == 1 and parse(out.to_flows[-1][1]).method == "ACK"
    assert_clean(proxy, clock)


def test_non_sip_request_uri_without_token_gets_416_and_no_leak():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(core_invite("", ruri="tel:+15551234", method="MESSAGE"), CORE, "udp")
    answer = out.last_sip()[1]
    assert answer.status == 416 and answer.to.tag
    assert proxy.counters["bad_input"] == 1
    assert_clean(proxy, clock)


def test_2xx_retransmitted_by_the_client_relayed_statelessly_to_the_core():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    proxy.receive_from_sip(core_invite(path), CORE, "udp")
    inv = out.last_flow()
    ok = response_to(inv, 200, "OK")
    proxy.receive_from_flow(7, ok, CLIENT, "ws")
    assert all(k[1] != "INVITE" for k in proxy.table.clients)  # INVITE ended with the 2xx
    proxy.receive_from_flow(7, ok, CLIENT, "ws")  # JsSIP retransmits 2xx until the ACK
    statuses = [(t, m.status) for t, m in out.sip_msgs()]
    assert statuses == [(KAMAILIO, 100), (KAMAILIO, 200), (KAMAILIO, 200)]
    assert proxy.counters["responses_stateless"] == 1
    assert_clean(proxy, clock)


def test_invite_retransmitted_after_2xx_is_absorbed():
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    invite = core_invite(path)
    proxy.receive_from_sip(invite, CORE, "udp")
    inv = out.last_flow()
    proxy.receive_from_flow(7, response_to(inv, 200, "OK"), CLIENT, "ws")
    proxy.receive_from_sip(invite, CORE, "udp")  # crossed the 2xx on the wire
    assert len(out.to_flows) == 1  # not relayed to the client again
    assert [m.status for _, m in out.sip_msgs()] == [100, 200]
    assert_clean(proxy, clock)


def test_options_with_max_forwards_zero_to_us_answered():
    proxy, clock, out = make_proxy()
    data = core_invite("", ruri="sip:127.0.0.1:5062", method="OPTIONS").replace(
        b"Max-Forwards: 69", b"Max-Forwards: 0")
    proxy.receive_from_sip(data, CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [200]
    data = core_invite("", method="OPTIONS").replace(b"Max-Forwards: 69", b"Max-Forwards: 0")
    proxy.receive_from_sip(data.replace(b"z9hG4bK292e", b"z9hG4bK292f"), CORE, "udp")
    assert [m.status for _, m in out.sip_msgs()] == [200, 483]
    assert_clean(proxy, clock)


def test_malformed_request_from_core_gets_400_at_its_source():
    proxy, clock, out = make_proxy()
    data = core_invite("", method="MESSAGE").replace(b"Max-Forwards: 69", b"Max-Forwards: x")
    proxy.receive_from_sip(data, ("10.0.0.7", 5070), "udp")
    target, raw, _ = out.to_targets[-1]
    assert target == Target("sip", "10.0.0.7", 5070, "udp")
    assert raw.startswith(b"SIP/2.0 400 Bad Max-Forwards\r\n")
    assert parse(raw).call_id == "1-6762@127.0.0.1"
    assert_clean(proxy, clock)


def test_initial_request_with_another_flows_route_refused():
    """A client that learnt another client's token (from a Record-Route) cannot
    reach it around the core with a new request."""
    proxy, clock, out = make_proxy()
    registered(proxy, out, conn_id=1)
    registered(proxy, out, conn_id=2)
    t1 = proxy.tokens.make(1)
    data = two_flow_bye(proxy, f"<sip:{t1}@127.0.0.1:5062;transport=ws;lr>").replace(
        b";tag=a1", b"").replace(b"BYE", b"MESSAGE")
    proxy.receive_from_flow(2, data, ("192.0.2.12", 4002), "ws")
    conn_id, raw = out.to_flows[-1]
    assert conn_id == 2 and parse(raw).status == 403
    assert out.to_targets == [] and len(out.to_flows) == 1
    assert_clean(proxy, clock)


def test_response_from_a_client_with_a_forged_flow_via_dropped():
    proxy, clock, out = make_proxy()
    registered(proxy, out, conn_id=1)
    proxy.receive_from_flow(1, capture("jssip_04_INVITE"), CLIENT, "ws")
    _, inv = out.last_sip()
    out.clear()
    # client 2 sends a "200 OK" carrying the Via sipws wrote toward the core
    proxy.receive_from_flow(2, response_to(inv, 200, "OK"), ("192.0.2.12", 4002), "ws")
    assert out.to_flows == [] and out.to_targets == []
    proxy.receive_from_sip(response_to(inv, 486, "Busy Here"), CORE, "udp")
    assert_clean(proxy, clock)
