"""[auth] with a real client library: JsSIP in Node connects to
``ws://…/?username=…&credential=…`` (the TURN REST form a web service mints),
registers as itself, is refused 403 when it registers as someone else on the
same credentials ([auth] bind_identity), and cannot connect without them."""

from __future__ import annotations

import time
import urllib.parse

import pytest_twisted

from sipws.admin import methods

from tests.integration.conftest import port_of, wait_for
from tests.integration.test_standalone import standalone
from tests.interop.peers import JsSipUa
from tests.interop.test_relay_interop import blocking
from tests.unit.edge.keys import hmac_credential

SECRET = "interop-secret-interop-secret-0123"
AUTH = {"required": True, "bind_identity": True, "hmac_secrets": [SECRET]}


def url_for(port: int, user: str) -> str:
    username = f"{int(time.time()) + 600}:{user}"
    query = urllib.parse.urlencode({"username": username, "credential": hmac_credential(SECRET, username)})
    return f"ws://127.0.0.1:{port}/?{query}"


@pytest_twisted.inlineCallbacks
def test_jssip_registers_as_itself_not_as_another_and_needs_credentials(sipws_factory, peers, sipws_log):
    root = sipws_factory(standalone(auth=AUTH))
    port = port_of(root)

    alice = peers(JsSipUa(url_for(port, "alice"), "sip:alice@example.com"))
    yield blocking(alice.start)
    event = yield blocking(alice.register)
    assert event["status"] == 200
    [record] = list(root.connections)
    assert record.identity == "alice"

    # alice's credentials, bob's address of record: refused by sipws, never registered
    mallory = peers(JsSipUa(url_for(port, "alice"), "sip:bob@example.com"))
    yield blocking(mallory.start)
    mallory.send(cmd="register")
    failed = yield blocking(mallory.expect, "registrationFailed")
    assert failed["status"] == 403, failed
    assert any(line.startswith("identity binding: REGISTER") and "bound to alice" in line for line in sipws_log)
    aors = [b["aor"] for b in methods.call(root, "registrar.dump", {})["bindings"]]
    assert aors == ["sip:alice@example.com"]

    # no credentials: the handshake is refused 401, JsSIP never connects
    carol = peers(JsSipUa(f"ws://127.0.0.1:{port}/", "sip:carol@example.com", expect_connected=False))
    yield blocking(carol.start)
    yield blocking(carol.expect, "disconnected")
    assert not any(e.get("event") == "connected" for e in carol.seen)
    yield wait_for(lambda: any("handshake refused" in line and "status=401" in line for line in sipws_log))
