"""A real browser speaks MSRP over WebSocket (RFC 7977) through sipws.

Headless Chromium (Debian) driven by puppeteer-core (tests/interop/js/browser_msrp.mjs):
a page from a secure origin opens two ``wss://`` WebSockets with the ``msrp``
subprotocol to a sipws started by twistd, AUTHs both, and sends a text chunk with a
success report and a binary chunk from one to the other.  Browser and sipws run in a
loopback-only network namespace, as in test_browser_wss.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.interop.browser import (  # noqa: F401 (netns: fixture)
    LoopbackNamespace, netns, run_driver, sipws_on_wss, spki_hash,
)

ORIGIN = "https://chat.sipws.test"


@pytest.fixture
def sipws_msrp(tmp_path, netns):
    with sipws_on_wss(netns, tmp_path, ORIGIN, subprotocols=["sip", "msrp"]) as sipws:
        yield sipws


def run_msrp_driver(netns: LoopbackNamespace, tmp_path: Path, sipws: dict) -> list[dict]:
    return run_driver(netns, tmp_path, "browser_msrp.mjs",
                      {"spki": spki_hash(sipws["cert"]), "wssUrl": f"wss://127.0.0.1:{sipws['port']}/",
                       "origin": ORIGIN})


def test_chromium_exchanges_msrp_over_wss_through_sipws(netns, sipws_msrp, tmp_path):
    lines = run_msrp_driver(netns, tmp_path, sipws_msrp)
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
