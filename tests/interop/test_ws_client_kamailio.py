"""sipws dialling Kamailio 5.6's WebSocket server (ws and wss), as OpenSIPS's client role does."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from sipws.sip import parse
from sipws.transport.ws_client import ClientConnectError, WsTarget
from tests.certs import CertificateAuthority
from tests.integration.conftest import WAIT, wait_for
from tests.interop.kamailio_ws.fixture import Kamailio, free_port
from tests.interop.peers import Sipp
from tests.interop.peers import free_port as free_udp_tcp_port


def request(method: str, number: int, transport: str) -> bytes:
    branch = f"z9hG4bK{os.urandom(6).hex()}"
    return (
        f"{method} sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} sipws.invalid;branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=t{number}\r\n"
        f"To: <sip:alice@example.com>\r\n"
        f"Call-ID: client-role-{number}@sipws\r\n"
        f"CSeq: {number} {method}\r\n"
        f"Contact: <sip:alice@sipws.invalid;transport=ws>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def kamailio(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    cert = ca.issue("kamailio", ["127.0.0.1", "localhost"])
    run_dir = tmp_path / "kamailio"
    run_dir.mkdir()
    peer = Kamailio(run_dir, free_port(), free_port(), cert.cert, cert.key)
    peer.ca = ca
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def dialler(sipws_factory, kamailio):
    root = sipws_factory({"ws": {"listen": []}, "wss": {"ca_list": kamailio.ca.path}})
    root.received = []
    root.set_message_handler(lambda record, data: root.received.append((record.id, parse(data))))
    return root


def responses(root, call_id):
    return [m for _, m in root.received if not m.is_request and m.call_id == call_id]


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
@pytest_twisted.inlineCallbacks
def test_register_and_options_answered_over_client_connection(kamailio, dialler, secure):
    port = kamailio.wss_port if secure else kamailio.ws_port
    target = WsTarget("127.0.0.1", port, secure, "/")
    transport = "wss" if secure else "ws"
    # several requests while the connection is still being opened: all delivered once, in order
    sends = [dialler.ws_client.send(target, request("OPTIONS" if i % 2 else "REGISTER", i, transport))
             for i in range(1, 7)]
    records = yield defer.gatherResults(sends).addTimeout(WAIT, reactor)
    assert len({r.id for r in records}) == 1
    yield wait_for(lambda: all(responses(dialler, f"client-role-{i}@sipws") for i in range(1, 7)))
    for i in range(1, 7):
        (answer,) = responses(dialler, f"client-role-{i}@sipws")
        assert answer.status == 200
    assert [m.cseq[0] for _, m in dialler.received] == list(range(1, 7))
    dump = yield defer.maybeDeferred(lambda: None).addCallback(lambda _: kamailio.kamcmd("ws.dump"))
    local_port = records[0].local[1]
    assert f":{local_port}" in dump, dump


@pytest_twisted.inlineCallbacks
def test_stopped_server_gives_503_promptly_then_restart_redials(kamailio, dialler):
    target = WsTarget("127.0.0.1", kamailio.ws_port, False, "/")
    first = yield dialler.ws_client.send(target, request("OPTIONS", 1, "ws")).addTimeout(WAIT, reactor)
    yield wait_for(lambda: responses(dialler, "client-role-1@sipws"))
    kamailio.stop()
    yield wait_for(lambda: first.id not in dialler.connections)
    with pytest.raises(ClientConnectError) as info:
        yield dialler.ws_client.send(target, request("OPTIONS", 2, "ws")).addTimeout(WAIT, reactor)
    assert info.value.status == 503  # at once, not after timer F (the wait is bounded by WAIT)
    kamailio.start()
    second = yield dialler.ws_client.send(target, request("OPTIONS", 3, "ws")).addTimeout(WAIT, reactor)
    assert second.id != first.id
    yield wait_for(lambda: responses(dialler, "client-role-3@sipws"))


@defer.inlineCallbacks
def run_sipp(scenario: str, sip_port: int, ws_port: int, tmp_path):
    """Run one sipp scenario against sipws's UDP socket (Route to the ws server); (exit code, sipp)."""
    sipp = Sipp(scenario, free_udp_tcp_port(), f"127.0.0.1:{sip_port}",
                ["-key", "ws_port", str(ws_port), "-m", "1", "-timeout", "20s"], tmp_path)
    sipp.start()
    try:
        code = yield threads.deferToThread(sipp.wait, 30).addTimeout(40, reactor)
    finally:
        sipp.stop()
    return code, sipp


@pytest_twisted.inlineCallbacks
def test_sipp_requests_relayed_to_kamailio_over_the_client_connection(kamailio, sipws_factory, tmp_path):
    """sipp (UDP) → sipws → Kamailio's WebSocket server, chosen by a transport=ws Route."""
    root = sipws_factory({"ws": {"listen": []}, "sip": {"listen": ["udp:127.0.0.1:0"]}})
    sip_port = root.listening("sip-udp")[0].getHost().port
    code, sipp = yield run_sipp("register_options_ws.xml", sip_port, kamailio.ws_port, tmp_path)
    assert code == 0, sipp.messages()[-3000:]
    [record] = [r for r in root.connections if r.role == "client"]
    dump = kamailio.kamcmd("ws.dump")
    assert f":{record.local[1]}" in dump, dump
    assert root.stats.get("sip.messages_out.ws") == 2 and root.stats.get("sip.messages_in.ws") == 2
    # Kamailio gone: the next request gets 503 from sipws at once.
    kamailio.stop()
    yield wait_for(lambda: record.id not in root.connections)
    code, down = yield run_sipp("options_ws_503.xml", sip_port, kamailio.ws_port, tmp_path)
    assert code == 0, down.messages()[-3000:]
