"""The admin methods on an in-memory root: binding, results, errors."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from sipws import __version__
from sipws.admin import methods
from sipws.admin.methods import AdminError, InvalidParams, NoSuchConnection, call
from sipws.transport.connections import CLIENT, CONNECTING
from tests.unit.admin.fakes import FakeRoot


def result_of(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


@pytest.fixture
def root():
    return FakeRoot()


def used(root, record, at):
    root.reactor.advance(at - root.reactor.seconds())
    record.last_used = root.reactor.seconds()


# -- ws.dump ------------------------------------------------------------------------------


def test_dump_in_id_order_by_default(root):
    records = [root.add(5000 + i) for i in range(3)]
    answer = call(root, "ws.dump", None)
    assert [c["id"] for c in answer["connections"]] == [r.id for r in records]
    assert answer["total"] == 3 and answer["truncated"] is False
    first = answer["connections"][0]
    assert first["remote"] == "127.0.0.1:5000" and first["local"] == "127.0.0.1:8080"
    assert set(first) >= {"transport", "role", "state", "subprotocol", "age", "idle", "awaiting_pong",
                          "origin", "user_agent", "messages_in", "messages_out", "bytes_in", "bytes_out"}


def test_dump_by_use(root):
    a, b, c = (root.add(5000 + i) for i in range(3))
    used(root, b, 1001)
    used(root, a, 1002)
    used(root, c, 1003)
    desc = call(root, "ws.dump", ["used_desc"])
    asc = call(root, "ws.dump", {"order": "used_asc"})
    assert [x["id"] for x in desc["connections"]] == [c.id, a.id, b.id]
    assert [x["id"] for x in asc["connections"]] == [b.id, a.id, c.id]
    assert desc["connections"][0]["idle"] == 0 and desc["connections"][2]["idle"] == 2


def test_dump_limit_truncates(root):
    records = [root.add(5000 + i) for i in range(4)]
    answer = call(root, "ws.dump", ["id_hash", 2])
    assert [x["id"] for x in answer["connections"]] == [r.id for r in records[:2]]
    assert answer["total"] == 4 and answer["truncated"] is True
    assert call(root, "ws.dump", {"limit": 4})["truncated"] is False


def test_dump_default_limit(root):
    for i in range(methods.DEFAULT_DUMP_LIMIT + 1):
        root.add(5000 + i)
    answer = call(root, "ws.dump", [])
    assert len(answer["connections"]) == methods.DEFAULT_DUMP_LIMIT and answer["truncated"]


@pytest.mark.parametrize("params", [["sideways"], ["id_hash", 0], ["id_hash", "ten"], ["id_hash", 1.5],
                                    ["id_hash", True], ["id_hash", 5, 6], {"limit": 2, "colour": 1}, "x"])
def test_dump_bad_params(root, params):
    with pytest.raises(InvalidParams):
        call(root, "ws.dump", params)


# -- ws.close / ws.ping / ws.pong ----------------------------------------------------------


def test_close_defaults(root):
    record = root.add(5000)
    protocol = record.protocol
    answer = call(root, "ws.close", [record.id])
    assert protocol.sent == [("close", 1000, "Normal closure")]
    assert answer == {"id": record.id, "code": 1000, "reason": "Normal closure", "state": "closing"}


def test_close_with_code_and_reason_by_name(root):
    record = root.add(5000)
    call(root, "ws.close", {"id": record.id, "code": 4000, "reason": "bye"})
    assert record.protocol.sent == [("close", 4000, "bye")]


def test_numeric_close_reason_is_text(root):
    record = root.add(5000)
    call(root, "ws.close", [record.id, 4000, 42])
    assert record.protocol.sent == [("close", 4000, "42")]


@pytest.mark.parametrize("params", [[1, 1005], [1, 999], [1, 2999], [1, 5000], [1, 1000, 7.5], [1, 1000, "x" * 124],
                                    [], ["1"], [0]])
def test_close_bad_params(root, params):
    root.add(5000)
    with pytest.raises(InvalidParams):
        call(root, "ws.close", params)
    assert root.connections.get(1).protocol.sent == []


def test_unknown_id_names_it(root):
    for name in ("ws.close", "ws.ping", "ws.pong"):
        with pytest.raises(NoSuchConnection) as caught:
            call(root, name, [42])
        assert "42" in caught.value.message and caught.value.code == methods.NO_SUCH_CONNECTION


def test_ping_and_pong_carry_ping_data():
    root = FakeRoot(keepalive={"ping_data": "hello"})
    record = root.add(5000)
    assert call(root, "ws.ping", [record.id])["payload"] == "hello"
    assert call(root, "ws.pong", {"id": record.id})["sent"] == "pong"
    assert record.protocol.sent == [("ping", b"hello"), ("pong", b"hello")]


def test_ping_on_connection_not_open_is_an_error(root):
    record = root.add(5000, state=CONNECTING)
    with pytest.raises(AdminError) as caught:
        call(root, "ws.ping", [record.id])
    assert caught.value.code == methods.NOT_OPEN


# -- server state, trace, stats, version -----------------------------------------------------


def test_disable_enable(root):
    assert call(root, "ws.disable", None) == {"accepting": False}
    assert root.accepting is False
    assert call(root, "stats", None)["accepting"] is False
    assert call(root, "ws.enable", []) == {"accepting": True}
    assert root.accepting is True


def test_trace_report_and_switch(root):
    assert call(root, "trace", None) == {"trace": "off"}
    assert call(root, "trace", ["on"]) == {"trace": "on"}
    assert root.tracer.enabled is True
    assert call(root, "trace", {"state": "OFF"}) == {"trace": "off"}
    with pytest.raises(InvalidParams):
        call(root, "trace", ["maybe"])


def test_trace_on_without_destination_is_an_error(root):
    root.tracer.configured = False
    with pytest.raises(AdminError) as caught:
        call(root, "trace", ["on"])
    assert caught.value.code == methods.NOT_AVAILABLE and "destination" in caught.value.message
    assert call(root, "trace", ["off"]) == {"trace": "off"}


def test_stats(root):
    root.add(5000)
    root.add(5001, transport="wss", role=CLIENT)
    root.connections.remove(root.add(5002))
    root.stats.incr("ws.handshakes_ok", 3)
    root.stats.incr("sip.messages_in.udp", 2)
    answer = call(root, "stats", None)
    assert answer["connections"]["current"] == 2 and answer["connections"]["max"] == 3
    assert answer["connections"]["ws_server"] == 1 and answer["connections"]["wss_client"] == 1
    assert answer["counters"]["ws.handshakes_ok"] == 3
    assert answer["counters"]["ws.closed_remote"] == 0  # known counters present from the start
    assert answer["counters"]["sip.messages_in.udp"] == 2
    assert answer["trace"]["queue_length"] == 3
    assert "sip" not in answer


def test_stats_includes_relay_figures(root):
    class Relay:
        def stats(self):
            return {"transactions": 4}

    root.relay = Relay()
    assert call(root, "stats", None)["sip"] == {"transactions": 4}


def test_version(root):
    assert call(root, "version", None) == {"name": "sipws", "version": __version__}


def test_unknown_method(root):
    with pytest.raises(AdminError) as caught:
        call(root, "ws.explode", None)
    assert caught.value.code == methods.METHOD_NOT_FOUND


def test_parameterless_methods_refuse_params(root):
    with pytest.raises(InvalidParams):
        call(root, "version", [1])


# -- ws.connect -------------------------------------------------------------------------------


def test_connect_answers_with_the_new_record(root):
    d = call(root, "ws.connect", ["ws://127.0.0.1:9/"])
    record = root.add(9, role=CLIENT)
    root.ws_client.pending["ws://127.0.0.1:9/"].callback(record)
    answer = result_of(d)
    assert answer["id"] == record.id and answer["role"] == "client"


def test_connect_failure_is_an_admin_error(root):
    d = call(root, "ws.connect", {"url": "ws://127.0.0.1:9/"})
    root.ws_client.pending["ws://127.0.0.1:9/"].errback(RuntimeError("503 connection refused"))
    failure = result_of(d)
    assert failure.check(AdminError) and failure.value.code == methods.CONNECT_FAILED
    assert "503 connection refused" in failure.value.message


def test_connect_bad_url_and_no_client_role(root):
    with pytest.raises(InvalidParams):
        call(root, "ws.connect", ["http://x/"])
    del root.ws_client
    with pytest.raises(AdminError) as caught:
        call(root, "ws.connect", ["ws://x/"])
    assert caught.value.code == methods.NOT_AVAILABLE
