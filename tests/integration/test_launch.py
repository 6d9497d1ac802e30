"""`twistd -n sipws` as operators run it: config errors, start-up, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.wsclient import RawWs

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 15.0


def twistd(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "sipws", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "sipws.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[ws]\nmax_msg_chunks = 0\n", "config: [ws] max_msg_chunks: must be >= 1, got 0"),
        ("[ws]\nfoo = 1\n", "config: [ws] foo: unknown key"),
        ("[keepalive]\ntimeout = \"soon\"\n", "config: [keepalive] timeout: must be a number, got 'soon'"),
        ("[wss]\nlisten = [\"127.0.0.1:0\"]\ncertificate = \"/nonexistent.pem\"\n",
         "config: [wss] certificate: file '/nonexistent.pem' does not exist"),
        ("[ws\n", None),
    ],
)
def test_config_errors_are_one_line_and_non_zero(tmp_path, text, expected):
    proc = twistd("--config", write(tmp_path, text))
    out, err = proc.communicate(timeout=START_TIMEOUT)
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, err
    assert "Traceback" not in err.decode() + out.decode()
    if expected:
        assert lines[0] == expected
    else:
        assert lines[0].startswith("config: --config:")


def test_bad_key_pair_is_one_line(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("nothing")
    proc = twistd("--config", write(tmp_path, f'[wss]\nlisten = ["127.0.0.1:0"]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'))
    _, err = proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode == 2
    assert err.decode().strip() == "config: [wss] certificate: not a valid PEM certificate"


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = twistd("--config", write(tmp_path, f'[ws]\nlisten = ["127.0.0.1:{port}"]\n[sip]\nlisten = []\n[admin]\nlisten = ""\n'))
        _, err = proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode == 2
    line = err.decode().strip()
    assert line.startswith(f"[ws] listen: cannot listen on 127.0.0.1:{port}:"), line


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("sipws did not start listening")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_websockets_with_1001_then_exits(tmp_path, sig):
    port = free_port()
    proc = twistd("--config", write(tmp_path, f'[ws]\nlisten = ["127.0.0.1:{port}"]\n[sip]\nlisten = []\n[admin]\nlisten = ""\n'))
    try:
        wait_listening(port, proc)
        clients = [RawWs(port) for _ in range(3)]
        for client in clients:
            client.upgrade()
        proc.send_signal(sig)
        codes = []
        for client in clients:
            codes.append(client.expect_close()[0])
            client.close(1001)
            client.shutdown()
        assert codes == [1001, 1001, 1001]
        out, err = proc.communicate(timeout=START_TIMEOUT)
        # twistd re-raises the signal after a clean shutdown (exit by the signal)
        assert proc.returncode in (0, -sig), err
        assert b"Traceback" not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_default_start_serves_ws_on_8080_when_free():
    """No --config: built-in defaults (ws on 127.0.0.1:8080)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8080))
        except OSError:
            pytest.fail("port 8080 is busy on this machine; the default-start test needs it")
    proc = twistd()
    try:
        wait_listening(8080, proc)
        client = RawWs(8080)
        client.upgrade()
        client.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode in (0, -signal.SIGTERM)
