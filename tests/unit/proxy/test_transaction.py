"""RFC 3261 §17 state machines on a Clock: retransmissions, timeouts, lifetimes."""

import pytest
from twisted.internet.task import Clock

from sipws.proxy.transaction import (
    COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TIMER_C, TIMER_D, Timers, TransactionTable,
    build_ack, build_cancel, server_key,
)
from sipws.sip import make_response, parse

from .harness import message, response_to

T = Timers(0.5, 4.0, 5.0)


def invite(branch="z9hG4bKabc", method="INVITE"):
    return parse(message(f"""
{method} sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch}
Route: <sip:core.example.com;lr>
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>
Call-ID: c1@example
CSeq: 7 {method}
Content-Length: 0

"""))


class User:
    def __init__(self):
        self.events = []

    def on_response(self, txn, response):
        self.events.append(("response", response.status))

    def on_timeout(self, txn):
        self.events.append(("timeout",))

    def on_transport_error(self, txn, reason):
        self.events.append(("error", reason))


def setup():
    clock = Clock()
    return clock, TransactionTable(clock, T), [], User()


def resp(req, status, tag="t9"):
    return parse(response_to(req, status, to_tag=tag))


def finish(clock, table):
    for _ in range(2000):
        clock.advance(0.25)
    assert len(table) == 0
    assert not clock.getDelayedCalls()


def test_client_invite_timer_a_doubles_until_b():
    clock, table, sent, user = setup()
    req = invite()
    table.client(req, sent.append, False, user)
    times = []
    for _ in range(200):
        clock.advance(0.25)
        if len(sent) - 1 > len(times):
            times.append(clock.seconds())
    # sent at 0, then after 0.5, 1, 2, 4, 8, 16 (cumulative 0.5 .. 31.5), timer B at 32
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert len(sent) == 7
    assert user.events == [("timeout",)]
    assert clock.seconds() >= 32
    finish(clock, table)


def test_client_invite_reliable_no_retransmission_timer_b():
    clock, table, sent, user = setup()
    table.client(invite(), sent.append, True, user)
    clock.advance(31.9)
    assert len(sent) == 1 and user.events == []
    clock.advance(0.2)
    assert user.events == [("timeout",)]
    finish(clock, table)


def test_client_invite_provisional_stops_a_then_timer_c():
    clock, table, sent, user = setup()
    req = invite()
    txn = table.client(req, sent.append, False, user)
    txn.receive_response(resp(req, 180))
    assert txn.state == PROCEEDING and user.events == [("response", 180)]
    clock.advance(100)
    assert len(sent) == 1  # no retransmission once proceeding
    clock.advance(TIMER_C)
    assert user.events[-1] == ("timeout",)
    finish(clock, table)


def test_client_invite_non2xx_acks_and_timer_d():
    clock, table, sent, user = setup()
    req = invite()
    txn = table.client(req, sent.append, False, user)
    txn.receive_response(resp(req, 486))
    assert txn.state == COMPLETED
    ack = parse(sent[-1])
    assert ack.method == "ACK" and ack.cseq == (7, "ACK")
    assert ack.top_via.branch == "z9hG4bKabc" and ack.to.tag == "t9"
    assert ack.get_all("route") == ["<sip:core.example.com;lr>"]
    # a retransmitted final is answered with the ACK again, not passed up
    txn.receive_response(resp(req, 486))
    assert parse(sent[-1]).method == "ACK" and len(sent) == 3
    assert user.events == [("response", 486)]
    clock.advance(TIMER_D - 0.1)
    assert len(table) == 1
    clock.advance(0.2)
    assert txn.state == TERMINATED and len(table) == 0
    finish(clock, table)


def test_client_invite_2xx_terminates_at_once():
    clock, table, sent, user = setup()
    req = invite()
    txn = table.client(req, sent.append, False, user)
    txn.receive_response(resp(req, 200))
    assert txn.state == TERMINATED and len(table) == 0
    assert user.events == [("response", 200)]
    assert len(sent) == 1  # no ACK for 2xx from the transaction
    finish(clock, table)


def test_client_non_invite_timer_e_capped_at_t2_and_f():
    clock, table, sent, user = setup()
    table.client(invite(method="MESSAGE"), sent.append, False, user)
    times = []
    for _ in range(200):
        clock.advance(0.25)
        if len(sent) - 1 > len(times):
            times.append(clock.seconds())
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert user.events == [("timeout",)]
    finish(clock, table)


def test_client_non_invite_proceeding_uses_t2_and_timer_k():
    clock, table, sent, user = setup()
    req = invite(method="MESSAGE")
    txn = table.client(req, sent.append, False, user)
    txn.receive_response(resp(req, 100))
    clock.advance(0.5)
    assert len(sent) == 2
    clock.advance(3.9)
    assert len(sent) == 2
    clock.advance(0.2)
    assert len(sent) == 3
    txn.receive_response(resp(req, 200))
    # Timer K: the object ends; its key alone absorbs retransmitted finals for T4.
    assert txn.state == TERMINATED and txn.key in table.absorbing
    again = table.find_client(resp(req, 200))
    assert again is not None and again.context is None
    again.receive_response(resp(req, 200))
    assert len(sent) == 3 and user.events.count(("response", 200)) == 1
    clock.advance(T.t4 - 0.1)
    assert len(table) == 1
    clock.advance(0.2)
    assert len(table) == 0
    finish(clock, table)


def test_client_transport_error_reported_once():
    clock, table, sent, user = setup()
    txn = table.client(invite(method="OPTIONS"), sent.append, True, user)
    txn.transport_error("refused")
    txn.transport_error("refused")
    assert user.events == [("error", "refused")]
    assert len(table) == 0
    finish(clock, table)


def test_client_ignores_responses_after_termination():
    clock, table, sent, user = setup()
    req = invite(method="OPTIONS")
    txn = table.client(req, sent.append, True, user)
    txn.receive_response(resp(req, 200))
    txn.receive_response(resp(req, 200))
    assert user.events == [("response", 200)]
    finish(clock, table)


def test_find_client_by_branch_and_method():
    clock, table, sent, user = setup()
    req = invite()
    txn = table.client(req, sent.append, True, user)
    assert table.find_client(resp(req, 180)) is txn
    cancel = build_cancel(req)
    assert cancel.top_via.branch == req.top_via.branch
    assert table.find_client(resp(cancel, 200)) is None
    txn.transport_error("x")
    finish(clock, table)


def test_build_cancel_copies_what_9_1_says():
    req = invite()
    cancel = build_cancel(req)
    assert cancel.method == "CANCEL" and cancel.uri == req.uri
    assert cancel.cseq == (7, "CANCEL") and cancel.call_id == req.call_id
    assert cancel.get("to") == req.get("to") and cancel.get("from") == req.get("from")
    assert cancel.routes[0].uri.host == "core.example.com"
    assert build_ack(req, resp(req, 404)).to.tag == "t9"


# ------------------------------------------------------------------ server


def test_server_invite_absorbs_retransmissions_and_resends_last():
    clock, table, sent, _ = setup()
    req = invite()
    txn = table.server(req, sent.append, False)
    assert table.find_server(req) is txn
    txn.respond(make_response(req, 100))
    txn.receive_request(req)
    assert len(sent) == 2 and parse(sent[1]).status == 100
    txn.respond(make_response(req, 180, to_tag="x"))
    txn.receive_request(req)
    assert parse(sent[-1]).status == 180
    txn.respond(make_response(req, 200, to_tag="x"))
    # RFC 6026 accepted state: INVITE retransmissions absorbed silently until timer L
    assert txn.state == "accepted"
    sent_before = len(sent)
    txn.receive_request(req)
    assert len(sent) == sent_before
    txn.respond(make_response(req, 200, to_tag="y"))  # another 2xx passes through
    assert len(sent) == sent_before + 1
    clock.advance(64 * T.t1 - 0.01)
    assert len(table) == 1
    clock.advance(0.02)
    assert txn.state == TERMINATED and len(table) == 0
    finish(clock, table)


def test_server_invite_timer_g_until_ack_then_i():
    clock, table, sent, _ = setup()
    req = invite()
    txn = table.server(req, sent.append, False)
    txn.respond(make_response(req, 486, to_tag="x"))
    clock.advance(0.5)
    clock.advance(1.0)
    assert len(sent) == 3  # final + two timer G retransmissions
    ack = build_ack(req, parse(sent[0]))
    assert table.find_server(ack) is txn
    txn.receive_request(ack)
    assert txn.state == CONFIRMED
    clock.advance(10)
    assert len(sent) == 3
    clock.advance(T.t4)
    assert len(table) == 0
    finish(clock, table)


def test_server_invite_timer_g_capped_and_h():
    clock, table, sent, _ = setup()
    req = invite()
    terminated = []
    txn = table.server(req, sent.append, False, terminated.append)
    txn.respond(make_response(req, 500, to_tag="x"))
    times = []
    for _ in range(200):
        clock.advance(0.25)
        if len(sent) - 1 > len(times):
            times.append(clock.seconds())
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert terminated == [txn] and txn.state == TERMINATED
    finish(clock, table)


def test_server_invite_reliable_ack_ends_at_once():
    clock, table, sent, _ = setup()
    req = invite()
    txn = table.server(req, sent.append, True)
    txn.respond(make_response(req, 404, to_tag="x"))
    clock.advance(5)
    assert len(sent) == 1
    txn.receive_request(build_ack(req, parse(sent[0])))
    assert len(table) == 0
    finish(clock, table)


def test_server_non_invite_timer_j():
    clock, table, sent, _ = setup()
    req = invite(method="BYE")
    txn = table.server(req, sent.append, False)
    txn.receive_request(req)
    assert sent == []  # trying: nothing to resend yet
    txn.respond(make_response(req, 200, to_tag="x"))
    txn.receive_request(req)
    assert len(sent) == 2
    txn.respond(make_response(req, 500, to_tag="x"))  # a second final is ignored
    assert len(sent) == 2
    clock.advance(64 * T.t1 - 0.1)
    assert len(table) == 1
    clock.advance(0.2)
    assert len(table) == 0
    finish(clock, table)


def test_server_non_invite_reliable_ends_with_final():
    clock, table, sent, _ = setup()
    txn = table.server(invite(method="MESSAGE"), sent.append, True)
    txn.respond(make_response(txn.request, 202, to_tag="x"))
    assert len(table) == 0
    finish(clock, table)


def test_server_keys():
    req = invite()
    assert server_key(req) == ("z9hG4bKabc", "127.0.0.1:5062", "INVITE")
    cancel = build_cancel(req)
    assert server_key(cancel)[2] == "CANCEL"
    assert server_key(build_ack(req, resp(req, 404)))[2] == "INVITE"
    old = invite(branch="1234")  # RFC 2543: no magic cookie
    assert server_key(old)[0] == "2543"
    assert server_key(old) != server_key(invite(branch="1235"))


def test_timers_from_config():
    from sipws.config import SipConfig
    timers = Timers.from_config(SipConfig(t1=0.1, t2=2.0, t4=3.0))
    assert (timers.t1, timers.t2, timers.t4, timers.b, timers.h) == (0.1, 2.0, 3.0, 6.4, 6.4)


def test_transaction_lifetimes_exact():
    clock, table, sent, user = setup()
    table.client(invite(method="OPTIONS"), sent.append, False, user)
    clock.advance(64 * T.t1 - 0.001)
    assert len(table) == 1
    clock.advance(0.002)
    assert len(table) == 0


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_server_transport_error_terminates(method):
    clock, table, sent, _ = setup()
    txn = table.server(invite(method=method), sent.append, False)
    txn.transport_error("unreachable")
    assert len(table) == 0
    finish(clock, table)
