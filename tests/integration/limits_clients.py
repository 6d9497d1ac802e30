"""Test clients for [limits]: a RawWs from a chosen loopback source address, and the steps tests share."""

from __future__ import annotations

import socket
import struct

from tests.integration.wsclient import TIMEOUT, RawWs


class RawWsFrom(RawWs):
    """A RawWs whose socket is bound to ``source`` (127.0.0.2, 127.0.0.3...: other clients)."""

    def __init__(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(source, 0))
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.buffer = b""

    def reset(self) -> None:
        """As RawWs.reset, and harmless on a socket already closed (teardown resets every client)."""
        try:
            super().reset()
        except OSError:
            pass


def status_from(port: int, source: str) -> tuple[int, dict[str, str], "RawWsFrom"]:
    """Handshake from ``source``: (status, headers, client) (the client stays open on 101)."""
    client = RawWsFrom(port, source)
    try:
        status, headers, _ = client.request()
    except (ConnectionError, OSError):
        client.shutdown()
        return 0, {}, client
    if status != 101:
        client.shutdown()
    return status, headers, client


def dropped_at_accept(port: int, source: str) -> bool:
    """True when the server closes the TCP connection without answering a handshake."""
    try:
        client = RawWsFrom(port, source)
    except ConnectionResetError:  # reset before connect() returned
        return True
    try:
        client.request()
    except ConnectionError:  # not a timeout: that would be a server that did not drop
        return True
    finally:
        client.shutdown()
    return False


def flood(client: RawWs, count: int, fragmented: bool = False) -> tuple[int, int | None, str]:
    """Send ``count`` CRLF keep-alives in one write; (replies read, Close code, reason).

    Plain frames take the fast path; ``fragmented`` splits each into two
    frames (text + continuation), which only Autobahn's parser takes.
    """
    frames = b""
    for _ in range(count):
        if fragmented:
            frames += _masked(0x01, b"\r", fin=False) + _masked(0x00, b"\n", fin=True)
        else:
            frames += _masked(0x01, b"\r\n", fin=True)
    client.sock.sendall(frames)
    replies = 0
    while True:
        _, opcode, payload = client.read_frame()
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return replies, code, payload[2:].decode("utf-8", "replace")
        if opcode == 0x1:
            replies += 1


def _masked(opcode: int, payload: bytes, fin: bool) -> bytes:
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + masked
