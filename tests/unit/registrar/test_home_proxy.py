"""HomeProxy (the standalone core's registrar front and forking proxy), in memory.

Messages are built as the edge proxy relays them: its Via on top
(``SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKsw...``), the browser's under it,
and on REGISTER a Path with the flow token.  The core's sends are recorded by
``FakeOutput``; a send can fail synchronously (``on_error`` called inside
``send``) or later (the test calls the recorded ``on_error``).  Time is a
``twisted.internet.task.Clock``; every scenario ends with ``drain``, which runs
the clock past every timer and checks that no transaction, timer or delayed
call is left behind.
"""

from __future__ import annotations

import gc
import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
from twisted.internet.task import Clock

from sipws.proxy.transaction import TIMER_C, Timers
from sipws.registrar import BindingTable, Registrar
from sipws.registrar.home_proxy import ALLOW, HomeProxy, _Branch, _Fork
from sipws.sip import Request, Response, make_response, parse

START = 1_700_000_000.0
#: The edge proxy's SIP socket (what Path and Record-Route name).
EDGE = ("127.0.0.1", 5062)
#: The far end of the edge's TCP connection to the core (where responses go back).
EDGE_PEER = ("127.0.0.1", 40312)
#: The core's own loopback socket.
OWN = ("127.0.0.1", 5070)
TIMERS = Timers()
#: Past every timer: C (181 s) plus H / L (64*T1) with room to spare.
DRAIN_SECONDS = int(TIMER_C + 2 * TIMERS.b + 10)

_ids = itertools.count(1)


# ------------------------------------------------------------------ the fake output


@dataclass
class Sent:
    address: tuple[str, int]
    msg: Request | Response
    #: Index of this send's on_error in its FakeOutput (None: the core passed none).
    error_slot: Optional[int]
    output: "FakeOutput"

    @property
    def token(self) -> Optional[str]:
        """The flow token of the Route the core wrote (which binding a branch is for)."""
        routes = self.msg.routes if isinstance(self.msg, Request) else []
        return routes[0].uri.user if routes else None

    def fail(self, reason: str = "connection lost") -> None:
        """Report this send as failed now (the I/O layer noticing later)."""
        assert self.error_slot is not None, "the core passed no on_error"
        self.output.callbacks[self.error_slot](reason)


class FakeOutput:
    """HomeOutput recording every send; ``fail_now`` makes matching sends fail at once.

    The ``on_error`` callbacks are kept here, not in the ``Sent`` records the
    tests hold, so ``forget`` can drop them and the leak check in ``Home.drain``
    sees only what the core itself keeps alive.
    """

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.callbacks: list[Optional[Callable[[str], None]]] = []
        self.fail_now: Callable[[Sent], bool] = lambda sent: False

    def send(self, address: tuple[str, int], data: bytes, on_error) -> None:
        slot = None
        if on_error is not None:
            slot = len(self.callbacks)
            self.callbacks.append(on_error)
        sent = Sent(address, parse(data), slot, self)
        self.sent.append(sent)
        if self.fail_now(sent) and on_error is not None:
            on_error("connection refused")

    def take(self) -> list[Sent]:
        sent, self.sent = self.sent, []
        return sent

    def forget(self) -> None:
        """Drop the callbacks (the I/O layer done with every send)."""
        self.callbacks = [None] * len(self.callbacks)


# ------------------------------------------------------------------ messages


def register_data(user: str, token: str, *, device: str = "", domain: str = "example.com",
                  expires: int = 600, q: Optional[str] = None) -> bytes:
    """A JsSIP REGISTER relayed by the edge: its Via and Path on top."""
    n = next(_ids)
    host = f"{user}{device}{n}.invalid"
    q_param = f";q={q}" if q else ""
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKswreg{n};flow={token}",
        f"Via: SIP/2.0/WSS {host};received=127.0.0.1;rport=50{n:03d};branch=z9hG4bKbr{n}",
        "Max-Forwards: 69",
        f"Path: <sip:{token}@127.0.0.1:5062;transport=tcp;lr;ob>",
        f"To: <sip:{user}@{domain}>",
        f"From: <sip:{user}@{domain}>;tag=rt{n}",
        f"Call-ID: reg-{user}-{device}-{n}",
        "CSeq: 1 REGISTER",
        f'Contact: <sip:{user}@{host};transport=ws>;+sip.ice;reg-id=1;'
        f'+sip.instance="<urn:uuid:00000000-0000-0000-0000-{n:012d}>"{q_param};expires={expires}',
        "Supported: path, gruu, outbound",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def request_data(method: str, ruri: str, *, to: Optional[str] = None, to_tag: Optional[str] = None,
                 call_id: Optional[str] = None, branch: Optional[str] = None,
                 max_forwards: int = 69, body: str = "", cseq: int = 1) -> bytes:
    """A request from alice's browser as the edge relays it (Record-Route with alice's flow)."""
    n = next(_ids)
    branch = branch or f"z9hG4bKsw{method.lower()}{n}"
    to_value = f"<{to or ruri}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/TCP 127.0.0.1:5062;branch={branch};flow=tokAlice",
        f"Via: SIP/2.0/WSS alice.invalid;received=127.0.0.1;rport=50999;branch=z9hG4bKbrowser{n}",
        f"Max-Forwards: {max_forwards}",
        # RFC 7118 §8.2 double Record-Route: the core-facing entry on top, alice's flow below
        "Record-Route: <sip:127.0.0.1:5062;transport=tcp;lr>",
        "Record-Route: <sip:tokAlice@127.0.0.1:5062;transport=ws;lr>",
        f"To: {to_value}",
        "From: <sip:alice@example.com>;tag=alicetag",
        f"Call-ID: {call_id or f'call-{n}'}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@alice.invalid;transport=ws;ob>",
    ]
    if body:
        lines.append("Content-Type: text/plain" if method == "MESSAGE" else "Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def cancel_data(invite: bytes) -> bytes:
    """The edge's CANCEL for an INVITE it relayed: same Vias (same branch), CSeq CANCEL."""
    req = parse(invite)
    lines = [f"CANCEL {req.uri} SIP/2.0"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    lines += ["Max-Forwards: 70", f"To: {req.get('to')}", f"From: {req.get('from')}",
              f"Call-ID: {req.call_id}", f"CSeq: {req.cseq[0]} CANCEL", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ack_data(invite: bytes, response: Response) -> bytes:
    """The edge's hop-by-hop ACK for a non-2xx final to its INVITE (same branch)."""
    req = parse(invite)
    lines = [f"ACK {req.uri} SIP/2.0", f"Via: {req.get('via')}", "Max-Forwards: 70",
             f"To: {response.get('to')}", f"From: {req.get('from')}", f"Call-ID: {req.call_id}",
             f"CSeq: {req.cseq[0]} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reply(req: Request, status: int, tag: str = "calleetag") -> bytes:
    """A callee's response to a forwarded request, as the edge relays it back (its Via gone)."""
    return bytes(make_response(req, status, to_tag=tag))


# ------------------------------------------------------------------ the harness


class Home:
    def __init__(self, domains: tuple[str, ...] = ("example.com",)) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.bindings = BindingTable(self.clock)
        self.registrar = Registrar(self.bindings, self.clock, domains=domains)
        self.out = FakeOutput()
        self.proxy = HomeProxy(self.clock, self.out, self.registrar, OWN,
                               frozenset({"localhost", "sipws.test"}), TIMERS)
        #: The sends of the last fork_invite, by flow token (their on_error, to fail them later).
        self.legs: dict[str, Sent] = {}

    def receive(self, data: bytes) -> None:
        self.proxy.receive(data, EDGE_PEER)

    def register(self, user: str, token: str, **kw) -> Response:
        self.receive(register_data(user, token, **kw))
        [sent] = self.out.take()
        assert sent.address == EDGE_PEER
        assert isinstance(sent.msg, Response) and sent.msg.status == 200, sent.msg
        return sent.msg

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1)

    def drain(self) -> list[Sent]:
        """Run past every timer; nothing may be left (no leaks); what was sent meanwhile."""
        self.advance(DRAIN_SECONDS)
        table = self.proxy.table
        assert table.clients == {} and table.servers == {}, (table.clients, table.servers)
        assert len(table) == 0 and len(table.queue) == 0
        assert self.clock.getDelayedCalls() == []
        # ended transactions drop their links to forks at the next table operation:
        # after one, no fork or branch may stay reachable (gc.collect: cycles are not leaks)
        table._release_ended()
        self.out.forget()
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, (_Fork, _Branch))] == []
        return self.out.take()


def to_edge(sent: list[Sent]) -> list[Response]:
    """Responses sent back to the edge's connection."""
    out = []
    for s in sent:
        if s.address == EDGE_PEER:
            assert isinstance(s.msg, Response), s.msg
            out.append(s.msg)
    return out


def branches(sent: list[Sent], method: Optional[str] = None) -> list[Sent]:
    """Requests the core sent toward the bindings (to the Path's first hop)."""
    return [s for s in sent if s.address == EDGE and isinstance(s.msg, Request)
            and (method is None or s.msg.method == method)]


def statuses(responses: list[Response]) -> list[int]:
    return [r.status for r in responses]


@pytest.fixture
def home() -> Home:
    return Home()


def fork_invite(home: Home, n: int = 3, body: str = "v=0\r\n") -> tuple[bytes, dict[str, Request]]:
    """Register bob on ``n`` connections and send alice's INVITE: (invite, branch by token)."""
    for i in range(n):
        home.register("bob", f"tokB{i}", device=f"d{i}")
    invite = request_data("INVITE", "sip:bob@example.com", body=body)
    home.receive(invite)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [100]
    forwarded = branches(sent, "INVITE")
    assert len(forwarded) == n
    home.legs = {s.token: s for s in forwarded}
    return invite, {s.token: s.msg for s in forwarded}


# ------------------------------------------------------------------ REGISTER and local answers


def test_register_is_answered_by_the_registrar(home):
    ok = home.register("bob", "tokB")
    assert ok.call_id.startswith("reg-bob") and ok.cseq == (1, "REGISTER")
    assert ok.get_all("path") == ["<sip:tokB@127.0.0.1:5062;transport=tcp;lr;ob>"]
    assert ok.require == ["outbound"] and "transport=ws" in ok.get("contact")
    # the edge's Via stays on top: the response goes back the way the request came
    assert ok.vias[0].branch.startswith("z9hG4bKswreg") and len(ok.vias) == 2
    [b] = home.bindings.lookup("sip:bob@example.com")
    assert b.flow == "tokB" and b.path == ("<sip:tokB@127.0.0.1:5062;transport=tcp;lr;ob>",)
    assert home.drain() == []


def test_register_refused_by_the_registrar_goes_back_too(home):
    home.receive(register_data("mallory", "tokM", domain="elsewhere.org"))
    [sent] = home.out.take()
    assert sent.address == EDGE_PEER and sent.msg.status == 403
    assert home.bindings.counts() == (0, 0)
    assert home.drain() == []


@pytest.mark.parametrize("ruri", ["sip:example.com", "sip:EXAMPLE.com;transport=tcp", "sip:127.0.0.1:5070",
                                  "sip:sipws.test", "sip:localhost"])
def test_options_without_user_to_us_is_200_with_allow(home, ruri):
    home.receive(request_data("OPTIONS", ruri))
    [resp] = to_edge(home.out.sent)
    assert resp.status == 200
    allow = resp.get_all("allow")
    assert allow == ALLOW.split(", ") and {"INVITE", "MESSAGE", "CANCEL", "ACK"} <= set(allow)
    assert resp.to.tag  # a final response from us carries our To tag
    assert len(resp.vias) == 2 and resp.vias[0].branch.startswith("z9hG4bKswoptions")
    assert branches(home.out.take()) == []
    assert home.drain() == []


@pytest.mark.parametrize("method, ruri, status", [
    ("OPTIONS", "sip:elsewhere.org", 404),           # a host we do not serve (domains set)
    ("MESSAGE", "sip:example.com", 404),             # no user, not OPTIONS
    ("MESSAGE", "sip:bob@elsewhere.org", 404),       # a user in a foreign domain
    ("MESSAGE", "sip:nobody@example.com", 404),      # never registered
    ("INVITE", "sip:nobody@example.com", 404),
])
def test_local_failures(home, method, ruri, status):
    home.register("bob", "tokB", domain="example.com")
    home.receive(request_data(method, ruri))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [status]  # no 100 Trying before a local final
    assert branches(sent) == []


def test_max_forwards_zero_is_483_even_for_a_registered_user(home):
    home.register("bob", "tokB")
    for method in ("MESSAGE", "OPTIONS", "INVITE"):
        home.receive(request_data(method, "sip:bob@example.com", max_forwards=0))
        sent = home.out.take()
        assert statuses(to_edge(sent)) == [483], method
        assert branches(sent) == []
    home.receive(request_data("MESSAGE", "sip:bob@example.com", max_forwards=1))
    [fwd] = branches(home.out.take())
    assert fwd.msg.max_forwards == 0  # 1 is still forwardable, decremented to 0


def test_in_dialog_request_is_481(home):
    home.register("bob", "tokB")
    for method in ("BYE", "INFO", "MESSAGE"):
        home.receive(request_data(method, "sip:bob@example.com", to_tag="bobtag"))
        sent = home.out.take()
        assert statuses(to_edge(sent)) == [481], method
        assert branches(sent) == []
    assert home.drain() == []


# ------------------------------------------------------------------ MESSAGE to a binding


def test_message_goes_to_the_binding_and_its_200_comes_back(home):
    home.register("bob", "tokB")
    [binding] = home.bindings.lookup("sip:bob@example.com")
    data = request_data("MESSAGE", "sip:bob@example.com", body="hi bob", call_id="msg-1")
    original = parse(data)
    home.receive(data)
    sent = home.out.take()
    assert to_edge(sent) == []  # no 100 for a non-INVITE
    [fwd] = branches(sent)
    out = fwd.msg
    assert fwd.address == EDGE  # the first Path hop
    assert str(out.uri) == binding.contact
    assert out.get_all("route") == ["<sip:tokB@127.0.0.1:5062;transport=tcp;lr;ob>"]
    top = out.vias[0]
    assert top.transport.upper() == "TCP" and top.sent_by == "127.0.0.1:5070"
    assert top.branch.startswith("z9hG4bK") and top.branch != original.vias[0].branch
    assert out.get_all("via")[1:] == original.get_all("via")
    assert out.max_forwards == 68
    assert out.body == b"hi bob" and out.call_id == "msg-1" and out.cseq == (1, "MESSAGE")
    assert out.get_all("record-route") == original.get_all("record-route")  # never Record-Routes

    home.receive(reply(out, 200))
    [ok] = to_edge(home.out.take())
    assert ok.status == 200 and ok.call_id == "msg-1" and ok.to.tag == "calleetag"
    assert ok.get_all("via") == original.get_all("via")  # our Via popped
    assert home.drain() == []


def test_message_with_several_bindings_goes_to_every_one_first_2xx_wins(home):
    home.register("bob", "tokLow", device="a", q="0.5")
    home.register("bob", "tokHigh", device="b", q="0.9")
    home.register("bob", "tokNew", device="c", q="0.5")
    home.receive(request_data("MESSAGE", "sip:bob@example.com", body="x"))
    sent = branches(home.out.take())
    assert [b.token for b in sent] == ["tokHigh", "tokNew", "tokLow"]  # q first, then the newest
    by_token = {b.token: b for b in sent}
    home.receive(reply(by_token["tokLow"].msg, 430))  # one tab's connection is gone
    assert to_edge(home.out.take()) == []
    home.receive(reply(by_token["tokNew"].msg, 202))
    assert statuses(to_edge(home.out.take())) == [202]
    home.receive(reply(by_token["tokHigh"].msg, 200))  # a later answer changes nothing upstream
    assert [m for m in to_edge(home.out.take()) if m.status >= 200] == []
    assert [b.flow for b in home.proxy.bindings.lookup("sip:bob@example.com")] == ["tokHigh", "tokNew"]
    assert home.drain() == []


def test_message_error_response_from_the_branch_goes_back(home):
    home.register("bob", "tokB")
    data = request_data("MESSAGE", "sip:bob@example.com", body="x")
    home.receive(data)
    [fwd] = branches(home.out.take())
    home.receive(reply(fwd.msg, 415))
    [resp] = to_edge(home.out.take())
    assert resp.status == 415 and resp.get_all("via") == parse(data).get_all("via")
    assert home.drain() == []


# ------------------------------------------------------------------ INVITE forking


def test_invite_forks_in_parallel_first_2xx_wins_cancel_after_provisional(home):
    invite, legs = fork_invite(home, 3)
    original = parse(invite)
    assert sorted(legs) == ["tokB0", "tokB1", "tokB2"]
    ids = {req.vias[0].branch for req in legs.values()}
    assert len(ids) == 3 and all(b.startswith("z9hG4bK") for b in ids)
    for token, req in legs.items():
        assert req.get_all("route") == [f"<sip:{token}@127.0.0.1:5062;transport=tcp;lr;ob>"]
        assert req.request_uri.user == "bob" and req.request_uri.host.startswith("bobd")
        assert req.get_all("via")[1:] == original.get_all("via") and req.max_forwards == 68
        assert req.body == b"v=0\r\n"
    b0, b1, b2 = legs["tokB0"], legs["tokB1"], legs["tokB2"]

    home.receive(reply(b0, 180, "t0"))
    [ringing] = to_edge(home.out.take())
    assert ringing.status == 180 and ringing.get_all("via") == original.get_all("via")
    assert ringing.to.tag == "t0"
    home.receive(reply(b1, 183, "t1"))
    assert statuses(to_edge(home.out.take())) == [183]
    home.receive(reply(b0, 100))  # a 100 from a branch is not relayed
    assert home.out.take() == []

    home.receive(reply(b0, 200, "t0"))
    sent = home.out.take()
    [ok] = to_edge(sent)
    assert ok.status == 200 and ok.to.tag == "t0" and ok.get_all("via") == original.get_all("via")
    # CANCEL only to the branch that had a provisional (tokB1); tokB2 waits for its 1xx
    [cancel] = branches(sent, "CANCEL")
    assert cancel.token == "tokB1" and cancel.address == EDGE
    assert cancel.msg.vias[0].branch == b1.vias[0].branch and len(cancel.msg.vias) == 1
    assert str(cancel.msg.uri) == str(b1.uri) and cancel.msg.cseq == (b1.cseq[0], "CANCEL")
    assert cancel.msg.get_all("route") == b1.get_all("route")
    assert cancel.msg.call_id == b1.call_id and cancel.msg.get("from") == b1.get("from")

    home.receive(reply(b1, 183, "t1"))  # more ringing from a cancelled branch
    assert home.out.take() == []  # not relayed after the answer, and no second CANCEL

    home.receive(reply(b2, 180, "t2"))  # RFC 3261 §9.1: now it may be cancelled
    sent = home.out.take()
    assert to_edge(sent) == []  # no ringing after the answer
    [cancel2] = branches(sent, "CANCEL")
    assert cancel2.token == "tokB2" and cancel2.msg.vias[0].branch == b2.vias[0].branch

    for leg, c in ((b1, cancel), (b2, cancel2)):
        home.receive(reply(c.msg, 200, "c"))
        home.receive(reply(leg, 487, "x"))
    sent = home.out.take()
    assert to_edge(sent) == []  # the 487s stay here
    acks = branches(sent, "ACK")
    assert sorted(a.token for a in acks) == ["tokB1", "tokB2"]  # hop-by-hop ACKs for the 487s
    assert {a.msg.vias[0].branch for a in acks} == {b1.vias[0].branch, b2.vias[0].branch}
    assert home.drain() == []


def test_second_2xx_is_relayed_too(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB0"], 180, "t0"))
    home.receive(reply(legs["tokB1"], 180, "t1"))
    home.out.take()
    home.receive(reply(legs["tokB0"], 200, "t0"))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [200] and len(branches(sent, "CANCEL")) == 1
    home.receive(reply(legs["tokB1"], 200, "t1"))  # answered before the CANCEL arrived
    sent = home.out.take()
    [second] = to_edge(sent)
    assert second.status == 200 and second.to.tag == "t1"  # RFC 3261 §16.7 step 5
    assert len(second.vias) == 2
    assert branches(sent, "ACK") == []  # the 2xx ACK is the caller's business
    assert home.drain() == []


def test_retransmitted_invite_is_absorbed(home):
    invite, legs = fork_invite(home, 2)
    home.receive(invite)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [100] and branches(sent) == []  # last response again
    home.receive(reply(legs["tokB0"], 180))
    home.out.take()
    home.receive(invite)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [180] and branches(sent) == []
    home.receive(reply(legs["tokB0"], 200))
    home.out.take()
    home.receive(invite)  # after the 2xx (RFC 6026 Accepted): silently absorbed
    assert home.out.take() == []
    home.drain()


# ------------------------------------------------------------------ every branch failed


def _fail_all(home: Home, finals: list[int]) -> tuple[bytes, list[Sent]]:
    invite, legs = fork_invite(home, len(finals))
    for (token, leg), status in zip(sorted(legs.items()), finals):
        home.receive(reply(leg, status, f"t{token}"))
    return invite, home.out.take()


@pytest.mark.parametrize("finals, best", [
    ([486, 404, 500], 404),         # 4xx beats 5xx; the lowest code in the class
    ([500, 486], 486),
    ([480, 486], 480),
    ([500, 502], 500),
    ([302, 486], 302),              # RFC 3261 §16.7 step 6: the lowest class (3xx) before 4xx
    ([404, 302, 500], 302),
])
def test_best_response_when_every_branch_failed(home, finals, best):
    invite, sent = _fail_all(home, finals)
    [resp] = to_edge(sent)
    assert resp.status == best
    assert resp.to.tag == f"ttokB{finals.index(best)}"  # the branch's own response, relayed
    assert resp.get_all("via") == parse(invite).get_all("via")
    assert sorted(a.token for a in branches(sent, "ACK")) == sorted(f"tokB{i}" for i in range(len(finals)))
    home.receive(ack_data(invite, resp))
    assert home.drain() == []


def test_6xx_beats_everything_and_cancels_the_other_branches(home):
    invite, legs = fork_invite(home, 3)
    b0, b1, b2 = legs["tokB0"], legs["tokB1"], legs["tokB2"]
    home.receive(reply(b1, 180, "t1"))
    home.receive(reply(b0, 486, "t0"))
    home.out.take()
    home.receive(reply(b2, 603, "t2"))
    sent = home.out.take()
    assert to_edge(sent) == []  # §16.7 step 5: a 6xx is not forwarded at once
    [cancel] = branches(sent, "CANCEL")
    assert cancel.token == "tokB1"
    home.receive(reply(cancel.msg, 200))
    home.receive(reply(b1, 487, "t1"))
    [decline] = to_edge(home.out.take())
    assert decline.status == 603 and decline.to.tag == "t2"
    home.receive(ack_data(invite, decline))
    assert home.drain() == []


def test_6xx_branch_without_provisional_gets_cancel_on_its_1xx(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB0"], 603, "t0"))
    sent = home.out.take()
    assert branches(sent, "CANCEL") == [] and to_edge(sent) == []
    home.receive(reply(legs["tokB1"], 180, "t1"))
    sent = home.out.take()
    assert to_edge(sent) == []  # no ringing once a 6xx is in
    [cancel] = branches(sent, "CANCEL")
    assert cancel.token == "tokB1"
    home.receive(reply(legs["tokB1"], 487, "t1"))
    assert statuses(to_edge(home.out.take())) == [603]
    home.drain()


def test_cancel_from_the_edge_while_a_6xx_waits_sends_no_second_cancel(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB1"], 180, "t1"))
    home.receive(reply(legs["tokB0"], 603, "t0"))
    sent = home.out.take()
    [cancel] = branches(sent, "CANCEL")
    assert cancel.token == "tokB1"
    for _ in range(2):  # the edge's CANCEL, and its retransmission
        home.receive(cancel_data(invite))
        sent = home.out.take()
        assert statuses(to_edge(sent)) == [200] and branches(sent) == []
    home.receive(reply(cancel.msg, 200))
    home.receive(reply(legs["tokB1"], 487, "t1"))
    [resp] = to_edge(home.out.take())
    assert resp.status == 603  # the 6xx still beats the 487 after a CANCEL
    home.receive(ack_data(invite, resp))
    assert home.drain() == []


def test_503_from_the_only_branch_becomes_500(home):
    invite, sent = _fail_all(home, [503])
    [resp] = to_edge(sent)
    assert resp.status == 500  # §16.7 step 6: never relay a 503
    assert resp.to.tag and resp.to.tag != "ttokB0"  # generated here, not the branch's
    assert resp.get_all("via") == parse(invite).get_all("via")
    home.receive(ack_data(invite, resp))
    assert home.drain() == []


def test_503_loses_to_a_real_4xx(home):
    _, sent = _fail_all(home, [503, 486])
    assert statuses(to_edge(sent)) == [486]


def test_430_becomes_480_and_removes_the_binding(home):
    home.register("carol", "tokB0", device="x")  # another AOR on the same flow
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB0"], 430, "t0"))
    assert [b.flow for b in home.bindings.lookup("sip:bob@example.com")] == ["tokB1"]
    assert home.bindings.lookup("sip:carol@example.com") == []  # RFC 5626 §5.3: the flow is gone
    home.receive(reply(legs["tokB1"], 408, "t1"))
    [resp] = to_edge(home.out.take())
    assert resp.status == 408  # 408 < 430 in the 4xx class
    home.drain()


def test_430_from_the_only_branch_is_480(home):
    invite, sent = _fail_all(home, [430])
    [resp] = to_edge(sent)
    assert resp.status == 480 and resp.to.tag != "ttokB0"
    assert home.bindings.lookup("sip:bob@example.com") == []
    # and the next request for bob: known, but nobody there now
    home.receive(ack_data(invite, resp))
    home.receive(request_data("MESSAGE", "sip:bob@example.com"))
    assert statuses(to_edge(home.out.take())) == [480]
    assert home.drain() == []


def test_branches_that_never_answer_time_out_408(home):
    invite, legs = fork_invite(home, 2)
    home.advance(TIMERS.b - 1)
    assert home.out.take() == []
    home.advance(2)  # timer B (64*T1) fires on both branches
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [408]
    assert branches(sent) == []  # nothing to CANCEL: no provisional was seen
    assert home.drain() == []


def test_timeout_after_provisional_is_408_after_timer_c_and_the_branch_is_cancelled(home):
    invite, legs = fork_invite(home, 1)
    home.receive(reply(legs["tokB0"], 180, "t0"))
    assert statuses(to_edge(home.out.take())) == [180]
    home.advance(TIMERS.b + 1)
    assert home.out.take() == []  # timer B is replaced by timer C after a provisional
    home.advance(TIMER_C)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [408]
    # RFC 3261 §16.8: timer C fired on a branch with a provisional -> CANCEL it
    [cancel] = branches(sent, "CANCEL")
    assert cancel.msg.vias[0].branch == legs["tokB0"].vias[0].branch
    home.receive(reply(cancel.msg, 200))
    home.receive(reply(legs["tokB0"], 487))  # late: dropped
    assert to_edge(home.out.take()) == []
    home.receive(ack_data(invite, parse(reply(parse(invite), 408))))
    assert home.drain() == []


def test_one_branch_times_out_the_other_answers(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB1"], 180, "t1"))
    assert statuses(to_edge(home.out.take())) == [180]
    home.advance(TIMERS.b + 1)
    assert home.out.take() == []  # tokB0 timed out (timer B); tokB1 rings on (timer C)
    assert len(home.proxy.table.clients) == 1
    home.receive(reply(legs["tokB1"], 200, "t1"))
    assert statuses(to_edge(home.out.take())) == [200]
    assert home.drain() == []


# ------------------------------------------------------------------ CANCEL from the edge


def test_cancel_from_the_edge_cancels_branches_and_ends_with_487(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB0"], 180, "t0"))
    home.out.take()
    home.receive(cancel_data(invite))
    sent = home.out.take()
    [ok] = to_edge(sent)
    assert ok.status == 200 and ok.cseq[1] == "CANCEL" and len(ok.vias) == 2
    [cancel] = branches(sent, "CANCEL")
    assert cancel.token == "tokB0"  # tokB1 has not sent a provisional yet
    home.receive(reply(cancel.msg, 200))
    home.receive(reply(legs["tokB0"], 487, "t0"))
    assert to_edge(home.out.take()) == []  # tokB1 still pending
    home.receive(reply(legs["tokB1"], 180, "t1"))
    sent = home.out.take()
    assert to_edge(sent) == []  # no ringing after CANCEL
    [cancel1] = branches(sent, "CANCEL")
    assert cancel1.token == "tokB1"
    home.receive(reply(legs["tokB1"], 487, "t1"))
    [end] = to_edge(home.out.take())
    assert end.status == 487 and end.cseq == (1, "INVITE")
    home.receive(ack_data(invite, end))
    assert home.drain() == []


def test_cancel_when_no_branch_ever_answers_is_487_after_timer_b(home):
    invite, legs = fork_invite(home, 1)
    home.receive(cancel_data(invite))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [200] and branches(sent) == []  # §9.1: no CANCEL before a 1xx
    home.advance(TIMERS.b + 1)
    [end] = to_edge(home.out.take())
    assert end.status == 487
    assert home.drain() == []


def test_cancel_for_unknown_invite_is_481(home):
    home.receive(cancel_data(request_data("INVITE", "sip:bob@example.com")))
    [resp] = to_edge(home.out.take())
    assert resp.status == 481 and resp.cseq[1] == "CANCEL"
    assert home.drain() == []


# ------------------------------------------------------------------ strays and garbage


def test_ack_for_our_non_2xx_is_absorbed(home):
    invite = request_data("INVITE", "sip:nobody@example.com")
    home.receive(invite)
    [resp] = to_edge(home.out.take())
    assert resp.status == 404
    assert len(home.proxy.table.servers) == 1  # waiting for the ACK (timer H)
    home.receive(ack_data(invite, resp))
    assert home.out.take() == []
    assert home.proxy.table.servers == {}  # reliable: confirmed ends the transaction
    assert home.proxy.counters.get("stray_ack") is None
    assert home.drain() == []


def test_stray_ack_late_response_and_garbage_are_dropped(home):
    home.register("bob", "tokB")
    home.receive(request_data("ACK", "sip:bob@example.com", to_tag="x"))
    assert home.proxy.counters["stray_ack"] == 1
    home.receive(request_data("ACK", "sip:bob@example.com"))
    assert home.proxy.counters["stray_ack"] == 2
    home.receive(reply(parse(request_data("INVITE", "sip:bob@example.com")), 200))
    assert home.proxy.counters["late_responses"] == 1
    for junk in (b"\x00\xffgarbage", b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b""):
        home.receive(junk)  # must not raise
    assert home.proxy.counters["malformed"] >= 3
    assert home.out.take() == []
    assert home.drain() == []


def test_late_response_after_the_transaction_ended_is_dropped(home):
    home.register("bob", "tokB")
    home.receive(request_data("MESSAGE", "sip:bob@example.com"))
    [fwd] = branches(home.out.take())
    home.receive(reply(fwd.msg, 200))
    assert statuses(to_edge(home.out.take())) == [200]
    home.receive(reply(fwd.msg, 200))  # retransmitted: the transaction is gone (reliable)
    home.receive(reply(fwd.msg, 500))
    assert home.out.take() == []
    assert home.proxy.counters["late_responses"] == 2
    assert home.drain() == []


# ------------------------------------------------------------------ flows closing


def test_flow_closed_removes_bindings_then_480_for_known_404_for_unknown(home):
    home.register("bob", "tokB")
    home.register("bob", "tokB2", device="phone")
    assert home.proxy.flow_closed("tokB") == 1
    assert [b.flow for b in home.bindings.lookup("sip:bob@example.com")] == ["tokB2"]
    assert home.proxy.flow_closed("tokB2") == 1
    assert home.proxy.flow_closed("tokB2") == 0
    home.receive(request_data("MESSAGE", "sip:bob@example.com"))
    home.receive(request_data("INVITE", "sip:bob@example.com"))
    home.receive(request_data("MESSAGE", "sip:carol@example.com"))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [480, 480, 404]
    assert branches(sent) == []
    home.drain()


# ------------------------------------------------------------------ send failures


def test_send_failing_synchronously_ends_the_branch_500(home):
    home.register("bob", "tokB")
    home.out.fail_now = lambda s: s.token == "tokB"
    home.receive(request_data("MESSAGE", "sip:bob@example.com"))
    sent = home.out.take()
    assert len(branches(sent)) == 1  # tried once
    [resp] = to_edge(sent)
    assert resp.status == 500  # a transport failure counts as 503 (§16.9), never relayed as 503
    assert home.proxy.table.clients == {}
    assert home.drain() == []


def test_invite_send_failing_synchronously_on_one_branch_other_answers(home):
    for i in range(2):
        home.register("bob", f"tokB{i}", device=f"d{i}")
    home.out.fail_now = lambda s: s.token == "tokB0"
    invite = request_data("INVITE", "sip:bob@example.com")
    home.receive(invite)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [100]
    legs = {s.token: s.msg for s in branches(sent, "INVITE")}
    assert sorted(legs) == ["tokB0", "tokB1"]
    assert len(home.proxy.table.clients) == 1  # the failed branch left no transaction
    home.receive(reply(legs["tokB1"], 486, "t1"))
    sent = home.out.take()
    [resp] = to_edge(sent)
    assert resp.status == 486  # 4xx beats the failed branch's 503
    home.receive(ack_data(invite, resp))
    assert home.drain() == []


def test_invite_send_failing_synchronously_on_every_branch_is_500(home):
    for i in range(3):
        home.register("bob", f"tokB{i}", device=f"d{i}")
    home.out.fail_now = lambda s: s.address == EDGE
    invite = request_data("INVITE", "sip:bob@example.com")
    home.receive(invite)
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [100, 500]
    assert home.proxy.table.clients == {}
    assert home.drain() == []


def test_send_failing_later_on_one_branch_other_answers(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB1"], 180, "t1"))
    assert statuses(to_edge(home.out.take())) == [180]
    home.legs["tokB0"].fail()
    assert home.out.take() == []  # tokB1 still rings
    assert [t.request.vias[0].branch for t in home.proxy.table.clients.values()] == [
        legs["tokB1"].vias[0].branch]
    home.receive(reply(legs["tokB1"], 200, "t1"))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [200] and branches(sent, "CANCEL") == []
    assert home.drain() == []


def test_send_failing_later_for_every_branch_is_500_and_nothing_is_left(home):
    for i in range(2):
        home.register("bob", f"tokB{i}", device=f"d{i}")
    invite = request_data("INVITE", "sip:bob@example.com")
    home.receive(invite)
    sent = home.out.take()
    legs = branches(sent, "INVITE")
    assert all(s.error_slot is not None for s in legs)
    legs[0].fail()
    assert home.out.take() == []  # the other branch is still pending
    assert len(home.proxy.table.clients) == 1
    legs[1].fail()
    [resp] = to_edge(home.out.take())
    assert resp.status == 500
    assert home.proxy.table.clients == {}
    legs[1].fail()  # a second report changes nothing
    assert home.out.take() == []
    home.receive(ack_data(invite, resp))
    assert home.drain() == []


def test_send_failing_later_for_a_message(home):
    home.register("bob", "tokB")
    home.receive(request_data("MESSAGE", "sip:bob@example.com"))
    [fwd] = branches(home.out.take())
    fwd.fail("connection reset")
    assert statuses(to_edge(home.out.take())) == [500]
    assert home.proxy.table.clients == {} and home.proxy.table.servers == {}
    assert home.drain() == []


def test_send_failing_later_after_the_answer_changes_nothing(home):
    invite, legs = fork_invite(home, 1)
    home.receive(reply(legs["tokB0"], 200))
    assert statuses(to_edge(home.out.take())) == [200]
    home.legs["tokB0"].fail()  # reported after the branch ended
    assert home.out.take() == []
    assert home.proxy.table.clients == {}
    assert home.drain() == []


def test_ack_send_failing_does_not_lose_the_final_response(home):
    invite, legs = fork_invite(home, 1)
    home.out.fail_now = lambda s: isinstance(s.msg, Request) and s.msg.method == "ACK"
    home.receive(reply(legs["tokB0"], 486, "t0"))
    sent = home.out.take()
    assert len(branches(sent, "ACK")) == 1
    assert statuses(to_edge(sent)) == [486]
    assert home.proxy.table.clients == {}
    home.receive(ack_data(invite, to_edge(sent)[0]))
    assert home.drain() == []


def test_cancel_send_failing_leaves_nothing_behind(home):
    invite, legs = fork_invite(home, 2)
    home.receive(reply(legs["tokB0"], 180, "t0"))
    home.receive(reply(legs["tokB1"], 180, "t1"))
    home.out.take()
    home.out.fail_now = lambda s: isinstance(s.msg, Request) and s.msg.method == "CANCEL"
    home.receive(reply(legs["tokB0"], 200, "t0"))
    sent = home.out.take()
    assert statuses(to_edge(sent)) == [200] and len(branches(sent, "CANCEL")) == 1
    # the CANCEL is lost; the other branch's INVITE ends at timer C, its CANCEL at timer F
    home.drain()


@pytest.mark.parametrize("method", ["MESSAGE", "INVITE", "OPTIONS"])
def test_non_sip_request_uri_is_416_and_leaves_no_transaction(home, method):
    # The parser accepts a tel: Request-URI and the edge relays it; routing cannot
    # use it.  It must be answered, not dropped, and leave no server transaction.
    data = request_data(method, "tel:+15551234", to="sip:bob@example.com")
    home.receive(data)
    [resp] = to_edge(home.out.take())
    assert resp.status == 416
    assert resp.get_all("via") == parse(data).get_all("via")
    if method == "INVITE":
        home.receive(ack_data(data, resp))
    assert home.proxy.table.servers == {}
    assert home.drain() == []


def test_cancel_after_the_final_response_gets_200_and_changes_nothing(home):
    home.register("bob", "tokB")
    invite = request_data("INVITE", "sip:bob@example.com")
    home.receive(invite)
    [fwd] = branches(home.out.take())
    home.receive(reply(fwd.msg, 486))
    assert 486 in statuses(to_edge(home.out.take()))
    home.receive(cancel_data(invite))
    answers = to_edge(home.out.take())
    assert [(m.status, m.cseq[1]) for m in answers] == [(200, "CANCEL")]
    assert branches(home.out.take()) == []
    assert home.drain() == []
