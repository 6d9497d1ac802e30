"""``[server] workers = 2``: a master and two worker processes, as an operator runs them.

Each test starts ``twistd -n sipws`` in a subprocess, talks to it over real
sockets (WebSocket clients, a UDP socket playing the SIP core, the admin
JSON-RPC endpoint) and stops it by its pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sipws.sip import parse
from tests.certs import CertificateAuthority
from tests.integration.sipcore import core_request, reply, ws_request
from tests.integration.wsclient import RawWs
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
TWISTD = REPO / ".venv" / "bin" / "twistd"
#: Seconds for the instance (master + 2 workers) to be ready, and for each wait.
START_TIMEOUT = 30.0
WAIT = 10.0
#: Connections opened to see both workers take some (the kernel hashes each one).
SPREAD_CONNECTIONS = 16


def free_port_pair() -> int:
    """A port P with P and P+1 free for UDP and TCP (worker i uses P + i)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        if port >= 65535:
            continue
        held = []
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError("no free port pair")


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class Instance:
    """One sipws instance with workers, started from a config file, stopped by pid."""

    def __init__(self, tmp_path: Path, upstream: str, workers: int = 2, extra: str = "",
                 ws_port: int = 0, ws_extra: str = "") -> None:
        self.ws_port = ws_port or free_port()
        self.admin_port = free_port()
        self.sip_port = free_port_pair()
        self.log_path = tmp_path / "sipws.log"
        config = tmp_path / "sipws.toml"
        config.write_text(
            f'[server]\nworkers = {workers}\n'
            f'[ws]\nlisten = ["127.0.0.1:{self.ws_port}"]\n{ws_extra}'
            f'[http]\nrequire_origin = false\n'
            f'[sip]\nlisten = ["udp:127.0.0.1:{self.sip_port}", "tcp:127.0.0.1:{self.sip_port}"]\n'
            f'upstream = "{upstream}"\n'
            f'[admin]\nlisten = "tcp:{self.admin_port}:interface=127.0.0.1"\n' + extra
        )
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "sipws", "--config", str(config)],
            cwd=tmp_path, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # its own process group, as a terminal's foreground job (Ctrl-C reaches all of it)
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.clients: list[RawWs] = []
        try:
            wait(lambda: f"all {workers} workers ready" in self.log_text() or self.process.poll() is not None,
                 START_TIMEOUT, "workers ready")
            assert self.process.poll() is None, self.log_text()
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rpc(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/rpc", body,
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return json.loads(answer.read())

    def result(self, method: str, **params: Any) -> Any:
        answer = self.rpc(method, **params)
        assert "result" in answer, answer
        return answer["result"]

    def connect(self) -> RawWs:
        client = RawWs(self.ws_port)
        client.upgrade()
        self.clients.append(client)
        return client

    def clients_on_both_workers(self) -> dict[int, tuple[RawWs, int]]:
        """Connect until each worker holds one; {worker: (client, connection id)}."""
        opened = [self.connect() for _ in range(SPREAD_CONNECTIONS)]
        dump = self.result("ws.dump", limit=1000)
        by_port = {entry["remote"]: entry for entry in dump["connections"]}
        found: dict[int, tuple[RawWs, int]] = {}
        for client in opened:
            entry = by_port[f"127.0.0.1:{client.sock.getsockname()[1]}"]
            found.setdefault(entry["worker"], (client, entry["id"]))
        assert set(found) == {0, 1}, dump
        return found

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.result("workers")["workers"]]

    def stop(self) -> int | None:
        for client in self.clients:
            client.reset()
        status = stop_process(self.process)
        self.log.close()
        return status


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class UdpCore:
    """A SIP core on a UDP socket, driven step by step by the test."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.port = self.sock.getsockname()[1]

    def receive(self) -> tuple[Any, tuple[str, int]]:
        data, source = self.sock.recvfrom(65535)
        return parse(data), source

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)


@pytest.fixture
def core():
    core = UdpCore()
    yield core
    core.sock.close()


@pytest.fixture
def instance_factory(tmp_path):
    started: list[Instance] = []

    def make(upstream: str, extra: str = "", ws_port: int = 0) -> Instance:
        instance = Instance(tmp_path, upstream, extra=extra, ws_port=ws_port)
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


def sip_of(client: RawWs) -> Any:
    opcode, data = client.read_data()
    return parse(data)


# -- the tests ---------------------------------------------------------------------------------


def test_both_workers_take_connections_with_unique_ids_and_one_admin_endpoint(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    on = instance.clients_on_both_workers()
    dump = instance.result("ws.dump", limit=1000)
    ids = [entry["id"] for entry in dump["connections"]]
    assert dump["total"] == SPREAD_CONNECTIONS and len(set(ids)) == SPREAD_CONNECTIONS
    assert ids == sorted(ids)
    # the limit applies to the merged list
    short = instance.result("ws.dump", limit=3, order="used_desc")
    assert len(short["connections"]) == 3 and short["total"] == SPREAD_CONNECTIONS and short["truncated"]
    stats = instance.result("stats")
    assert stats["connections"]["current"] == SPREAD_CONNECTIONS
    assert stats["counters"]["ws.handshakes_ok"] == SPREAD_CONNECTIONS
    assert sorted(w["connections"] for w in stats["workers"]) != [0, SPREAD_CONNECTIONS]
    workers = instance.result("workers")["workers"]
    assert [w["state"] for w in workers] == ["ready", "ready"]
    assert len({w["pid"] for w in workers}) == 2
    assert workers[0]["ports"]["sip-udp"][0][1] + 1 == workers[1]["ports"]["sip-udp"][0][1]
    # ws.ping and ws.close reach the owning worker
    client, conn_id = on[1]
    assert instance.result("ws.ping", id=conn_id)["sent"] == "ping"
    fin, opcode, payload = client.read_frame()
    assert opcode == 0x9 and payload == b"sipws"
    instance.result("ws.close", id=conn_id, code=4000, reason="admin")
    assert client.expect_close()[0] == 4000
    missing = instance.rpc("ws.close", id=10**9)
    assert missing["error"]["code"] == -32001
    # /metrics: totals under the usual names, each worker's own figures beside them
    page = urllib.request.urlopen(f"http://127.0.0.1:{instance.admin_port}/metrics", timeout=WAIT).read().decode()
    total = float(re.search(r'^sipws_ws_handshakes_ok_total (\S+)$', page, re.M)[1])
    per_worker = [float(v) for v in re.findall(r'^sipws_worker_ws_handshakes_ok_total\{worker="\d"\} (\S+)$', page, re.M)]
    assert total == SPREAD_CONNECTIONS and len(per_worker) == 2 and sum(per_worker) == total
    assert re.search(r'^sipws_workers\{state="ready"\} 2\.0$', page, re.M)


def test_disable_applies_to_every_worker_and_to_a_restarted_one(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    assert instance.result("ws.disable") == {"accepting": False}
    pids = instance.worker_pids()
    os.kill(pids[1], signal.SIGKILL)  # the worker started in its place must be disabled too
    wait(lambda: instance.result("workers")["workers"][1]["state"] == "ready"
         and instance.worker_pids()[1] != pids[1], WAIT * 2, "worker 1 restarted")
    for _ in range(SPREAD_CONNECTIONS):  # spread over both workers by the kernel's hash
        client = RawWs(instance.ws_port)
        status, _, _ = client.request()
        client.shutdown()
        assert status == 503
    failed = instance.result("stats")["workers"]
    assert all(w["state"] == "ready" for w in failed)
    assert instance.result("stats")["accepting"] is False
    assert instance.result("ws.enable") == {"accepting": True}
    instance.connect()


def test_a_core_request_reaches_a_client_on_each_worker(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    on = instance.clients_on_both_workers()
    sip_ports = set()
    for worker, (client, _) in sorted(on.items()):
        call_id = f"reg-w{worker}"
        client.send_text(ws_request("REGISTER", call_id, "sip:example.com",
                                    extra="Contact: <sip:a@df7jal23ls0d.invalid;transport=ws>\r\nSupported: path"))
        request, source = core.receive()
        [path] = request.paths
        sip_ports.add(path.uri.port)
        assert source[1] == path.uri.port  # the worker sent from the port its Path names
        core.send(reply(request), source)
        assert sip_of(client).status == 200
        # the core's request for this flow goes to the worker named in the Path
        core.send(core_request("MESSAGE", f"msg-w{worker}", "sip:a@df7jal23ls0d.invalid;transport=ws",
                               f"<{path.uri}>", core.port), (path.uri.host, path.uri.port))
        message = sip_of(client)
        assert message.method == "MESSAGE" and message.get("call-id") == f"msg-w{worker}"
    assert sip_ports == {instance.sip_port, instance.sip_port + 1}


def test_standalone_a_client_on_one_worker_calls_a_client_on_the_other(instance_factory):
    instance = instance_factory("")
    on = instance.clients_on_both_workers()
    (alice, alice_id), (bob, bob_id) = on[0], on[1]
    for client, user in ((alice, "alice"), (bob, "bob")):
        client.send_text(register(user))
        answer = sip_of(client)
        assert answer.status == 200, answer
    dump = instance.result("registrar.dump")
    assert {b["conn_id"] for b in dump["bindings"]} == {alice_id, bob_id}
    # alice (worker 0) -> bob (worker 1): a MESSAGE and an INVITE, answers back
    alice.send_text(request_to("bob", "MESSAGE", "cross-msg", body="hello bob"))
    message = sip_of(bob)
    assert message.method == "MESSAGE" and message.body == b"hello bob"
    bob.send_text(answer_from(message, 200))
    assert sip_of(alice).status == 200
    alice.send_text(request_to("bob", "INVITE", "cross-call", body=SDP, content_type="application/sdp"))
    statuses = []
    invite = None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and invite is None:
        parsed = sip_of(bob)
        if getattr(parsed, "method", None) == "INVITE":
            invite = parsed
    assert invite is not None and invite.get("call-id") == "cross-call"
    bob.send_text(answer_from(invite, 200, contact="<sip:bob@bob.invalid;transport=ws>"))
    while True:
        parsed = sip_of(alice)
        statuses.append(parsed.status)
        if parsed.status >= 200:
            break
    assert statuses[-1] == 200
    # a closed connection takes its binding with it, across the process boundary
    bob.close(1000)
    wait(lambda: len(instance.result("registrar.dump")["bindings"]) == 1, WAIT, "bob's binding removed")


def test_a_killed_worker_comes_back_and_the_other_keeps_its_connections(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    on = instance.clients_on_both_workers()
    ids_before = {entry["id"] for entry in instance.result("ws.dump", limit=1000)["connections"]}
    pids = instance.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    victim, _ = on[1]
    victim.sock.settimeout(WAIT)
    assert victim.closed_by_peer()
    wait(lambda: instance.result("workers")["workers"][1]["state"] == "ready"
         and instance.worker_pids()[1] != pids[1], WAIT * 2, "worker 1 restarted")
    workers = instance.result("workers")["workers"]
    assert workers[1]["restarts"] == 1 and workers[0]["restarts"] == 0 and workers[0]["pid"] == pids[0]
    assert "worker 1 (pid %d) was killed by SIGKILL" % pids[1] in instance.log_text()
    # worker 0's clients never noticed
    survivor, survivor_id = on[0]
    assert instance.result("ws.ping", id=survivor_id)["sent"] == "ping"
    assert survivor.read_frame()[1] == 0x9
    # new connections land on both workers again, with ids never seen before
    fresh = instance.clients_on_both_workers()
    new_ids = {conn_id for _, conn_id in fresh.values()}
    assert not new_ids & ids_before


def test_sigterm_closes_every_connection_with_1001_and_stops_every_process(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    instance.clients_on_both_workers()
    pids = instance.worker_pids()
    instance.process.send_signal(signal.SIGTERM)
    codes = [client.expect_close()[0] for client in instance.clients]
    assert codes == [1001] * len(codes)
    for client in instance.clients:
        client.close(1001)
    instance.process.wait(WAIT * 2)
    assert instance.process.returncode in (0, -signal.SIGTERM)
    wait(lambda: not any(alive(pid) for pid in pids), WAIT, "workers gone")
    instance.clients = []
    assert "Traceback" not in instance.log_text()


def test_a_worker_that_cannot_start_stops_the_instance_with_one_line(tmp_path, core):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = free_port_pair()
    blocker.bind(("127.0.0.1", port + 1))  # worker 1's SIP port is taken
    try:
        config = tmp_path / "sipws.toml"
        config.write_text(
            f'[server]\nworkers = 2\n[ws]\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[sip]\nlisten = ["udp:127.0.0.1:{port}"]\nupstream = "sip:127.0.0.1:{core.port}"\n'
            f'[admin]\nlisten = ""\n')
        run = subprocess.run([str(TWISTD), "-n", "--pidfile=", "sipws", "--config", str(config)], cwd=tmp_path,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
        out = (run.stdout + run.stderr).decode()
        assert run.returncode == 2, out
        assert f"worker 1: [sip] listen: cannot listen on udp:127.0.0.1:{port + 1}" in out
        assert "worker 1" in out and "could not start" in out
    finally:
        blocker.close()


def test_worker_ports_past_65535_are_a_config_error(tmp_path):
    config = tmp_path / "sipws.toml"
    config.write_text('[server]\nworkers = 2\n[sip]\nlisten = ["udp:127.0.0.1:65535"]\n'
                      'upstream = "sip:127.0.0.1:5060"\n[admin]\nlisten = ""\n[ws]\nlisten = ["127.0.0.1:0"]\n')
    run = subprocess.run([str(TWISTD), "-n", "--pidfile=", "sipws", "--config", str(config)], cwd=tmp_path,
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
    assert run.returncode == 2
    assert "would use port 65536" in run.stderr.decode()


# -- SIP a browser would send -----------------------------------------------------------------

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


def register(user: str) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS {user}.invalid;branch=z9hG4bKreg{user}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag=r{user}\r\n"
        f"Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{user}.invalid;transport=ws>;expires=600\r\nSupported: path\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def request_to(user: str, method: str, call_id: str, body: str = "", content_type: str = "text/plain") -> bytes:
    return (
        f"{method} sip:{user}@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS alice.invalid;branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:alice@alice.invalid;transport=ws>\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


def answer_from(request: Any, status: int, contact: str = "") -> bytes:
    lines = [f"SIP/2.0 {status} OK"]
    lines += [f"Via: {v}" for v in request.get_all("via")]
    lines += [f"Record-Route: {r}" for r in request.get_all("record-route")]
    lines += [f"From: {request.get('from')}", f"To: {request.get('to')};tag=b1",
              f"Call-ID: {request.get('call-id')}", f"CSeq: {request.get('cseq')}"]
    if contact:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_workers_stop_when_the_master_is_killed(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    on = instance.clients_on_both_workers()
    pids = instance.worker_pids()
    instance.process.kill()
    instance.process.wait(WAIT)
    for client, _ in on.values():
        assert client.expect_close()[0] == 1001
    wait(lambda: not any(alive(pid) for pid in pids), WAIT * 2, "workers gone after the master")
    instance.clients = []


def test_ctrl_c_to_the_process_group_stops_the_instance_without_restarting_workers(instance_factory, core):
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp")
    instance.clients_on_both_workers()
    os.killpg(instance.process.pid, signal.SIGINT)
    codes = [client.expect_close()[0] for client in instance.clients]
    assert codes == [1001] * len(codes)
    instance.process.wait(WAIT * 2)
    assert instance.process.returncode in (0, -signal.SIGINT)
    assert "restart" not in instance.log_text() and "Traceback" not in instance.log_text()
    instance.clients = []


def test_wss_with_alpn_is_served_by_every_worker(instance_factory, core, tmp_path):
    """Each worker wraps its inherited socket in TLS as listenSSL would, ALPN included."""
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", ["127.0.0.1"])
    wss_port = free_port()
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp",
                                extra=f'[wss]\nlisten = ["127.0.0.1:{wss_port}"]\n'
                                      f'certificate = "{server.cert}"\nprivate_key = "{server.key}"\n')
    context = ssl.create_default_context(cafile=ca.path)
    context.set_alpn_protocols(["http/1.1"])  # as every browser offers
    clients = []
    for _ in range(SPREAD_CONNECTIONS):
        client = RawWs(wss_port, tls=context)
        assert client.upgrade()["sec-websocket-protocol"] == "sip"
        assert client.sock.selected_alpn_protocol() == "http/1.1"
        clients.append(client)
    instance.clients.extend(clients)
    dump = instance.result("ws.dump", limit=100)
    assert {entry["worker"] for entry in dump["connections"] if entry["transport"] == "wss"} == {0, 1}


def test_the_master_binds_a_port_below_1024_for_its_workers(instance_factory, core):
    # make test runs as root (it installs system packages): binding below 1024 is part of the test
    assert os.geteuid() == 0, "this test binds a port below 1024: run the suite as root, as make test does"
    port = next(p for p in range(1023, 900, -1) if _tcp_free(p))
    instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp", ws_port=port)
    instance.clients_on_both_workers()


def _tcp_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_trace_state_set_by_the_admin_reaches_a_restarted_worker(instance_factory, core):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    try:
        instance = instance_factory(f"sip:127.0.0.1:{core.port};transport=udp",
                                    extra=f'[trace]\ndestination = "udp:127.0.0.1:{collector.getsockname()[1]}"\n')
        assert instance.result("trace", state="on") == {"trace": "on"}
        pids = instance.worker_pids()
        os.kill(pids[1], signal.SIGKILL)
        wait(lambda: instance.result("workers")["workers"][1]["state"] == "ready"
             and instance.worker_pids()[1] != pids[1], WAIT * 2, "worker 1 restarted")
        page = urllib.request.urlopen(f"http://127.0.0.1:{instance.admin_port}/metrics", timeout=WAIT).read().decode()
        assert re.search(r'^sipws_worker_trace_enabled\{worker="1"\} 1\.0$', page, re.M), page
    finally:
        collector.close()
