"""examples/kamailio/ as shipped: Kamailio 5.6 with examples/kamailio/kamailio.cfg
(only SIP_PORT and CTL_SOCK set by -A defines) behind sipws started by twistd with
examples/kamailio/sipws.toml (only port numbers replaced), and JsSIP clients
registering, messaging and calling each other through sipws → Kamailio → sipws.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.request

from tests.conftest import require_peer
from tests.integration.example_files import (
    EXAMPLES, PortMap, SipwsProcess, dump_toml, replace_endpoint_port, replace_port,
)
from tests.interop.peers import JsSipUa, KamailioCore, free_port

KAMAILIO_DIR = EXAMPLES / "kamailio"
SIPWS_CTL = os.path.join(os.path.dirname(sys.executable), "sipws-ctl")


def kamailio_example_copy(tmp_path, kamailio_port: int) -> tuple[dict, PortMap]:
    """examples/kamailio/sipws.toml with its ports replaced: the copy's data and the port map."""
    data = tomllib.loads((KAMAILIO_DIR / "sipws.toml").read_text())
    upstream_port = int(data["sip"]["upstream"].split(";")[0].rsplit(":", 1)[1])
    ports = PortMap({upstream_port: kamailio_port})
    data["ws"]["listen"] = [replace_port(entry, ports) for entry in data["ws"]["listen"]]
    data["sip"]["listen"] = [replace_port(entry, ports) for entry in data["sip"]["listen"]]
    data["sip"]["upstream"] = replace_port(data["sip"]["upstream"], ports)
    data["admin"]["listen"] = replace_endpoint_port(data["admin"]["listen"], ports)
    (tmp_path / "sipws.toml").write_text(dump_toml(data))
    return data, ports


def test_shipped_kamailio_cfg_passes_kamailios_own_check_without_defines(tmp_path):
    binary = require_peer("kamailio", "Debian package kamailio")
    result = subprocess.run([binary, "-c", "-f", str(KAMAILIO_DIR / "kamailio.cfg")], cwd=tmp_path,
                            capture_output=True, timeout=30)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "config file ok" in output
    # The defaults the file documents: loopback, port 5060, the example.com domain.
    assert "udp: 127.0.0.1 [127.0.0.1]:5060" in output and "example.com" in output, output


def test_jssip_clients_register_message_and_call_through_the_shipped_examples(peers, tmp_path):
    kamailio = peers(KamailioCore(tmp_path, free_port(), config=KAMAILIO_DIR / "kamailio.cfg"))
    kamailio.start()
    data, ports = kamailio_example_copy(tmp_path, kamailio.port)
    ws_port = int(data["ws"]["listen"][0].rsplit(":", 1)[1])
    sip_port = int(data["sip"]["listen"][0].rsplit(":", 1)[1])
    admin_port = int(data["admin"]["listen"].split(":")[1])
    sipws = peers(SipwsProcess(tmp_path / "sipws.toml", tmp_path / "sipws.log"))
    sipws.start(ws_port)

    alice = peers(JsSipUa(f"ws://127.0.0.1:{ws_port}", "sip:alice@example.com"))
    bob = peers(JsSipUa(f"ws://127.0.0.1:{ws_port}", "sip:bob@example.com"))
    for ua in (alice, bob):
        ua.start()
        assert ua.register()["status"] == 200

    # Kamailio stored each binding with sipws's Path (its SIP socket, the flow token, ;ob).
    dump = kamailio.kamcmd("ul.dump")
    assert "alice" in dump and "bob" in dump, dump
    assert dump.count(f"127.0.0.1:{sip_port}") >= 2 and "Path" in dump and ";ob" in dump, dump

    # MESSAGE both ways: each goes browser → sipws → Kamailio (lookup, Path) → sipws → browser.
    alice.send(cmd="message", target="sip:bob@example.com", body="hello bob")
    got = bob.expect("message")
    assert got["body"] == "hello bob" and got["from"] == "sip:alice@example.com"
    assert alice.expect("message_sent")["status"] == 200
    bob.send(cmd="message", target="sip:alice@example.com", body="hi alice")
    assert alice.expect("message")["body"] == "hi alice"

    # A call: INVITE through Kamailio, answered, ACK and BYE along the route set.
    alice.send(cmd="call", target="sip:bob@example.com")
    incoming = bob.expect("incoming")
    assert incoming["from"] == "sip:alice@example.com"
    bob.expect("confirmed", tag="in")
    alice.expect("confirmed", tag="out")
    alice.send(cmd="hangup")
    assert alice.expect("ended", tag="out")["originator"] == "local"
    assert bob.expect("ended", tag="in")["originator"] == "remote"

    # The admin listener of the shipped file answers sipws-ctl and Prometheus.
    url = f"http://127.0.0.1:{admin_port}"
    result = subprocess.run([SIPWS_CTL, "--url", f"{url}/rpc", "--json", "ws.dump"], capture_output=True,
                            timeout=15)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["connections"]) == 2, result.stdout
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert b"sipws" in response.read()

    for ua in (alice, bob):
        ua.stop()
    assert sipws.stop() in (0, -15), sipws.log_text()[-3000:]
    assert "Traceback" not in sipws.log_text(), sipws.log_text()[-3000:]
