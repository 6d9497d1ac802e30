"""permessage-deflate with a real browser (issue 14, "Compression, measured").

Headless Chromium from Debian (puppeteer-core, tests/interop/js/browser_phone.mjs)
loads the example phone page (SIP.js 0.21) from sipws in standalone mode and opens
ws:// to it, as test_browser_phone.py does.  Chromium always offers
``permessage-deflate; client_max_window_bits``: with ``[ws] compression = true``
sipws accepts it with its bounded parameters, and two pages register and exchange
a MESSAGE through compressed frames both ways; with compression off the 101
carries no extension.  What was negotiated is read from ``ws.dump`` (the
connection's ``extensions``), and that the frames really were compressed from the
``ws.deflate_*`` counters of ``stats``.

Browser and sipws run inside a loopback-only network namespace (tests/interop/browser.py).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.example_files import REPO
from tests.interop.browser import BrowserDriver, Sipws, netns  # noqa: F401 (netns: fixture)
from tests.interop.peers import free_port
from tests.interop.test_browser_phone import STEP_MS, check_clean_exit, exchange_messages, open_pair, require_phone_page

pytestmark = pytest.mark.interop

PHONE_DIR = REPO / "examples" / "phone"
#: sipws's answer to Chromium's offer with the default bounds.
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"


@pytest.fixture
def browser(netns, tmp_path):
    driver = BrowserDriver(netns, tmp_path, step_ms=STEP_MS)
    yield driver
    driver.stop()


@pytest.mark.parametrize("compression", [True, False], ids=["on", "off"])
def test_chromium_negotiates_permessage_deflate_only_when_on(netns, browser, tmp_path, compression):
    require_phone_page()
    ws_port, sip_port, admin_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{ws_port}"
    sipws = Sipws(netns, tmp_path, {
        "ws": {"listen": [f"127.0.0.1:{ws_port}"], "compression": compression},
        "http": {"allowed_origins": [base], "document_root": str(PHONE_DIR)},
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"]},
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
    })
    try:
        sipws.start([f"ws on 127.0.0.1:{ws_port}"])
        browser.start()
        alice, bob = open_pair(browser, base)
        exchange_messages(alice, bob, "hello bob, compressed" if compression else "hello bob")
        pages = [c for c in sipws.ctl("ws.dump")["connections"] if c["state"] == "open"]
        counters = sipws.ctl("stats")["counters"]
    finally:
        status = sipws.stop()
        print(sipws.log()[-6000:])
    check_clean_exit(sipws, status)
    print(json.dumps({"pages": pages, "counters": counters}, indent=1))
    assert len(pages) == 2 and all("Chrome/" in page["user_agent"] for page in pages), pages
    deflated = {name: value for name, value in counters.items() if name.startswith("ws.deflate_")}
    if compression:
        assert [page["extensions"] for page in pages] == [ANSWER, ANSWER], pages
        # Every message of both pages went compressed both ways: two REGISTERs, a MESSAGE
        # in and its 200 back, each way at least.
        assert counters["ws.messages_in"] >= 3, counters
        assert deflated["ws.deflate_messages_in"] >= counters["ws.messages_in"], counters
        assert deflated["ws.deflate_messages_out"] >= 3, counters
        assert deflated["ws.deflate_wire_bytes_in"] < deflated["ws.deflate_raw_bytes_in"], counters
        assert deflated["ws.deflate_wire_bytes_out"] < deflated["ws.deflate_raw_bytes_out"], counters
    else:
        assert [page["extensions"] for page in pages] == ["", ""], pages
        assert deflated == {}, counters
