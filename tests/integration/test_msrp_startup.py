"""`twistd -n sipws` with MSRP settings operators get wrong: one line, exit status 2."""

from __future__ import annotations

import socket

from tests.integration.test_launch import START_TIMEOUT, twistd, write


def run(tmp_path, text: str) -> tuple[int, list[str], str]:
    proc = twistd("--config", write(tmp_path, text))
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(START_TIMEOUT)
    return proc.returncode, err.decode().strip().splitlines(), out.decode() + err.decode()


def test_msrp_on_plain_ws_is_refused_at_start_up_in_one_line(tmp_path):
    code, lines, everything = run(tmp_path, '[ws]\nlisten = ["127.0.0.1:0"]\nsubprotocols = ["sip", "msrp"]\n')
    assert code == 2 and "Traceback" not in everything
    assert lines == ["config: [ws] subprotocols: msrp only on [wss] (RFC 7977 requires secure WebSockets); "
                     "[msrp] allow_insecure = true permits it for tests and loopback"]


def test_an_msrp_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, lines, everything = run(tmp_path, (
            '[ws]\nlisten = ["127.0.0.1:0"]\nsubprotocols = ["msrp"]\n[msrp]\nallow_insecure = true\n'
            f'listen = ["tcp:127.0.0.1:{port}"]\n[sip]\nlisten = []\n[admin]\nlisten = ""\n'))
    assert code == 2 and "Traceback" not in everything
    assert len(lines) == 1 and lines[0].startswith(f"[msrp] listen: cannot listen on tcp:127.0.0.1:{port}"), lines
