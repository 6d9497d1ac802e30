"""Ended transactions are freed by reference counting, not left to the cyclic GC.

Under load, cyclic garbage made of transactions, contexts and closures grew the
oldest GC generation until full collections stalled the reactor for hundreds of
milliseconds (bench/relay.py).  This checks that a run of typical scenarios
leaves no such garbage behind.
"""

import gc

from sipws.proxy.core import _Context
from sipws.proxy.transaction import ClientTransaction, ServerTransaction
from sipws.sip import parse

from .harness import CLIENT, CORE, capture, make_proxy, response_to, run_out
from .test_core_from_core import core_invite, registered

KINDS = (ClientTransaction, ServerTransaction, _Context)


def scenarios(proxy, clock, out):
    path = registered(proxy, out)                       # REGISTER from a flow, 200
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    _, msg = out.last_sip()
    proxy.receive_from_sip(response_to(msg, 200, "OK"), CORE, "udp")
    proxy.receive_from_flow(7, capture("jssip_03_OPTIONS"), CLIENT, "ws")  # left to time out
    proxy.receive_from_sip(core_invite(path), CORE, "udp")  # INVITE toward the flow
    _, data = out.to_flows[-1]
    inv = parse(data)
    proxy.receive_from_flow(7, response_to(inv, 486, "Busy Here"), CLIENT, "ws")
    proxy.flow_closed(7)
    run_out(clock)


def test_ended_transactions_leave_no_cyclic_garbage():
    proxy, clock, out = make_proxy()
    gc.collect()
    gc.disable()
    try:
        scenarios(proxy, clock, out)
        assert len(proxy.table) == 0
        proxy.table._release_ended()
        del out.to_flows[:], out.to_targets[:]
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, KINDS)]
        assert leaked == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_lingering_transactions_keep_only_what_absorbing_needs():
    """Timer K: a completed UDP client transaction is kept as its key only (no
    request, context or server transaction), and still absorbs retransmissions."""
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_03_OPTIONS"), CLIENT, "ws")
    _, options = out.last_sip()
    ok = response_to(options, 200, "OK")
    proxy.receive_from_sip(ok, CORE, "udp")
    assert not proxy.table.clients
    [key] = proxy.table.absorbing
    assert key[1] == "OPTIONS"
    assert not proxy.table.servers  # the ws-side server transaction ended with its final
    before = len(out.to_flows)
    proxy.receive_from_sip(ok, CORE, "udp")  # a retransmitted 200 is absorbed
    assert len(out.to_flows) == before
    assert proxy.counters["responses_dropped"] == 0 and proxy.counters["late_responses"] == 0
    run_out(clock, 10)
    assert len(proxy.table) == 0


def test_accepted_invite_lingers_as_plain_data():
    """Timer L (RFC 6026): after a 2xx the INVITE server transaction lingers 32 s as
    a key and plain data the collector does not track (no object, no request, no
    context), yet absorbs a retransmitted INVITE, and a CANCEL arriving then is
    answered 200 (nothing left to cancel)."""
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    invite = core_invite(path)
    proxy.receive_from_sip(invite, CORE, "udp")
    _, data = out.to_flows[-1]
    proxy.receive_from_flow(7, response_to(parse(data), 200, "OK"), CLIENT, "ws")
    assert not [t for t in proxy.table.servers.values() if t.is_invite]
    [(key, kept)] = proxy.table.lingering.items()
    assert key[2] == "INVITE" and kept == (b"", ("sip", "127.0.0.1", 5060, "udp"))
    gc.collect()
    gc.collect()  # a tuple is untracked once what it holds is (the inner one first)
    assert not gc.is_tracked(kept) and not gc.is_tracked(key)
    out.clear()
    proxy.receive_from_sip(invite, CORE, "udp")  # retransmission: absorbed, not relayed
    assert out.to_flows == [] and out.to_targets == []
    proxy.receive_from_sip(core_invite(path, method="CANCEL"), CORE, "udp")
    [(_, answer)] = out.sip_msgs()
    assert answer.status == 200 and answer.method == "CANCEL"
    run_out(clock)
    assert len(proxy.table) == 0


def test_non_invite_from_udp_lingers_as_data_and_repeats_its_final():
    """Timer J: a UDP-side MESSAGE answered by the flow lingers as (response, where);
    its retransmission gets the same final response again."""
    proxy, clock, out = make_proxy()
    path = registered(proxy, out)
    message = core_invite(path, method="MESSAGE", to_tag=";tag=x")
    proxy.receive_from_sip(message, CORE, "udp")
    _, data = out.to_flows[-1]
    proxy.receive_from_flow(7, response_to(parse(data), 200, "OK"), CLIENT, "ws")
    [(_, ok)] = out.sip_msgs()
    [(response, where)] = proxy.table.lingering.values()
    assert response == bytes(ok) and where == ("sip", "127.0.0.1", 5060, "udp")
    out.clear()
    proxy.receive_from_sip(message, CORE, "udp")
    [(_, again)] = out.sip_msgs()
    assert bytes(again) == response and out.to_flows == []
    run_out(clock)
    assert len(proxy.table) == 0


def test_a_response_reuses_our_parsed_via_and_parses_nothing_else():
    """Each Via parsed once: our own Via comes back on top of the response with the
    same text, so the client transaction's parsed Via serves; a response whose top
    Via differs (even only in spelling) is parsed as usual."""
    from sipws.sip import parse as parse_message

    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(7, capture("jssip_03_OPTIONS"), CLIENT, "ws")
    _, options = out.last_sip()
    [client] = proxy.table.clients.values()
    ours = client.request.top_via
    ok = parse_message(response_to(options, 200, "OK"))
    proxy._reuse_our_via(ok)
    assert ok.top_via is ours
    changed = parse_message(response_to(options, 200, "OK").replace(b";branch=", b";Branch=", 1))
    proxy._reuse_our_via(changed)
    assert changed.top_via is not ours and changed.top_via.branch == ours.branch
    run_out(clock)
