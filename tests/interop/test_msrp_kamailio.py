"""sipws's WebSocket MSRP relay in front of Kamailio 5.6's msrp module (a second
relay, RFC 4976) on TCP, and on TLS (sipws verifies Kamailio's certificate
against the test CA): a browser-like client on WebSocket and a TCP/TLS
client of Kamailio exchange messages both ways, with success reports.

    WS client ──ws──▶ sipws (relay 1) ──tcp/tls──▶ Kamailio msrp (relay 2) ──tcp/tls──▶ client

Each test starts its own Kamailio (tests/interop/kamailio_msrp/kamailio.cfg) and
stops it by pid; every wait is bounded.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.certs import CertificateAuthority
from tests.integration.conftest import port_of
from tests.integration.msrp_client import (
    MsrpWs, StreamReader, build_request, build_response, read_socket_messages, relay_uri, tid,
)
from tests.interop.peers import HERE, KamailioCore, free_port

#: Longest a blocking peer operation may take.
PEER_WAIT = 30.0
SOCKET_TIMEOUT = 10.0


def blocking(fn: Callable, *args: Any, **kwargs: Any):
    return threads.deferToThread(fn, *args, **kwargs).addTimeout(PEER_WAIT, reactor)


@pytest.fixture(params=["tcp", "tls"])
def kamailio_msrp(request, tmp_path):
    """Kamailio's msrp relay on TCP, or on TLS with a certificate of a test CA (``.ca``)."""
    port = free_port(socket.SOCK_STREAM)
    # host:port (the README's msrp:// example doubles the scheme)
    defines = [f'USE_PATH_ADDR="127.0.0.1:{port}"']
    ca = CertificateAuthority(tmp_path / "pki")
    if request.param == "tls":
        issued = ca.issue("kamailio", ["127.0.0.1"])
        tls_cfg = tmp_path / "tls.cfg"
        tls_cfg.write_text((HERE / "kamailio_msrp" / "tls.cfg.in").read_text()
                           .replace("@CERT@", str(issued.cert)).replace("@KEY@", str(issued.key)))
        defines += ["WITH_TLS", f'TLS_CFG="{tls_cfg}"']
    core = KamailioCore(tmp_path, port, config=HERE / "kamailio_msrp" / "kamailio.cfg", defines=tuple(defines))
    core.tls = request.param == "tls"
    core.ca = ca
    core.start()
    yield core
    core.stop()


def connect_when_listening(port: int) -> socket.socket:
    """Kamailio answers its control socket before its TCP/TLS listener is always up: retry
    a refused connection for a bounded time."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class TcpClient:
    """An MSRP endpoint on TCP (or TLS) that uses Kamailio as its relay (AUTH, then its Use-Path)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = connect_when_listening(port)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.reader = StreamReader()
        local = self.sock.getsockname()
        scheme = "msrps" if tls is not None else "msrp"
        self.uri = f"{scheme}://127.0.0.1:{local[1]}/tcpclient1;tcp"
        self.relay = f"{scheme}://127.0.0.1:{port};tcp"
        self.use_path = ""

    def read(self):
        [msg] = read_socket_messages(self.sock, self.reader, 1)
        return msg

    def auth(self) -> None:
        transaction = tid()
        self.sock.sendall(build_request("AUTH", transaction, [self.relay], [self.uri]))
        answer = self.read()
        assert answer.tid == transaction and answer.status == 200, answer
        self.use_path = answer.header("Use-Path")
        assert self.use_path, answer

    def close(self) -> None:
        self.sock.close()


def exchange(ws: MsrpWs, sipws_relay: str, kamailio_port: int, tls: ssl.SSLContext | None) -> dict:
    tcp = TcpClient(kamailio_port, tls)
    result: dict = {}
    try:
        tcp.auth()
        ws.open()
        assert ws.auth(sipws_relay).status == 200
        result["paths"] = (ws.use_path, tcp.use_path)
        result["tcp_uri"] = tcp.uri
        # WS → TCP: To-Path is the ws client's Use-Path, Kamailio's Use-Path, the TCP client
        ws.send_msrp(build_request("SEND", tid(), [ws.use_path, tcp.use_path, tcp.uri], [ws.uri],
                                   [("Message-ID", "w1"), ("Success-Report", "yes"), ("Byte-Range", "1-13/13"),
                                    ("Content-Type", "text/plain")], b"hello from ws"))
        send = tcp.read()
        while send.method != "SEND":
            send = tcp.read()
        result["at_tcp"] = send
        tcp.sock.sendall(build_response(send.tid, 200, "OK", send.path("From-Path")[0], tcp.uri))
        tcp.sock.sendall(build_request("REPORT", tid(), send.path("From-Path"), [tcp.uri],
                                       [("Message-ID", "w1"), ("Byte-Range", "1-13/13"), ("Status", "000 200 OK")]))
        result["ws_200"] = ws.expect(lambda m: m.status is not None, "the relay's 200")
        result["ws_report"] = ws.expect(lambda m: m.method == "REPORT", "the success REPORT")
        # TCP → WS, back along the From-Path the TCP client saw
        reply_tid = tid()
        tcp.sock.sendall(build_request("SEND", reply_tid, send.path("From-Path"), [tcp.uri],
                                       [("Message-ID", "t1"), ("Byte-Range", "1-14/14"),
                                        ("Content-Type", "text/plain")], b"hello from tcp"))
        result["tcp_200"] = tcp.read()
        incoming = ws.expect(lambda m: m.method == "SEND", "the TCP client's SEND")
        result["at_ws"] = incoming
        ws.send_msrp(build_response(incoming.tid, 200, "OK", incoming.path("From-Path")[0], ws.uri))
        result["reply_tid"] = reply_tid
        return result
    finally:
        tcp.close()


@pytest_twisted.inlineCallbacks
def test_sipws_and_kamailio_relay_messages_between_websocket_and_tcp_clients(sipws_factory, kamailio_msrp, sipws_log):
    overrides: dict = {"ws": {"subprotocols": ["msrp"]},
                       "msrp": {"allow_insecure": True, "listen": [f"{'tls' if kamailio_msrp.tls else 'tcp'}:127.0.0.1:0"]}}
    context = None
    if kamailio_msrp.tls:  # sipws verifies Kamailio's certificate; its own [msrp] listen is TLS too
        ours = kamailio_msrp.ca.issue("sipws", ["127.0.0.1"])
        overrides["wss"] = {"ca_list": str(kamailio_msrp.ca.path), "certificate": str(ours.cert),
                            "private_key": str(ours.key)}
        context = ssl.create_default_context(cafile=str(kamailio_msrp.ca.path))
    root = sipws_factory(overrides)
    ws = MsrpWs(port_of(root), "alice")
    try:
        result = yield blocking(exchange, ws, relay_uri(port_of(root), tls=False), kamailio_msrp.port, context)
    except Exception:
        print(kamailio_msrp.log_text())
        print("\n".join(sipws_log))
        raise
    finally:
        ws.shutdown()
    ws_path, tcp_path = result["paths"]
    scheme = "msrps" if kamailio_msrp.tls else "msrp"
    assert tcp_path.startswith(f"{scheme}://127.0.0.1:{kamailio_msrp.port}/"), tcp_path
    assert ws_path.startswith(f"{scheme}://127.0.0.1:{port_of(root, 'msrp-' + ('tls' if kamailio_msrp.tls else 'tcp'))}/")
    at_tcp = result["at_tcp"]
    assert at_tcp.body == b"hello from ws"
    # each relay took itself off To-Path and put itself first in From-Path
    assert at_tcp.path("To-Path") == [result["tcp_uri"]]
    assert at_tcp.path("From-Path") == [tcp_path, ws_path, ws.uri], at_tcp.headers
    assert result["ws_200"].status == 200
    assert result["ws_report"].header("Status") == "000 200 OK"
    assert result["tcp_200"].status == 200
    at_ws = result["at_ws"]
    assert at_ws.body == b"hello from tcp" and at_ws.path("To-Path") == [ws.uri]
    assert at_ws.path("From-Path")[:2] == [ws_path, tcp_path], at_ws.headers
    counters = root.msrp.relay.counters
    assert counters["msrp.sends_relayed"] == 2 and counters["msrp.reports_relayed"] == 1
    # sipws dialled Kamailio; Kamailio dialled sipws's [msrp] listen (the Use-Path authority)
    pool = root.msrp.pool.stats_snapshot()
    assert pool["peer_connections"] == 2 and pool["peer_connections_accepted"] == 1, pool
