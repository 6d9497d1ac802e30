"""Connection events in the log, and [log] level / format under a real twistd."""

from __future__ import annotations

import json
import re
import signal

import pytest_twisted

from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.test_launch import START_TIMEOUT, free_port, twistd, wait_listening, write
from tests.integration.wsclient import RawWs


def opened(port: int) -> RawWs:
    client = RawWs(port)
    client.upgrade()
    return client


def close_cleanly(client: RawWs) -> None:
    client.close(1000)
    client.expect_close()
    client.closed_by_peer()
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_every_open_and_close_is_one_line_with_id_and_addresses(sipws_factory, sipws_log):
    root = sipws_factory()
    port = port_of(root)
    clients = []
    for _ in range(2):
        clients.append((yield in_thread(opened, port)))
    ids = [record.id for record in root.connections]
    remotes = [f"127.0.0.1:{client.sock.getsockname()[1]}" for client in clients]
    for client in clients:
        yield in_thread(close_cleanly, client)
    yield wait_for(lambda: len(root.connections) == 0)
    for conn_id, remote in zip(ids, remotes):
        address = f"#{conn_id} ws {remote}->127.0.0.1:{port}"
        assert len([line for line in sipws_log if line.startswith(f"opened {address}")]) == 1, sipws_log
        assert len([line for line in sipws_log if line.startswith(f"closed {address}")]) == 1, sipws_log
    # nothing else mentions these connections as opened or closed
    assert len([line for line in sipws_log if line.startswith(("opened #", "closed #"))]) == 4


def run_twistd(tmp_path, log_section: str, exercise) -> tuple[str, str]:
    """Start twistd with the [log] section, run exercise(port), SIGTERM; (stdout, stderr)."""
    port = free_port()
    config = write(tmp_path, f'[ws]\nlisten = ["127.0.0.1:{port}"]\n[sip]\nlisten = []\n[admin]\nlisten = ""\n'
                             f"[log]\n{log_section}\n")
    proc = twistd("--config", config)
    try:
        wait_listening(port, proc)
        exercise(port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=START_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode(), err.decode()


def one_connection_and_one_refusal(port: int) -> None:
    close_cleanly(opened(port))
    refused = RawWs(port)
    status, _, _ = refused.request(path="/elsewhere")
    assert status == 404
    refused.closed_by_peer()
    refused.shutdown()


def test_json_format_is_one_object_per_line(tmp_path):
    out, err = run_twistd(tmp_path, 'format = "json"', one_connection_and_one_refusal)
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert lines, err
    records = [json.loads(line) for line in lines]  # every line, twistd's own included
    for record in records:
        assert {"time", "level", "namespace", "text"} <= set(record)
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", record["time"])
    opened_lines = [r for r in records if r["text"].startswith("opened #")]
    closed_lines = [r for r in records if r["text"].startswith("closed #")]
    assert len(opened_lines) == 1 and opened_lines[0]["level"] == "info"
    conn_id = opened_lines[0]["conn_id"]
    assert opened_lines[0]["namespace"] == "sipws.ws"
    # wait_listening's probe and the refused handshake are connections too: one closed line each
    closed_ids = [r["conn_id"] for r in closed_lines]
    assert len(closed_ids) == 3 and sorted(set(closed_ids)) == closed_ids and conn_id in closed_ids
    refused = [r for r in records if r["text"].startswith("handshake refused")]
    assert len(refused) == 1 and refused[0]["level"] == "warn" and refused[0]["status"] == 404
    assert refused[0]["host"] == "127.0.0.1" and isinstance(refused[0]["port"], int)
    assert any("starting up" in r["text"] for r in records)  # twistd's first lines are JSON too


def test_level_warn_drops_info_lines(tmp_path):
    out, err = run_twistd(tmp_path, 'level = "warn"', one_connection_and_one_refusal)
    assert "Traceback" not in out + err
    assert "handshake refused from 127.0.0.1:" in out
    assert "opened #" not in out and "closed #" not in out and "starting up" not in out
    assert not out.lstrip().startswith("{")  # still the text format


def test_default_text_format_shows_connection_lines(tmp_path):
    out, _ = run_twistd(tmp_path, 'level = "info"', one_connection_and_one_refusal)
    assert len(re.findall(r"opened #\d+ ws 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+", out)) == 1
    closed = re.findall(r"closed #(\d+) ws 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+", out)
    assert sorted(closed) == ["1", "2", "3"]  # wait_listening's probe, the upgrade, the refusal
