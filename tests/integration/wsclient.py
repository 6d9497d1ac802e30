"""A blocking raw-socket WebSocket client for tests: writes frames byte by byte.

It deliberately speaks RFC 6455 by hand so tests can send what a friendly
client library never would (unmasked frames, RSV bits, bad UTF-8...).  Tests
run it in a thread (``threads.deferToThread``) so the reactor keeps serving.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct

TIMEOUT = 5.0


def good_headers(origin: str | None = "https://phone.example.com", protocol: str = "sip") -> dict[str, str]:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": protocol,
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


class RawWs:
    def __init__(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, source: str | None = None,
                 preamble: bytes = b"") -> None:
        """``source``: the local address to connect from (127.0.0.2...); ``preamble``: bytes
        sent before anything else, TLS included (a PROXY protocol header)."""
        sock = socket.create_connection((host, port), timeout=TIMEOUT,
                                        source_address=(source, 0) if source else None)
        if preamble:
            sock.sendall(preamble)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.buffer = b""

    # -- HTTP -----------------------------------------------------------------

    def request(self, headers: dict[str, str] | None = None, path: str = "/", method: str = "GET",
                version: str = "HTTP/1.1", raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        if raw is None:
            headers = good_headers() if headers is None else headers
            lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers.items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sock.sendall(raw)
        return self.read_response()

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, head + b"\r\n\r\n"

    def upgrade(self, **kwargs) -> dict[str, str]:
        status, headers, _ = self.request(**kwargs)
        assert status == 101, status
        return headers

    # -- frames -----------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
                   rsv: int = 0) -> None:
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, (0x80 if mask else 0) | length)
        elif length < 65536:
            header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
        else:
            header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.sock.sendall(header + payload)

    def send_text(self, data: bytes | str) -> None:
        self.send_frame(0x1, data.encode() if isinstance(data, str) else data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        assert not second & 0x80, "server frames must not be masked"
        self.last_rsv = (first >> 4) & 0x7  # RSV1 = 4: a compressed message (RFC 7692)
        return bool(first & 0x80), first & 0x0F, self._read(length)

    def read_data(self) -> tuple[int, bytes]:
        """The next data frame (opcode, payload), skipping Ping/Pong."""
        while True:
            _, opcode, payload = self.read_frame()
            if opcode in (0x9, 0xA):
                continue
            return opcode, payload

    def expect_close(self) -> tuple[int | None, str]:
        """Read until a Close frame; returns its code and reason."""
        while True:
            _, opcode, payload = self.read_frame()
            if opcode == 0x8:
                if len(payload) >= 2:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
                return None, ""

    def close(self, code: int = 1000, reason: bytes = b"") -> None:
        self.send_frame(0x8, struct.pack("!H", code) + reason)

    def closed_by_peer(self) -> bool:
        """True once the server has closed TCP (reads return EOF)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def shutdown(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self) -> None:
        """Abortive close: RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
