"""Bad input is normal input: mangled MSRP on WebSocket and on the [msrp] listen socket
never raises in sipws (the suite fails a test during which Twisted logs an unhandled
error), each connection ends answered or closed, and sipws keeps relaying."""

from __future__ import annotations

import random
import socket

import pytest_twisted

from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.msrp_client import MsrpWs, build_request, relay_uri, tid

SEED = 7977
CASES = 60
TIMEOUT = 5.0

GOOD = build_request("SEND", "a1b2c3d4", ["msrp://127.0.0.1:1/s;tcp", "msrp://b.invalid/x;ws"],
                     ["msrp://a.invalid:2855/y;ws"],
                     [("Message-ID", "m"), ("Byte-Range", "1-5/5"), ("Content-Type", "text/plain")], b"hello")


def mangled(rng: random.Random) -> bytes:
    data = bytearray(GOOD)
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # cut
        del data[rng.randrange(1, len(data)):]
    elif kind == 2:  # splice in noise
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    elif kind == 3:  # huge header values and many paths
        data = bytearray(build_request("SEND", "t" * rng.randint(1, 40), ["msrp://h/s;tcp"] * rng.randint(1, 40),
                                       ["msrp://x" + "y" * rng.randint(0, 2000) + "/z;ws"]))
    else:  # pure noise
        data = bytearray(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
    return bytes(data)


def ws_garbage(port: int) -> tuple[int, int | None]:
    rng = random.Random(SEED)
    sent = 0
    client = MsrpWs(port, "fuzz")
    try:
        client.open()
        assert client.auth(relay_uri(port, tls=False)).status == 200
        for _ in range(CASES):
            try:
                client.send_msrp(mangled(rng))
            except OSError:
                break
            sent += 1
        try:
            code, _ = client.expect_close()
        except (ConnectionError, OSError, AssertionError):
            code = None
        return sent, code
    finally:
        client.shutdown()


def tcp_garbage(port: int) -> int:
    rng = random.Random(SEED + 1)
    closed = 0
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            try:
                for _ in range(5):
                    sock.sendall(mangled(rng))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
                closed += 1
            except OSError:
                closed += 1
    return closed


@pytest_twisted.inlineCallbacks
def test_mangled_msrp_never_raises_and_the_relay_keeps_working(sipws_factory):
    root = sipws_factory({"ws": {"subprotocols": ["msrp"]},
                          "msrp": {"allow_insecure": True, "listen": ["tcp:127.0.0.1:0"]}})
    port = port_of(root)
    sent, code = yield in_thread(ws_garbage, port)
    assert sent > 0 and code == 1002  # more than 10 malformed messages: closed
    closed = yield in_thread(tcp_garbage, port_of(root, "msrp-tcp"))
    assert closed == 10
    yield wait_for(lambda: root.msrp.pool.stats_snapshot()["peer_connections"] == 0)
    assert root.msrp.relay.counters["msrp.malformed"] > 10
    # and afterwards two clients still exchange a message
    alice, bob = MsrpWs(port, "alice"), MsrpWs(port, "bob")

    def exchange():
        for client in (alice, bob):
            client.open()
            assert client.auth(relay_uri(port, tls=False)).status == 200
        alice.send_msrp(build_request("SEND", tid(), [alice.use_path, bob.use_path, bob.uri], [alice.uri],
                                      [("Message-ID", "ok"), ("Byte-Range", "1-2/2"), ("Content-Type", "text/plain")],
                                      b"ok"))
        return bob.expect(lambda m: m.method == "SEND", "SEND")
    try:
        received = yield in_thread(exchange)
        assert received.body == b"ok"
    finally:
        alice.shutdown()
        bob.shutdown()
