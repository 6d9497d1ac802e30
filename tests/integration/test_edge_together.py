"""The edge mechanisms together, on real sockets: per-source limits, bans and auth act on the
client address a PROXY header or a trusted proxy's X-Forwarded-For named, not on the
balancer's.

127.0.0.2 plays the balancer (listed in proxy_protocol_from / trusted_proxies); the
clients it speaks for are documentation addresses (198.51.100.0/24).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time

import pytest_twisted

from sipws.edge.proxy_header import build_v2
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.test_admin import ADMIN, admin_port, result
from tests.integration.test_client_addresses import LISTED, entry_for, upgrade
from tests.integration.wsclient import TIMEOUT, good_headers

ALICE = ("198.51.100.7", 4711)
BOB = ("198.51.100.8", 4712)
#: Limits that stay out of the way unless a test sets one.
OFF = {"max_connections_per_ip": 0, "handshakes_per_ip_per_second": 0, "messages_per_connection_per_second": 0}


def balanced(limits=None, **sections):
    config = {
        "ws": {"listen": ["127.0.0.1:0"], "proxy_protocol_from": [f"{LISTED}/32"]},
        "http": {"trusted_proxies": [f"{LISTED}/32"]},
        "limits": {**OFF, **(limits or {})},
        "admin": ADMIN,
    }
    config.update(sections)
    return config


def via_proxy(port, client):
    return upgrade(port, build_v2(client, ("127.0.0.1", 80)))


def dropped_via_proxy(port, client):
    """True when a connection whose PROXY header and upgrade request go in one write is
    closed or reset without any HTTP answer."""
    request = "".join(f"{k}: {v}\r\n" for k, v in good_headers().items())
    data = build_v2(client, ("127.0.0.1", 80)) + f"GET / HTTP/1.1\r\n{request}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(LISTED, 0)) as sock:
        sock.sendall(data)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def via_xff(port, address):
    headers = good_headers()
    headers["X-Forwarded-For"] = f"203.0.113.250, {address}"  # the left-most one is the client's claim
    return upgrade(port, headers=headers)


@pytest_twisted.inlineCallbacks
def test_connection_limit_counts_the_address_in_the_proxy_header(sipws_factory, sipws_log):
    root = sipws_factory(balanced({"max_connections_per_ip": 2}))
    port = port_of(root)
    clients = []
    for _ in range(2):
        status, _, client = yield in_thread(via_proxy, port, ALICE)
        assert status == 101
        clients.append(client)
    status, _, client = yield in_thread(via_proxy, port, ALICE)
    client.shutdown()
    assert status == 429
    # the balancer's own address is not what is counted: another client through it passes
    status, _, other = yield in_thread(via_proxy, port, BOB)
    assert status == 101
    refused = [line for line in sipws_log if "status=429" in line]
    assert len(refused) == 1 and "refused from 198.51.100.7:4711" in refused[0], refused
    for client in clients + [other]:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_a_banned_client_behind_a_proxy_header_is_dropped_others_pass(sipws_factory, no_unhandled_errors):
    root = sipws_factory(balanced())
    port, admin = port_of(root), admin_port(root)
    status, _, alice = yield in_thread(via_proxy, port, ALICE)
    assert status == 101
    answer = yield result(admin, "ws.ban", ["198.51.100.7", 60])
    assert answer["closed"] == 1  # the open connection named by its real address
    yield wait_for(lambda: entry_for(root, "198.51.100.7:4711") is None)
    alice.shutdown()
    assert (yield in_thread(dropped_via_proxy, port, ALICE))
    assert root.stats.get("limits.banned_dropped") == 1
    status, _, bob = yield in_thread(via_proxy, port, BOB)
    assert status == 101  # the balancer is not banned, only the client behind it
    bob.shutdown()
    # the request after the header reached nobody: no exception logged
    assert not no_unhandled_errors, no_unhandled_errors[0]


@pytest_twisted.inlineCallbacks
def test_a_banned_client_named_by_x_forwarded_for_gets_403(sipws_factory, sipws_log):
    config = balanced()
    config["ws"].pop("proxy_protocol_from")  # an HTTP reverse proxy: no PROXY header
    root = sipws_factory(config)
    port, admin = port_of(root), admin_port(root)
    yield result(admin, "ws.ban", ["198.51.100.9", 60])
    status, _, client = yield in_thread(via_xff, port, "198.51.100.9")
    client.shutdown()
    assert status == 403
    assert root.stats.get("limits.banned_refused") == 1
    assert any("refused from 198.51.100.9:0" in line and "status=403" in line for line in sipws_log), sipws_log
    status, _, client = yield in_thread(via_xff, port, "198.51.100.10")
    assert status == 101
    assert entry_for(root, "198.51.100.10:0")["proxy_peer"].startswith(f"{LISTED}:")
    client.shutdown()


def hmac_credential(secret: str, user: str, lifetime: int = 300) -> tuple[str, str]:
    username = f"{int(time.time()) + lifetime}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha256).digest()
    return username, base64.b64encode(digest).decode()


@pytest_twisted.inlineCallbacks
def test_auth_refusals_and_identities_name_the_real_client(sipws_factory, sipws_log):
    secret = "a-secret-for-the-edge-together-test"
    root = sipws_factory(balanced(auth={"required": True, "hmac_secrets": [secret]}))
    port = port_of(root)
    username, credential = hmac_credential(secret, "alice")
    from urllib.parse import urlencode

    def authed(client, query):
        from tests.integration.wsclient import RawWs

        ws = RawWs(port, source=LISTED, preamble=build_v2(client, ("127.0.0.1", 80)))
        status, _, _ = ws.request(path="/?" + urlencode(query))
        return status, ws

    status, alice = yield in_thread(authed, ALICE, {"username": username, "credential": credential})
    assert status == 101
    assert entry_for(root, "198.51.100.7:4711")["identity"] == "alice"
    status, bob = yield in_thread(authed, BOB, {"username": username, "credential": "Zm9yZ2Vk"})
    bob.shutdown()
    assert status == 403
    refused = [line for line in sipws_log if "status=403" in line]
    assert len(refused) == 1 and "refused from 198.51.100.8:4712" in refused[0], refused
    assert credential not in "\n".join(sipws_log)
    alice.shutdown()
