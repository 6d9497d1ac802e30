"""Helpers for the tests that run the shipped files under examples/ and contrib/.

The tests change as little as possible in a shipped file: they load the TOML,
replace port numbers (and, where a file names real-world addresses or paths,
those) and write a copy that `twistd -n sipws --config COPY` then runs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.integration.wsclient import RawWs
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CONTRIB = REPO / "contrib"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------- TOML writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """A sipws configuration (sections of scalars, lists and inline tables) as TOML."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------- ports


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


class PortMap:
    """Each port number of the shipped file → one free port (the same original
    port maps to the same new one, so `udp:` and `tcp:` entries stay paired)."""

    def __init__(self, fixed: dict[int, int] | None = None) -> None:
        self.ports: dict[int, int] = dict(fixed or {})

    def __call__(self, original: int) -> int:
        if original not in self.ports:
            self.ports[original] = free_port()
        return self.ports[original]


def replace_port(text: str, ports: Callable[[int], int], host: Callable[[str], str] = lambda h: h) -> str:
    """``HOST:PORT``, ``[V6]:PORT``, ``udp:HOST:PORT``, ``sip:HOST:PORT;…`` with the port
    (and optionally the host) replaced."""
    match = re.fullmatch(r"(?P<pre>(?:[a-z]+:)?(?:[^@;]*@)?)(?P<host>\[[^\]]+\]|[^:;\[\]]+):(?P<port>\d+)(?P<post>[;/].*)?",
                         text)
    assert match, f"no HOST:PORT in {text!r}"
    return f"{match['pre']}{host(match['host'])}:{ports(int(match['port']))}{match['post'] or ''}"


def replace_endpoint_port(text: str, ports: Callable[[int], int]) -> str:
    """A Twisted endpoint string ``tcp:PORT:interface=…``."""
    match = re.fullmatch(r"tcp:(\d+)(:.*)?", text)
    assert match, f"not a tcp:PORT endpoint: {text!r}"
    return f"tcp:{ports(int(match[1]))}{match[2] or ''}"


# --------------------------------------------------------------- sipws process


@dataclass
class SipwsProcess:
    """`twistd -n sipws --config PATH` as an operator runs it, stopped by its pid."""

    config: Path
    log_path: Path
    cwd: Path = REPO
    process: subprocess.Popen | None = None

    def start(self, ws_port: int, wss: bool = False) -> "SipwsProcess":
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "sipws", "--config", str(self.config)],
            cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sipws exited with {self.process.returncode}: {self.log_text()}")
            if "listening ws" in self.log_text() or (wss and "listening wss" in self.log_text()):
                try:
                    # An HTTP answer (whatever its status): with [server] workers the
                    # master listens at once, and a worker answers once it runs.
                    client = RawWs(ws_port)
                    client.request()
                    client.shutdown()
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"sipws did not start listening on {ws_port}: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then the exit status (SIGKILL after STOP_TIMEOUT)."""
        if self.process is None:
            return None
        status = stop_process(self.process, STOP_TIMEOUT)
        self.log.close()
        return status
