"""[limits] and bans on real sockets, one process: 429, 1008, ws.ban / ws.unban / ws.bans."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.limits_clients import RawWsFrom, dropped_at_accept, flood, status_from
from tests.integration.test_admin import ADMIN, admin_port, ctl, http_call, result, rpc_call

#: Limits that never get in the way of a test about another one.
OFF = {"max_connections_per_ip": 0, "handshakes_per_ip_per_second": 0, "messages_per_connection_per_second": 0}


def limits(**values):
    return {"limits": {**OFF, **values}, "admin": ADMIN}


def opened_from(port: int, source: str) -> RawWsFrom:
    client = RawWsFrom(port, source)
    client.upgrade()
    return client


@pytest_twisted.inlineCallbacks
def test_connections_per_address_429_other_addresses_unaffected_closing_frees_a_slot(sipws_factory, sipws_log):
    root = sipws_factory(limits(max_connections_per_ip=3))
    port = port_of(root)
    clients = []
    for _ in range(3):
        clients.append((yield in_thread(opened_from, port, "127.0.0.2")))
    status, headers, _ = yield in_thread(status_from, port, "127.0.0.2")
    assert status == 429
    refused = [line for line in sipws_log if "handshake refused from 127.0.0.2:" in line]
    assert len(refused) == 1 and "status=429" in refused[0] and "max_connections_per_ip" in refused[0]
    other = yield in_thread(opened_from, port, "127.0.0.3")  # another address: its own count
    clients[0].reset()
    yield wait_for(lambda: len(root.connections) == 3)
    again = yield in_thread(opened_from, port, "127.0.0.2")
    assert root.stats.get("limits.connections_refused") == 1
    for client in clients[1:] + [other, again]:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_handshake_burst_then_429_with_retry_after(sipws_factory, sipws_log):
    root = sipws_factory(limits(handshakes_per_ip_per_second=0.5, handshakes_per_ip_burst=3))
    port = port_of(root)
    statuses = []
    for _ in range(5):
        status, headers, client = yield in_thread(status_from, port, "127.0.0.2")
        statuses.append(status)
        client.shutdown()
    assert statuses == [101, 101, 101, 429, 429]
    assert headers["retry-after"] == "2"
    status, _, client = yield in_thread(status_from, port, "127.0.0.3")
    client.shutdown()
    assert status == 101
    assert root.stats.get("limits.handshakes_refused") == 2
    assert sum("status=429" in line and "handshakes_per_ip_per_second" in line for line in sipws_log) == 2


@pytest.mark.parametrize("fragmented", [False, True], ids=["fast path", "autobahn (fragmented)"])
@pytest_twisted.inlineCallbacks
def test_message_flood_closes_with_1008(sipws_factory, sipws_log, fragmented):
    root = sipws_factory(limits(messages_per_connection_per_second=1, messages_per_connection_burst=5))
    port = port_of(root)
    client = yield in_thread(opened_from, port, "127.0.0.2")
    replies, code, reason = yield in_thread(flood, client, 20, fragmented)
    client.shutdown()
    assert (replies, code) == (5, 1008)
    assert "message rate" in reason
    assert root.stats.get("limits.messages_closed") == 1
    yield wait_for(lambda: len(root.connections) == 0)
    assert sum("message rate exceeded by 127.0.0.2:" in line for line in sipws_log) == 1
    # a connection within the rate is untouched
    calm = yield in_thread(opened_from, port, "127.0.0.2")
    replies, code, _ = yield in_thread(lambda: (flood_then_close(calm, 3)))
    assert (replies, code) == (3, 1000)


def flood_then_close(client: RawWsFrom, count: int):
    for _ in range(count):
        client.send_text("\r\n")
        assert client.read_data() == (0x1, b"\r\n")
    client.close(1000)
    code, _ = client.expect_close()
    client.shutdown()
    return count, code, ""


@pytest_twisted.inlineCallbacks
def test_ban_unban_bans_cidr_expiry_and_open_connections(sipws_factory, sipws_log):
    root = sipws_factory(limits())
    port, admin = port_of(root), admin_port(root)
    victim = yield in_thread(opened_from, port, "127.0.0.2")
    bystander = yield in_thread(opened_from, port, "127.0.0.3")
    answer = yield result(admin, "ws.ban", ["127.0.0.2", 0, "flooding"])
    assert answer["network"] == "127.0.0.2/32" and answer["closed"] == 1 and answer["remaining"] is None
    code, reason = yield in_thread(victim.expect_close)
    assert (code, reason) == (1008, "banned")
    victim.sock.settimeout(1.0)  # a close handshake would wait 2 s for the client's Close
    assert (yield in_thread(victim.closed_by_peer))  # TCP closed behind the Close, no handshake wait
    victim.shutdown()
    for _ in range(5):
        assert (yield in_thread(dropped_at_accept, port, "127.0.0.2"))
    status, _, client = yield in_thread(status_from, port, "127.0.0.3")
    client.shutdown()
    assert status == 101
    bans = yield result(admin, "ws.bans")
    assert bans["count"] == 1 and bans["bans"][0]["drops"] == 5 and bans["bans"][0]["reason"] == "flooding"
    assert root.stats.get("limits.banned_dropped") == 5 and root.stats.get("limits.ban_closed") == 1
    # at most one line per ban per interval, with a count; no "closed" line per dropped connection
    assert sum("banned source 127.0.0.2 dropped at accept" in line for line in sipws_log) == 1
    assert sum("127.0.0.2" in line and line.startswith("closed") for line in sipws_log) == 1  # the victim
    unbanned = yield result(admin, "ws.unban", {"network": "127.0.0.2"})
    assert unbanned == {"network": "127.0.0.2/32", "unbanned": True, "drops": 5}
    again = yield in_thread(opened_from, port, "127.0.0.2")
    again.shutdown()
    # a CIDR for a short time: it covers 127.0.0.3 (open: closed now) and expires by itself
    answer = yield result(admin, "ws.ban", {"network": "127.0.0.0/30", "duration": 1})
    assert answer["closed"] >= 1 and 0 < answer["remaining"] <= 1
    code, _ = yield in_thread(bystander.expect_close)
    assert code == 1008
    assert (yield in_thread(dropped_at_accept, port, "127.0.0.3"))
    yield sleep(1.2)
    assert (yield result(admin, "ws.bans"))["count"] == 0
    client = yield in_thread(opened_from, port, "127.0.0.3")
    client.shutdown()


@pytest.mark.parametrize("params", [
    ["not-an-address"], ["10.0.0.0/33"], [], ["10.0.0.1", -5], ["10.0.0.1", "soon"], [7],
    {"network": "10.0.0.1", "until": 3},
])
@pytest_twisted.inlineCallbacks
def test_ban_bad_params_are_32602(sipws_factory, params):
    root = sipws_factory(limits())
    answer = yield rpc_call(admin_port(root), "ws.ban", params)
    assert answer["error"]["code"] == -32602, answer
    answer = yield rpc_call(admin_port(root), "ws.unban", ["nope"])
    assert answer["error"]["code"] == -32602


@pytest_twisted.inlineCallbacks
def test_counters_in_stats_and_metrics(sipws_factory):
    root = sipws_factory(limits(max_connections_per_ip=1))
    port, admin = port_of(root), admin_port(root)
    stats = yield result(admin, "stats")
    for name in ("limits.banned_dropped", "limits.connections_refused", "limits.handshakes_refused",
                 "limits.messages_closed"):
        assert stats["counters"][name] == 0
    first = yield in_thread(opened_from, port, "127.0.0.2")
    status, _, _ = yield in_thread(status_from, port, "127.0.0.2")
    assert status == 429
    yield result(admin, "ws.ban", ["127.0.0.4"])
    assert (yield in_thread(dropped_at_accept, port, "127.0.0.4"))
    stats = yield result(admin, "stats")
    assert stats["counters"]["limits.connections_refused"] == 1
    assert stats["counters"]["limits.banned_dropped"] == 1
    assert stats["limits"] == {"bans": 1}
    status, _, body = yield in_thread(http_call, admin, "GET", "/metrics")
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples["sipws_limits_connections_refused_total"] == 1
    assert samples["sipws_limits_banned_dropped_total"] == 1
    assert samples["sipws_limits_bans"] == 1
    first.shutdown()


@pytest_twisted.inlineCallbacks
def test_ctl_ban_a_network(sipws_factory):
    root = sipws_factory(limits())
    url = f"http://127.0.0.1:{admin_port(root)}/rpc"
    done = yield in_thread(ctl, "--url", url, "ws.ban", "192.0.2.0/24", "3600", "test")
    assert done.returncode == 0, done.stderr
    assert "network: 192.0.2.0/24" in done.stdout
    listing = yield in_thread(ctl, "--url", url, "ws.bans")
    assert listing.returncode == 0 and "192.0.2.0/24" in listing.stdout and "test" in listing.stdout
    bad = yield in_thread(ctl, "--url", url, "ws.ban", "192.0.2.0/99")
    assert bad.returncode == 1 and "-32602" in bad.stderr
