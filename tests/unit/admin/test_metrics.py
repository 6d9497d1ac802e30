"""The Prometheus collector on an in-memory root."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sipws.admin import metrics
from sipws.transport.connections import CLIENT
from tests.unit.admin.fakes import FakeRoot


def scrape(root):
    text = metrics.render(metrics.make_registry(root)).decode()
    return {sample.name + repr(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_split_counter():
    assert metrics.split_counter("sip.messages_in.udp") == ("sipws_sip_messages_in", "udp")
    assert metrics.split_counter("ws.handshakes_ok") == ("sipws_ws_handshakes_ok", None)
    assert metrics.split_counter("a.b.c") == ("sipws_a_b_c", None)
    assert metrics.metric_name("relay", "odd-name x") == "sipws_relay_odd_name_x"


def test_gauges_and_counters():
    root = FakeRoot()
    root.add(1)
    root.add(2)
    root.add(3, transport="wss", role=CLIENT)
    root.connections.remove(root.add(4))
    root.stats.incr("ws.handshakes_ok", 7)
    root.stats.incr("sip.messages_in.udp", 2)
    root.stats.incr("sip.messages_in.tcp", 1)
    root.accepting = False

    class Relay:
        def stats(self):
            return {"transactions": 5, "events": {"timeouts": 1}, "name": "x"}

    root.relay = Relay()
    values = scrape(root)
    assert values["sipws_connections_open[('role', 'server'), ('transport', 'ws')]"] == 2
    assert values["sipws_connections_open[('role', 'client'), ('transport', 'wss')]"] == 1
    assert values["sipws_connections_open[('role', 'server'), ('transport', 'wss')]"] == 0
    assert values["sipws_connections_max[]"] == 4
    assert values["sipws_accepting[]"] == 0
    assert values["sipws_ws_handshakes_ok_total[]"] == 7
    assert values["sipws_ws_closed_local_total[]"] == 0
    assert values["sipws_sip_messages_in_total[('transport', 'udp')]"] == 2
    assert values["sipws_sip_messages_in_total[('transport', 'tcp')]"] == 1
    assert values["sipws_relay_transactions[]"] == 5
    assert values["sipws_relay_events_timeouts[]"] == 1
    assert values["sipws_trace_queue_length[]"] == 3
