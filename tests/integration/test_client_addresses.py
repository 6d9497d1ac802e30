"""Real client addresses on real sockets: PROXY v1/v2 from listed senders, X-Forwarded-For /
Forwarded from trusted proxies.

Clients bind their socket to 127.0.0.2 ("listed": a load balancer) or 127.0.0.1 ("not
listed") so that one test machine plays both.  The address a client claims through a
header is from the documentation ranges (198.51.100.0/24, 2001:db8::/32).
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted

from sipws.admin import methods
from sipws.edge.proxy_header import build_v1, build_v2
from sipws.trace import hep
from tests.integration.conftest import in_thread, port_of, sleep, wait_for
from tests.integration.sipcore import ws_request
from tests.integration import test_relay, test_tls_alpn, test_trace
from tests.integration.test_relay import relay_config
from tests.integration.test_tls_alpn import context, tls_listeners
from tests.integration.test_trace import raw_request
from tests.integration.wsclient import TIMEOUT, RawWs, good_headers

LISTED = "127.0.0.2"
UNLISTED = "127.0.0.1"
CLIENT = ("198.51.100.7", 4711)
CLIENT6 = ("2001:db8::7", 5070)

#: Fixtures of other modules used here: a UDP SIP core, a test CA, a HEP collector.
core = test_relay.core
pki = test_tls_alpn.pki
udp_collector = test_trace.udp_collector


def proxied(**sections):
    """Config with 127.0.0.2 as the only PROXY sender on ws (and wss when given)."""
    config = {"ws": {"listen": ["127.0.0.1:0"], "proxy_protocol_from": [f"{LISTED}/32"]}}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def upgrade(port, preamble=b"", source=LISTED, tls=None, headers=None):
    """Connect from ``source``, send ``preamble`` (a PROXY header), then the upgrade;
    returns (status, the client's local port); the client stays open (returned third)."""
    client = RawWs(port, source=source, preamble=preamble, tls=tls)
    status, _, _ = client.request(headers=headers)
    return status, client.sock.getsockname()[1], client


def send_raw_and_read(port, data, source=LISTED, pieces=1, pause=0.0):
    """Send ``data`` in ``pieces`` writes with TCP_NODELAY; returns (what came back, closed?)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local_port = sock.getsockname()[1]
    try:
        size = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), size):
            sock.sendall(data[start:start + size])
            if pause:
                time.sleep(pause)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    return received, True, local_port
                received += chunk
        except ConnectionResetError:
            return received, True, local_port
        return received, False, local_port
    finally:
        sock.close()


def wait_closed(port, preamble, source=LISTED, close_first=False):
    """Connect, send ``preamble`` only, and wait for the server to drop the connection
    (``close_first``: the client closes its side first, as a health check does)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
    local_port = sock.getsockname()[1]
    try:
        if preamble:
            sock.sendall(preamble)
        if close_first:
            sock.shutdown(socket.SHUT_WR)
        try:
            return sock.recv(100), local_port
        except ConnectionResetError:
            return b"", local_port
    finally:
        sock.close()


def entry_for(root, remote):
    for entry in methods.ws_dump(root)["connections"]:
        if entry["remote"] == remote:
            return entry
    return None


def shut(client):
    client.shutdown()


# -- PROXY protocol on ws ----------------------------------------------------------------


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1", "v2"])
@pytest_twisted.inlineCallbacks
def test_proxy_header_gives_the_client_address(sipws_factory, sipws_log, build):
    root = sipws_factory(proxied())
    status, local_port, client = yield in_thread(upgrade, port_of(root), build(CLIENT, ("127.0.0.1", 80)))
    assert status == 101
    entry = entry_for(root, "198.51.100.7:4711")
    assert entry is not None, methods.ws_dump(root)
    assert entry["proxy_peer"] == f"{LISTED}:{local_port}" and entry["state"] == "open"
    [opened] = [line for line in sipws_log if line.startswith("opened ")]
    assert "ws 198.51.100.7:4711->127.0.0.1:" in opened and f" via {LISTED}:{local_port}" in opened
    yield in_thread(shut, client)
    yield wait_for(lambda: len(root.connections) == 0)
    assert root.stats.get("ws.proxy_header_failed") == 0


@pytest_twisted.inlineCallbacks
def test_proxy_v2_ipv6_client(sipws_factory):
    root = sipws_factory(proxied())
    status, _, client = yield in_thread(upgrade, port_of(root), build_v2(CLIENT6, ("::1", 80), b"\x05\x00\x02id"))
    assert status == 101
    assert entry_for(root, "[2001:db8::7]:5070") is not None
    client.shutdown()


@pytest.mark.parametrize("header", [build_v1(None), build_v2(None)], ids=["v1-unknown", "v2-local"])
@pytest_twisted.inlineCallbacks
def test_health_checks_keep_the_socket_address(sipws_factory, header):
    root = sipws_factory(proxied())
    status, local_port, client = yield in_thread(upgrade, port_of(root), header)
    assert status == 101
    entry = entry_for(root, f"{LISTED}:{local_port}")
    assert entry is not None and entry["proxy_peer"] is None
    assert root.stats.get("ws.proxy_header_local") == 1
    client.shutdown()


@pytest.mark.parametrize("header", [build_v1(None), build_v2(None)], ids=["v1-unknown", "v2-local"])
@pytest_twisted.inlineCallbacks
def test_health_check_leaves_no_record_and_no_log_line(sipws_factory, sipws_log, header):
    root = sipws_factory(proxied())
    added = []
    root.connections.on_added(added.append)
    answer, _ = yield in_thread(wait_closed, port_of(root), header, LISTED, True)
    assert answer == b""
    yield wait_for(lambda: root.stats.get("ws.proxy_header_local") == 1)
    yield sleep(0.1)
    assert added == [] and root.stats.get("ws.proxy_header_failed") == 0
    assert not [line for line in sipws_log if line.startswith(("closed ", "proxy header refused"))]


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1", "v2"])
@pytest_twisted.inlineCallbacks
def test_header_and_request_in_one_read_and_split_over_many(sipws_factory, build):
    root = sipws_factory(proxied())
    data = build(CLIENT) + raw_request()
    answer, closed, _ = yield in_thread(send_raw_and_read, port_of(root), data)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    # byte by byte: the header arrives in many reads, the request right after it
    answer, closed, _ = yield in_thread(send_raw_and_read, port_of(root), data, pieces=len(data) // 3, pause=0.002)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    assert root.stats.get("ws.handshakes_ok") == 2 and root.stats.get("ws.proxy_header_failed") == 0


@pytest.mark.parametrize("data, reason", [
    (raw_request(), "reason=not a PROXY header: b'GET / HTTP/1.1"),             # header missing
    (b"PROXY TCP4 198.51.100.7 1 2\r\n" + raw_request(), "reason=v1 TCP4 header needs 6 fields, got 5"),
    (b"PROXY TCP4 198.51.100.777 127.0.0.1 1 2\r\n", "reason=v1 source address is not IPv4"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12), "reason=v2 signature with version 3"),
])
@pytest_twisted.inlineCallbacks
def test_garbled_or_missing_header_is_dropped_logged_counted(sipws_factory, sipws_log, data, reason):
    root = sipws_factory(proxied())
    answer, closed, local_port = yield in_thread(send_raw_and_read, port_of(root), data)
    assert (answer, closed) == (b"", True)
    yield wait_for(lambda: root.stats.get("ws.proxy_header_failed") == 1)
    refused = [line for line in sipws_log if line.startswith("proxy header refused from ")]
    assert len(refused) == 1
    assert refused[0].startswith(f"proxy header refused from {LISTED}:{local_port} {reason}"), refused
    assert len(root.connections) == 0 and root.stats.get("ws.handshakes_ok") == 0


@pytest_twisted.inlineCallbacks
def test_silent_listed_sender_dropped_after_handshake_timeout(sipws_factory, sipws_log):
    root = sipws_factory(proxied(ws={"handshake_timeout": 0.5}))
    started = time.monotonic()
    answer, local_port = yield in_thread(wait_closed, port_of(root), b"PROXY TCP4 198.51")
    assert answer == b"" and time.monotonic() - started < TIMEOUT - 1
    yield wait_for(lambda: root.stats.get("ws.proxy_header_failed") == 1)
    assert any(line.startswith(f"proxy header refused from {LISTED}:{local_port} reason=no PROXY header within 0.5 s")
               for line in sipws_log), sipws_log


@pytest_twisted.inlineCallbacks
def test_unlisted_source_gets_no_proxy_parsing(sipws_factory, sipws_log):
    root = sipws_factory(proxied())
    # a PROXY header from a source not in the list is just bytes: a bad HTTP request
    answer, _, local_port = yield in_thread(send_raw_and_read, port_of(root), build_v1(CLIENT) + raw_request(),
                                            UNLISTED)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert any(line.startswith(f"handshake refused from {UNLISTED}:{local_port} status=400") for line in sipws_log)
    assert root.stats.get("ws.proxy_header_failed") == 0
    # and a plain upgrade from it works, with its own address
    status, local_port, client = yield in_thread(upgrade, port_of(root), b"", UNLISTED)
    assert status == 101
    entry = entry_for(root, f"{UNLISTED}:{local_port}")
    assert entry is not None and entry["proxy_peer"] is None
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_without_the_key_a_proxy_header_is_a_bad_request(sipws_factory):
    root = sipws_factory()
    answer, _, _ = yield in_thread(send_raw_and_read, port_of(root), build_v2(CLIENT) + raw_request())
    assert answer.startswith(b"HTTP/1.1 400"), answer


# -- where the address shows: HEP and the SIP Via ------------------------------------------


@pytest_twisted.inlineCallbacks
def test_hep_events_carry_the_client_address(sipws_factory, udp_collector):
    root = sipws_factory(proxied(trace={"destination": f"udp:127.0.0.1:{udp_collector.port}", "on": True}))
    status, local_port, client = yield in_thread(upgrade, port_of(root), build_v2(CLIENT))
    assert status == 101
    yield wait_for(lambda: any(p.proto_type == hep.PROTO_NET for p in udp_collector.packets))
    [accepted] = [p for p in udp_collector.packets if p.proto_type == hep.PROTO_NET]
    assert (accepted.src_ipv4, accepted.src_port) == CLIENT
    assert json.loads(accepted.payload)["remote"] == "198.51.100.7:4711"
    client.shutdown()


def register(client):
    client.send_text(ws_request("REGISTER", "addr-1", ruri="sip:example.com",
                                extra="Contact: <sip:a@df7jal23ls0d.invalid;transport=ws>"))


@pytest_twisted.inlineCallbacks
def test_via_received_is_the_client_address(sipws_factory, core):
    root = sipws_factory(proxied(**relay_config("udp", core.number)))
    status, _, client = yield in_thread(upgrade, port_of(root), build_v1(CLIENT))
    assert status == 101
    yield in_thread(register, client)
    request, _, _ = yield core.next()
    assert request.vias[1].received == "198.51.100.7"
    client.shutdown()


# -- wss: the header before TLS, ALPN as browsers offer it ---------------------------------


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1", "v2"])
@pytest_twisted.inlineCallbacks
def test_wss_header_before_tls_with_browser_alpn(sipws_factory, sipws_log, pki, build):
    ca, server = pki
    listeners = tls_listeners(server)
    listeners["wss"]["proxy_protocol_from"] = [f"{LISTED}/32"]
    root = sipws_factory(listeners)
    port = port_of(root, "wss")

    def browser(preamble, source):
        client = RawWs(port, tls=context(ca, ["http/1.1"]), server_hostname="127.0.0.1",
                       source=source, preamble=preamble)
        status, _, _ = client.request()
        return status, client.sock.selected_alpn_protocol(), client.sock.getsockname()[1], client

    status, alpn, local_port, client = yield in_thread(browser, build(CLIENT), LISTED)
    assert (status, alpn) == (101, "http/1.1")
    entry = entry_for(root, "198.51.100.7:4711")
    assert entry is not None and entry["transport"] == "wss" and entry["proxy_peer"] == f"{LISTED}:{local_port}"
    client.shutdown()
    # a listed sender starting with TLS (no header) is dropped and logged
    answer, closed, local_port = yield in_thread(send_raw_and_read, port, b"\x16\x03\x01\x02\x00\x01\x00")
    assert (answer, closed) == (b"", True)
    yield wait_for(lambda: root.stats.get("ws.proxy_header_failed") == 1)
    assert any(line.startswith(f"proxy header refused from {LISTED}:{local_port} reason=not a PROXY header")
               and "listener=wss" in line for line in sipws_log)
    # an unlisted client goes straight to TLS
    status, alpn, local_port, client = yield in_thread(browser, b"", UNLISTED)
    assert (status, alpn) == (101, "http/1.1")
    assert entry_for(root, f"{UNLISTED}:{local_port}") is not None
    client.shutdown()


# -- [http] trusted_proxies ------------------------------------------------------------------


def with_headers(**extra):
    headers = good_headers()
    for name, value in extra.items():
        headers[name.replace("_", "-").title()] = value
    return headers


@pytest_twisted.inlineCallbacks
def test_x_forwarded_for_from_a_trusted_proxy(sipws_factory, sipws_log):
    root = sipws_factory({"http": {"trusted_proxies": [f"{LISTED}/32", "10.0.0.0/8"]}})
    # a spoofed left-most entry, the real client, then a second trusted proxy
    headers = with_headers(x_forwarded_for="6.6.6.6, 198.51.100.9, 10.1.2.3")
    status, local_port, client = yield in_thread(upgrade, port_of(root), b"", LISTED, None, headers)
    assert status == 101
    entry = entry_for(root, "198.51.100.9:0")
    assert entry is not None and entry["proxy_peer"] == f"{LISTED}:{local_port}", methods.ws_dump(root)
    assert entry_for(root, "6.6.6.6:0") is None
    assert any(line.startswith("opened ") and "198.51.100.9:0->127.0.0.1:" in line
               and f"via {LISTED}:{local_port}" in line for line in sipws_log)
    client.shutdown()
    yield wait_for(lambda: len(root.connections) == 0)  # the re-indexed record left the table
    assert root.connections.by_address("198.51.100.9", 0, "ws") is None


@pytest_twisted.inlineCallbacks
def test_forwarded_header_and_refusal_log_name_the_client(sipws_factory, sipws_log):
    root = sipws_factory({"http": {"trusted_proxies": [f"{LISTED}/32"]}})
    headers = with_headers(forwarded='for="[2001:db8::9]:4711";proto=https')
    status, _, client = yield in_thread(upgrade, port_of(root), b"", LISTED, None, headers)
    assert status == 101
    assert entry_for(root, "[2001:db8::9]:4711") is not None
    client.shutdown()
    headers = with_headers(x_forwarded_for="198.51.100.9")
    del headers["Origin"]  # refused: 403, logged with the client's address
    status, _, client = yield in_thread(upgrade, port_of(root), b"", LISTED, None, headers)
    assert status == 403
    assert any(line.startswith("handshake refused from 198.51.100.9:0 status=403") for line in sipws_log)
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_untrusted_sender_x_forwarded_for_ignored(sipws_factory):
    root = sipws_factory({"http": {"trusted_proxies": [f"{LISTED}/32"]}})
    headers = with_headers(x_forwarded_for="198.51.100.9")
    status, local_port, client = yield in_thread(upgrade, port_of(root), b"", UNLISTED, None, headers)
    assert status == 101
    entry = entry_for(root, f"{UNLISTED}:{local_port}")
    assert entry is not None and entry["proxy_peer"] is None
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_malformed_x_forwarded_for_keeps_the_peer_and_says_why(sipws_factory, sipws_log):
    root = sipws_factory({"http": {"trusted_proxies": [f"{LISTED}/32"]}})
    headers = with_headers(x_forwarded_for="198.51.100.9, not-an-address")
    status, local_port, client = yield in_thread(upgrade, port_of(root), b"", LISTED, None, headers)
    assert status == 101
    assert entry_for(root, f"{LISTED}:{local_port}") is not None
    assert root.stats.get("ws.forwarded_ignored") == 1
    assert any(line.startswith(f"forwarded header ignored from {LISTED}:{local_port} reason=x-forwarded-for: "
                               "not an address") for line in sipws_log), sipws_log
    client.shutdown()


@pytest_twisted.inlineCallbacks
def test_proxy_header_then_x_forwarded_for(sipws_factory):
    """HAProxy (TCP, PROXY) in front of nginx (HTTP, X-Forwarded-For): the PROXY header
    names nginx, which is trusted, and nginx names the client."""
    root = sipws_factory(proxied(http={"trusted_proxies": ["10.0.0.0/8"]}))
    headers = with_headers(x_forwarded_for="6.6.6.6, 198.51.100.9")
    status, local_port, client = yield in_thread(upgrade, port_of(root), build_v2(("10.0.0.5", 33000)),
                                                 LISTED, None, headers)
    assert status == 101
    entry = entry_for(root, "198.51.100.9:0")
    assert entry is not None and entry["proxy_peer"] == f"{LISTED}:{local_port}", methods.ws_dump(root)
    client.shutdown()
