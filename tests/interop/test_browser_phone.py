"""The example phone page (examples/phone) in a real browser (issue 12, "Real-browser tests").

Headless Chromium from Debian, driven by puppeteer-core
(tests/interop/js/browser_phone.mjs), loads examples/phone from sipws itself
(``[http] document_root``) and is used as a person would use it: fields typed
into, buttons clicked, the state read back from what the page shows
(``window.phone`` and its ``data-*`` attributes).  The page is SIP.js 0.21 from
npm (``make phone-deps``).

Everything runs inside a private network namespace whose only interface is
loopback (WebRTC gathers candidates on every interface): sipws (twistd),
Kamailio, sipp, a STUN responder and the browser, each entered with nsenter and
stopped by its pid.  The browser trusts the test certificate by its SPKI hash
only, and gets fake audio devices.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.certs import CertificateAuthority
from tests.conftest import require_peer
from tests.integration.example_files import REPO
from tests.interop import peers
from tests.interop.browser import BrowserDriver, LoopbackNamespace, Sipws, netns, spki_hash, stop, wait_log  # noqa: F401
from tests.interop.peers import KamailioCore, Sipp, free_port

pytestmark = pytest.mark.interop

PHONE_DIR = REPO / "examples" / "phone"
HERE = Path(__file__).parent
#: Bound on one browser step (page load, a click, a wait for a state).
STEP_MS = 10_000
#: Keep-alive timeout for the Ping test: several rounds fit in a few seconds.
KEEPALIVE_TIMEOUT = 2.0
#: Seconds between keep-alive sweeps (the default 1 s would stretch each round to ~3 s).
KEEPALIVE_SWEEP = 0.25
#: Idle time the Ping test waits: room for three Ping rounds per connection.  A round is
#: the timeout plus up to a sweep and the keep-alive wheel's slot (measured 2.2-2.3 s), so
#: 3.5 x timeout (7 s) left three rounds under 0.5 s of slack and saw two in a loaded CI run.
KEEPALIVE_IDLE = 4.5 * KEEPALIVE_TIMEOUT
#: How long inbound RTP is sampled for growth.
RTP_SAMPLE_GAP = 1.5
SIPP_WAIT = 30.0

# Page-side snippets (expressions evaluated in the page).
SNAPSHOT = """(() => { const p = window.phone; return {
  state: p.state, registered: p.registered, registration: p.registration, error: p.registrationError,
  messages: p.messages, call: p.call, ice: p.pc && p.pc.iceConnectionState,
  signaling: p.pc && p.pc.signalingState, data: {...document.body.dataset}, log: p.log.slice(-25) }; })()"""
INBOUND_RTP = """(async () => { const pc = window.phone.pc; if (!pc) return null; let n = null;
  (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") n = r.packetsReceived; });
  return n; })()"""
OUTBOUND_RTP = INBOUND_RTP.replace("inbound-rtp", "outbound-rtp").replace("packetsReceived", "packetsSent")


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def browser(netns, tmp_path, request):
    """The driver; on failure the pages' state and console are printed."""
    spki = getattr(request, "param", "")
    driver = BrowserDriver(netns, tmp_path, spki=spki, step_ms=STEP_MS)
    yield driver
    driver.stop()


@pytest.fixture
def standalone(netns, tmp_path):
    """sipws in standalone mode: ws and wss, the phone page served on both, only
    its own two origins allowed, Pings after KEEPALIVE_TIMEOUT idle seconds."""
    require_phone_page()
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", ["127.0.0.1", "localhost"])
    ws_port, wss_port, sip_port, admin_port = free_port(), free_port(), free_port(), free_port()
    config = {
        "ws": {"listen": [f"127.0.0.1:{ws_port}"]},
        "wss": {"listen": [f"127.0.0.1:{wss_port}"], "certificate": server.cert, "private_key": server.key},
        "http": {"allowed_origins": [f"http://127.0.0.1:{ws_port}", f"https://127.0.0.1:{wss_port}"],
                 "document_root": str(PHONE_DIR)},
        "keepalive": {"mechanism": "ping", "timeout": KEEPALIVE_TIMEOUT, "interval": KEEPALIVE_SWEEP},
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"]},
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
    }
    sipws = Sipws(netns, tmp_path, config)
    sipws.ws = f"http://127.0.0.1:{ws_port}"
    sipws.wss = f"https://127.0.0.1:{wss_port}"
    sipws.spki = spki_hash(server.cert)
    sipws.cert_files = (server.cert, server.key)
    try:
        sipws.start([f"ws on 127.0.0.1:{ws_port}", f"wss on 127.0.0.1:{wss_port}"])
        yield sipws
    finally:
        status = sipws.stop()
        print(sipws.log()[-6000:])
    check_clean_exit(sipws, status)


def require_phone_page() -> None:
    if not (PHONE_DIR / "node_modules" / "sip.js" / "lib" / "index.js").is_file():
        pytest.fail("SIP.js is not installed in examples/phone; `make test` (phone-deps) installs it")


def check_clean_exit(sipws: Sipws, status: int | None) -> None:
    log = sipws.log()
    assert status in (0, -15), log[-3000:]
    assert "Traceback" not in log, log


# ---------------------------------------------------------------- page helpers


class Phone:
    """One tab with the phone page."""

    def __init__(self, browser: BrowserDriver, name: str, url: str) -> None:
        self.browser = browser
        self.name = name
        self.opened = browser.command("open", page=name, url=url)

    def snapshot(self) -> dict[str, Any]:
        return self.browser.command("eval", page=self.name, expr=SNAPSHOT)

    def wait(self, expr: str, what: str, timeout_ms: int = STEP_MS) -> Any:
        """Waits for a page expression to be truthy; on timeout, fails with the page's state."""
        try:
            return self.browser.command("wait", page=self.name, expr=expr, timeoutMs=timeout_ms,
                                        timeout=timeout_ms / 1000)
        except AssertionError as error:
            raise AssertionError(f"{self.name}: {what}: {error}\n{json.dumps(self.snapshot(), indent=1)}\n"
                                 f"console: {self.console()[-30:]}") from None

    def console(self) -> list[str]:
        return self.browser.command("console", page=self.name)

    def click(self, element: str) -> None:
        self.browser.command("click", page=self.name, element=element)

    def fill(self, **values: str) -> None:
        self.browser.command("fill", page=self.name, values=values)

    def eval(self, expr: str) -> Any:
        return self.browser.command("eval", page=self.name, expr=expr)

    def register(self) -> None:
        self.click("register")
        self.wait("window.phone.registered && document.body.dataset.registration === 'registered'", "registered")

    def message(self, target: str, text: str) -> None:
        self.fill(target=target, text=text)
        self.click("send")

    def call_state(self, state: str, what: str = "", timeout_ms: int = STEP_MS) -> None:
        self.wait(f"window.phone.call.state === {json.dumps(state)} && document.body.dataset.call === {json.dumps(state)}",
                  what or f"call {state}", timeout_ms)


def open_pair(browser: BrowserDriver, base: str, users=("alice", "bob"), domain: str = "") -> list[Phone]:
    phones = []
    for user in users:
        query = f"?user={user}" + (f"&domain={domain}" if domain else "")
        phone = Phone(browser, user, f"{base}/{query}")
        assert phone.opened["origin"] == base and phone.opened["secureContext"] is True, phone.opened
        # The page's defaults: the WebSocket on its own host, scheme matching the page's.
        server = phone.eval("document.getElementById('server').value")
        assert server == base.replace("http", "ws", 1) + "/", server
        phone.register()
        phones.append(phone)
    return phones


def exchange_messages(alice: Phone, bob: Phone, text: str) -> None:
    alice.message("bob", text)
    got = bob.wait(f"window.phone.messages.find((m) => m.direction === 'in' && m.body === {json.dumps(text)})",
                   "the MESSAGE arrives")
    assert got["peer"].startswith("sip:alice@"), got
    sent = alice.wait("window.phone.messages.find((m) => m.direction === 'out' && m.status !== 'sending')",
                      "the MESSAGE is answered")
    assert sent["status"] == "200 OK", sent


def registered_connections(sipws: Sipws) -> dict[str, int]:
    """AOR user -> connection id, from registrar.dump."""
    bindings = sipws.ctl("registrar.dump")["bindings"]
    return {re.match(r"sips?:([^@]+)@", b["aor"]).group(1): b["conn_id"] for b in bindings}


# ---------------------------------------------------------------- standalone


@pytest.mark.parametrize("scheme", ["wss", "ws"])
def test_two_pages_register_and_exchange_messages(standalone, browser, scheme):
    browser.spki = standalone.spki
    browser.start()
    base = getattr(standalone, scheme)
    alice, bob = open_pair(browser, base)
    exchange_messages(alice, bob, f"hello bob over {scheme}")
    # sipws: both connections opened with the page's origin over the scheme asked for.
    opened = wait_log(standalone.log_path, rf" opened #\d+ {scheme} .* origin={re.escape(base)} identity=-$")
    assert len(opened) == 2, standalone.log()
    users = registered_connections(standalone)
    assert set(users) == {"alice", "bob"}, users


def test_audio_call_between_two_pages(standalone, browser):
    browser.spki = standalone.spki
    browser.start()
    # alice over wss, bob over ws: the call crosses both listeners.
    alice = open_pair(browser, standalone.wss, ("alice",))[0]
    bob = open_pair(browser, standalone.ws, ("bob",))[0]
    alice.fill(target="bob")
    alice.click("call")
    bob.call_state("incoming", "the INVITE reaches bob")
    bob.click("answer")
    for phone in (alice, bob):
        phone.call_state("established")
        ice = phone.wait("['connected', 'completed'].includes(window.phone.pc && window.phone.pc.iceConnectionState)"
                         " && window.phone.pc.iceConnectionState", "ICE connected")
        assert ice in ("connected", "completed")
    # The callee's inbound RTP from the caller's fake microphone grows.
    first = bob.wait(f"({INBOUND_RTP}).then((n) => n > 0 && n)", "first inbound RTP")
    time.sleep(RTP_SAMPLE_GAP)
    second = bob.eval(INBOUND_RTP)
    assert second > first, (first, second)
    assert alice.eval(INBOUND_RTP) > 0  # both ways
    alice.click("hangup")
    for phone, side in ((alice, "local"), (bob, "remote")):
        phone.call_state("ended", "hang up ends the call")
        assert phone.snapshot()["call"]["endedBy"] == side
        assert phone.eval("window.phone.pc.signalingState") == "closed"


# ---------------------------------------------------------------- relay to Kamailio


class InNamespace:
    """Stands for the ``subprocess`` module inside tests.interop.peers: the peers'
    own start() (Kamailio, sipp) runs unchanged, their Popen entered into the
    namespace with nsenter (which execs: the pid is still the peer's own).
    kamcmd talks over a unix socket, which works across network namespaces."""

    def __init__(self, netns: LoopbackNamespace) -> None:
        self.netns = netns

    def Popen(self, argv, *args, **kwargs):  # noqa: N802 (subprocess's name)
        return subprocess.Popen(self.netns.wrap(list(argv)), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


STUN_PASSWORD = "sipwsStunLitePassword2024"  # a=ice-pwd in sipp/uas_webrtc.xml


def test_page_calls_sipp_through_sipws_and_kamailio(netns, browser, tmp_path, monkeypatch):
    """Relay mode: page -ws-> sipws -udp-> Kamailio (registrar with Path, record-routing
    proxy) -udp-> sipp UAS.  The page registers through sipws to Kamailio, calls a user
    Kamailio does not know (relayed to sipp), sipp answers, the page hangs up.

    Media, one-sided: sipp's SDP names an ICE-lite STUN responder; the browser's ICE
    reaches connected toward it.  sipp does no DTLS, so no RTP flows."""
    require_phone_page()
    monkeypatch.setattr(peers, "subprocess", InNamespace(netns))
    started: list[Any] = []
    sipws = None
    try:
        stun_port, callee_port = free_port(), free_port()
        with open(tmp_path / "stun.log", "wb") as out:
            stun = subprocess.Popen(netns.wrap([sys.executable, "-m", "tests.interop.stun_lite", str(stun_port),
                                                STUN_PASSWORD]),
                                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(stun)
        callee = Sipp("uas_webrtc.xml", callee_port, args=["-m", "1", "-key", "stunport", str(stun_port)],
                      run_dir=tmp_path).start()
        started.append(callee)
        kamailio = KamailioCore(tmp_path, free_port(), upstream=f"sip:127.0.0.1:{callee_port};transport=udp")
        started.append(kamailio)
        kamailio.start()
        ws_port, sip_port = free_port(), free_port()
        sipws = Sipws(netns, tmp_path, {
            "ws": {"listen": [f"127.0.0.1:{ws_port}"]},
            "http": {"allowed_origins": [f"http://127.0.0.1:{ws_port}"], "document_root": str(PHONE_DIR)},
            "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"],
                    "upstream": f"sip:127.0.0.1:{kamailio.port};transport=udp"},
            "admin": {"listen": ""},
        })
        started.append(sipws)
        sipws.start([f"ws on 127.0.0.1:{ws_port}"])
        assert f"relay mode: WebSocket clients' requests go to [sip] upstream sip:127.0.0.1:{kamailio.port}" in sipws.log()

        browser.start()
        (alice,) = open_pair(browser, f"http://127.0.0.1:{ws_port}", ("alice",), domain="example.com")
        # Kamailio holds the binding, with the Path through sipws's SIP socket.
        dump = kamailio.kamcmd("ul.dump")
        assert "alice" in dump and f"127.0.0.1:{sip_port}" in dump and "Path" in dump, dump

        alice.fill(target="carol")
        alice.click("call")
        alice.call_state("established", "sipp's 200 OK accepted")
        ice = alice.wait("['connected', 'completed'].includes(window.phone.pc.iceConnectionState)"
                         " && window.phone.pc.iceConnectionState", "ICE connected to the STUN-lite callee")
        assert ice in ("connected", "completed")
        remote = alice.eval("window.phone.pc.remoteDescription.sdp")
        assert f"m=audio {stun_port} UDP/TLS/RTP/SAVPF" in remote, remote
        checks = [json.loads(line) for line in (tmp_path / "stun.log").read_text().splitlines()
                  if line.startswith('{"binding"')]
        assert checks and all(c["username"].startswith("sippuas:") for c in checks), checks

        alice.click("hangup")
        alice.call_state("ended", "BYE answered by sipp")
        assert alice.snapshot()["call"]["endedBy"] == "local"
        code = callee.wait(SIPP_WAIT)
        assert code == 0, callee.messages()[-3000:]
        messages = callee.messages()
        assert "INVITE sip:carol@example.com" in messages and "BYE sip:" in messages, messages[-3000:]
        # The INVITE came through sipws (its Record-Route) and Kamailio.
        assert f"127.0.0.1:{sip_port}" in messages, messages[-3000:]
    finally:
        for peer in reversed(started):
            if isinstance(peer, subprocess.Popen):
                stop(peer)
            else:
                peer.stop()
        if sipws is not None:
            print(sipws.log()[-6000:])
    check_clean_exit(sipws, sipws.status)


# ---------------------------------------------------------------- origins, keep-alive, handshake


def test_page_from_an_origin_not_allowed_cannot_connect(standalone, browser):
    """The same page and server, reached as http://localhost:PORT: an origin that
    [http] allowed_origins does not list.  Files are served (a GET carries no
    Origin check); the WebSocket handshake is refused and logged with its source."""
    browser.start()
    foreign = standalone.ws.replace("127.0.0.1", "localhost")
    page = Phone(browser, "mallory", f"{foreign}/?user=mallory")
    assert page.opened["origin"] == foreign, page.opened
    page.click("register")
    page.wait("window.phone.registration === 'failed' && document.body.dataset.transport === 'disconnected'",
              "the connection is refused")
    assert "cannot connect" in page.snapshot()["error"]
    refused = wait_log(standalone.log_path, r"handshake refused from 127\.0\.0\.1:\d+ status=403 ")
    assert refused and all(f"origin '{foreign}' not allowed" in line for line in refused), standalone.log()[-3000:]
    assert " opened #" not in standalone.log()
    assert any("403" in line for line in page.console()), page.console()


def test_browser_answers_pings_and_keeps_its_connection(standalone, browser):
    """[keepalive] timeout = KEEPALIVE_TIMEOUT: sipws Pings each idle connection; the
    browser answers by itself (page scripts never see Pings), and a Pong is the only
    traffic of an idle SIP.js page, so each drop of ws.dump's `idle` is one Pong."""
    browser.spki = standalone.spki
    browser.start()
    alice, bob = open_pair(browser, standalone.wss)
    connections = registered_connections(standalone)
    frames_before = standalone.ctl("stats")["counters"]["ws.frames_in"]
    pongs = {user: 0 for user in connections}
    last_idle: dict[str, float] = {}
    most_idle = 0.0
    deadline = time.monotonic() + KEEPALIVE_IDLE
    while time.monotonic() < deadline:
        dump = {c["id"]: c for c in standalone.ctl("ws.dump")["connections"]}
        for user, conn_id in connections.items():
            record = dump.get(conn_id)
            assert record is not None and record["state"] == "open", (user, dump)
            if user in last_idle and record["idle"] < last_idle[user]:
                pongs[user] += 1
            last_idle[user] = record["idle"]
            most_idle = max(most_idle, record["idle"])
        time.sleep(0.3)
    assert all(count >= 3 for count in pongs.values()), pongs
    # Never close to the 2 x timeout after which an unanswered Ping closes the connection.
    assert most_idle < 1.6 * KEEPALIVE_TIMEOUT, most_idle
    counters = standalone.ctl("stats")["counters"]
    assert counters["ws.keepalive_timeouts"] == 0, counters
    assert counters["ws.frames_in"] - frames_before >= sum(pongs.values()), counters
    assert "keep-alive timeout" not in standalone.log()
    # The same connections still carry SIP.
    exchange_messages(alice, bob, "still there after the pings")
    assert registered_connections(standalone) == connections
    assert len(wait_log(standalone.log_path, r" opened #")) == 2
    print("pongs seen:", pongs, "largest idle:", most_idle)


CAPTURE = r"""
import json, socket, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port)); server.listen(4)
context = None
if cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
print(json.dumps({"listening": port}), flush=True)
while True:
    conn, _ = server.accept()
    try:
        if context:
            conn = context.wrap_socket(conn, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        print(json.dumps({"head": head.decode("latin-1"), "alpn": conn.selected_alpn_protocol() if context else None}), flush=True)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    except OSError as error:
        print(json.dumps({"error": str(error)}), flush=True)
    finally:
        conn.close()
"""


def test_what_chromium_sends_in_its_handshake(standalone, browser, netns, tmp_path):
    """The phone page opens its WebSocket to a raw listener (one plain, one TLS with
    the test certificate) that records the request head: docs/websocket.md,
    "What Chromium sends"."""
    browser.spki = standalone.spki
    browser.start()
    heads = {}
    listeners = []
    try:
        for scheme, base in (("ws", standalone.ws), ("wss", standalone.wss)):
            port = free_port()
            log = tmp_path / f"capture-{scheme}.log"
            cert, key = standalone.cert_files if scheme == "wss" else ("", "")
            with open(log, "wb") as out:
                listeners.append(subprocess.Popen(netns.wrap([sys.executable, "-c", CAPTURE, str(port), cert, key]),
                                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            assert wait_log(log, r'"listening"'), log.read_text()
            page = Phone(browser, scheme, f"{base}/?user=carol")
            page.fill(server=f"{scheme}://127.0.0.1:{port}/")
            page.click("register")
            page.wait("window.phone.registration === 'failed'", "the raw listener answers 503")
            lines = wait_log(log, r'"head"')
            assert lines, log.read_text()
            heads[scheme] = json.loads(lines[0])
            heads[scheme]["origin"] = base
    finally:
        for listener in listeners:
            stop(listener)
    print(json.dumps(heads, indent=1))
    for scheme, seen in heads.items():
        head = seen["head"]
        assert head.startswith("GET / HTTP/1.1\r\n"), head
        headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
                   for line in head.split("\r\n")[1:] if ":" in line}
        assert headers["upgrade"] == "websocket" and headers["sec-websocket-version"] == "13", headers
        assert headers["sec-websocket-protocol"] == "sip", headers
        assert headers["sec-websocket-extensions"] == "permessage-deflate; client_max_window_bits", headers
        assert headers["origin"] == seen["origin"], headers
        assert "Chrome/" in headers["user-agent"], headers
    assert heads["wss"]["alpn"] == "http/1.1", heads["wss"]
