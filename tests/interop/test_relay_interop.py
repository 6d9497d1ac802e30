"""The relay with real peers: JsSIP (Node) ↔ sipws ↔ Kamailio 5.6 ↔ sipp, on 127.0.0.1.

Each test starts its own Kamailio (registrar with Path, record-routing proxy),
sipp processes and JsSIP user agents, and stops them by pid.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import DatagramProtocol

from tests.integration.conftest import port_of, wait_for
from tests.interop.peers import JsSipUa, KamailioCore, Sipp, free_port

#: Longest a blocking peer operation may take.
PEER_WAIT = 60.0


def blocking(fn: Callable, *args: Any, wait: float = PEER_WAIT, **kwargs: Any):
    return threads.deferToThread(fn, *args, **kwargs).addTimeout(wait, reactor)


@defer.inlineCallbacks
def messages_both_ways(alice: JsSipUa, bob: JsSipUa):
    """alice -> bob (200 back to alice), then bob -> alice, each checked at the receiver."""
    alice.send(cmd="message", target="sip:bob@example.com", body="hello bob")
    got = yield blocking(bob.expect, "message")
    assert got["body"] == "hello bob" and got["from"] == "sip:alice@example.com"
    sent = yield blocking(alice.expect, "message_sent")
    assert sent["status"] == 200
    bob.send(cmd="message", target="sip:alice@example.com", body="hi alice")
    got = yield blocking(alice.expect, "message")
    assert got["body"] == "hi alice"


def sipws_config(upstream_port: int, **sip: Any) -> dict[str, Any]:
    return {"sip": {"listen": ["udp:127.0.0.1:0"], "upstream": f"sip:127.0.0.1:{upstream_port};transport=udp", **sip}}


def sip_port(root) -> int:
    return root.listening("sip-udp")[0].getHost().port


@pytest_twisted.inlineCallbacks
def _core_and_ua(sipws_factory, peers, tmp_path, users=("alice",), upstream: str = "", answer: str = "auto"):
    kamailio = peers(KamailioCore(tmp_path, free_port(), upstream=upstream))
    yield blocking(kamailio.start)
    root = sipws_factory(sipws_config(kamailio.port))
    uas = []
    for user in users:
        ua = peers(JsSipUa(f"ws://127.0.0.1:{port_of(root)}", f"sip:{user}@example.com", answer=answer))
        yield blocking(ua.start)
        event = yield blocking(ua.register)
        assert event["status"] == 200
        uas.append(ua)
    return kamailio, root, uas


@pytest_twisted.inlineCallbacks
def test_jssip_clients_register_with_path_and_exchange_messages(sipws_factory, peers, tmp_path):
    kamailio, root, (alice, bob) = yield _core_and_ua(sipws_factory, peers, tmp_path, ("alice", "bob"))
    dump = yield blocking(kamailio.kamcmd, "ul.dump")
    # Kamailio stored each binding with a Path through sipws's SIP socket, with the flow token.
    assert dump.count(f"127.0.0.1:{sip_port(root)}") >= 2, dump
    assert "Path" in dump and ";ob" in dump, dump
    yield messages_both_ways(alice, bob)
    assert root.stats.get("sip.messages_in.ws") >= 4 and root.stats.get("sip.messages_out.udp") >= 4


@pytest_twisted.inlineCallbacks
def test_sipjs_and_jssip_clients_exchange_messages_through_the_core(sipws_factory, peers, tmp_path):
    """The two browser SIP stacks side by side: SIP.js and JsSIP register through
    sipws to Kamailio and reach each other through the core."""
    kamailio, root, (alice,) = yield _core_and_ua(sipws_factory, peers, tmp_path, ("alice",))
    carol = peers(JsSipUa(f"ws://127.0.0.1:{port_of(root)}", "sip:carol@example.com", script="sipjs_ua.mjs"))
    yield blocking(carol.start)
    event = yield blocking(carol.register)
    assert event["status"] == 200
    dump = yield blocking(kamailio.kamcmd, "ul.dump")
    assert "carol" in dump and dump.count(f"127.0.0.1:{sip_port(root)}") >= 2, dump
    carol.send(cmd="message", target="sip:alice@example.com", body="from SIP.js")
    got = yield blocking(alice.expect, "message")
    assert got["body"] == "from SIP.js" and got["from"] == "sip:carol@example.com"
    sent = yield blocking(carol.expect, "message_sent")
    assert sent["status"] == 200
    alice.send(cmd="message", target="sip:carol@example.com", body="from JsSIP")
    got = yield blocking(carol.expect, "message")
    assert got["body"] == "from JsSIP" and got["from"] == "sip:alice@example.com"


def start_caller(peers, scenario: str, kamailio: KamailioCore, tmp_path) -> Sipp:
    """A sipp caller running ``scenario`` toward alice through Kamailio (one call)."""
    return peers(Sipp(scenario, free_port(), f"127.0.0.1:{kamailio.port}",
                      ["-s", "alice", "-m", "1", "-timeout", "30s"], tmp_path)).start()


@pytest_twisted.inlineCallbacks
def test_sipp_calls_a_jssip_user_and_either_side_hangs_up(sipws_factory, peers, tmp_path):
    kamailio, root, (alice,) = yield _core_and_ua(sipws_factory, peers, tmp_path)
    # Caller hangs up.
    caller = start_caller(peers, "uac_bye.xml", kamailio, tmp_path)
    yield blocking(alice.expect, "confirmed", tag="in")
    ended = yield blocking(alice.expect, "ended", tag="in")
    assert ended["originator"] == "remote"
    code = yield blocking(caller.wait)
    assert code == 0, caller.messages()[-3000:]
    # Callee (the browser) hangs up.
    caller = start_caller(peers, "uac_remote_bye.xml", kamailio, tmp_path)
    yield blocking(alice.expect, "confirmed", tag="in")
    alice.send(cmd="hangup")
    ended = yield blocking(alice.expect, "ended", tag="in")
    assert ended["originator"] == "local"
    code = yield blocking(caller.wait)
    assert code == 0, caller.messages()[-3000:]
    yield wait_for(lambda: len(root.relay.proxy.table) == 0, timeout=40)


@pytest_twisted.inlineCallbacks
def test_jssip_calls_sipp_behind_kamailio_and_cancels_a_ringing_call(sipws_factory, peers, tmp_path):
    callee_port = free_port()
    callee = peers(Sipp("uas_answer.xml", callee_port, args=["-m", "1"], run_dir=tmp_path))
    callee.start()
    kamailio, root, (alice,) = yield _core_and_ua(
        sipws_factory, peers, tmp_path, upstream=f"sip:127.0.0.1:{callee_port};transport=udp")
    alice.send(cmd="call", target="sip:carol@example.com")
    progress = yield blocking(alice.expect, "progress", tag="out")
    assert progress["status"] == 180
    yield blocking(alice.expect, "confirmed", tag="out")
    alice.send(cmd="hangup")
    ended = yield blocking(alice.expect, "ended", tag="out")
    assert ended["originator"] == "local"
    code = yield blocking(callee.wait)
    assert code == 0, callee.messages()[-3000:]
    # A call that rings until the browser cancels it.
    callee = peers(Sipp("uas_cancel.xml", callee_port, args=["-m", "1"], run_dir=tmp_path))
    callee.start()
    alice.send(cmd="call", target="sip:carol@example.com")
    yield blocking(alice.expect, "progress", tag="out", status=180)
    alice.send(cmd="hangup")
    failed = yield blocking(alice.expect, "failed", tag="out")
    assert failed["cause"] == "Canceled"
    code = yield blocking(callee.wait)
    assert code == 0, callee.messages()[-3000:]


@pytest_twisted.inlineCallbacks
def test_core_request_to_a_closed_connection_gets_430(sipws_factory, peers, tmp_path):
    kamailio, root, (alice,) = yield _core_and_ua(sipws_factory, peers, tmp_path)
    caller = start_caller(peers, "uac_430.xml", kamailio, tmp_path)
    yield blocking(alice.expect, "confirmed", tag="in")
    alice.send(cmd="drop")  # the browser's connection goes away mid-dialog
    yield wait_for(lambda: len(root.connections) == 0)
    code = yield blocking(caller.wait)  # its BYE comes back 430 through Kamailio
    assert code == 0, caller.messages()[-3000:]
    assert root.relay.proxy.counters["430"] >= 1


class LossyLink(DatagramProtocol):
    """A UDP relay between sipws and the core that drops a share of datagrams
    in each direction (seeded, so a failure can be replayed)."""

    def __init__(self, core: tuple[str, int], loss: float, seed: int) -> None:
        self.core = core
        self.loss = loss
        self.rng = random.Random(seed)
        self.sipws: tuple[str, int] | None = None
        self.dropped = {"to_core": 0, "to_sipws": 0}
        self.passed = {"to_core": 0, "to_sipws": 0}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) == self.core:
            direction, destination = "to_sipws", self.sipws
        else:
            self.sipws = (addr[0], addr[1])
            direction, destination = "to_core", self.core
        if destination is None:
            return
        if self.rng.random() < self.loss:
            self.dropped[direction] += 1
            return
        self.passed[direction] += 1
        self.transport.write(data, destination)


@pytest_twisted.inlineCallbacks
def test_calls_complete_over_a_lossy_udp_leg(sipws_factory, peers, tmp_path, sipws_log):
    """10 % of the datagrams between sipws and Kamailio are lost, both ways; the
    browser's calls to a sipp callee behind Kamailio all complete, because sipws
    retransmits on its UDP leg (and relays the callee's 2xx retransmissions)."""
    calls = 100
    callee_port = free_port()
    callee = peers(Sipp("uas_answer.xml", callee_port, args=["-m", str(calls)], run_dir=tmp_path))
    callee.start()
    core_port = free_port()
    link = LossyLink(("127.0.0.1", core_port), loss=0.10, seed=7)
    link_port = reactor.listenUDP(0, link, interface="127.0.0.1")
    try:
        kamailio = peers(KamailioCore(tmp_path, core_port, upstream=f"sip:127.0.0.1:{callee_port};transport=udp",
                                      advertise_port=link_port.getHost().port))
        yield blocking(kamailio.start)
        root = sipws_factory(sipws_config(link_port.getHost().port, t1=0.2))
        caller = peers(JsSipUa(f"ws://127.0.0.1:{port_of(root)}", "sip:alice@example.com"))
        yield blocking(caller.start)
        caller.send(cmd="calls", target="sip:carol@example.com", count=calls, concurrency=10, hold_ms=20)
        done = yield blocking(caller.expect, "calls_done", timeout=150, wait=160)
        assert done["ok"] == calls and done["failed"] == 0, (done, [x for x in sipws_log if "info" not in x][-30:])
        assert link.dropped["to_core"] > 0 and link.dropped["to_sipws"] > 0, link.dropped
        code = yield blocking(callee.wait, wait=70)
        assert code == 0, callee.messages()[-3000:]
        assert root.relay.proxy.counters["430"] == 0
    finally:
        yield link_port.stopListening()
