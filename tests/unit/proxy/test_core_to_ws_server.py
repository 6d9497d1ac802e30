"""SIP-side requests toward a WebSocket server that sipws dials (client role, issue 5)."""

from sipws.proxy.targets import Target
from sipws.sip import parse

from .harness import CORE, assert_clean, make_proxy, message, response_to

WS_SERVER = Target("sip", "127.0.0.1", 8080, "ws")


def sip_side_request(method="REGISTER", route="<sip:127.0.0.1:8080;transport=ws;lr>",
                     ruri="sip:example.com", branch="z9hG4bK-sipp-1"):
    route_line = f"Route: {route}\n" if route else ""
    return message(f"""
{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:48451;branch={branch};rport
{route_line}From: <sip:alice@example.com>;tag=1
To: <sip:alice@example.com>
Call-ID: to-ws-1@127.0.0.1
CSeq: 1 {method}
Contact: <sip:alice@127.0.0.1:48451>
Max-Forwards: 70
Content-Length: 0

""")


def test_route_with_transport_ws_goes_to_the_ws_server_and_back():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(sip_side_request(), CORE, "udp")
    target, data, _ = out.to_targets[-1]
    assert target == WS_SERVER
    req = parse(data)
    assert req.top_via.transport == "WS" and req.top_via.branch.startswith("z9hG4bKsw")
    assert req.vias[1].rport == CORE[1]
    assert req.max_forwards == 69
    assert str(req.routes[0].uri).startswith("sip:127.0.0.1:8080")  # not ours: kept
    proxy.receive_from_sip(response_to(req, 200, "OK"), ("127.0.0.1", 8080), "ws")
    back_target, ok = out.last_sip()
    assert ok.status == 200 and len(ok.vias) == 1 and back_target.port == CORE[1]
    assert_clean(proxy, clock)


def test_request_uri_with_transport_ws_without_route():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(sip_side_request("OPTIONS", route="", ruri="sips:ws.example.net;transport=ws"),
                           CORE, "udp")
    target, data, _ = out.to_targets[-1]
    assert target == Target("sips", "ws.example.net", None, "wss")


def test_dialog_requests_get_a_double_record_route_ws_entry_on_top():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(sip_side_request("SUBSCRIBE"), CORE, "udp")
    req = parse(out.to_targets[-1][1])
    top, bottom = req.record_routes[:2]
    assert top.uri.transport == "ws" and bottom.uri.transport == "udp"
    assert top.uri.user is None and bottom.uri.user is None


def test_connect_failure_gives_503():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(sip_side_request(), CORE, "udp")
    out.to_targets[-1][2]("connection refused")
    _, resp = out.last_sip()
    assert resp.status == 503
    assert_clean(proxy, clock)


def test_sip_side_request_without_token_or_ws_hop_is_still_404():
    proxy, clock, out = make_proxy()
    proxy.receive_from_sip(sip_side_request(route="<sip:10.0.0.9:5060;lr>"), CORE, "udp")
    _, resp = out.last_sip()
    assert resp.status == 404


def test_ws_upstream_receives_sip_side_requests_but_not_its_own():
    proxy, clock, out = make_proxy(upstream="ws://127.0.0.1:8080/sip")
    proxy.receive_from_sip(sip_side_request(route="", ruri="sip:bob@example.com"), CORE, "udp")
    target, _, _ = out.to_targets[-1]
    assert target.transport == "ws" and target.resource == "/sip"
    out.clear()
    # the same kind of request arriving *from* the ws upstream is not sent back to it
    proxy.receive_from_sip(sip_side_request(route="", ruri="sip:bob@example.com", branch="z9hG4bK-2"),
                           ("127.0.0.1", 8080), "ws")
    _, resp = out.last_sip()
    assert resp.status == 404
