"""The MSRP relay's figures on /metrics (the admin registry as the HTTP page renders it)."""

from __future__ import annotations

import pytest_twisted

from sipws.admin.metrics import make_registry, render
from tests.integration.conftest import in_thread, port_of
from tests.integration.msrp_client import MsrpWs, relay_uri


@pytest_twisted.inlineCallbacks
def test_msrp_counters_and_gauges_are_on_the_metrics_page(sipws_factory):
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]}, "msrp": {"allow_insecure": True}})
    client = MsrpWs(port_of(root), "alice")
    try:
        yield in_thread(client.open)
        answer = yield in_thread(client.auth, relay_uri(port_of(root), tls=False))
        assert answer.status == 200
        page = render(make_registry(root)).decode()
    finally:
        client.shutdown()
    lines = page.splitlines()
    assert "sipws_msrp_auth_ok 1.0" in lines
    assert "sipws_msrp_sessions 1.0" in lines
    assert "sipws_msrp_peer_connections 0.0" in lines
    assert "sipws_msrp_ws_messages_in_total 1.0" in lines and "sipws_msrp_ws_messages_out_total 1.0" in lines
