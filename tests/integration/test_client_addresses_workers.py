"""PROXY headers with ``[server] workers = 2``: the master binds, each worker reads the headers
of the connections it accepts (``WsServerService._adopt``), and ws.dump merged over both
shows every client's own address."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sipws.edge.proxy_header import build_v1, build_v2
from tests.integration.test_launch import TWISTD
from tests.integration.test_workers import START_TIMEOUT, WAIT, free_port, free_port_pair, wait
from tests.integration.wsclient import RawWs
from tests.processes import stop_process

LISTED = "127.0.0.2"
#: Connections opened so that the kernel's hash gives each worker some.
CONNECTIONS = 16


class ProxiedInstance:
    """twistd -n sipws with two workers and 127.0.0.2 as the PROXY sender on ws."""

    def __init__(self, tmp_path: Path) -> None:
        self.ws_port = free_port()
        self.admin_port = free_port()
        sip_port = free_port_pair()
        self.log_path = tmp_path / "sipws.log"
        config = tmp_path / "sipws.toml"
        config.write_text(
            "[server]\nworkers = 2\n"
            f'[ws]\nlisten = ["127.0.0.1:{self.ws_port}"]\nproxy_protocol_from = ["{LISTED}/32"]\n'
            "[http]\nrequire_origin = false\n"
            f'[sip]\nlisten = ["udp:127.0.0.1:{sip_port}"]\nupstream = "sip:127.0.0.1:9;transport=udp"\n'
            f'[admin]\nlisten = "tcp:{self.admin_port}:interface=127.0.0.1"\n'
        )
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "sipws", "--config", str(config)],
            cwd=tmp_path, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.clients: list[RawWs] = []
        try:
            wait(lambda: "all 2 workers ready" in self.log_text() or self.process.poll() is not None,
                 START_TIMEOUT, "workers ready")
            assert self.process.poll() is None, self.log_text()
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def result(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/rpc", body,
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            reply = json.loads(answer.read())
        assert "result" in reply, reply
        return reply["result"]

    def stop(self) -> None:
        for client in self.clients:
            client.shutdown()
        stop_process(self.process)
        self.log.close()


@pytest.fixture
def instance(tmp_path):
    started = ProxiedInstance(tmp_path)
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
