"""[limits] and bans with ``[server] workers = 2``: per instance, whichever worker a connection lands on.

The kernel hashes each connection's 4-tuple to a worker, so connections from
one address land on both; the limits live in the master's shared block and
bans in every worker (and in a restarted one).
"""

from __future__ import annotations

import os
import re
import signal
import urllib.request

import pytest

from tests.integration.limits_clients import RawWsFrom, dropped_at_accept, status_from
from tests.integration.test_workers import WAIT, Instance, UdpCore, wait

#: Attempts made to see both workers take part (each lands on one by the kernel's hash).
ATTEMPTS = 40
LIMITS = ('[limits]\nmax_connections_per_ip = 4\nhandshakes_per_ip_per_second = 0\n'
          'messages_per_connection_per_second = 0\n')


@pytest.fixture
def instance(tmp_path):
    """Two workers relaying to a UDP core, [limits] max_connections_per_ip = 4."""
    core = UdpCore()
    started = None
    try:
        started = Instance(tmp_path, f"sip:127.0.0.1:{core.port};transport=udp", extra=LIMITS)
        yield started
    finally:
        if started is not None:
            started.stop()
        core.sock.close()


def refused_by_worker(instance, source: str) -> set[int]:
    """Workers that logged a 429 for ``source``."""
    text = instance.log_text()
    return {int(w) for w in re.findall(rf"worker (\d+) \S+ handshake refused from {re.escape(source)}:\d+ status=429",
                                       text)}


def worker_counter(instance, name: str) -> dict[int, float]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{instance.admin_port}/metrics", timeout=WAIT).read().decode()
    return {int(w): float(v) for w, v in re.findall(rf'^sipws_worker_{name}_total\{{worker="(\d+)"\}} (\S+)$',
                                                  page, re.M)}


def open_from(instance, source: str) -> RawWsFrom:
    client = RawWsFrom(instance.ws_port, source)
    client.upgrade()
    instance.clients.append(client)
    return client


def test_connections_per_address_hold_across_workers(instance):
    held = [open_from(instance, "127.0.0.2") for _ in range(4)]
    for _ in range(ATTEMPTS):  # the 5th is refused whichever worker it lands on
        status, _, _ = status_from(instance.ws_port, "127.0.0.2")
        assert status == 429
        if refused_by_worker(instance, "127.0.0.2") == {0, 1}:
            break
    wait(lambda: refused_by_worker(instance, "127.0.0.2") == {0, 1}, WAIT, "429 from both workers")
    other = open_from(instance, "127.0.0.3")  # another address is not affected
    dump = instance.result("ws.dump", limit=100)
    assert dump["total"] == 5
    # closing one frees a slot, on whichever worker the next one lands
    held[0].reset()
    wait(lambda: instance.result("ws.dump")["total"] == 4, WAIT, "the closed connection gone")
    held[0] = open_from(instance, "127.0.0.2")
    status, _, _ = status_from(instance.ws_port, "127.0.0.2")
    assert status == 429
    stats = instance.result("stats")
    assert stats["counters"]["limits.connections_refused"] >= 3
    # a worker that dies frees the slots of its connections
    by_worker = {}
    for entry in instance.result("ws.dump", limit=100)["connections"]:
        if entry["remote"].startswith("127.0.0.2:"):
            by_worker[entry["worker"]] = by_worker.get(entry["worker"], 0) + 1
    pids = instance.worker_pids()
    victim = max(by_worker, key=by_worker.get)
    os.kill(pids[victim], signal.SIGKILL)
    wait(lambda: instance.result("workers")["workers"][victim]["state"] == "ready"
         and instance.worker_pids()[victim] != pids[victim], WAIT * 2, "worker restarted")
    for _ in range(by_worker[victim]):
        open_from(instance, "127.0.0.2")
    status, _, _ = status_from(instance.ws_port, "127.0.0.2")
    assert status == 429
    other.shutdown()


def test_ban_reaches_both_workers_and_a_restarted_one(instance):
    victims = [open_from(instance, "127.0.0.4") for _ in range(4)]
    answer = instance.result("ws.ban", network="127.0.0.4", duration=0, reason="test")
    assert answer["closed"] == 4 and answer["network"] == "127.0.0.4/32"
    for client in victims:
        assert client.expect_close()[0] == 1008
        client.sock.settimeout(1.0)  # Autobahn's close handshake would wait 2 s for our Close
        assert client.closed_by_peer()  # at once, not after a close handshake
    wait(lambda: instance.result("ws.dump")["total"] == 0, WAIT, "banned connections gone")
    for _ in range(ATTEMPTS):
        assert dropped_at_accept(instance.ws_port, "127.0.0.4")
        if len([v for v in worker_counter(instance, "limits_banned_dropped").values() if v > 0]) == 2:
            break
    assert all(v > 0 for v in worker_counter(instance, "limits_banned_dropped").values())
    bans = instance.result("ws.bans")
    assert bans["count"] == 1 and bans["bans"][0]["drops"] == instance.result("stats")["counters"][
        "limits.banned_dropped"]
    assert instance.result("stats")["limits"] == {"bans": 1}
    pids = instance.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    wait(lambda: instance.result("workers")["workers"][1]["state"] == "ready"
         and instance.worker_pids()[1] != pids[1], WAIT * 2, "worker 1 restarted")
    for _ in range(ATTEMPTS):
        assert dropped_at_accept(instance.ws_port, "127.0.0.4")
        if worker_counter(instance, "limits_banned_dropped").get(1, 0) > 0:
            break
    assert worker_counter(instance, "limits_banned_dropped")[1] > 0  # the new worker 1 holds the ban
    assert instance.result("ws.unban", network="127.0.0.4")["unbanned"] is True
    for _ in range(4):
        open_from(instance, "127.0.0.5")  # not banned, its own count
    status, _, client = status_from(instance.ws_port, "127.0.0.4")
    assert status == 101
    client.shutdown()
    assert instance.result("ws.bans")["count"] == 0
