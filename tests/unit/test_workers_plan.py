"""The worker model's pure rules (sipws.workers.plan) and its control channel, in memory."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipws.config import ConfigError, SipListen, config_from_dict
from sipws.workers.control import ControlError, ControlProtocol
from sipws.workers.plan import (
    IdLeases, IdsExhausted, LeasedIds, add_up, highest_port, merge_dumps, worker_advertise, worker_config,
)


# -- configuration ------------------------------------------------------------------------


def test_workers_key_accepts_a_count_or_auto_and_names_itself_otherwise():
    assert config_from_dict({}).server.workers == 1
    assert config_from_dict({"server": {"workers": 4}}).server.workers == 4
    assert config_from_dict({"server": {"workers": "auto"}}).server.workers >= 1
    for bad, text in ((0, "must be >= 1"), (65, "must be <= 64"), ("many", 'integer or "auto"'), (True, "integer")):
        with pytest.raises(ConfigError) as caught:
            config_from_dict({"server": {"workers": bad}})
        assert str(caught.value).startswith("config: [server] workers:") and text in str(caught.value)


def test_each_worker_shifts_its_sip_ports_and_advertise_by_its_index():
    config = config_from_dict({"sip": {"listen": ["udp:10.0.0.1:5062", "tcp:10.0.0.1:5062", "udp:127.0.0.1:0"],
                                       "advertise": "203.0.113.5:5062", "upstream": "sip:10.0.0.9"},
                               "admin": {"listen": "tcp:8088"}})
    second = worker_config(config, 1)
    assert second.sip.listen == (SipListen("udp", "10.0.0.1", 5063), SipListen("tcp", "10.0.0.1", 5063),
                                 SipListen("udp", "127.0.0.1", 0))
    assert second.sip.advertise == "203.0.113.5:5063"
    assert second.admin.listen == ""  # the master's admin endpoint is the instance's
    assert worker_config(config, 0).sip.listen == config.sip.listen
    assert worker_advertise("sip.example.com", 3) == "sip.example.com"  # no port: listeners' ports
    assert worker_advertise("[2001:db8::1]:5060", 2) == "[2001:db8::1]:5062"


def test_standalone_workers_relay_to_the_masters_core_and_get_a_tcp_socket_for_the_way_back():
    config = config_from_dict({"sip": {"listen": ["udp:127.0.0.1:5062"]}})
    worker = worker_config(config, 1, "sip:127.0.0.1:40000;transport=tcp")
    assert worker.sip.upstream == "sip:127.0.0.1:40000;transport=tcp"
    assert SipListen("tcp", "127.0.0.1", 0) in worker.sip.listen


def test_ports_past_65535_are_found_before_start():
    config = config_from_dict({"sip": {"listen": ["udp:127.0.0.1:65534"], "upstream": "sip:x"}})
    assert highest_port(config, 2) is None
    assert highest_port(config, 3) == ("udp:127.0.0.1:65534", 65536)


# -- connection ids -------------------------------------------------------------------------


def test_leases_never_overlap_never_repeat_and_name_their_owner():
    leases = IdLeases(block_size=10)
    assert [leases.lease(0), leases.lease(1), leases.lease(0)] == [1, 11, 21]
    assert leases.owner(5) == 0 and leases.owner(11) == 1 and leases.owner(30) == 0 and leases.owner(31) is None
    leases.forget(1)  # worker 1 died: its connections are gone, its block is not handed out again
    assert leases.owner(15) is None and leases.lease(1) == 31


def test_a_worker_asks_for_its_next_block_at_half_and_switches_to_it():
    asked = []
    ids = LeasedIds(1, lambda: asked.append(True), block_size=4)
    assert [next(ids), next(ids)] == [1, 2]
    assert asked == []
    assert next(ids) == 3 and asked == [True]  # half of the block used
    ids.add_block(41)
    assert [next(ids), next(ids), next(ids)] == [4, 41, 42]
    assert next(ids) == 43 and len(asked) == 2


def test_a_worker_without_a_new_block_in_time_refuses_rather_than_reuse():
    ids = LeasedIds(1, lambda: None, block_size=2)
    next(ids), next(ids)
    with pytest.raises(IdsExhausted):
        next(ids)


# -- merged answers -------------------------------------------------------------------------


def _entry(conn_id: int, idle: float) -> dict:
    return {"id": conn_id, "idle": idle}


def test_dumps_merge_in_each_order_and_cut_to_the_limit():
    first = {"connections": [_entry(1, 5.0), _entry(2, 0.5)], "total": 2}
    second = {"connections": [_entry(100001, 1.0), _entry(100002, 9.0)], "total": 7}
    merged = merge_dumps([first, second], "id_hash", 3)
    assert [c["id"] for c in merged["connections"]] == [1, 2, 100001]
    assert merged["total"] == 9 and merged["truncated"]
    assert [c["id"] for c in merge_dumps([first, second], "used_desc", 2)["connections"]] == [2, 100001]
    assert [c["id"] for c in merge_dumps([first, second], "used_asc", 2)["connections"]] == [100002, 1]
    assert merge_dumps([first], "id_hash", 50)["truncated"] is False


def test_stats_add_up_numbers_keep_the_first_flag_and_merge_keys():
    one = {"connections": {"current": 3, "ws_server": 3}, "accepting": True, "counters": {"a": 1},
           "trace": {"enabled": False, "state": "off"}}
    two = {"connections": {"current": 4, "ws_server": 4}, "accepting": True, "counters": {"a": 2, "b": 5},
           "trace": {"enabled": False, "state": "off"}}
    total = add_up([one, two])
    assert total["connections"] == {"current": 7, "ws_server": 7}
    assert total["counters"] == {"a": 3, "b": 5}
    assert total["accepting"] is True and total["trace"] == {"enabled": False, "state": "off"}


# -- the control channel --------------------------------------------------------------------


def _pair(handlers_a: dict, handlers_b: dict):
    clock = Clock()
    a, b = ControlProtocol(handlers_a, clock), ControlProtocol(handlers_b, clock)
    ta, tb = StringTransport(), StringTransport()
    a.makeConnection(ta)
    b.makeConnection(tb)

    def pump() -> None:
        for _ in range(10):
            moved = False
            for src, dst in ((ta, b), (tb, a)):
                data = src.value()
                if data:
                    src.clear()
                    dst.dataReceived(data)
                    moved = True
            if not moved:
                return

    return a, b, pump, clock


def test_calls_answer_with_results_and_errors_carry_their_code():
    class Refused(Exception):
        code = -32001
        message = "no connection with id 7"

    def refuse() -> None:
        raise Refused()

    a, b, pump, _ = _pair({}, {"add": lambda x, y: x + y, "refuse": refuse})
    results: list = []
    a.call("add", x=2, y=3).addCallback(results.append)
    a.call("refuse").addErrback(lambda f: results.append((f.value.code, f.value.message)))
    a.call("nothing").addErrback(lambda f: results.append(f.check(ControlError) is not None))
    pump()
    assert results == [5, (-32001, "no connection with id 7"), True]


def test_a_call_without_an_answer_times_out_and_a_closed_channel_fails_waiting_calls():
    a, b, pump, clock = _pair({}, {})
    outcomes: list = []
    a.call("slow", timeout=2.0).addErrback(lambda f: outcomes.append(f.value.message))
    clock.advance(2.5)
    assert outcomes == ["slow: no answer within 2 s"]
    a.call("other").addErrback(lambda f: outcomes.append(f.value.message))
    a.connectionLost(None)
    assert outcomes[-1] == "control channel closed"


def test_garbage_on_the_channel_closes_it():
    a, _, _, _ = _pair({}, {})
    a.dataReceived(b"\x00\x00\x00\x03abc")
    assert a.transport.disconnecting


def test_msrp_across_workers_without_an_msrp_port_is_warned_about():
    from sipws.workers.plan import msrp_without_listen

    plain = config_from_dict({"ws": {"subprotocols": ["sip", "msrp"]}, "msrp": {"allow_insecure": True}})
    assert "with 2 workers" in msrp_without_listen(plain, 2)
    assert msrp_without_listen(plain, 1) is None  # one process: every session is local
    with_port = config_from_dict({"ws": {"subprotocols": ["sip", "msrp"]},
                                  "msrp": {"allow_insecure": True, "listen": ["tcp:127.0.0.1:2855"]}})
    assert msrp_without_listen(with_port, 2) is None
    assert msrp_without_listen(config_from_dict({}), 4) is None  # no MSRP at all
