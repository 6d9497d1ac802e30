"""sipws-ctl: argument conversion and output formatting (no server)."""

from __future__ import annotations

from sipws.admin import ctl


def test_numeric_args_become_integers():
    assert ctl.build_request("ws.close", ["7", "4000", "bye", "-1", "1.5"]) == {
        "jsonrpc": "2.0", "method": "ws.close", "id": 1, "params": [7, 4000, "bye", -1, "1.5"]}
    assert "params" not in ctl.build_request("stats", [])


CONNECTION = {
    "id": 12, "transport": "ws", "role": "server", "local": "127.0.0.1:8080", "remote": "127.0.0.1:50000",
    "state": "open", "subprotocol": "sip", "resource": "/", "age": 3.5, "idle": 0.25, "awaiting_pong": False,
    "origin": "https://a.example", "user_agent": "", "messages_in": 1, "messages_out": 2, "bytes_in": 10,
    "bytes_out": 2000,
}


def test_dump_is_an_aligned_table():
    other = dict(CONNECTION, id=7, remote="[::1]:4", awaiting_pong=True, bytes_out=5)
    text = ctl.format_result("ws.dump", {"connections": [CONNECTION, other], "total": 3, "truncated": True})
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["ID", "TRANSPORT", "ROLE"]
    assert lines[1].split()[0] == "12" and lines[2].split()[0] == "7"
    # columns line up: every field starts where its heading starts
    start = lines[0].index("REMOTE")
    assert lines[1][start:].startswith("127.0.0.1:50000") and lines[2][start:].startswith("[::1]:4")
    assert "yes" in lines[2] and "no" in lines[1]
    assert lines[1].split()[-1] == "-"  # empty user agent
    assert lines[-1] == "3 connection(s), 2 shown (raise the limit: ws.dump ORDER LIMIT)"


def test_empty_dump():
    assert ctl.format_result("ws.dump", {"connections": [], "total": 0, "truncated": False}) == "0 connection(s)"


def test_dicts_are_key_value_lines():
    text = ctl.format_result("stats", {"accepting": True, "connections": {"current": 2, "max": 5},
                                       "trace": {"destination": None}, "sip": {}})
    assert text.splitlines() == ["accepting: true", "connections.current: 2", "connections.max: 5",
                                 "trace.destination: null", "sip: {}"]


def test_scalars_and_lists():
    assert ctl.format_result("x", "on") == "on"
    assert ctl.format_result("x", [1, {"a": 2}]) == '1\n{"a": 2}'


def test_usage_error_exits_2(capsys):
    try:
        ctl.main([])
    except SystemExit as exc:
        assert exc.code == ctl.EXIT_USAGE
    else:
        raise AssertionError("no usage error")
