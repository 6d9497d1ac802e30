"""Load balancers for the scale-out tests: HAProxy and nginx as processes.

Each runs in the foreground with its own files under the test's directory, on
127.0.0.x and free ports, and is stopped by its pid.  The sipws part of their
configuration is the shipped file (contrib/haproxy/sipws.cfg,
contrib/nginx/sipws.conf) with only addresses, ports and certificate paths
replaced; the process-level part (global / events, pid, logs, temp paths) is
the test's own, as a distribution's main file would be.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.conftest import require_peer
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
HAPROXY_CFG = CONTRIB / "haproxy" / "sipws.cfg"
NGINX_CONF = CONTRIB / "nginx" / "sipws.conf"
START_TIMEOUT = 15.0


def replace_once(text: str, pattern: str, replacement: str) -> str:
    """``pattern`` (a regex) replaced; it must occur exactly once, so a change to
    the shipped file that the test no longer matches fails loudly."""
    new, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1, f"{pattern!r} matched {count} times in the shipped file"
    return new


def wait_listening(host: str, port: int, process: subprocess.Popen, log: Callable[[], str], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {log()[-3000:]}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {host}:{port}: {log()[-3000:]}")


class _Balancer:
    """What HAProxy and nginx share once started: their log, and stopping them by pid
    (SIGTERM: HAProxy's hard stop; nginx's fast shutdown, its master stopping the workers,
    'daemon off' keeping the master the Popen's pid)."""

    log_path: Path
    process: subprocess.Popen | None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class HAProxy(_Balancer):
    """contrib/haproxy/sipws.cfg as shipped (addresses, ports, certificate replaced)
    under a minimal global section of the test's own: ``haproxy -db -f GLOBAL -f COPY``."""

    run_dir: Path
    listen: tuple[str, int]
    servers: list[tuple[str, int]]
    #: A PEM file with certificate and key for the TLS frontend.
    certificate: str
    #: False: the shipped file without its send-proxy-v2 (the control case: sipws
    #: then sees HAProxy's address, as any server behind a TCP balancer does).
    send_proxy: bool = True
    #: False: TLS passes through to the instances' wss listeners, as the shipped
    #: file's comment says ("drop ssl crt ... here"); ``certificate`` is unused.
    tls: bool = True
    #: Replaces the file's ``timeout tunnel`` (the idle timeout of an established connection).
    tunnel_timeout: str = ""
    process: subprocess.Popen | None = None

    def config_text(self) -> str:
        text = HAPROXY_CFG.read_text()
        if not self.send_proxy:
            text = replace_once(text, r"^(\s*default-server) send-proxy-v2 ", r"\1 ")
        host, port = self.listen
        tls = f" ssl crt {self.certificate}" if self.tls else ""
        text = replace_once(text, r"^(\s*bind) :443 ssl crt \S+", rf"\1 {host}:{port}{tls}")
        if self.tunnel_timeout:
            text = replace_once(text, r"^(\s*timeout tunnel) \S+$", rf"\1 {self.tunnel_timeout}")
        shipped = re.findall(r"^\s*server (\S+) \S+$", text, flags=re.M)
        assert len(shipped) == len(self.servers), f"the shipped file names {len(shipped)} servers: {shipped}"
        for name, (server_host, server_port) in zip(shipped, self.servers):
            text = replace_once(text, rf"^(\s*server {name}) \S+$", rf"\1 {server_host}:{server_port}")
        return text

    def start(self) -> "HAProxy":
        binary = require_peer("haproxy", "Debian package haproxy")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main = self.run_dir / "global.cfg"
        # Logs to stdout (tcplog: which server each connection went to), no chroot,
        # no stats socket, no user switch: a foreground process of the test.
        main.write_text("global\n    log stdout format raw local0 info\n    maxconn 2000\n")
        copy = self.run_dir / "sipws.cfg"
        copy.write_text(self.config_text())
        check = subprocess.run([binary, "-c", "-f", str(main), "-f", str(copy)], capture_output=True, timeout=30)
        assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")
        self.log_path = self.run_dir / "haproxy.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([binary, "-db", "-f", str(main), "-f", str(copy)], stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_listening(*self.listen, self.process, self.log_text, "haproxy")
        return self

@dataclass
class Nginx(_Balancer):
    """contrib/nginx/sipws.conf as shipped (addresses, ports, certificate replaced),
    included in the http block of a main file of the test's own (pid, logs and
    temp paths under ``run_dir``): ``nginx -c MAIN -g 'daemon off;'``."""

    run_dir: Path
    listen: tuple[str, int]
    upstream: tuple[str, int]
    certificate: str
    key: str
    process: subprocess.Popen | None = None
    extra_main: list[str] = field(default_factory=list)

    def config_text(self) -> str:
        text = NGINX_CONF.read_text()
        host, port = self.listen
        text = replace_once(text, r"^(\s*listen) 443 ssl;", rf"\1 {host}:{port} ssl;")
        text = replace_once(text, r"^(\s*server) 127\.0\.0\.1:8080;", rf"\1 {self.upstream[0]}:{self.upstream[1]};")
        text = replace_once(text, r"^(\s*ssl_certificate) \S+;", rf"\1 {self.certificate};")
        text = replace_once(text, r"^(\s*ssl_certificate_key) \S+;", rf"\1 {self.key};")
        return text

    def start(self) -> "Nginx":
        binary = require_peer("nginx", "Debian package nginx")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        copy = self.run_dir / "sipws.conf"
        copy.write_text(self.config_text())
        self.log_path = self.run_dir / "error.log"
        d = self.run_dir
        main = d / "nginx.conf"
        main.write_text(
            f"worker_processes 1;\npid {d}/nginx.pid;\nerror_log {self.log_path} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {d}/access.log;\n"
            f"    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
            + "".join(f"    {line}\n" for line in self.extra_main)
            + f"    include {copy};\n}}\n"
        )
        argv = [binary, "-p", str(d), "-e", str(self.log_path), "-c", str(main)]
        check = subprocess.run([*argv, "-t"], capture_output=True, timeout=30)
        assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")
        self.out = open(d / "nginx.out", "wb")
        self.process = subprocess.Popen([*argv, "-g", "daemon off;"], stdout=self.out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        wait_listening(*self.listen, self.process, self.log_text, "nginx")
        return self
