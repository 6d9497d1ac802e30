"""The admin interface on real sockets: JSON-RPC over HTTP, /metrics, sipws-ctl."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import globalLogPublisher

from sipws.admin import methods, rpc
from sipws.tap import StartupError, build_service
from tests.integration.conftest import in_thread, make_config, port_of, sleep, wait_for
from tests.integration.wsclient import RawWs

ADMIN = {"listen": "tcp:0:interface=127.0.0.1"}
CTL = os.path.join(os.path.dirname(sys.executable), "sipws-ctl")
CTL_TIMEOUT = 20.0


def admin_port(root) -> int:
    return port_of(root, "admin")


def http_call(port: int, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP request (run it in a thread)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post(port: int, payload, token: str | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return in_thread(http_call, port, "POST", "/rpc", body, headers)


@pytest_twisted.inlineCallbacks
def rpc_call(port: int, method: str, params=None, token: str | None = None):
    """The JSON-RPC response object of one call."""
    message = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        message["params"] = params
    status, _, body = yield post(port, message, token)
    assert status == 200, (status, body)
    return json.loads(body)


@pytest_twisted.inlineCallbacks
def result(port: int, method: str, params=None):
    answer = yield rpc_call(port, method, params)
    assert "result" in answer, answer
    return answer["result"]


def opened(port: int) -> RawWs:
    client = RawWs(port)
    client.upgrade()
    return client


def local_port(client: RawWs) -> int:
    return client.sock.getsockname()[1]


def ping_crlf(client: RawWs) -> None:
    """A CRLF keep-alive: the answer proves sipws saw the data (and touched last_used)."""
    client.send_text("\r\n")
    assert client.read_data() == (0x1, b"\r\n")


def ids_by_port(dump: dict) -> dict[int, int]:
    return {int(c["remote"].rsplit(":", 1)[1]): c["id"] for c in dump["connections"]}


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


# -- ws.dump ---------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_dump_lists_exactly_the_open_connections_in_each_order(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    port, admin = port_of(root), admin_port(root)
    clients = []
    for _ in range(3):
        clients.append((yield in_thread(opened, port)))
    c1, c2, c3 = clients
    for client in (c3, c1):  # c2 stays the least recently used
        yield sleep(0.01)
        yield in_thread(ping_crlf, client)
    dump = yield result(admin, "ws.dump")
    ids = ids_by_port(dump)
    assert set(ids) == {local_port(c) for c in clients}
    i1, i2, i3 = (ids[local_port(c)] for c in clients)
    assert [c["id"] for c in dump["connections"]] == [i1, i2, i3]
    assert dump["total"] == 3 and dump["truncated"] is False
    entry = dump["connections"][0]
    assert entry["state"] == "open" and entry["subprotocol"] == "sip" and entry["role"] == "server"
    assert entry["origin"] == "https://phone.example.com" and entry["transport"] == "ws"
    assert entry["local"] == f"127.0.0.1:{port}"
    used_desc = yield result(admin, "ws.dump", ["used_desc"])
    assert [c["id"] for c in used_desc["connections"]] == [i1, i3, i2]
    used_asc = yield result(admin, "ws.dump", {"order": "used_asc"})
    assert [c["id"] for c in used_asc["connections"]] == [i2, i3, i1]
    limited = yield result(admin, "ws.dump", ["used_asc", 2])
    assert [c["id"] for c in limited["connections"]] == [i2, i3]
    assert limited["total"] == 3 and limited["truncated"] is True

    yield in_thread(c2.close, 1000)
    yield wait_for(lambda: i2 not in root.connections)
    dump = yield result(admin, "ws.dump")
    assert [c["id"] for c in dump["connections"]] == [i1, i3] and dump["total"] == 2
    for client in clients:
        client.shutdown()


# -- close / ping / pong reach the client -------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_close_ping_pong_reach_the_client(sipws_factory):
    root = sipws_factory({"admin": ADMIN, "keepalive": {"ping_data": "are-you-there"}})
    port, admin = port_of(root), admin_port(root)
    client = yield in_thread(opened, port)
    conn_id = ids_by_port((yield result(admin, "ws.dump")))[local_port(client)]

    answer = yield result(admin, "ws.ping", [conn_id])
    assert answer == {"id": conn_id, "sent": "ping", "payload": "are-you-there"}
    _, opcode, payload = yield in_thread(client.read_frame)
    assert (opcode, payload) == (0x9, b"are-you-there")
    yield result(admin, "ws.pong", {"id": conn_id})
    _, opcode, payload = yield in_thread(client.read_frame)
    assert (opcode, payload) == (0xA, b"are-you-there")

    answer = yield result(admin, "ws.close", [conn_id, 4000, "bye"])
    assert answer["code"] == 4000 and answer["state"] == "closing"
    assert (yield in_thread(client.expect_close)) == (4000, "bye")
    yield in_thread(client.close, 4000)
    yield wait_for(lambda: conn_id not in root.connections)
    assert (yield in_thread(client.closed_by_peer))
    client.shutdown()

    # defaults: 1000 "Normal closure"
    other = yield in_thread(opened, port)
    other_id = ids_by_port((yield result(admin, "ws.dump")))[local_port(other)]
    yield result(admin, "ws.close", [other_id])
    assert (yield in_thread(other.expect_close)) == (1000, "Normal closure")
    other.shutdown()


@pytest_twisted.inlineCallbacks
def test_unknown_id_and_bad_close_code(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    admin = admin_port(root)
    for method in ("ws.close", "ws.ping", "ws.pong"):
        answer = yield rpc_call(admin, method, [999])
        assert answer["error"] == {"code": methods.NO_SUCH_CONNECTION, "message": "no connection with id 999"}
    client = yield in_thread(opened, port_of(root))
    conn_id = next(iter(root.connections)).id
    answer = yield rpc_call(admin, "ws.close", [conn_id, 1005])
    assert answer["error"]["code"] == -32602 and "1005" in answer["error"]["message"]
    assert root.connections.get(conn_id).state == "open"
    client.shutdown()


# -- disable / enable --------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_disable_refuses_new_handshakes_with_503_enable_accepts_again(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    port, admin = port_of(root), admin_port(root)
    before = yield in_thread(opened, port)
    assert (yield result(admin, "ws.disable")) == {"accepting": False}
    refused = RawWs(port)
    status, _, _ = yield in_thread(refused.request)
    assert status == 503
    refused.shutdown()
    stats = yield result(admin, "stats")
    assert stats["accepting"] is False and stats["connections"]["current"] >= 1
    yield in_thread(ping_crlf, before)  # the open connection is untouched
    assert (yield result(admin, "ws.enable")) == {"accepting": True}
    again = RawWs(port)
    status, _, _ = yield in_thread(again.request)
    assert status == 101
    again.shutdown()
    before.shutdown()


# -- authentication -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_token_is_required_when_set(sipws_factory, sipws_log):
    root = sipws_factory({"admin": {**ADMIN, "token": "s3cret"}})
    admin = admin_port(root)
    message = {"jsonrpc": "2.0", "method": "version", "id": 1}
    status, headers, _ = yield post(admin, message)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, _ = yield post(admin, message, token="wrong")
    assert status == 401
    status, _, _ = yield in_thread(http_call, admin, "POST", "/rpc", json.dumps(message).encode(),
                                   {"Authorization": "Basic czNjcmV0"})
    assert status == 401
    status, _, _ = yield in_thread(http_call, admin, "GET", "/metrics")
    assert status == 401
    status, _, body = yield post(admin, message, token="s3cret")
    assert status == 200 and json.loads(body)["result"]["name"] == "sipws"
    status, _, _ = yield in_thread(http_call, admin, "GET", "/metrics", None, {"Authorization": "Bearer s3cret"})
    assert status == 200
    refusals = [line for line in sipws_log if "refused" in line and "401" in line]
    assert len(refusals) == 4 and all("from 127.0.0.1:" in line for line in refusals), sipws_log


# -- JSON-RPC errors, batches, notifications, HTTP refusals ---------------------------------------


@pytest_twisted.inlineCallbacks
def test_jsonrpc_errors_batch_and_notification(sipws_factory, sipws_log):
    root = sipws_factory({"admin": ADMIN})
    admin = admin_port(root)

    status, _, body = yield post(admin, b'{"jsonrpc": "2.0", "method": "version", "id": 1')
    assert status == 200
    assert json.loads(body) == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "parse error: not valid JSON"},
                                "id": None}
    assert any("unparsable JSON from 127.0.0.1:" in line for line in sipws_log)

    answer = json.loads((yield post(admin, {"jsonrpc": "2.0", "method": 1, "id": 4}))[2])
    assert answer["error"]["code"] == -32600 and answer["id"] == 4
    answer = json.loads((yield post(admin, []))[2])
    assert answer["error"]["code"] == -32600 and answer["id"] is None
    answer = yield rpc_call(admin, "ws.nothing")
    assert answer["error"]["code"] == -32601
    answer = yield rpc_call(admin, "ws.dump", ["newest"])
    assert answer["error"]["code"] == -32602
    answer = yield rpc_call(admin, "ws.dump", {"limit": "all"})
    assert answer["error"]["code"] == -32602

    batch = [
        {"jsonrpc": "2.0", "method": "version", "id": "a"},
        {"jsonrpc": "2.0", "method": "ws.disable"},
        {"jsonrpc": "2.0", "method": "nope", "id": "b"},
        {"jsonrpc": "2.0", "method": "stats", "id": "c"},
    ]
    status, _, body = yield post(admin, batch)
    answers = json.loads(body)
    assert status == 200 and [a["id"] for a in answers] == ["a", "b", "c"]
    assert answers[0]["result"]["name"] == "sipws" and answers[1]["error"]["code"] == -32601
    assert answers[2]["result"]["accepting"] is False  # the notification ran first

    status, _, body = yield post(admin, {"jsonrpc": "2.0", "method": "ws.enable"})
    assert status == 204 and body == b""
    assert root.accepting is True


@pytest_twisted.inlineCallbacks
def test_http_refusals(sipws_factory, sipws_log):
    root = sipws_factory({"admin": ADMIN})
    admin = admin_port(root)
    status, headers, _ = yield in_thread(http_call, admin, "GET", "/rpc")
    assert status == 405 and headers["allow"] == "POST"
    status, _, _ = yield in_thread(http_call, admin, "GET", "/elsewhere")
    assert status == 404
    status, _, _ = yield in_thread(http_call, admin, "POST", "/rpc/x", b"{}")
    assert status == 404

    big = json.dumps({"jsonrpc": "2.0", "method": "version", "id": 1, "pad": "x" * rpc.MAX_BODY}).encode()
    status, _, _ = yield post(admin, big)
    assert status == 413
    assert any("413" in line and "from 127.0.0.1:" in line for line in sipws_log)
    # just under the limit is fine
    fits = {"jsonrpc": "2.0", "method": "version", "id": 1, "pad": ""}
    fits["pad"] = "x" * (rpc.MAX_BODY - len(json.dumps(fits)))
    status, _, body = yield post(admin, json.dumps(fits).encode())
    assert status == 200 and json.loads(body)["result"]["name"] == "sipws"


# -- ws.connect, trace -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_connect_opens_a_client_connection(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    port, admin = port_of(root), admin_port(root)
    answer = yield result(admin, "ws.connect", [f"ws://127.0.0.1:{port}/"])
    assert answer["role"] == "client" and answer["state"] == "open" and answer["remote"] == f"127.0.0.1:{port}"
    yield wait_for(lambda: len(root.connections) == 2)
    dump = yield result(admin, "ws.dump")
    assert sorted(c["role"] for c in dump["connections"]) == ["client", "server"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    answer = yield rpc_call(admin, "ws.connect", [f"ws://127.0.0.1:{closed_port}/"])
    assert answer["error"]["code"] == methods.CONNECT_FAILED and str(closed_port) in answer["error"]["message"]
    answer = yield rpc_call(admin, "ws.connect", ["http://127.0.0.1/"])
    assert answer["error"]["code"] == -32602


@pytest_twisted.inlineCallbacks
def test_trace_without_destination(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    admin = admin_port(root)
    assert (yield result(admin, "trace")) == {"trace": "off"}
    answer = yield rpc_call(admin, "trace", ["on"])
    assert answer["error"]["code"] == methods.NOT_AVAILABLE and "destination" in answer["error"]["message"]
    assert (yield result(admin, "trace", ["off"])) == {"trace": "off"}


@pytest_twisted.inlineCallbacks
def test_trace_switches_a_configured_tracer(sipws_factory):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        where = f"udp:127.0.0.1:{collector.getsockname()[1]}"
        root = sipws_factory({"admin": ADMIN, "trace": {"destination": where}})
        admin = admin_port(root)
        assert (yield result(admin, "trace", ["on"])) == {"trace": "on"}
        assert root.tracer.enabled is True
        assert (yield result(admin, "stats"))["trace"]["enabled"] is True
        assert (yield result(admin, "trace", ["off"])) == {"trace": "off"}
        assert root.tracer.enabled is False


# -- /metrics -----------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_metrics_parse_and_count(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    port, admin = port_of(root), admin_port(root)
    clients = []
    for _ in range(2):
        clients.append((yield in_thread(opened, port)))
    yield in_thread(clients[0].send_text, "OPTIONS sip:a SIP/2.0\r\n\r\n")
    yield wait_for(lambda: root.stats.get("ws.messages_in") == 1)
    yield in_thread(clients[1].close, 1000)
    yield wait_for(lambda: len(root.connections) == 1)
    yield result(admin, "ws.disable")
    status, headers, body = yield in_thread(http_call, admin, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("sipws_connections_open", (("role", "server"), ("transport", "ws")))] == 1
    assert samples[("sipws_connections_open", (("role", "client"), ("transport", "ws")))] == 0
    assert samples[("sipws_connections_max", ())] == 2
    assert samples[("sipws_accepting", ())] == 0
    assert samples[("sipws_ws_handshakes_ok_total", ())] == 2
    assert samples[("sipws_ws_messages_in_total", ())] == 1
    assert samples[("sipws_ws_closed_remote_total", ())] == 1
    assert samples[("sipws_ws_handshakes_failed_total", ())] == 0
    stats = yield result(admin, "stats")
    for name, value in stats["counters"].items():
        family, transport = rpc.prometheus.split_counter(name)
        labels = (("transport", transport),) if transport else ()
        assert samples[(family + "_total", labels)] == value
    for client in clients:
        client.shutdown()


# -- unix socket ------------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_unix_socket_listener_is_private(sipws_factory, tmp_path):
    path = str(tmp_path / "admin.sock")
    root = sipws_factory({"admin": {"listen": f"unix:{path}"}})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    done = yield in_thread(ctl, "--url", f"unix:{path}", "version")
    assert done.returncode == 0, done.stderr
    assert "name: sipws" in done.stdout
    yield root.stopService()
    assert not os.path.exists(path)


def test_admin_port_in_use_is_a_startup_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        root = build_service(make_config({"admin": {"listen": f"tcp:{port}:interface=127.0.0.1"}}))
        with pytest.raises(StartupError) as caught:
            root.admin.privilegedStartService()
        globalLogPublisher.removeObserver(root.log_watcher)
    assert str(caught.value).startswith(f"[admin] listen: cannot listen on tcp:{port}:interface=127.0.0.1: ")
    assert "\n" not in str(caught.value) and root.listening("admin") == []


def test_bad_endpoint_is_a_startup_error():
    root = build_service(make_config({"admin": {"listen": "tcp:notaport"}}))
    with pytest.raises(StartupError) as caught:
        root.admin.privilegedStartService()
    globalLogPublisher.removeObserver(root.log_watcher)
    assert str(caught.value).startswith("[admin] listen: bad endpoint 'tcp:notaport'")


# -- sipws-ctl ---------------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_ctl_as_a_subprocess(sipws_factory):
    root = sipws_factory({"admin": ADMIN})
    port = port_of(root)
    url = f"http://127.0.0.1:{admin_port(root)}/rpc"
    client = yield in_thread(opened, port)
    conn_id = next(iter(root.connections)).id

    done = yield in_thread(ctl, "--url", url, "ws.dump", "used_asc")
    assert done.returncode == 0, done.stderr
    header, row, footer = done.stdout.strip().splitlines()
    assert header.split()[:2] == ["ID", "TRANSPORT"]
    assert row.split()[0] == str(conn_id) and f"127.0.0.1:{local_port(client)}" in row
    assert footer == "1 connection(s)"

    done = yield in_thread(ctl, "--url", url, "--json", "ws.dump")
    assert json.loads(done.stdout)["connections"][0]["id"] == conn_id

    done = yield in_thread(ctl, "trace", env={"SIPWS_ADMIN_URL": url})
    assert (done.returncode, done.stdout.strip()) == (0, "trace: off")
    done = yield in_thread(ctl, "--url", url, "trace", "on")
    assert done.returncode == 1 and "destination" in done.stderr and done.stdout == ""

    done = yield in_thread(ctl, "--url", url, "ws.close", str(conn_id), "4000", "bye now")
    assert done.returncode == 0, done.stderr
    assert (yield in_thread(client.expect_close)) == (4000, "bye now")
    client.shutdown()

    done = yield in_thread(ctl, "--url", url, "ws.close", "424242")
    assert done.returncode == 1 and "no connection with id 424242" in done.stderr

    done = yield in_thread(ctl, "--url", url, "--json", "stats")
    assert done.returncode == 0 and "ws.handshakes_ok" in json.loads(done.stdout)["counters"]


@pytest_twisted.inlineCallbacks
def test_ctl_token_and_unreachable_server(sipws_factory):
    root = sipws_factory({"admin": {**ADMIN, "token": "t0k"}})
    url = f"http://127.0.0.1:{admin_port(root)}/rpc"
    done = yield in_thread(ctl, "--url", url, "version")
    assert done.returncode == 3 and "token" in done.stderr
    done = yield in_thread(ctl, "--url", url, "version", env={"SIPWS_ADMIN_TOKEN": "t0k"})
    assert done.returncode == 0 and "version: " in done.stdout
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    done = yield in_thread(ctl, "--url", f"http://127.0.0.1:{closed_port}/rpc", "--timeout", "5", "version")
    assert done.returncode == 3 and "cannot reach sipws" in done.stderr and "Traceback" not in done.stderr
