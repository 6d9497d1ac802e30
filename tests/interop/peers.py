"""Third-party peers for the relay interop tests: Kamailio as the SIP core,
sipp as caller and callee, JsSIP (in Node) as the browser.

Each peer runs as a subprocess with its own files under the test's tmp_path,
on 127.0.0.1, and is stopped by its pid.  Waits are bounded.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import require_peer
from tests.processes import stop_process  # noqa: F401 - the interop tests import it from here

HERE = Path(__file__).parent
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
EVENT_TIMEOUT = 15.0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
            try:
                with socket.socket(socket.AF_INET, other) as second:
                    second.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


# ------------------------------------------------------------------ Kamailio


@dataclass
class KamailioCore:
    """Kamailio 5.6 as registrar (with Path) and record-routing proxy on UDP."""

    run_dir: Path
    port: int
    upstream: str = ""
    advertise_port: int = 0
    #: The configuration file; the default is the relay tests' fixture.  Any
    #: other file gets the same -A defines (it may ignore those it does not use).
    config: Path = HERE / "kamailio_core" / "kamailio.cfg"
    #: More ``-A NAME=VALUE`` defines for another configuration file.
    defines: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def ctl(self) -> str:
        return f"unix:{self.run_dir}/kamailio_ctl"

    def start(self) -> None:
        binary = require_peer("kamailio", "Debian package kamailio")
        args = [
            binary, "-f", str(self.config), "-DD", "-E", "-Y", str(self.run_dir),
            "-P", str(self.run_dir / "kamailio.pid"), "-w", str(self.run_dir), "-m", "64", "-M", "8",
            "-A", f"SIP_PORT={self.port}", "-A", f'CTL_SOCK="{self.ctl}"', "-A", f'MPATH="{MODULES}"',
        ]
        if self.upstream:
            args += ["-A", f'UPSTREAM="{self.upstream}"']
        if self.advertise_port:
            args += ["-A", f"ADVERTISE_PORT={self.advertise_port}"]
        for define in self.defines:
            args += ["-A", define]
        self.log = open(self.run_dir / "kamailio.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kamailio exited: {self.log_text()}")
            if "ok" in self.kamcmd("core.version").lower() or "kamailio" in self.kamcmd("core.version").lower():
                return
            time.sleep(0.2)
        raise AssertionError(f"kamailio did not start: {self.log_text()}")

    def kamcmd(self, *command: str) -> str:
        binary = require_peer("kamcmd", "Debian package kamailio")
        try:
            result = subprocess.run([binary, "-s", self.ctl, *command], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout.decode() + result.stderr.decode()

    def stop(self) -> None:
        stop_process(self.process)

    def log_text(self) -> str:
        try:
            return (self.run_dir / "kamailio.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


# ------------------------------------------------------------------ JsSIP


@dataclass
class JsSipUa:
    """A JsSIP UA in Node (tests/interop/js/ua.js), commands in, events out;
    ``script="sipjs_ua.mjs"`` runs a SIP.js UA with the same protocol."""

    ws_url: str
    uri: str
    answer: str = "auto"
    script: str = "ua.js"
    #: More command-line options for the script (ua.js: --local, --sockets, --recovery, --autoregister…).
    args: list[str] = field(default_factory=list)
    #: Extra environment for Node (e.g. NODE_EXTRA_CA_CERTS for a test CA).
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    events: "queue.Queue[dict[str, Any]]" = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    #: False for a UA whose handshake is expected to fail (start() then does not wait for it).
    expect_connected: bool = True

    def start(self) -> "JsSipUa":
        node = require_peer("node", "Node.js")
        script = HERE / "js" / self.script
        if not (HERE / "js" / "node_modules" / "sip.js").is_dir():
            raise AssertionError("tests/interop/js/node_modules is missing: run `make test` (npm install)")
        self.process = subprocess.Popen(
            [node, str(script), "--ws", self.ws_url, "--uri", self.uri, "--answer", self.answer, *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=HERE / "js",
            env={**os.environ, **self.env} if self.env else None,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if self.expect_connected:
            self.expect("connected")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = {"event": "output", "text": text}
            self.events.put(event)

    def send(self, **command: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    def expect(self, name: str, timeout: float = EVENT_TIMEOUT, **match: Any) -> dict[str, Any]:
        """The next event called ``name`` (with matching fields); earlier others are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.uri}: no {name} {match or ''} event; saw {self.seen[-10:]}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                return event
            if event.get("event") in ("registrationFailed", "failed", "error") and name not in (
                "registrationFailed", "failed", "error", "ended"
            ):
                raise AssertionError(f"{self.uri}: {event} while waiting for {name}")

    def register(self) -> dict[str, Any]:
        self.send(cmd="register")
        return self.expect("registered")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.send(cmd="stop")
                self.process.wait(3)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        stop_process(self.process)


# ------------------------------------------------------------------ sipp


@dataclass
class Sipp:
    """One sipp run with a scenario file from tests/interop/sipp/."""

    scenario: str
    port: int
    target: str = ""
    args: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    process: subprocess.Popen | None = None

    def start(self) -> "Sipp":
        binary = require_peer("sipp", "Debian package sip-tester")
        assert self.run_dir is not None
        command = [binary, "-sf", str(HERE / "sipp" / self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
                   "-nostdin", "-trace_err", "-trace_msg", "-message_file", str(self.run_dir / f"{self.scenario}.msg"),
                   "-error_file", str(self.run_dir / f"{self.scenario}.err"), *self.args]
        if self.target:
            command.append(self.target)
        self.out = open(self.run_dir / f"{self.scenario}.out", "wb")
        self.process = subprocess.Popen(command, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.run_dir)
        return self

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
            raise AssertionError(f"sipp {self.scenario} did not finish: {self.messages()[-3000:]}") from None

    def messages(self) -> str:
        assert self.run_dir is not None
        texts = []
        for suffix in ("msg", "err", "out"):
            path = self.run_dir / f"{self.scenario}.{suffix}"
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def stop(self) -> None:
        stop_process(self.process)
