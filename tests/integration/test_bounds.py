"""Every buffer has a bound: each I/O row of docs/websocket.md "Bounds", driven to its limit
on real sockets on 127.0.0.1.

Rows already driven to their limit elsewhere in the suite are not repeated here:

- handshake head over MAX_HEAD_SIZE → 431: tests/integration/test_ws_handshake.py
  ``test_oversized_head_gets_431``, ``test_endless_head_without_blank_line_gets_431``
  (this file adds the exact boundary);
- frames and bytes per message over ``max_msg_chunks`` / ``max_message_size`` → 1009, control
  frame over 125 bytes → 1002: tests/integration/test_ws_framing.py
  ``test_violations_close_with_rfc_code`` (this file adds "exactly at the limit passes");
- control frame declaring 2**40 bytes, input discarded after failing:
  tests/integration/test_ws_close_hardening.py ``test_control_frame_declaring_2_to_the_40_is_not_buffered``;
- a peer that stops reading → aborted after ``send_timeout``:
  tests/integration/test_ws_lifecycle.py ``test_peer_that_stops_reading_is_closed_after_send_timeout``;
- client role, ``max_queued_messages``: tests/integration/test_ws_client.py ``test_queue_bound``
  (this file adds ``max_queued_bytes``);
- HEP queue (``[trace] queue_size``) toward a stalled TCP collector:
  tests/integration/test_trace.py ``test_backed_up_tcp_collector_queues_then_drops_and_counts``;
- admin body over 64 KiB → 413: tests/integration/test_admin.py ``test_http_refusals``
  (this file adds the drop past MAX_DISCARD).

Every wait has a timeout; the whole file runs in a few seconds.
"""

from __future__ import annotations

import http.client
import socket
import struct
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from sipws.admin import rpc
from sipws.sip import parse
from sipws.sip.limits import Limits
from sipws.stats import Stats
from sipws.transport import handshake, sip_stream, static_files
from sipws.transport.sip_stream import MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES, StreamPool
from sipws.transport.ws_client import ClientConnectError, WsTarget
from tests.integration.conftest import WAIT, in_thread, port_of, sleep, wait_for
from tests.integration.wsclient import RawWs, good_headers

SIP_HEAD = (b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-%d\r\n"
            b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
            b"Call-ID: bounds-%d\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: %d\r\n\r\n")


def sip_message(n: int, total: int) -> bytes:
    """A framed SIP MESSAGE of exactly ``total`` bytes."""
    body_len = total - len(SIP_HEAD % (n, n, 0))
    for _ in range(3):  # the length's digits change the head's length
        head = SIP_HEAD % (n, n, body_len)
        body_len = total - len(head)
    message = SIP_HEAD % (n, n, body_len) + b"x" * body_len
    assert len(message) == total
    return message


# -- the opening handshake head (MAX_HEAD_SIZE → 431) ---------------------------------------


def head_of(size: int, headers: dict[str, str]) -> bytes:
    """A request head of exactly ``size`` bytes (padding in one X-Pad header)."""
    lines = ["GET / HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()] + ["X-Pad: "]
    bare = len(("\r\n".join(lines) + "\r\n\r\n").encode())
    lines[-1] += "a" * (size - bare)
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    assert len(raw) == size
    return raw


def status_for(port: int, raw: bytes) -> int:
    client = RawWs(port)
    try:
        return client.request(raw=raw)[0]
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_handshake_head_exactly_at_the_limit_passes_one_byte_more_gets_431(sipws_factory):
    root = sipws_factory()
    port = port_of(root)
    status = yield in_thread(status_for, port, head_of(handshake.MAX_HEAD_SIZE, good_headers()))
    assert status == 101
    status = yield in_thread(status_for, port, head_of(handshake.MAX_HEAD_SIZE + 1, good_headers()))
    assert status == 431
    yield wait_for(lambda: len(root.connections) == 0)


# -- static files: the same head limit, the file size, and the output ----------------------


@pytest_twisted.inlineCallbacks
def test_static_file_request_head_over_the_limit_gets_431(sipws_factory, tmp_path):
    (tmp_path / "index.html").write_text("<p>hi</p>")
    root = sipws_factory({"http": {"document_root": str(tmp_path)}})
    port = port_of(root)
    plain = {"Host": "127.0.0.1"}
    status = yield in_thread(status_for, port, head_of(handshake.MAX_HEAD_SIZE, plain))
    assert status == 200
    status = yield in_thread(status_for, port, head_of(handshake.MAX_HEAD_SIZE + 1, plain))
    assert status == 431
    assert root.stats.get("http.static_200") == 1


def fetch(port: int, path: str) -> tuple[int, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, len(response.read())
    finally:
        connection.close()


@pytest_twisted.inlineCallbacks
def test_static_file_exactly_max_file_size_served_one_byte_more_413(sipws_factory, tmp_path):
    (tmp_path / "fits.bin").write_bytes(b"\0" * static_files.MAX_FILE_SIZE)
    (tmp_path / "over.bin").write_bytes(b"\0" * (static_files.MAX_FILE_SIZE + 1))
    root = sipws_factory({"http": {"document_root": str(tmp_path)}})
    got = yield in_thread(fetch, port_of(root), "/fits.bin")
    assert got == (200, static_files.MAX_FILE_SIZE)
    yield wait_for(lambda: len(root.connections) == 0)
    got = yield in_thread(fetch, port_of(root), "/over.bin")
    assert got == (413, 0)
    yield wait_for(lambda: len(root.connections) == 0)


def stalled_get(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock  # never read


@pytest_twisted.inlineCallbacks
def test_static_file_to_a_reader_that_stops_is_aborted_after_send_timeout(sipws_factory, tmp_path):
    """A 4 MiB answer is written at once; a client that never reads holds it only for send_timeout."""
    (tmp_path / "big.bin").write_bytes(b"\0" * static_files.MAX_FILE_SIZE)
    root = sipws_factory({"http": {"document_root": str(tmp_path)}, "ws": {"send_timeout": 0.5},
                          "keepalive": {"interval": 0.05}})
    sock = yield in_thread(stalled_get, port_of(root), "/big.bin")
    try:
        yield wait_for(lambda: root.stats.get("ws.send_timeouts") == 1, timeout=WAIT)
        yield wait_for(lambda: len(root.connections) == 0)
    finally:
        sock.close()


# -- frames and messages: exactly at the limits passes -------------------------------------


def echo_root(sipws_factory, overrides):
    root = sipws_factory(overrides)
    root.set_message_handler(lambda record, data: record.protocol.send_message(data))
    return root


def send_frames(port: int, frames: list[dict]) -> tuple[int, bytes]:
    client = RawWs(port)
    try:
        client.upgrade()
        for frame in frames:
            client.send_frame(**frame)
        return client.read_data()
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_message_of_exactly_max_message_size_in_max_msg_chunks_frames_passes(sipws_factory):
    root = echo_root(sipws_factory, {"ws": {"max_message_size": 1024, "max_msg_chunks": 4}})
    whole = yield in_thread(send_frames, port_of(root), [dict(opcode=2, payload=b"x" * 1024)])
    assert whole[1] == b"x" * 1024
    parts = [dict(opcode=2, payload=b"y" * 256, fin=False)] + [dict(opcode=0, payload=b"y" * 256, fin=False)] * 2
    parts.append(dict(opcode=0, payload=b"y" * 256))
    fragmented = yield in_thread(send_frames, port_of(root), parts)
    assert fragmented[1] == b"y" * 1024


def ping_of(port: int, size: int) -> tuple[int, bytes]:
    client = RawWs(port)
    try:
        client.upgrade()
        client.send_frame(opcode=0x9, payload=b"p" * size)
        _, opcode, payload = client.read_frame()
        return opcode, payload
    finally:
        client.shutdown()


@pytest_twisted.inlineCallbacks
def test_ping_of_exactly_125_bytes_is_answered(sipws_factory):
    root = sipws_factory()
    got = yield in_thread(ping_of, port_of(root), 125)
    assert got == (0xA, b"p" * 125)


# -- the client role's queue while dialling: max_queued_bytes -------------------------------


@pytest_twisted.inlineCallbacks
def test_client_queue_bytes_bound(sipws_factory):
    server = sipws_factory()
    server.received = []
    server.set_message_handler(lambda record, data: server.received.append(data))
    dialler = sipws_factory({"ws": {"listen": []}, "client": {"max_queued_bytes": 1024}})
    where = WsTarget("127.0.0.1", port_of(server), False, "/")
    fits = [dialler.ws_client.send(where, b"a" * 512), dialler.ws_client.send(where, b"b" * 512)]
    with pytest.raises(ClientConnectError) as info:
        yield dialler.ws_client.send(where, b"c")  # one byte over, while still dialling
    assert info.value.status == 503 and "full" in info.value.reason
    assert dialler.stats.get("ws.client_queue_full") == 1
    yield defer.gatherResults(fits).addTimeout(WAIT, reactor)
    yield wait_for(lambda: server.received == [b"a" * 512, b"b" * 512])


# -- SIP over TCP toward the core -------------------------------------------------------------


class _Sink(Protocol):
    """A core connection: keeps what it reads, or reads nothing once ``stalled``."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = bytearray()
        if self.factory.stalled:
            self.transport.pauseProducing()  # stop reading: the kernel buffers fill, then sipws's

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class SinkCore(Factory):
    protocol = _Sink

    def __init__(self, stalled: bool = False) -> None:
        self.stalled = stalled
        self.connections: list[_Sink] = []
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.address = ("127.0.0.1", self.port.getHost().port)

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def close(self) -> defer.Deferred:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)


def make_pool(received=None) -> StreamPool:
    def receiver(data, source, transport, protocol):
        if received is not None:
            received.append(data)

    return StreamPool(reactor, receiver, Stats(), Limits(), lambda name: None, 5.0)


def drop_pool(pool: StreamPool) -> None:
    pool.stop()
    for protocol in list(pool.connections.values()):
        if protocol.transport is not None:
            protocol.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_stream_queue_while_dialling_message_bound():
    core = SinkCore()
    pool = make_pool()
    errors: list[str] = []
    try:
        message = sip_message(0, 300)
        for _ in range(MAX_QUEUED_MESSAGES + 1):  # all before the reactor turns: the dial is still open
            pool.send("tcp", core.address, message, errors.append)
        assert len(errors) == 1 and "full" in errors[0]
        assert pool.stats.get("sip.stream_queue_full") == 1
        total = MAX_QUEUED_MESSAGES * len(message)
        yield wait_for(lambda: core.connections and len(core.connections[0].received) == total)
    finally:
        drop_pool(pool)
        yield core.close()


@pytest_twisted.inlineCallbacks
def test_stream_queue_while_dialling_byte_bound():
    core = SinkCore()
    pool = make_pool()
    errors: list[str] = []
    try:
        big = b"x" * (MAX_QUEUED_BYTES // 64)
        for _ in range(64):  # exactly MAX_QUEUED_BYTES
            pool.send("tcp", core.address, big, errors.append)
        assert errors == []
        pool.send("tcp", core.address, b"y", errors.append)
        assert len(errors) == 1 and "full" in errors[0]
        yield wait_for(lambda: core.connections and len(core.connections[0].received) == MAX_QUEUED_BYTES)
    finally:
        drop_pool(pool)
        yield core.close()


@pytest_twisted.inlineCallbacks
def test_core_that_stops_reading_is_aborted_past_max_output_backlog():
    """A core that reads nothing: sipws writes until MAX_OUTPUT_BACKLOG (the real 8 MiB) has
    piled up behind Twisted's full buffer, then aborts the connection and fails the message."""
    core = SinkCore(stalled=True)
    pool = make_pool()
    errors: list[str] = []
    try:
        message = sip_message(1, 60_000)
        pool.send("tcp", core.address, message, errors.append)
        yield wait_for(lambda: any(p.ready for p in pool.connections.values()))
        (protocol,) = pool.connections.values()
        written = 0
        deadline = time.monotonic() + WAIT
        # A few messages per reactor turn, so the kernel buffers fill first, as with a real stall.
        while not errors and time.monotonic() < deadline:
            for _ in range(8):
                pool.send("tcp", core.address, message, errors.append)
                written += len(message)
            yield sleep(0.001)
        assert errors and "stopped reading" in errors[0]
        assert protocol.aborted and pool.stats.get("sip.stream_backlog_aborts") == 1
        assert protocol.backlog > sip_stream.MAX_OUTPUT_BACKLOG
        yield wait_for(lambda: not pool.connections)
        # the next message dials a fresh connection
        pool.send("tcp", core.address, message, None)
        yield wait_for(lambda: len(core.connections) == 2)
    finally:
        drop_pool(pool)
        yield core.close()


def read_all(server: socket.socket, total: int) -> int:
    """Accept one connection and read ``total`` bytes as fast as the kernel gives them."""
    conn, _ = server.accept()
    with conn:
        conn.settimeout(WAIT)
        got = 0
        while got < total:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        return got


@pytest_twisted.inlineCallbacks
def test_core_that_reads_is_never_aborted():
    """Twice MAX_OUTPUT_BACKLOG to a core that keeps reading (a thread, outside the reactor):
    the buffer drains, the transport resumes, nothing is aborted."""
    server = socket.create_server(("127.0.0.1", 0))
    pool = make_pool()
    errors: list[str] = []
    message = sip_message(2, 60_000)
    count = 2 * sip_stream.MAX_OUTPUT_BACKLOG // len(message) + 1
    reader = in_thread(read_all, server, count * len(message))
    try:
        address = server.getsockname()
        for n in range(count):
            pool.send("tcp", address, message, errors.append)
            if n % 8 == 7:
                yield sleep(0.001)
        got = yield reader
        assert got == count * len(message)
        assert errors == [] and pool.stats.get("sip.stream_backlog_aborts") == 0
    finally:
        drop_pool(pool)
        server.close()


def connect_and_wait_closed(port: int) -> bool:
    """True if the server closed a fresh connection at once (EOF or reset within WAIT).

    The reset may already arrive while connect() returns (the server accepts and
    aborts at once): that is the same refusal, seen a moment earlier.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def connect_and_hold(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


@pytest_twisted.inlineCallbacks
def test_accepted_sip_connections_beyond_max_connections_are_closed(sipws_factory, sipws_log):
    """StreamPool.max_connections is 10,000; lowered to 2 here (10,000 sockets would be too slow)."""
    root = sipws_factory({"sip": {"listen": ["tcp:127.0.0.1:0"]}})
    root.relay.pool.max_connections = 2
    port = root.listening("sip-tcp")[0].getHost().port
    held = []
    for _ in range(2):
        held.append((yield in_thread(connect_and_hold, port)))
    try:
        yield wait_for(lambda: len(root.relay.pool.connections) == 2)
        closed = yield in_thread(connect_and_wait_closed, port)
        assert closed
        assert len(root.relay.pool.connections) == 2
        assert any("refusing a connection from 127.0.0.1" in line for line in sipws_log)
    finally:
        for sock in held:
            sock.close()


# -- UDP: datagrams read whole, [sip] max_message_size → 513 ----------------------------------


def udp_exchange(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(data, ("127.0.0.1", port))
        return sock.recv(65535)


@pytest_twisted.inlineCallbacks
def test_udp_datagram_over_max_message_size_gets_513_and_is_read_whole(sipws_factory):
    """A 20,000-byte datagram is read whole (a read truncated at Twisted's 8 KiB default would
    give 400 for the Content-Length), then refused by [sip] max_message_size with 513."""
    root = sipws_factory({"sip": {"listen": ["udp:127.0.0.1:0"], "max_message_size": 16_000}})
    port = root.listening("sip-udp")[0].getHost().port
    answer = yield in_thread(udp_exchange, port, sip_message(3, 20_000).replace(b"TCP", b"UDP"))
    assert parse(answer).status == 513


# -- stream framing toward the core: [sip] max_message_size → framing error, connection closed --


def send_and_wait_closed(port: int, data: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        try:
            while sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


@pytest_twisted.inlineCallbacks
def test_stream_message_over_max_message_size_closes_the_connection(sipws_factory, sipws_log):
    root = sipws_factory({"sip": {"listen": ["tcp:127.0.0.1:0"], "max_message_size": 1000}})
    port = root.listening("sip-tcp")[0].getHost().port
    closed = yield in_thread(send_and_wait_closed, port, sip_message(4, 1001))
    assert closed and root.stats.get("sip.framing_errors") == 1
    assert any("framing error (message too large)" in line for line in sipws_log)


# -- admin: a body past MAX_DISCARD drops the connection -----------------------------------


def chunked_flood(port: int) -> str:
    """POST a chunked body well past MAX_DISCARD; how the server ended it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            for _ in range(rpc.MAX_DISCARD // 65536 + 64):
                sock.sendall(chunk)
            reply = sock.recv(65536)
            return "reply" if reply else "closed"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except socket.timeout:
            return "timeout"


@pytest_twisted.inlineCallbacks
def test_admin_body_past_max_discard_drops_the_connection(sipws_factory, sipws_log):
    root = sipws_factory({"admin": {"listen": "tcp:0:interface=127.0.0.1"}})
    how = yield in_thread(chunked_flood, port_of(root, "admin"))
    assert how == "closed"
    assert any("connection dropped" in line and "from 127.0.0.1:" in line for line in sipws_log)


@pytest_twisted.inlineCallbacks
def test_accepted_tls_connections_beyond_max_connections_are_closed(sipws_factory, sipws_log, tmp_path):
    """The same on a tls: listener (max_connections lowered to 1): the refused socket is closed,
    not left open behind a TLS wrapper around nothing."""
    from tests.certs import CertificateAuthority

    own = CertificateAuthority(tmp_path / "pki").issue("sipws", ["127.0.0.1"])
    root = sipws_factory({"sip": {"listen": ["tls:127.0.0.1:0"]},
                          "wss": {"certificate": own.cert, "private_key": own.key}})
    root.relay.pool.max_connections = 1
    port = root.listening("sip-tls")[0].getHost().port
    held = yield in_thread(connect_and_hold, port)
    try:
        yield wait_for(lambda: len(root.relay.pool.connections) == 1)
        closed = yield in_thread(connect_and_wait_closed, port)
        assert closed
        assert len(root.relay.pool.connections) == 1
        assert any("tls: refusing a connection from 127.0.0.1" in line for line in sipws_log)
    finally:
        held.close()
