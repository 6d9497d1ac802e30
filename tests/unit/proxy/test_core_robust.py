"""Bad input never raises; lossy UDP toward the core still completes every request."""

import random

from hypothesis import HealthCheck, given, settings, strategies as st

from sipws.sip import parse

from .harness import CLIENT, CORE, assert_clean, capture, make_proxy, message, response_to, step
from .test_core_from_core import core_invite

SEEDS = [capture(n) for n in ("jssip_01_REGISTER", "jssip_02_MESSAGE", "jssip_04_INVITE",
                              "jssip_05_ACK", "jssip_06_BYE")]
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_raise(data, from_flow):
    proxy, clock, out = make_proxy()
    if from_flow:
        proxy.receive_from_flow(3, data, CLIENT, "ws")
    else:
        proxy.receive_from_sip(data, CORE, "udp")
    assert_clean(proxy, clock)


@SETTINGS
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_client_messages_never_raise(seed, data):
    proxy, clock, out = make_proxy()
    i = data.draw(st.integers(0, len(seed) - 1))
    chunk = data.draw(st.binary(min_size=0, max_size=8))
    mutated = seed[:i] + chunk + seed[i + data.draw(st.integers(0, 8)):]
    proxy.receive_from_flow(3, mutated, CLIENT, "ws")
    # whatever went out toward the core is a message the parser accepts
    for _, sent, _ in out.to_targets:
        parse(sent)
    for _, sent in out.to_flows:
        assert sent.startswith(b"SIP/2.0 ")
    for target, sent, on_error in list(out.to_targets):
        if on_error is not None:
            on_error("test")
    assert_clean(proxy, clock)


@SETTINGS
@given(st.sampled_from(["INVITE", "MESSAGE", "BYE", "CANCEL", "ACK", "OPTIONS"]), st.data())
def test_mutated_core_requests_never_raise(method, data):
    proxy, clock, out = make_proxy()
    proxy.receive_from_flow(3, b"\r\n\r\n", CLIENT, "ws")
    token = proxy.tokens.make(3)
    seed = core_invite(f"<sip:{token}@127.0.0.1:5062;lr>", method=method)
    i = data.draw(st.integers(0, len(seed) - 1))
    mutated = seed[:i] + data.draw(st.binary(max_size=6)) + seed[i + data.draw(st.integers(0, 6)):]
    proxy.receive_from_sip(mutated, CORE, "udp")
    assert_clean(proxy, clock)


class LossyCore:
    """A UAS behind a lossy UDP link: answers MESSAGE 200 and INVITE 200 (retransmitting
    the 200 until the ACK comes, RFC 3261 §13.3.1.4)."""

    def __init__(self, proxy, clock, out, rng, loss):
        self.proxy, self.clock, self.out, self.rng, self.loss = proxy, clock, out, rng, loss
        self.acked: set[str] = set()
        self.seen = 0

    def pump(self):
        """Deliver what sipws sent to the core (dropping some), answer it."""
        pending = list(self.out.to_targets)
        self.out.to_targets.clear()
        for _, data, _ in pending:
            self.seen += 1
            if self.rng.random() < self.loss:
                continue
            req = parse(data)
            if not req.is_request:
                continue
            if req.method == "ACK":
                self.acked.add(req.call_id)
                continue
            ok = response_to(req, 200, "OK", to_tag="uas")
            if req.method == "INVITE":
                self._retransmit_2xx(ok, req.call_id, 0.5)
            if self.rng.random() >= self.loss:
                self.proxy.receive_from_sip(ok, CORE, "udp")

    def _retransmit_2xx(self, ok, call_id, interval):
        def again():
            if call_id in self.acked or interval > 16:
                return
            if self.rng.random() >= self.loss:
                self.proxy.receive_from_sip(ok, CORE, "udp")
            self._retransmit_2xx(ok, call_id, min(interval * 2, 4.0))
        self.clock.callLater(interval, again)


def test_lossy_udp_all_requests_complete():
    proxy, clock, out = make_proxy()
    rng = random.Random(1234)
    core = LossyCore(proxy, clock, out, rng, loss=0.2)
    invite = parse(capture("jssip_04_INVITE"))
    msg = parse(capture("jssip_02_MESSAGE"))
    calls = 40
    for n in range(calls):
        for base, kind in ((invite, "i"), (msg, "m")):
            req = base.copy()
            req.set_header("Call-ID", f"{kind}{n}@test")
            req.pop_via()
            req.push_via(f"SIP/2.0/WS c{n}.invalid;branch=z9hG4bK{kind}{n}")
            proxy.receive_from_flow(100 + n, bytes(req), CLIENT, "ws")
    answered: dict[str, int] = {}
    for _ in range(400):
        core.pump()
        # the WebSocket clients: count finals, ACK every 2xx to INVITE they get
        for conn_id, data in out.to_flows:
            resp = parse(data)
            if resp.status >= 200:
                answered[resp.call_id] = resp.status
            if resp.status == 200 and resp.cseq[1] == "INVITE":
                ack = message(f"""
ACK sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/WS c.invalid;branch=z9hG4bKack{resp.call_id.replace('@', '.')}
Max-Forwards: 70
To: {resp.get('to')}
From: {resp.get('from')}
Call-ID: {resp.call_id}
CSeq: {resp.cseq[0]} ACK
Content-Length: 0

""")
                proxy.receive_from_flow(conn_id, ack, CLIENT, "ws")
        out.to_flows.clear()
        step(clock, 0.25)
    assert len(answered) == 2 * calls
    assert set(answered.values()) == {200}
    # every call's 2xx was ACKed at the UAS despite the losses
    assert core.acked >= {f"i{n}@test" for n in range(calls)}
    assert proxy.counters["responses_stateless"] > 0  # 2xx retransmissions relayed
    assert_clean(proxy, clock)


def test_transaction_table_is_bounded_new_requests_get_503():
    from .harness import CLIENT, capture, make_proxy

    proxy, clock, out = make_proxy()
    proxy.max_transactions = 2  # one relayed MESSAGE = a server and a client transaction
    proxy.receive_from_flow(7, capture("jssip_02_MESSAGE"), CLIENT, "ws")
    assert len(proxy.table) == 2 and len(out.to_targets) == 1
    proxy.receive_from_flow(7, capture("jssip_03_OPTIONS"), CLIENT, "ws")
    _, data = out.to_flows[-1]
    assert data.startswith(b"SIP/2.0 503 Overloaded")
    assert len(proxy.table) == 2 and len(out.to_targets) == 1
    assert proxy.counters["overload"] == 1
