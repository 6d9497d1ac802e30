"""Handshake policy on a real socket: every refusal, its status, headers and log line."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.wsclient import RawWs, good_headers


def exchange(port: int, **kwargs):
    client = RawWs(port)
    try:
        return client.request(**kwargs)
    finally:
        client.shutdown()


def without(name: str) -> dict[str, str]:
    headers = good_headers()
    del headers[name]
    return headers


def with_(name: str, value: str) -> dict[str, str]:
    headers = good_headers()
    headers[name] = value
    return headers


REFUSALS = [
    ("wrong path", dict(path="/other"), 404, {}),
    ("POST", dict(method="POST"), 405, {}),
    ("HTTP/1.0", dict(version="HTTP/1.0"), 505, {}),
    ("version 8", dict(headers=with_("Sec-WebSocket-Version", "8")), 426, {"sec-websocket-version": "13"}),
    ("version missing", dict(headers=without("Sec-WebSocket-Version")), 426, {"sec-websocket-version": "13"}),
    ("no Upgrade", dict(headers=without("Upgrade")), 400, {}),
    ("Upgrade: h2c", dict(headers=with_("Upgrade", "h2c")), 400, {}),
    ("no Connection", dict(headers=without("Connection")), 400, {}),
    ("no Host", dict(headers=without("Host")), 400, {}),
    ("key missing", dict(headers=without("Sec-WebSocket-Key")), 400, {}),
    ("key 15 bytes", dict(headers=with_("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA")), 400, {}),
    ("key not base64", dict(headers=with_("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!A==")), 400, {}),
    ("no subprotocol", dict(headers=without("Sec-WebSocket-Protocol")), 400, {"sec-websocket-protocol": "sip"}),
    ("sips is not sip", dict(headers=with_("Sec-WebSocket-Protocol", "sips, msrp")), 400, {"sec-websocket-protocol": "sip"}),
    ("sip as substring", dict(headers=with_("Sec-WebSocket-Protocol", "xsipx")), 400, {"sec-websocket-protocol": "sip"}),
    ("no Origin", dict(headers=without("Origin")), 403, {}),
    ("garbage", dict(raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"), 400, {}),
]


@pytest.mark.parametrize("name, kwargs, status, headers", REFUSALS, ids=[r[0] for r in REFUSALS])
@pytest_twisted.inlineCallbacks
def test_refusals(sipws_factory, sipws_log, name, kwargs, status, headers):
    root = sipws_factory()
    got_status, got_headers, raw = yield in_thread(exchange, port_of(root), **kwargs)
    assert got_status == status
    for key, value in headers.items():
        assert got_headers[key] == value
    assert "server" not in got_headers
    assert b"autobahn" not in raw.lower() and b"<html" not in raw.lower()
    yield wait_for(lambda: len(root.connections) == 0)
    refused = [line for line in sipws_log if "handshake refused from 127.0.0.1:" in line]
    assert len(refused) == 1 and f"status={status}" in refused[0]
    assert root.stats.get("ws.handshakes_failed") == 1


@pytest_twisted.inlineCallbacks
def test_accept_carries_sip_subprotocol_and_no_banner(sipws_factory):
    root = sipws_factory()
    status, headers, _ = yield in_thread(exchange, port_of(root),
                                         headers=with_("Sec-WebSocket-Protocol", "foo, sip"))
    assert status == 101
    assert headers["sec-websocket-protocol"] == "sip"
    assert "server" not in headers
    assert "access-control-allow-origin" not in headers


@pytest_twisted.inlineCallbacks
def test_permessage_deflate_offer_is_declined_not_fatal(sipws_factory):
    """Node's ws (SIP.js) and browsers offer compression; sipws accepts the
    connection without it (the offer must not break the handshake)."""
    root = sipws_factory()
    status, headers, _ = yield in_thread(
        exchange, port_of(root),
        headers=with_("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"))
    assert status == 101
    assert "sec-websocket-extensions" not in headers


@pytest.mark.parametrize(
    "allowed, origin, status",
    [
        (["https://phone.example.com"], "https://phone.example.com", 101),
        (["https://phone.example.com"], "https://evil.example.com", 403),
        (["https://*.example.com"], "https://a.b.example.com", 101),
        (["https://*.example.com"], "https://example.com", 403),
        (["https://*.example.com"], "http://a.example.com", 403),
        (["https://*.example.com"], "https://evilexample.com", 403),
        ([], "null", 101),
        (["https://phone.example.com"], "null", 403),
        (["null"], "null", 101),
    ],
)
@pytest_twisted.inlineCallbacks
def test_allowed_origins(sipws_factory, allowed, origin, status):
    root = sipws_factory({"http": {"allowed_origins": allowed}})
    got, _, _ = yield in_thread(exchange, port_of(root), headers=good_headers(origin=origin))
    assert got == status


@pytest_twisted.inlineCallbacks
def test_origin_optional_when_not_required(sipws_factory):
    root = sipws_factory({"http": {"require_origin": False}})
    got, _, _ = yield in_thread(exchange, port_of(root), headers=good_headers(origin=None))
    assert got == 101


@pytest.mark.parametrize(
    "mode, origin, expected",
    [(0, "https://a.example", None), (1, "https://a.example", "*"), (2, "https://a.example", "https://a.example"),
     (2, None, None)],
)
@pytest_twisted.inlineCallbacks
def test_cors_mode(sipws_factory, mode, origin, expected):
    root = sipws_factory({"http": {"cors_mode": mode, "require_origin": False}})
    status, headers, _ = yield in_thread(exchange, port_of(root), headers=good_headers(origin=origin))
    assert status == 101
    assert headers.get("access-control-allow-origin") == expected


@pytest_twisted.inlineCallbacks
def test_disabled_server_refuses_new_but_keeps_open_connections(sipws_factory):
    root = sipws_factory()
    port = port_of(root)
    opened = RawWs(port)
    yield in_thread(opened.upgrade)
    root.set_accepting(False)
    status, _, _ = yield in_thread(exchange, port)
    assert status == 503
    # the connection opened before still works
    received = []
    root.set_message_handler(lambda record, data: received.append(data))
    yield in_thread(opened.send_text, "OPTIONS sip:a SIP/2.0\r\n\r\n")
    yield wait_for(lambda: received)
    root.set_accepting(True)
    status, _, _ = yield in_thread(exchange, port)
    assert status == 101
    opened.shutdown()


def silent_client(port: int) -> bool:
    """Connect, send half a request head, wait: True when the server drops us."""
    try:
        client = RawWs(port)
    except ConnectionResetError:
        # On a starved machine the server's timeout can fire before this thread
        # returns from connect(): the reset then surfaces there. Still a drop.
        return True
    try:
        client.sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        client.sock.settimeout(5)
        return client.sock.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_handshake_timeout_drops_silent_client(sipws_factory, sipws_log):
    root = sipws_factory({"ws": {"handshake_timeout": 0.3}})
    dropped = yield in_thread(silent_client, port_of(root))
    assert dropped, "the server sent data instead of dropping the silent client"
    yield wait_for(lambda: len(root.connections) == 0)
    assert any("handshake timeout from 127.0.0.1:" in line for line in sipws_log), sipws_log[-10:]


@pytest_twisted.inlineCallbacks
def test_oversized_head_gets_431(sipws_factory):
    root = sipws_factory()
    headers = good_headers()
    headers["X-Padding"] = "a" * 9000
    status, _, _ = yield in_thread(exchange, port_of(root), headers=headers)
    assert status == 431
    yield wait_for(lambda: len(root.connections) == 0)


@pytest_twisted.inlineCallbacks
def test_endless_head_without_blank_line_gets_431(sipws_factory):
    root = sipws_factory()

    def flood(port):
        client = RawWs(port)
        try:
            client.sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 1200)
            return client.read_response()[0]
        finally:
            client.shutdown()

    status = yield in_thread(flood, port_of(root))
    assert status == 431
