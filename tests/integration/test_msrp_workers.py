"""MSRP with ``[server] workers = 2``: each worker has its own [msrp] listen port and
Use-Path port (+ its index), so a chunk between clients held by different workers
goes from one worker to the other over TCP, like to any MSRP peer."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.integration.msrp_client import MsrpWs, build_request, build_response, relay_uri, tid
from tests.integration.test_workers import START_TIMEOUT, TWISTD, free_port, free_port_pair, wait
from tests.processes import stop_process

#: Clients opened to find one on each worker (the kernel spreads connections).
SPREAD = 16


def start(tmp_path: Path, ws_port: int, msrp_port: int, sip_port: int) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "sipws.toml"
    config.write_text(
        '[server]\nworkers = 2\n'
        f'[ws]\nlisten = ["127.0.0.1:{ws_port}"]\nsubprotocols = ["msrp"]\n'
        '[http]\nrequire_origin = false\n'
        f'[msrp]\nallow_insecure = true\nlisten = ["tcp:127.0.0.1:{msrp_port}"]\n'
        f'[sip]\nlisten = ["udp:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{sip_port}"]\n'
        'upstream = "sip:127.0.0.1:9;transport=udp"\n[admin]\nlisten = ""\n')
    log_path = tmp_path / "sipws.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "sipws", "--config", str(config)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process, log_path


def test_clients_on_different_workers_exchange_messages(tmp_path):
    ws_port, msrp_port, sip_port = free_port(), free_port_pair(), free_port_pair()
    process, log_path = start(tmp_path, ws_port, msrp_port, sip_port)
    clients: list[MsrpWs] = []
    try:
        wait(lambda: "all 2 workers ready" in log_path.read_text(errors="replace") or process.poll() is not None,
             START_TIMEOUT, "workers ready")
        assert process.poll() is None, log_path.read_text(errors="replace")
        by_worker: dict[int, MsrpWs] = {}
        for index in range(SPREAD):
            client = MsrpWs(ws_port, f"c{index}")
            clients.append(client)
            client.open()
            assert client.auth(relay_uri(ws_port, tls=False)).status == 200
            port = int(client.use_path.split("/")[2].rsplit(":", 1)[1])
            by_worker.setdefault(port - msrp_port, client)
            if len(by_worker) == 2:
                break
        assert set(by_worker) == {0, 1}, "every client landed on one worker"
        alice, bob = by_worker[0], by_worker[1]
        transaction = tid()
        alice.send_msrp(build_request("SEND", transaction, [alice.use_path, bob.use_path, bob.uri], [alice.uri],
                                      [("Message-ID", "w1"), ("Success-Report", "yes"), ("Byte-Range", "1-6/6"),
                                       ("Content-Type", "text/plain")], b"across"))
        incoming = bob.expect(lambda m: m.method == "SEND", "SEND from the other worker")
        assert incoming.body == b"across" and incoming.path("From-Path") == [bob.use_path, alice.use_path, alice.uri]
        bob.send_msrp(build_response(incoming.tid, 200, "OK", incoming.path("From-Path")[0], bob.uri))
        bob.send_msrp(build_request("REPORT", tid(), incoming.path("From-Path"), [bob.uri],
                                    [("Message-ID", "w1"), ("Byte-Range", "1-6/6"), ("Status", "000 200 OK")]))
        assert alice.expect(lambda m: m.status is not None, "200").status == 200
        report = alice.expect(lambda m: m.method == "REPORT", "REPORT from the other worker")
        assert report.header("Status") == "000 200 OK"
    finally:
        for client in clients:
            client.shutdown()
        stop_process(process)
