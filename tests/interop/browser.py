"""Shared by the real-browser tests (test_browser_wss.py, test_browser_msrp.py,
test_browser_phone.py, test_browser_compression.py).

A loopback-only network namespace (WebRTC and Chromium's background work would
otherwise reach every interface of the machine), sipws started by twistd inside
it, the Node drivers in tests/interop/js/, and bounded waits on log files.
Every process is stopped by its own pid.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certs import CertificateAuthority
from tests.conftest import require_peer
from tests.integration.example_files import REPO, TWISTD, dump_toml, free_port

JS_DIR = Path(__file__).parent / "js"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_WAIT = 5.0
#: Bound on each wait inside the browser (launch, page load, open, answer, close).
BROWSER_WAIT_MS = 10_000
#: Bound on a whole one-shot Node driver (browser launch, its pages, browser close).
DRIVER_TIMEOUT = 45.0


def spki_hash(cert_path: str) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): what --ignore-certificate-errors-spki-list takes."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def stop(process: subprocess.Popen | None) -> int | None:
    """SIGTERM by pid, then SIGKILL after STOP_TIMEOUT; the exit status."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    return process.returncode


class LoopbackNamespace:
    """A network namespace with only ``lo`` (up), held open by a sleeping process.

    Commands run in it through ``nsenter --net``, which enters the namespace and
    execs the command (no fork), so each Popen's pid is the command's own pid.
    """

    def __init__(self) -> None:
        self.unshare = require_peer("unshare", "Debian package util-linux")
        self.nsenter = require_peer("nsenter", "Debian package util-linux")
        self.ip = require_peer("ip", "Debian package iproute2")
        self.holder: subprocess.Popen | None = None

    def start(self) -> None:
        self.holder = subprocess.Popen([self.unshare, "--net", "--", "sleep", "infinity"],
                                       stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        # unshare execs sleep once the namespace exists: wait until the pid's netns differs from ours
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert self.holder.poll() is None, "unshare -n failed (needs root)"
            assert time.monotonic() < deadline, "unshare -n did not create a namespace"
            time.sleep(0.02)
        subprocess.run(self.wrap([self.ip, "link", "set", "lo", "up"]), check=True, timeout=10)
        links = subprocess.run(self.wrap([self.ip, "-o", "link"]), check=True, capture_output=True,
                               timeout=10, text=True).stdout.splitlines()
        assert len(links) == 1 and ": lo:" in links[0], links

    def wrap(self, argv: list[str]) -> list[str]:
        assert self.holder is not None
        return [self.nsenter, f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]

    def stop(self) -> None:
        stop(self.holder)


@pytest.fixture
def netns():
    namespace = LoopbackNamespace()
    namespace.start()
    yield namespace
    namespace.stop()


def wait_log(path: Path, pattern: str, timeout: float = LOG_WAIT) -> list[str]:
    """Log lines matching the regex, once at least one does (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text(errors="replace").splitlines() if re.search(pattern, line)]
        if lines or time.monotonic() >= deadline:
            return lines
        time.sleep(0.1)


class Sipws:
    """sipws started by twistd inside the namespace, its log in a file.

    The test runs outside the namespace, so readiness is the log's "listening"
    lines, not a connect.
    """

    def __init__(self, netns: LoopbackNamespace, run_dir: Path, config: dict[str, Any]) -> None:
        self.netns = netns
        self.run_dir = run_dir
        self.config = config
        self.log_path = run_dir / "sipws.log"
        self.process: subprocess.Popen | None = None
        self.status: int | None = None

    def start(self, listening: list[str]) -> "Sipws":
        """Starts and waits for each ``listening KIND on HOST:PORT`` line in ``listening``."""
        path = self.run_dir / "sipws.toml"
        path.write_text(dump_toml(self.config))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.netns.wrap([TWISTD, "-n", "--pidfile=", "sipws", "--config", str(path)]),
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not all(f"listening {what}" in self.log() for what in listening):
            assert self.process.poll() is None, f"sipws exited: {self.log()}"
            assert time.monotonic() < deadline, f"sipws did not listen: {self.log()}"
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str) -> Any:
        """``sipws-ctl --json ARGS`` inside the namespace, its JSON answer."""
        ctl = str(Path(TWISTD).with_name("sipws-ctl"))
        admin = self.config["admin"]["listen"]
        port = re.search(r"tcp:(\d+)", admin).group(1)
        result = subprocess.run(self.netns.wrap([ctl, "--url", f"http://127.0.0.1:{port}/rpc", "--json", *args]),
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def stop(self) -> int | None:
        self.status = stop(self.process)
        return self.status


@contextlib.contextmanager
def sipws_on_wss(netns: LoopbackNamespace, run_dir: Path, allowed_origin: str,
                 subprotocols: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """sipws (twistd) in the namespace: wss on 127.0.0.1 with a certificate from a fresh
    test CA, no ws listener, an upstream UDP port with nothing behind it, admin off.
    Yields {"process", "log", "port", "cert"}; at exit it is stopped by its pid
    ("status" is its exit status), which must be clean: exit 0 or SIGTERM, no traceback."""
    ca = CertificateAuthority(run_dir / "pki")
    server = ca.issue("server", ["127.0.0.1", "localhost"])
    # Ports are chosen outside the namespace; inside it every port is free.
    wss_port, sip_port, dead_port = free_port(), free_port(), free_port()
    wss: dict[str, Any] = {"listen": [f"127.0.0.1:{wss_port}"], "certificate": server.cert,
                           "private_key": server.key}
    if subprotocols is not None:
        wss["subprotocols"] = subprotocols
    config = {
        "ws": {"listen": []},
        "wss": wss,
        "http": {"allowed_origins": [allowed_origin]},
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"], "upstream": f"sip:127.0.0.1:{dead_port};transport=udp"},
        "admin": {"listen": ""},
    }
    sipws = Sipws(netns, run_dir, config)
    info: dict[str, Any] = {"process": None, "log": sipws.log_path, "port": wss_port, "cert": server.cert}
    try:
        sipws.start([f"wss on 127.0.0.1:{wss_port}"])
        info["process"] = sipws.process
        yield info
    finally:
        info["status"] = sipws.stop()
    assert info["status"] in (0, -signal.SIGTERM), sipws.log()[-3000:]
    assert "Traceback" not in sipws.log()


def kill_browser(pid: int | None) -> None:
    """puppeteer starts Chromium detached: its own process group, led by the pid it printed."""
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_driver(netns: LoopbackNamespace, run_dir: Path, script: str, config: dict[str, Any]) -> list[dict]:
    """A one-shot Node driver (tests/interop/js/SCRIPT) in the namespace, given ``config``
    plus the Chromium binary, a profile directory under ``run_dir`` and BROWSER_WAIT_MS.
    Its JSON lines, the last of which must be {"done": true}; past DRIVER_TIMEOUT the
    driver and the browser are killed and the test fails."""
    chromium = require_peer("chromium", "Debian package chromium")
    node = require_peer("node", "Debian package nodejs")
    if not (JS_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("puppeteer-core is not installed in tests/interop/js; `make test` installs it")
    config = {"chromium": chromium, "userDataDir": str(run_dir / "chromium-profile"),
              "timeoutMs": BROWSER_WAIT_MS, **config}
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", HOME=str(run_dir))
    driver = subprocess.Popen(netns.wrap([node, str(JS_DIR / script), json.dumps(config)]), cwd=JS_DIR, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = driver.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate(timeout=STOP_TIMEOUT)
        for line in out.decode().splitlines():
            if '"browserPid"' in line:
                kill_browser(json.loads(line)["browserPid"])
        pytest.fail(f"browser driver timed out after {DRIVER_TIMEOUT}s: {out.decode()} {err.decode()[-3000:]}")
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert driver.returncode == 0 and lines and lines[-1] == {"done": True}, (out.decode(), err.decode()[-3000:])
    return lines


class BrowserDriver:
    """tests/interop/js/browser_phone.mjs in the namespace: commands in, answers out.

    Each command has its own bound; a driver that does not answer in time fails
    the test, and the browser's process group is killed at the end if still there.
    """

    def __init__(self, netns: LoopbackNamespace, run_dir: Path, spki: str = "", step_ms: int = 10_000) -> None:
        self.netns = netns
        self.run_dir = run_dir
        self.spki = spki
        self.step_ms = step_ms
        self.process: subprocess.Popen | None = None
        self.answers: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.browser: dict[str, Any] = {}
        self.stderr = run_dir / "browser_driver.err"
        self.next_id = 0

    def start(self) -> "BrowserDriver":
        chromium = require_peer("chromium", "Debian package chromium")
        node = require_peer("node", "Debian package nodejs")
        if not (JS_DIR / "node_modules" / "puppeteer-core").is_dir():
            pytest.fail("puppeteer-core is not installed in tests/interop/js; `make test` installs it")
        config = {"chromium": chromium, "userDataDir": str(self.run_dir / "chromium-profile"),
                  "spki": self.spki, "timeoutMs": self.step_ms}
        env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", HOME=str(self.run_dir))
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(self.netns.wrap([node, str(JS_DIR / "browser_phone.mjs"), json.dumps(config)]),
                                            cwd=JS_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=err)
        threading.Thread(target=self._read, daemon=True).start()
        self.browser = self._next(START_TIMEOUT + self.step_ms / 1000)
        assert self.browser.get("browser", "").startswith("Chrome/"), self.browser
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith("{"):
                self.answers.put(json.loads(text))

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"browser driver silent for {timeout}s; stderr: {self.stderr_text()}") from None

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""

    def command(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        """One command; its result, or AssertionError with the driver's error."""
        assert self.process is not None and self.process.stdin is not None
        self.next_id += 1
        ident = self.next_id
        self.process.stdin.write((json.dumps({"id": ident, "cmd": cmd, **args}) + "\n").encode())
        self.process.stdin.flush()
        bound = (timeout if timeout is not None else self.step_ms / 1000) + 5.0  # the driver answers first
        while True:
            answer = self._next(bound)
            if answer.get("id") == ident:
                break
        if not answer["ok"]:
            raise AssertionError(f"browser {cmd} {args}: {answer['error']}")
        return answer["result"]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.command("quit", timeout=5.0)
                self.process.wait(STOP_TIMEOUT)
            except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired):
                pass
        stop(self.process)
        kill_browser(self.browser.get("browserPid"))
