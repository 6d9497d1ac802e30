"""Start and stop Kamailio 5.6 as a WebSocket server peer (ws and wss)."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_peer
from tests.processes import stop_process

HERE = Path(__file__).parent
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Kamailio:
    run_dir: Path
    ws_port: int
    wss_port: int
    cert: str
    key: str
    process: subprocess.Popen | None = None

    @property
    def ctl(self) -> str:
        return f"unix:{self.run_dir}/kamailio_ctl"

    def start(self) -> None:
        binary = require_peer("kamailio", "Debian package kamailio")
        tls_cfg = self.run_dir / "tls.cfg"
        tls_cfg.write_text((HERE / "tls.cfg.in").read_text().replace("@CERT@", self.cert).replace("@KEY@", self.key))
        args = [
            binary, "-f", str(HERE / "kamailio.cfg"), "-DD", "-E", "-Y", str(self.run_dir),
            "-P", str(self.run_dir / "kamailio.pid"), "-w", str(self.run_dir), "-m", "64", "-M", "8",
            "-A", f"WS_PORT={self.ws_port}", "-A", f"WSS_PORT={self.wss_port}", "-A", "WITH_WSS",
            "-A", f'CTL_SOCK="{self.ctl}"', "-A", f'TLS_CFG="{tls_cfg}"', "-A", f'MPATH="{MODULES}"',
        ]
        self.log = open(self.run_dir / "kamailio.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kamailio exited: {self.log_text()}")
            if self._listening(self.ws_port) and self._listening(self.wss_port):
                return
            time.sleep(0.1)
        raise AssertionError(f"kamailio did not start: {self.log_text()}")

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process(self.process, STOP_TIMEOUT)
        # children of the main process exit with it; make sure nothing holds the ports
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (self._listening(self.ws_port) or self._listening(self.wss_port)):
            time.sleep(0.1)

    def kamcmd(self, *command: str) -> str:
        binary = require_peer("kamcmd", "Debian package kamailio")
        result = subprocess.run([binary, "-s", self.ctl, *command], capture_output=True, timeout=10)
        return result.stdout.decode() + result.stderr.decode()

    def log_text(self) -> str:
        try:
            return (self.run_dir / "kamailio.log").read_text()[-4000:]
        except OSError:
            return ""
