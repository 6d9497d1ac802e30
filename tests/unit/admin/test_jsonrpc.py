"""JSON-RPC 2.0 semantics of rpc.handle_body, without HTTP."""

from __future__ import annotations

import json

import pytest

from sipws.admin import methods, rpc
from tests.unit.admin.fakes import FakeRoot


def answer(root, body):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    out = []
    rpc.handle_body(root, body, "127.0.0.1:1").addBoth(out.append)
    assert out, "no answer"
    return out[0]


@pytest.fixture
def root():
    return FakeRoot()


def req(method, params=None, id=1):
    message = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


def test_result_echoes_id(root):
    assert answer(root, req("version", id="abc")) == {
        "jsonrpc": "2.0", "result": {"name": "sipws", "version": methods.__version__}, "id": "abc"}


@pytest.mark.parametrize("body", [b"{", b"not json", b"\xff\xfe", b"[" * 70000])
def test_parse_error(root, body):
    assert answer(root, body) == rpc.error_response(None, -32700, "parse error: not valid JSON")


@pytest.mark.parametrize("message, echoed", [
    ({"jsonrpc": "1.0", "method": "version", "id": 3}, 3),
    ({"method": "version", "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": 7, "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": "version", "params": "x", "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": "version", "id": [1]}, None),
    ({"jsonrpc": "2.0", "method": "version", "id": True}, None),
    (1, None),
    ("version", None),
    ([], None),
])
def test_invalid_request(root, message, echoed):
    result = answer(root, message)
    assert result["error"]["code"] == -32600 and result["id"] == echoed


def test_method_not_found_and_invalid_params(root):
    assert answer(root, req("nope"))["error"]["code"] == -32601
    assert answer(root, req("ws.dump", ["bogus"]))["error"]["code"] == -32602
    error = answer(root, req("ws.close", [7]))["error"]
    assert error == {"code": methods.NO_SUCH_CONNECTION, "message": "no connection with id 7"}


def test_notification_gets_no_answer_even_on_error(root):
    assert answer(root, {"jsonrpc": "2.0", "method": "ws.disable"}) is None
    assert root.accepting is False
    assert answer(root, {"jsonrpc": "2.0", "method": "nope"}) is None


def test_batch_keeps_order_and_skips_notifications(root):
    batch = [req("version", id=1), {"jsonrpc": "2.0", "method": "ws.disable"}, req("nope", id=2), 5,
             req("ws.dump", {"limit": 0}, id=3)]
    results = answer(root, batch)
    assert [r["id"] for r in results] == [1, 2, None, 3]
    assert "result" in results[0]
    assert [r.get("error", {}).get("code") for r in results[1:]] == [-32601, -32600, -32602]
    assert root.accepting is False


def test_batch_of_notifications_only_gets_no_answer(root):
    assert answer(root, [{"jsonrpc": "2.0", "method": "ws.disable"}, {"jsonrpc": "2.0", "method": "ws.enable"}]) is None
    assert root.accepting is True


def test_bug_in_a_method_is_internal_error_without_details(root, monkeypatch):
    def boom(root):
        raise KeyError("secret internals")

    monkeypatch.setitem(methods.METHODS, "version", methods.Method("version", boom))
    result = answer(root, req("version"))
    assert result["error"]["code"] == -32603
    assert "secret" not in json.dumps(result)


def test_deferred_result(root):
    out = []
    rpc.handle_body(root, json.dumps(req("ws.connect", ["ws://127.0.0.1:9/"])).encode(), "p").addBoth(out.append)
    assert out == []
    record = root.add(9)
    root.ws_client.pending["ws://127.0.0.1:9/"].callback(record)
    assert out[0]["result"]["id"] == record.id


def test_endpoint_string_adds_mode_to_unix_sockets():
    assert rpc.endpoint_string("unix:/run/a.sock") == "unix:/run/a.sock:mode=600"
    assert rpc.endpoint_string("unix:/run/a.sock:mode=660") == "unix:/run/a.sock:mode=660"
    assert rpc.endpoint_string("tcp:8088") == "tcp:8088"
