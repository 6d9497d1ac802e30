"""A real browser speaks MSRP over WebSocket (RFC 7977) through sipws.

Headless Chromium (Debian) driven by puppeteer-core (tests/interop/js/browser_msrp.mjs):
a page from a secure origin opens two ``wss://`` WebSockets with the ``msrp``
subprotocol to a sipws started by twistd, AUTHs both, and sends a text chunk with a
success report and a binary chunk from one to the other.  Browser and sipws run in a
loopback-only network namespace, as in test_browser_wss.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.certs import CertificateAuthority
from tests.conftest import require_peer
from tests.integration.example_files import REPO, TWISTD, dump_toml, free_port
from tests.interop.browser import LoopbackNamespace, netns, spki_hash, stop  # noqa: F401 (netns: fixture)

JS_DIR = Path(__file__).parent / "js"
DRIVER = JS_DIR / "browser_msrp.mjs"
ORIGIN = "https://chat.sipws.test"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
BROWSER_WAIT_MS = 10_000
DRIVER_TIMEOUT = 45.0


@pytest.fixture
def sipws_msrp(tmp_path, netns):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", ["127.0.0.1", "localhost"])
    wss_port, sip_port, dead_port = free_port(), free_port(), free_port()
    config = {
        "ws": {"listen": []},
        "wss": {"listen": [f"127.0.0.1:{wss_port}"], "certificate": server.cert, "private_key": server.key,
                "subprotocols": ["sip", "msrp"]},
        "http": {"allowed_origins": [ORIGIN]},
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"], "upstream": f"sip:127.0.0.1:{dead_port};transport=udp"},
        "admin": {"listen": ""},
    }
    (tmp_path / "sipws.toml").write_text(dump_toml(config))
    log_path = tmp_path / "sipws.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            netns.wrap([TWISTD, "-n", "--pidfile=", "sipws", "--config", str(tmp_path / "sipws.toml")]),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    sipws = {"process": process, "log": log_path, "port": wss_port, "cert": server.cert}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while f"listening wss on 127.0.0.1:{wss_port}" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, f"sipws exited: {log_path.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"sipws did not listen: {log_path.read_text(errors='replace')}"
            time.sleep(0.1)
        yield sipws
    finally:
        status = stop(process)
    assert status in (0, -signal.SIGTERM), log_path.read_text(errors="replace")[-3000:]
    assert "Traceback" not in log_path.read_text(errors="replace")


def run_driver(netns: LoopbackNamespace, tmp_path: Path, sipws: dict) -> list[dict]:
    chromium = require_peer("chromium", "Debian package chromium")
    node = require_peer("node", "Debian package nodejs")
    if not (JS_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("puppeteer-core is not installed in tests/interop/js; `make test` installs it")
    config = {"chromium": chromium, "userDataDir": str(tmp_path / "chromium-profile"),
              "spki": spki_hash(sipws["cert"]), "wssUrl": f"wss://127.0.0.1:{sipws['port']}/",
              "origin": ORIGIN, "timeoutMs": BROWSER_WAIT_MS}
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", HOME=str(tmp_path))
    driver = subprocess.Popen(netns.wrap([node, str(DRIVER), json.dumps(config)]), cwd=JS_DIR, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = driver.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate(timeout=STOP_TIMEOUT)
        for line in out.decode().splitlines():
            if '"browserPid"' in line:  # puppeteer starts Chromium in its own process group
                try:
                    os.killpg(json.loads(line)["browserPid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        pytest.fail(f"browser driver timed out after {DRIVER_TIMEOUT}s: {out.decode()} {err.decode()[-3000:]}")
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert driver.returncode == 0 and lines and lines[-1] == {"done": True}, (out.decode(), err.decode()[-3000:])
    return lines


def test_chromium_exchanges_msrp_over_wss_through_sipws(netns, sipws_msrp, tmp_path):
    lines = run_driver(netns, tmp_path, sipws_msrp)
    print(json.dumps(lines, indent=1))
    print(sipws_msrp["log"].read_text(errors="replace"))
    [page] = [line for line in lines if line.get("case") == "msrp"]
    [granted] = [line for line in lines if "granted" in line]
    assert all(granted["granted"].values()), granted
    assert page["secureContext"] is True and "failure" not in page, page
    port = sipws_msrp["port"]
    assert page["protocols"] == ["msrp", "msrp"], page
    for who in ("aliceAuth", "bobAuth"):
        auth = page[who]
        assert auth["status"] == 200 and auth["expires"] == "1800", auth
        # no [msrp] listen: the Use-Path names the wss listener
        assert auth["usePath"].startswith(f"msrps://127.0.0.1:{port}/") and auth["usePath"].endswith(";tcp"), auth
    got = page["bobGot"]
    assert got["text"] == "Hello Bob ☺, from a browser" and got["frame"] == "text", got
    assert got["fromPath"].split(" ")[:2] == [page["bobAuth"]["usePath"], page["aliceAuth"]["usePath"]], got
    assert page["aliceGot"] == {"status": 200, "report": "000 200 OK"}, page
    assert page["binary"] == {"same": True, "length": 4096, "frame": "binary"}, page
    assert [c["code"] for c in page["closed"]] == [1000, 1000], page
