"""examples/sipws-full.toml (the complete example docs/configuration.md points to)
loads and starts: `twistd -n sipws` on a copy with loopback addresses, free ports,
test certificates and a unix admin socket in the test's directory, answering
WebSocket handshakes on ws and wss, tracing to HEP and answering sipws-ctl.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from sipws.config import _SCHEMA, load_config
from tests.certs import CertificateAuthority
from tests.integration.example_files import (
    EXAMPLES, REPO, PortMap, SipwsProcess, dump_toml, free_port, replace_port,
)
from tests.integration.wsclient import RawWs

FULL = EXAMPLES / "sipws-full.toml"
SIPWS_CTL = os.path.join(os.path.dirname(sys.executable), "sipws-ctl")
HEP_WAIT = 10.0


def loopback(host: str) -> str:
    return "127.0.0.1"


def full_example_copy(tmp_path: Path, hep_port: int) -> tuple[dict, dict, str]:
    """The shipped data, the copy's data (written to tmp_path/sipws.toml) and the test CA's path."""
    shipped = tomllib.loads(FULL.read_text())
    data = copy.deepcopy(shipped)
    ports = PortMap()
    for section in ("ws", "wss"):
        data[section]["listen"] = [replace_port(entry, ports, loopback) for entry in data[section]["listen"]]
    data["sip"]["listen"] = [replace_port(entry, ports, loopback) for entry in data["sip"]["listen"]]
    data["msrp"]["listen"] = [replace_port(entry, ports, loopback) for entry in data["msrp"]["listen"]]
    transport = data["sip"]["upstream"].rpartition("transport=")[2] or "udp"
    data["sip"]["upstream"] = f"sip:127.0.0.1:{free_port()};transport={transport}"
    data["trace"]["destination"] = f"udp:127.0.0.1:{hep_port}"
    ca = CertificateAuthority(tmp_path / "pki")
    issued = ca.issue("sipws", ["sip.example.com", "127.0.0.1"])
    data["wss"]["certificate"], data["wss"]["private_key"] = issued.cert, issued.key
    data["wss"]["ca_list"] = data["wss"]["ca_list"] and ca.path
    data["admin"]["listen"] = f"unix:{tmp_path}/admin.sock"
    (tmp_path / "sipws.toml").write_text(dump_toml(data))
    return shipped, data, ca.path


def test_full_example_has_every_section_and_only_the_documented_overrides(tmp_path):
    shipped = tomllib.loads(FULL.read_text())
    assert set(shipped) == set(_SCHEMA), "examples/sipws-full.toml should show every section"
    _, data, _ = full_example_copy(tmp_path, 9)
    overridden = {("ws", "listen"), ("wss", "listen"), ("wss", "certificate"), ("wss", "private_key"),
                  ("wss", "ca_list"), ("sip", "listen"), ("msrp", "listen"), ("sip", "upstream"), ("trace", "destination"),
                  ("admin", "listen")}
    for section, values in shipped.items():
        for key, value in values.items():
            if (section, key) not in overridden:
                assert data[section][key] == value, (section, key)
    # The file's header comment names the same overrides.
    header = FULL.read_text().split("\n[", 1)[0]
    for section, key in overridden - {("wss", "ca_list")}:
        assert f"[{section}] {key}" in header or key in header, (section, key)


def test_configuration_md_points_to_the_full_example():
    text = (REPO / "docs" / "configuration.md").read_text()
    assert "examples/sipws-full.toml" in text
    assert "```toml" not in text.split("## A complete example", 1)[-1], "the inline example moved to the file"


def test_full_example_loads_and_starts(tmp_path):
    hep = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hep.bind(("127.0.0.1", 0))
    hep.settimeout(HEP_WAIT)
    try:
        shipped, data, ca_path = full_example_copy(tmp_path, hep.getsockname()[1])
        config = load_config(str(tmp_path / "sipws.toml"))
        assert config.http.allowed_origins == tuple(shipped["http"]["allowed_origins"])
        assert config.keepalive.timeout == shipped["keepalive"]["timeout"]
        assert config.trace.on and config.trace.capture_id == shipped["trace"]["capture_id"]
        assert config.client.headers == tuple(shipped["client"]["headers"].items())

        ws_port = int(data["ws"]["listen"][0].rsplit(":", 1)[1])
        wss_port = int(data["wss"]["listen"][0].rsplit(":", 1)[1])
        sipws = SipwsProcess(tmp_path / "sipws.toml", tmp_path / "sipws.log")
        try:
            sipws.start(ws_port)
            log = sipws.log_text()
            assert "listening wss" in log and "listening sip udp" in log, log

            client = RawWs(ws_port)
            client.upgrade()
            client.shutdown()
            tls = ssl.create_default_context(cafile=ca_path)
            client = RawWs(wss_port, tls=tls, server_hostname="sip.example.com")
            headers = client.upgrade()
            assert headers["sec-websocket-protocol"] == "sip"
            # Tracing is on in the example: the connections reach the HEP collector.
            packet, _ = hep.recvfrom(65535)
            assert packet.startswith(b"HEP3")
            # The admin unix socket answers sipws-ctl.
            result = subprocess.run([SIPWS_CTL, "--url", data["admin"]["listen"], "--json", "ws.dump"],
                                    capture_output=True, timeout=15)
            assert result.returncode == 0, result.stderr
            assert any(c["transport"] == "wss" for c in json.loads(result.stdout)["connections"]), result.stdout
            # What the unit's ExecReload does (kill -HUP): certificates re-read, sipws and the
            # open connection stay up, new handshakes still succeed.
            sipws.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + HEP_WAIT
            while "tls: certificates reloaded" not in sipws.log_text():
                assert time.monotonic() < deadline and sipws.process.poll() is None, sipws.log_text()[-2000:]
                time.sleep(0.1)
            client.send_text("\r\n\r\n")  # a CRLF keep-alive on the connection opened before the reload
            assert client.read_data()[1] == b"\r\n"
            again = RawWs(wss_port, tls=tls, server_hostname="sip.example.com")
            again.upgrade()
            again.shutdown()
            client.shutdown()
        finally:
            status = sipws.stop()
        assert status in (0, -15), sipws.log_text()[-3000:]
        assert "Traceback" not in sipws.log_text(), sipws.log_text()[-3000:]
    finally:
        hep.close()


# ------------------------------------------------------------------ examples/asterisk (untested with Asterisk)

ASTERISK = EXAMPLES / "asterisk"


def asterisk_config_copy(tmp_path: Path, contact_mode: str | None = None) -> Path:
    """examples/asterisk/sipws.toml with test certificates (and optionally another contact_mode)."""
    data = tomllib.loads((ASTERISK / "sipws.toml").read_text())
    issued = CertificateAuthority(tmp_path / "pki").issue("sipws", ["sip.example.com"])
    data["wss"]["certificate"], data["wss"]["private_key"] = issued.cert, issued.key
    if contact_mode is not None:
        data["sip"]["contact_mode"] = contact_mode
    path = tmp_path / f"asterisk-{contact_mode}.toml"
    path.write_text(dump_toml(data))
    return path


def test_asterisk_sipws_toml_is_valid_in_path_and_alias_mode(tmp_path):
    config = load_config(str(asterisk_config_copy(tmp_path)))
    assert config.sip.contact_mode == "path"
    assert config.sip.upstream == "sip:127.0.0.1:5060;transport=udp"
    assert load_config(str(asterisk_config_copy(tmp_path, "alias"))).sip.contact_mode == "alias"


def parse_asterisk_conf(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(name, template options, settings) per section of an Asterisk .conf file."""
    sections: list[tuple[str, str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name, _, rest = line[1:].partition("]")
            sections.append((name, rest.strip("()"), {}))
            continue
        key, sep, value = line.partition("=")
        assert sep and sections, f"unexpected line {raw!r}"
        sections[-1][2][key.strip()] = value.strip()
    return sections


def resolved(sections, name_kind: str) -> list[dict[str, str]]:
    """Sections of one type, with their templates' settings merged in."""
    templates = {name: settings for name, options, settings in sections if options == "!"}
    result = []
    for name, options, settings in sections:
        if options == "!":
            continue
        merged: dict[str, str] = {}
        for template in filter(None, options.split(",")):
            merged.update(templates[template.strip()])
        merged.update(settings)
        if merged.get("type") == name_kind:
            result.append(merged)
    return result


def test_asterisk_pjsip_snippets_say_untested_and_match_sipws_toml():
    upstream = tomllib.loads((ASTERISK / "sipws.toml").read_text())["sip"]["upstream"]
    upstream_address = upstream.split(":", 1)[1].split(";", 1)[0]
    assert "UNTESTED" in (ASTERISK / "sipws.toml").read_text().split("\n[", 1)[0]
    for name, path_mode in (("pjsip-path.conf", True), ("pjsip-alias.conf", False)):
        text = (ASTERISK / name).read_text()
        assert "UNTESTED" in text.split("\n[", 1)[0], f"{name} must say at the top that it is untested"
        sections = parse_asterisk_conf(text)
        transports = resolved(sections, "transport")
        assert [t["bind"] for t in transports] == [upstream_address], name
        endpoints = resolved(sections, "endpoint")
        aors = resolved(sections, "aor")
        assert endpoints and aors
        for endpoint in endpoints:
            # Rewriting the Contact to sipws's source address would lose the flow token.
            assert endpoint["rewrite_contact"] == "no" and "support_path" not in endpoint, (name, endpoint)
            assert endpoint["aors"] in {section[0] for section in sections}
        for aor in aors:
            assert (aor.get("support_path") == "yes") == path_mode, (name, aor)


def test_files_named_in_readme_and_deployment_guide_exist():
    for doc in (REPO / "README.md", REPO / "docs" / "deployment.md"):
        named = set(re.findall(r"\b((?:examples|contrib)/[\w./-]*\w)", doc.read_text()))
        assert named, doc
        for relative in named:
            assert (REPO / relative).exists(), f"{doc.name} names {relative}, which does not exist"
