"""A real browser opens wss:// to sipws (issue 11: "A browser connects over wss").

Headless Chromium from Debian, driven by puppeteer-core (tests/interop/js/browser_wss.mjs),
loads pages from secure origins (answered by puppeteer's request interception, so
the page's origin, and so the WebSocket's Origin header, is ``https://…``) and opens
``wss://127.0.0.1:PORT/`` with the ``sip`` subprotocol to a sipws started by twistd.

The browser trusts only the test certificate, by the hash of its public key
(``--ignore-certificate-errors-spki-list``), not every certificate.  Browser and
sipws run inside a private network namespace whose only interface is loopback:
a holder process created with ``unshare -n``, and both processes entered into it
with ``nsenter``, so nothing the browser tries (DNS, background fetches) leaves
127.0.0.1.

Until commit 9cab901 every browser failed here with ERR_SSL_PROTOCOL_ERROR
(Chromium offers ALPN http/1.1; Twisted 26 + pyOpenSSL 26 answered alert 80).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.interop.browser import (  # noqa: F401 (netns: fixture)
    LoopbackNamespace, netns, run_driver, sipws_on_wss, spki_hash, wait_log,
)

ALLOWED_ORIGIN = "https://phone.sipws.test"
OTHER_ORIGIN = "https://evil.sipws.test"


@pytest.fixture
def sipws_wss(tmp_path, netns):
    """sipws (twistd) in the namespace: wss on 127.0.0.1, an upstream UDP port with nothing behind it."""
    with sipws_on_wss(netns, tmp_path, ALLOWED_ORIGIN) as sipws:
        yield sipws


def run_browser(netns: LoopbackNamespace, tmp_path: Path, sipws: dict, cases: list[dict]) -> dict[str, dict]:
    """Runs the Node driver in the namespace; its JSON lines by case name (pages' results),
    plus "browser" (version, pid) and "granted" (permissions per origin)."""
    lines = run_driver(netns, tmp_path, "browser_wss.mjs", {
        "spki": spki_hash(sipws["cert"]),
        "wssUrl": f"wss://127.0.0.1:{sipws['port']}/",
        "wsUrl": f"ws://sip.sipws.test:{sipws['port']}/",
        "cases": cases,
    })
    results = {line["case"]: line for line in lines if "case" in line}
    for line in lines:
        for key in ("browser", "granted"):
            if key in line:
                results[key] = line
    return results


def browse(netns, tmp_path, sipws, case: dict) -> tuple[dict, str]:
    """One page's result and sipws's log so far; both printed (shown in full on failure,
    where pytest would cut a long assertion message)."""
    results = run_browser(netns, tmp_path, sipws, [case])
    print(json.dumps(results, indent=1))
    log = sipws["log"].read_text(errors="replace")
    print(log)
    assert results["browser"]["browser"].startswith("Chrome/"), results["browser"]
    # Local Network Access: the permission a user grants at the prompt (see the driver).
    assert all(results["granted"]["granted"].values()), results["granted"]
    page = results[case["name"]]
    assert page["origin"] == case["origin"] and page["secureContext"] is True, page
    assert "failure" not in page, page
    return page, log


def test_chromium_opens_wss_relays_sip_and_closes_cleanly(netns, sipws_wss, tmp_path):
    page, log = browse(netns, tmp_path, sipws_wss, {"name": "allowed", "origin": ALLOWED_ORIGIN, "sip": True})
    # An https page, a secure context: the browser enforces what deployments face
    # (plain ws:// to a non-loopback host is blocked as mixed content).
    assert page["insecure"] == "SecurityError", page
    # The wss handshake: TLS (ALPN http/1.1 offered), the 101 naming "sip".
    assert page["opened"] is True and page["events"][0] == "open", page
    assert page["protocol"] == "sip", page
    # OPTIONS relayed toward a UDP port with nothing behind it: ICMP port
    # unreachable makes sipws answer 503 at once (no 32 s timer).
    assert page["responseLine"].startswith("SIP/2.0 503 "), page
    assert page["keepalive"] == "\r\n", page
    assert page["closed"] == {"code": 1000, "reason": "page done", "wasClean": True}, page

    opened = [line for line in log.splitlines() if " opened #" in line]
    assert len(opened) == 1 and f"origin={ALLOWED_ORIGIN}" in opened[0], log
    conn = re.search(r"opened (#\d+) wss 127\.0\.0\.1:\d+->", opened[0]).group(1)
    closed = wait_log(sipws_wss["log"], rf"closed {conn} wss .* code=1000 side=remote reason=page done$")
    assert len(closed) == 1, sipws_wss["log"].read_text(errors="replace")


def test_chromium_page_from_a_foreign_origin_is_refused_and_logged(netns, sipws_wss, tmp_path):
    page, _ = browse(netns, tmp_path, sipws_wss, {"name": "foreign", "origin": OTHER_ORIGIN, "sip": False})
    # Page scripts see only error + 1006; the status shows in the browser's console.
    assert page["opened"] is False and page["events"] == ["error", "close"], page
    assert page["closed"]["code"] == 1006, page
    assert any("403" in message for message in page["console"]), page["console"]
    # One line for the refusal, with the source address (what fail2ban reads).
    refused = wait_log(sipws_wss["log"], r"handshake refused from 127\.0\.0\.1:\d+ status=403 ")
    assert len(refused) == 1, sipws_wss["log"].read_text(errors="replace")
    assert f"origin '{OTHER_ORIGIN}' not allowed" in refused[0], refused
    log = sipws_wss["log"].read_text(errors="replace")
    assert " opened #" not in log, log
