"""Many connections: the open-file limit at start-up, [ws] max_connections, and a CI-sized
slice of bench/idle_connections.py (2,000 idle connections held and pinged).

sipws runs as operators run it (``twistd -n sipws``, a config file) in a subprocess started
with a lowered RLIMIT_NOFILE; /proc/PID/limits shows what it made of it.  Connections come
from the bench's own load generator (raw sockets on epoll, 127.0.0.2 ... as sources), run as
a child process.  Every wait is bounded; no assertion is about time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest_twisted

from sipws.fdlimit import FD_RESERVE, MAX_FILES, read_nr_open
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.test_launch import TWISTD, free_port, wait_listening
from tests.integration.wsclient import RawWs
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "idle_connections.py"
#: Connections in the CI slice.
SLICE = 2000
#: Soft limit sipws is started with (too low for the slice until it raises it).
LOW_SOFT = 1024
#: Hard limit sipws is started with: room for the slice and the reserve, no more.
SLICE_HARD = SLICE + FD_RESERVE + 100
#: Longest wait for any one step (start, all connections open, every one pinged).
STEP_TIMEOUT = 120.0
POLL = 0.2
#: [keepalive] timeout in the slice: short, so every connection is pinged during the test.
KEEPALIVE_TIMEOUT = 2


def limits_setter(soft: int, hard: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return preexec


def start_sipws(tmp_path: Path, config: str, soft: int, hard: int) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "sipws.toml"
    path.write_text(config)
    log = tmp_path / "sipws.log"
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={log}", "sipws", "--config", str(path)],
        cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=limits_setter(soft, hard),
    )
    return proc, log


def nofile_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


def log_lines(log: Path, needle: str) -> list[str]:
    lines = []
    for part in sorted(log.parent.glob(log.name + "*")):  # twistd rotates at 1 MB
        lines += [line for line in part.read_text(errors="replace").splitlines() if needle in line]
    return lines


def wait_until(predicate, what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(POLL)


def hard_limit_can_rise() -> bool:
    """Whether this process (root with CAP_SYS_RESOURCE) may raise its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
    except (ValueError, OSError):
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return True


def admin(port: int, method: str) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rpc", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["result"]


def quiet_config(ws_port: int, extra_ws: str = "", admin_port: int = 0, keepalive: str = "") -> str:
    admin_listen = f"tcp:{admin_port}:interface=127.0.0.1" if admin_port else ""
    return (f'[ws]\nlisten = ["127.0.0.1:{ws_port}"]\n{extra_ws}\n'
            f'[sip]\nlisten = []\nupstream = "sip:127.0.0.1:5060;transport=udp"\n\n'
            f'[admin]\nlisten = "{admin_listen}"\n\n{keepalive}\n'
            # the load generator is a handful of 127.0.0.x opening thousands of connections at
            # once: per-source limits (docs/limits.md) are not what these tests measure
            '[limits]\nmax_connections_per_ip = 0\nhandshakes_per_ip_per_second = 0\n')


def test_start_up_raises_the_soft_limit_and_warns_when_too_low(tmp_path):
    """Started with soft 1024 / hard 4096 and max_connections 10,000: the soft limit goes to the
    hard one (and the hard one up too where the process may), one line says so, and one
    warning says the limit is too low for 10,000 connections unless the hard limit could rise."""
    port = free_port()
    config = quiet_config(port, "max_connections = 10000\n")
    proc, log = start_sipws(tmp_path, config, LOW_SOFT, 4096)
    try:
        wait_listening(port, proc)
        soft, hard = nofile_limits(proc.pid)
        lines = log_lines(log, "open-file limit")
    finally:
        stop_process(proc)
    info = [line for line in lines if "[sipws.fdlimit#info]" in line]
    warnings = [line for line in lines if "[sipws.fdlimit#warn]" in line]
    assert len(info) == 1, lines
    assert soft == hard
    if hard_limit_can_rise():
        assert hard == min(read_nr_open(), MAX_FILES)
        assert warnings == []
    else:
        assert (soft, hard) == (4096, 4096)
        assert f"soft {LOW_SOFT} -> 4096" in info[0]
        assert "cannot raise the hard limit" in info[0]
        assert len(warnings) == 1
        assert "too low for max_connections 10000" in warnings[0]


def test_no_warning_when_the_limit_holds_the_configured_connections(tmp_path):
    port = free_port()
    proc, log = start_sipws(tmp_path, quiet_config(port, "max_connections = 1000\n"), LOW_SOFT, 4096)
    try:
        wait_listening(port, proc)
        soft, _ = nofile_limits(proc.pid)
        lines = log_lines(log, "open-file limit")
    finally:
        stop_process(proc)
    assert soft >= 4096
    assert len(lines) == 1 and "[sipws.fdlimit#info]" in lines[0], lines
    assert "room for" in lines[0]


@pytest_twisted.inlineCallbacks
def test_over_max_connections_a_handshake_gets_503_and_a_log_line(sipws_factory, sipws_log):
    root = sipws_factory({"ws": {"max_connections": 2}})
    port = port_of(root)
    factory = root.ws_server.factories["ws"]
    first, second = RawWs(port), RawWs(port)
    yield in_thread(first.upgrade)
    yield in_thread(second.upgrade)
    third = RawWs(port)
    status, _, _ = yield in_thread(third.request)
    assert status == 503
    assert any("status=503" in line and "max_connections 2" in line for line in sipws_log)
    assert root.stats.get("ws.over_capacity") == 1
    # room again once one of the two has gone
    first.close(1000)
    yield in_thread(first.expect_close)
    yield wait_for(lambda: factory.open_connections == 1)
    fourth = RawWs(port)
    yield in_thread(fourth.upgrade)
    assert factory.open_connections == 2
    for client in (first, second, third, fourth):
        client.sock.close()


class Generator:
    """bench/idle_connections.py --generate in a child process, spoken to a line at a time."""

    def __init__(self, port: int, count: int) -> None:
        sources = ",".join(f"127.0.0.{n}" for n in range(2, 10))
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH), "--generate", "--port", str(port), "--count", str(count),
             "--sources", sources, "--warmup", "0"],
            cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1,
        )

    def line(self) -> str:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(STEP_TIMEOUT):
                raise AssertionError("load generator: no answer in time")
        return self.proc.stdout.readline().strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, int]:
        self.send("stats")
        return {k: int(v) for k, v in (part.split("=") for part in self.line().split()[1:])}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(STEP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


def test_slice_2000_idle_connections_held_and_pinged(tmp_path):
    """The CI slice of bench/idle_connections.py: sipws started with soft 1024 (too few) and a
    hard limit just big enough raises its soft limit, accepts 2,000 connections from 8 source
    addresses, pings every one (each answers), refuses the 2,001st with 503, and still holds
    all 2,000 at the end."""
    port, admin_port = free_port(), free_port()
    config = quiet_config(port, f"max_connections = {SLICE}\n", admin_port,
                          f"[keepalive]\ntimeout = {KEEPALIVE_TIMEOUT}\n\n[log]\nlevel = \"warn\"\n")
    proc, log = start_sipws(tmp_path, config, LOW_SOFT, SLICE_HARD)
    generator = None
    try:
        wait_listening(port, proc)
        assert nofile_limits(proc.pid)[0] >= SLICE_HARD
        generator = Generator(port, SLICE)
        assert generator.line() == "WARM"
        generator.send("go")
        opened = generator.line()
        assert opened.startswith(f"OPEN ok={SLICE} failed=0"), opened

        def open_on_server() -> int:
            return admin(admin_port, "stats")["connections"].get("ws_server", 0)

        wait_until(lambda: open_on_server() == SLICE, f"sipws sees {SLICE} open connections")
        # every connection pinged by the sweep and answered
        wait_until(lambda: generator.stats()["pings"] >= SLICE, "every connection pinged")
        extra = RawWs(port)
        status, _, _ = extra.request()
        extra.sock.close()
        assert status == 503
        final = generator.stats()
        assert final["open"] == SLICE and final["closed"] == 0
        assert open_on_server() == SLICE
        counters = admin(admin_port, "stats")["counters"]
        assert counters.get("ws.keepalive_timeouts", 0) == 0
    finally:
        if generator is not None:
            generator.stop()
        stop_process(proc)
    assert log_lines(log, "open-file limit") == []  # [log] level = warn: no info line, no warning


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def test_with_workers_the_master_raises_the_limit_and_its_workers_inherit_it(tmp_path):
    """[server] workers = 2, max_connections 10,000 per instance: the master's one line and one
    warning (5,000 per worker do not fit in 4,096), and each worker runs with the raised limit."""
    port = free_port()
    config = quiet_config(port, "max_connections = 10000\n") + "[server]\nworkers = 2\n"
    proc, log = start_sipws(tmp_path, config, LOW_SOFT, 4096)
    try:
        wait_listening(port, proc)
        wait_until(lambda: len(children_of(proc.pid)) >= 2, "two workers started")
        master = nofile_limits(proc.pid)
        workers = [nofile_limits(pid) for pid in children_of(proc.pid)]
        lines = log_lines(log, "open-file limit")
    finally:
        stop_process(proc)
    assert master[0] == master[1] >= 4096
    assert all(worker == master for worker in workers)
    info = [line for line in lines if "fdlimit#info" in line]
    warnings = [line for line in lines if "fdlimit#warn" in line]
    assert len(info) == 1 and "max_connections 5000" in info[0], lines
    if not hard_limit_can_rise():
        assert len(warnings) == 1 and "too low for max_connections 5000" in warnings[0]
