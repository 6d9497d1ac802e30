"""HEP tracing of MSRP over WebSocket: the handshake event names the subprotocol, and every
chunk in and out is an "msrp" event (HEPv3 assigns MSRP no protocol type: sipws's 0x59 JSON)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipws.trace import hep
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.msrp_client import MsrpWs, relay_uri
from tests.integration.test_trace import UdpCollector


@pytest.fixture
def collector():
    udp = UdpCollector()
    port = reactor.listenUDP(0, udp, interface="127.0.0.1", maxPacketSize=65535)
    udp.port = port.getHost().port
    yield udp
    port.stopListening()


def events(collector) -> list[dict]:
    return [json.loads(p.payload) for p in collector.packets if p.proto_type == hep.PROTO_NET]


@pytest_twisted.inlineCallbacks
def test_msrp_chunks_and_the_subprotocol_are_traced(sipws_factory, collector):
    hep_port = collector.port
    root = sipws_factory({"ws": {"subprotocols": ["sip", "msrp"]}, "msrp": {"allow_insecure": True},
                          "trace": {"destination": f"udp:127.0.0.1:{hep_port}", "on": True}})
    client = MsrpWs(port_of(root), "alice")
    try:
        yield in_thread(client.open)
        answer = yield in_thread(client.auth, relay_uri(port_of(root), tls=False))
        assert answer.status == 200
        yield wait_for(lambda: len([e for e in events(collector) if e["event"] == "msrp"]) == 2)
    finally:
        client.shutdown()
    found = events(collector)
    [accepted] = [e for e in found if e["event"] == "accepted"]
    assert accepted["subprotocol"] == "msrp"
    chunk_in, chunk_out = [e for e in found if e["event"] == "msrp"]
    assert chunk_in["direction"] == "in" and chunk_in["message"].startswith("MSRP ") and " AUTH\r\n" in chunk_in["message"]
    assert chunk_out["direction"] == "out" and " 200 OK\r\n" in chunk_out["message"]
    assert "Use-Path: msrp://" in chunk_out["message"] and chunk_out["id"] == accepted["id"]
    assert not any(p.proto_type == hep.PROTO_SIP for p in collector.packets)  # MSRP is not sent as SIP
