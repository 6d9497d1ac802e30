"""Standalone mode on real sockets: no [sip] upstream, sipws registers and connects its clients.

Each "phone" is a raw WebSocket client writing SIP as JsSIP does; the tests
check what reaches the other phone, not sipws's internals (tests/interop
drives JsSIP and Chromium).
"""

from __future__ import annotations

import itertools
import json

import pytest_twisted
from twisted.internet import defer

from sipws.admin import methods
from sipws.admin.metrics import make_registry, render
from sipws.sip import parse
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.wsclient import RawWs

ANSWER_TIMEOUT = 5.0
_ids = itertools.count(1)


class Phone:
    """A WebSocket SIP client for one address of record (blocking: run its calls in a thread)."""

    def __init__(self, port: int, user: str, domain: str = "example.com", path: str = "/",
                 headers: dict[str, str] | None = None) -> None:
        self.ws = RawWs(port)
        self.ws.upgrade(path=path, headers=headers)
        self.ws.sock.settimeout(ANSWER_TIMEOUT)
        self.user = user
        self.aor = f"sip:{user}@{domain}"
        self.host = f"{user}{next(_ids)}.invalid"
        self.contact = f"sip:{user}@{self.host};transport=ws"
        self.tag = f"tag{user}{next(_ids)}"

    def send(self, data: bytes) -> None:
        self.ws.send_text(data)

    def recv(self):
        _, data = self.ws.read_data()
        return parse(data)

    def recv_final(self):
        """The next message that is not a 100 Trying."""
        while True:
            msg = self.recv()
            if getattr(msg, "status", None) != 100:
                return msg

    def request(self, method: str, ruri: str, to: str, call_id: str, cseq: int = 1, extra: str = "",
                body: str = "", branch: str | None = None) -> bytes:
        branch = branch or f"z9hG4bK{call_id}{method}{cseq}"
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/WSS {self.host};branch={branch}",
            "Max-Forwards: 69",
            f"To: <{to}>",
            f"From: <{self.aor}>;tag={self.tag}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <{self.contact};ob>",
        ]
        if extra:
            lines.append(extra)
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def register(self, expires: int = 600, instance: str | None = None, call_id: str | None = None,
                 cseq: int = 1):
        instance = instance or f"<urn:uuid:00000000-0000-0000-0000-{next(_ids):012d}>"
        lines = [
            f"REGISTER sip:{self.aor.split('@')[1]} SIP/2.0",
            f"Via: SIP/2.0/WSS {self.host};branch=z9hG4bKreg{next(_ids)}",
            "Max-Forwards: 69",
            f"To: <{self.aor}>",
            f"From: <{self.aor}>;tag={self.tag}",
            f"Call-ID: {call_id or 'reg-' + self.host}",
            f"CSeq: {cseq} REGISTER",
            f'Contact: <{self.contact}>;+sip.instance="{instance}";reg-id=1;expires={expires}',
            "Supported: path, outbound, gruu",
            "Expires: %d" % expires,
            "Content-Length: 0",
        ]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self.recv_final()

    def answer(self, req, status: int, reason: str = "OK", body: str = "") -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.get_all("via")]
        lines += [f"Record-Route: {v}" for v in req.get_all("record-route")] if status < 300 else []
        lines.append(f"From: {req.get('from')}")
        to = req.get("to")
        lines.append(f"To: {to}" if ";tag=" in to else f"To: {to};tag={self.tag}")
        lines.append(f"Call-ID: {req.call_id}")
        lines.append(f"CSeq: {req.get('cseq')}")
        if status < 300:
            lines.append(f"Contact: <{self.contact}>")
        lines.append(f"Content-Length: {len(body.encode())}")
        self.send(("\r\n".join(lines) + "\r\n\r\n" + body).encode())

    def close(self) -> None:
        self.ws.shutdown()


def phone(root, user: str, **kw):
    return in_thread(Phone, port_of(root), user, **kw)


#: Standalone mode as the built-in defaults run it: SIP sockets, no upstream.
STANDALONE = {"sip": {"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"], "upstream": ""}}


def standalone(**sections):
    overrides = {section: dict(values) for section, values in STANDALONE.items()}
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


@pytest_twisted.inlineCallbacks
def test_register_then_message_between_two_clients(sipws_factory, sipws_log):
    root = sipws_factory(standalone())
    assert any("standalone mode" in line for line in sipws_log), sipws_log
    alice = yield phone(root, "alice")
    bob = yield phone(root, "bob")
    ok = yield in_thread(alice.register)
    assert ok.status == 200 and alice.contact in ok.get("contact")
    ok = yield in_thread(bob.register)
    assert ok.status == 200

    dump = methods.call(root, "registrar.dump", {})
    assert sorted(b["aor"] for b in dump["bindings"]) == ["sip:alice@example.com", "sip:bob@example.com"]
    assert json.dumps(dump)  # JSON-able as the admin interface returns it
    open_ids = {record.id for record in root.connections}
    assert {b["conn_id"] for b in dump["bindings"]} == open_ids  # each binding names its connection
    assert methods.call(root, "stats", {})["registrar"] == {"aors": 2, "bindings": 2, "transactions": 0}
    metrics = render(make_registry(root)).decode()
    assert "sipws_registrar_bindings 2.0" in metrics and "sipws_registrar_aors 2.0" in metrics

    yield in_thread(alice.send, alice.request("MESSAGE", bob.aor, bob.aor, "msg-1", body="hi bob",
                                              extra="Content-Type: text/plain"))
    got = yield in_thread(bob.recv)
    assert got.method == "MESSAGE" and got.body == b"hi bob"
    assert got.request_uri.host == bob.host  # delivered to bob's own Contact
    yield in_thread(bob.answer, got, 200)
    done = yield in_thread(alice.recv_final)
    assert done.status == 200 and done.call_id == "msg-1"
    alice.close()
    bob.close()


@pytest_twisted.inlineCallbacks
def test_invite_forks_to_every_connection_first_2xx_wins_others_cancelled(sipws_factory):
    root = sipws_factory(standalone())
    alice = yield phone(root, "alice")
    desk = yield phone(root, "bob")
    mobile = yield phone(root, "bob")
    for p in (desk, mobile):
        assert (yield in_thread(p.register)).status == 200
    assert len(methods.call(root, "registrar.dump", {})["bindings"]) == 2

    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    yield in_thread(alice.send, alice.request("INVITE", desk.aor, desk.aor, "call-1", body=sdp,
                                              extra="Content-Type: application/sdp"))
    on_desk, on_mobile = yield defer.gatherResults([in_thread(desk.recv), in_thread(mobile.recv)])
    assert on_desk.method == on_mobile.method == "INVITE"
    yield in_thread(desk.answer, on_desk, 180, "Ringing")
    yield in_thread(mobile.answer, on_mobile, 180, "Ringing")
    ringing = yield in_thread(alice.recv_final)
    assert ringing.status == 180
    yield in_thread(desk.answer, on_desk, 200, body=sdp)

    answered = yield in_thread(alice.recv_final)
    while answered.status == 180:  # the other branch's ringing may come first
        answered = yield in_thread(alice.recv_final)
    assert answered.status == 200 and answered.call_id == "call-1"
    cancel = yield in_thread(mobile.recv)
    assert cancel.method == "CANCEL" and cancel.call_id == "call-1"
    yield in_thread(mobile.answer, cancel, 200)
    yield in_thread(mobile.answer, on_mobile, 487, "Request Terminated")
    ack = yield in_thread(mobile.recv)  # the hop-by-hop ACK for the 487
    assert ack.method == "ACK"
    for p in (alice, desk, mobile):
        p.close()


@pytest_twisted.inlineCallbacks
def test_unknown_user_404_known_but_gone_480_and_bindings_die_with_the_connection(sipws_factory):
    root = sipws_factory(standalone())
    alice = yield phone(root, "alice")
    bob = yield phone(root, "bob")
    assert (yield in_thread(bob.register)).status == 200
    yield in_thread(alice.send, alice.request("MESSAGE", "sip:nobody@example.com", "sip:nobody@example.com", "m-404"))
    assert (yield in_thread(alice.recv_final)).status == 404

    bob.close()
    yield wait_for(lambda: not methods.call(root, "registrar.dump", {})["bindings"])
    yield in_thread(alice.send, alice.request("MESSAGE", bob.aor, bob.aor, "m-480"))
    assert (yield in_thread(alice.recv_final)).status == 480
    alice.close()


@pytest_twisted.inlineCallbacks
def test_options_to_the_server_and_register_rules(sipws_factory):
    root = sipws_factory(standalone(registrar={"min_expires": 60}))
    alice = yield phone(root, "alice")
    yield in_thread(alice.send, alice.request("OPTIONS", "sip:127.0.0.1", "sip:127.0.0.1", "opt-1"))
    ok = yield in_thread(alice.recv_final)
    assert ok.status == 200 and "INVITE" in ok.get("allow")
    brief = yield in_thread(alice.register, 10)
    assert brief.status == 423 and brief.get("min-expires") == "60"
    gone = yield in_thread(alice.register, 0)
    assert gone.status == 200
    assert methods.call(root, "registrar.dump", {})["bindings"] == []
    alice.close()


@pytest_twisted.inlineCallbacks
def test_domains_limit_what_is_served(sipws_factory):
    root = sipws_factory(standalone(registrar={"domains": ["example.com"]}))
    mallory = yield phone(root, "mallory", domain="elsewhere.org")
    refused = yield in_thread(mallory.register)
    assert refused.status in (403, 404)
    assert methods.call(root, "registrar.dump", {})["bindings"] == []
    mallory.close()


def test_upstream_set_means_relay_mode(sipws_factory, sipws_log):
    root = sipws_factory(standalone(sip={"upstream": "sip:127.0.0.1:5999;transport=udp"}))
    assert not root.standalone.enabled
    assert any("relay mode" in line and "sip:127.0.0.1:5999" in line for line in sipws_log)
    assert not any("standalone mode" in line for line in sipws_log)
    error = None
    try:
        methods.call(root, "registrar.dump", {})
    except methods.AdminError as exc:
        error = exc
    assert error is not None and error.code == methods.NOT_AVAILABLE


def test_open_listener_without_origin_rule_warns(sipws_factory, sipws_log):
    sipws_factory(standalone(ws={"listen": ["0.0.0.0:0"]}))
    assert any("allowed_origins is empty" in line for line in sipws_log), sipws_log
