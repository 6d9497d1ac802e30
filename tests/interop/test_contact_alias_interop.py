"""[sip] contact_mode = "alias" with real peers: Kamailio 5.6 as a core whose
registrar ignores Path (tests/interop/kamailio_nopath/kamailio.cfg), JsSIP and
SIP.js clients in Node, sipp on UDP, all on 127.0.0.1.

In alias mode the clients register, message each other both ways and take a
sipp call; in path mode the same core cannot reach them (it sends to the
browsers' ``*.invalid`` Contacts): the mode is what makes it work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.integration.conftest import port_of
from tests.interop.peers import JsSipUa, KamailioCore, Sipp, free_port
from tests.interop.test_relay_interop import blocking, messages_both_ways, sip_port, sipws_config

NOPATH_CFG = Path(__file__).parent / "kamailio_nopath" / "kamailio.cfg"


@pytest_twisted.inlineCallbacks
def _setup(sipws_factory, peers, tmp_path, mode: str, **sip: Any):  # noqa: F811
    kamailio = peers(KamailioCore(tmp_path, free_port(), config=NOPATH_CFG))
    yield blocking(kamailio.start)
    root = sipws_factory(sipws_config(kamailio.port, contact_mode=mode, **sip))
    url = f"ws://127.0.0.1:{port_of(root)}"
    alice = peers(JsSipUa(url, "sip:alice@example.com"))
    bob = peers(JsSipUa(url, "sip:bob@example.com"))
    for ua in (alice, bob):
        yield blocking(ua.start)
    return kamailio, root, alice, bob


def _bindings(dump: str) -> list[str]:
    """The Contact URIs in a kamcmd ul.dump."""
    return [line.split("Address:", 1)[1].strip() for line in dump.splitlines() if "Address:" in line]


@pytest_twisted.inlineCallbacks
def test_alias_mode_works_with_a_core_that_ignores_path(sipws_factory, peers, tmp_path):  # noqa: F811
    kamailio, root, alice, bob = yield _setup(sipws_factory, peers, tmp_path, "alias")
    own = {}
    for ua in (alice, bob):
        event = yield blocking(ua.register)
        assert event["status"] == 200
        # The 200 OK reached the client with its own Contact URI back in it.
        assert any(event["own"] in contact for contact in event["contacts"]), event
        assert all("127.0.0.1:" + str(sip_port(root)) not in c for c in event["contacts"]), event
        own[ua.uri] = event["own"]
    # SIP.js drops a 200 OK to REGISTER without its own Contact: it registers only
    # because sipws restored it.
    carol = peers(JsSipUa(alice.ws_url, "sip:carol@example.com", script="sipjs_ua.mjs"))
    yield blocking(carol.start)
    event = yield blocking(carol.register)
    assert event["status"] == 200

    # Kamailio stored sipws's aliases (no Path, no *.invalid host).
    dump = yield blocking(kamailio.kamcmd, "ul.dump")
    bindings = _bindings(dump)
    assert len(bindings) == 3, dump
    proxy = root.relay.proxy
    for binding in bindings:
        assert f"@127.0.0.1:{sip_port(root)};transport=udp" in binding, dump
        assert ".invalid" not in binding, dump
    restored = {proxy.aliases.parse_user(b[4:].split("@", 1)[0])[1] for b in bindings}
    assert set(own.values()) <= restored, (own, restored)
    assert "Path: <sip:" not in dump, dump

    # MESSAGE both ways through the core, which sends to the stored Contact.
    yield messages_both_ways(alice, bob)
    carol.send(cmd="message", target="sip:alice@example.com", body="from SIP.js")
    got = yield blocking(alice.expect, "message")
    assert got["body"] == "from SIP.js"
    alice.send(cmd="message", target="sip:carol@example.com", body="to SIP.js")
    got = yield blocking(carol.expect, "message")
    assert got["body"] == "to SIP.js"

    # A sipp call (UDP, toward Kamailio) reaches alice through sipws; the caller
    # hangs up (ACK and BYE come back to alice's aliased 200 OK Contact).
    caller = peers(Sipp("uac_bye.xml", free_port(), f"127.0.0.1:{kamailio.port}",
                        ["-s", "alice", "-m", "1", "-timeout", "30s"], tmp_path)).start()
    yield blocking(alice.expect, "confirmed", tag="in")
    ended = yield blocking(alice.expect, "ended", tag="in")
    assert ended["originator"] == "remote"
    code = yield blocking(caller.wait)
    assert code == 0, caller.messages()[-3000:]
    # sipp saw alice's Contact as an alias at sipws, never a *.invalid host.
    trace = caller.messages()
    assert f"@127.0.0.1:{sip_port(root)};transport=udp>" in trace and ".invalid" not in trace
    assert proxy.counters["403"] == 0 and proxy.counters["430"] == 0


@pytest_twisted.inlineCallbacks
def test_path_mode_fails_with_a_core_that_ignores_path(sipws_factory, peers, tmp_path):  # noqa: F811
    """The control: same core, same clients, contact_mode = "path".  Kamailio
    answers 478 Unresolvable Destination (it tries the browsers' .invalid hosts)."""
    kamailio, root, alice, bob = yield _setup(sipws_factory, peers, tmp_path, "path", t1=0.1)
    for ua in (alice, bob):
        event = yield blocking(ua.register)
        assert event["status"] == 200
    dump = yield blocking(kamailio.kamcmd, "ul.dump")
    bindings = _bindings(dump)
    assert len(bindings) == 2 and all(".invalid" in b for b in bindings), dump
    alice.send(cmd="message", target="sip:bob@example.com", body="hello bob")
    failed = yield blocking(alice.expect, "message_failed", timeout=30, wait=40)
    assert failed["status"] is not None and failed["status"] >= 400, failed
    assert not [e for e in bob.seen if e.get("event") == "message"]
    caller = peers(Sipp("uac_bye.xml", free_port(), f"127.0.0.1:{kamailio.port}",
                        ["-s", "alice", "-m", "1", "-timeout", "20s"], tmp_path)).start()
    code = yield blocking(caller.wait)
    assert code != 0, caller.messages()[-3000:]
    assert not [e for e in alice.seen if e.get("event") == "incoming"]
    assert re.search(r"SIP/2.0 [4-6]\d\d ", caller.messages()), caller.messages()[-3000:]
    assert "SIP/2.0 200" not in caller.messages()
