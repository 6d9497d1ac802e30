"""PROXY headers with ``[server] workers = 2``: the master binds, each worker reads the headers
of the connections it accepts (``WsServerService._adopt``), and ws.dump merged over both
shows every client's own address."""

from __future__ import annotations

import socket

import pytest

from sipws.edge.proxy_header import build_v1, build_v2
from tests.integration.test_workers import WAIT, Instance, wait
from tests.integration.wsclient import RawWs

LISTED = "127.0.0.2"
#: Connections opened so that the kernel's hash gives each worker some.
CONNECTIONS = 16


@pytest.fixture
def instance(tmp_path):
    # twistd -n sipws with two workers and 127.0.0.2 as the PROXY sender on ws
    started = Instance(tmp_path, "sip:127.0.0.1:9;transport=udp",
                       ws_extra=f'proxy_protocol_from = ["{LISTED}/32"]\n')
    yield started
    started.stop()


def test_client_addresses_hold_on_both_workers(instance):
    expected = {}
    for i in range(CONNECTIONS):
        source = (f"198.51.100.{i + 1}", 5000 + i)
        header = build_v1(source) if i % 2 else build_v2(source)
        client = RawWs(instance.ws_port, source=LISTED, preamble=header)
        instance.clients.append(client)
        status, _, _ = client.request()
        assert status == 101
        expected[f"{source[0]}:{source[1]}"] = f"{LISTED}:{client.sock.getsockname()[1]}"
    dump = instance.result("ws.dump", limit=1000)
    seen = {entry["remote"]: entry for entry in dump["connections"]}
    assert set(seen) == set(expected), dump
    assert all(seen[remote]["proxy_peer"] == peer for remote, peer in expected.items())
    assert {entry["worker"] for entry in seen.values()} == {0, 1}, dump
    # a garbled header on whichever worker: dropped, logged, counted in the merged stats
    with socket.create_connection(("127.0.0.1", instance.ws_port), timeout=WAIT,
                                  source_address=(LISTED, 0)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b""
    wait(lambda: instance.result("stats")["counters"].get("ws.proxy_header_failed") == 1, WAIT,
         "the failure counted")
    assert f"proxy header refused from {LISTED}:" in instance.log_text()
