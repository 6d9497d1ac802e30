"""MSRP for tests, written from RFC 4975 independently of sipws.msrp.

``build_request`` / ``build_response`` write messages byte by byte; ``parse``
reads one complete message; ``StreamReader`` frames a TCP byte stream;
``MsrpWs`` is the raw-frame WebSocket client of wsclient.py speaking MSRP
(RFC 7977: one chunk per WebSocket message, text or binary frames).  Blocking:
tests run it in a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field

from tests.integration.wsclient import RawWs, good_headers

_END_RE = re.compile(rb"\r\n-------([A-Za-z0-9.\-+%=]+)([$+#])\r\n")


def tid() -> str:
    return os.urandom(6).hex()


def build_request(method: str, transaction: str, to_path: list[str], from_path: list[str],
                  headers: list[tuple[str, str]] = (), body: bytes = b"", flag: str = "$") -> bytes:
    lines = [f"MSRP {transaction} {method}", "To-Path: " + " ".join(to_path),
             "From-Path: " + " ".join(from_path)]
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n").encode()
    if body:
        head += b"\r\n" + body + b"\r\n"
    return head + f"-------{transaction}{flag}\r\n".encode()


def build_response(transaction: str, status: int, comment: str, to: str, frm: str) -> bytes:
    return (f"MSRP {transaction} {status} {comment}\r\nTo-Path: {to}\r\nFrom-Path: {frm}\r\n"
            f"-------{transaction}$\r\n").encode()


@dataclass
class Msg:
    tid: str
    method: str | None
    status: int | None
    comment: str
    headers: dict[str, str] = field(default_factory=dict)
    fields: list[tuple[str, str]] = field(default_factory=list)  # every header, repeats kept
    body: bytes = b""
    flag: str = "$"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name.lower()]

    def path(self, name: str) -> list[str]:
        return (self.header(name) or "").split()


def parse(data: bytes) -> Msg:
    first, _, rest = data.partition(b"\r\n")
    parts = first.decode().split(" ", 3)
    assert parts[0] == "MSRP", data[:80]
    transaction = parts[1]
    end = f"-------{transaction}".encode()
    assert data.endswith(b"\r\n") and data[-(len(end) + 3):-3] == end, data[-80:]
    flag = chr(data[-3])
    if parts[2].isdigit():
        msg = Msg(transaction, None, int(parts[2]), parts[3] if len(parts) > 3 else "")
    else:
        msg = Msg(transaction, parts[2], None, "")
    head, sep, body = rest[: -(len(end) + 3)].partition(b"\r\n\r\n")
    for line in head.decode().split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            msg.headers[name.strip().lower()] = value.strip()
            msg.fields.append((name.strip().lower(), value.strip()))
    if sep:
        assert body.endswith(b"\r\n"), "body must end with CRLF before the end line"
        msg.body = body[:-2]
    msg.flag = flag
    return msg


class StreamReader:
    """Frames an MSRP byte stream (bodies may hold anything but their own end line)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while True:
            match = re.match(rb"MSRP ([A-Za-z0-9.\-+%=]+) ", self.buffer)
            if match is None:
                return out
            marker = b"\r\n-------" + match.group(1)
            at = self.buffer.find(marker)
            if at < 0 or len(self.buffer) < at + len(marker) + 3:
                return out
            end = at + len(marker) + 3
            out.append(self.buffer[:end])
            self.buffer = self.buffer[end:]


class MsrpWs(RawWs):
    """A WebSocket MSRP client: its own URI, AUTH, and one chunk per message."""

    def __init__(self, port: int, name: str, **kwargs) -> None:
        super().__init__(port, **kwargs)
        self.uri = f"msrp://{name}.invalid:2855/{os.urandom(4).hex()};ws"
        self.use_path: str | None = None

    def open(self, protocol: str = "msrp", origin: str = "https://chat.example.com") -> dict[str, str]:
        return self.upgrade(headers=good_headers(origin=origin, protocol=protocol))

    def send_msrp(self, data: bytes) -> None:
        try:
            data.decode("utf-8")
            self.send_frame(0x1, data)
        except UnicodeDecodeError:
            self.send_frame(0x2, data)

    def read_msrp(self) -> tuple[int, Msg]:
        """(opcode, message) of the next data frame."""
        opcode, payload = self.read_data()
        assert opcode in (0x1, 0x2), f"not a data frame: opcode {opcode} {payload[:60]!r}"
        return opcode, parse(payload)

    def expect(self, predicate, what: str, limit: int = 50) -> Msg:
        """Read messages until one satisfies ``predicate``; the others are returned to nobody."""
        for _ in range(limit):
            _, msg = self.read_msrp()
            if predicate(msg):
                return msg
        raise AssertionError(f"no {what} within {limit} messages")

    def auth(self, relay_uri: str, expires: int | None = None,
             authorization: str | None = None) -> Msg:
        transaction = tid()
        headers = [("Expires", str(expires))] if expires is not None else []
        if authorization is not None:
            headers.append(("Authorization", authorization))
        self.send_msrp(build_request("AUTH", transaction, [relay_uri], [self.uri], headers))
        _, answer = self.read_msrp()
        assert answer.tid == transaction, answer
        if answer.status == 200:
            self.use_path = answer.header("Use-Path")
        return answer


def digest_params(value: str) -> dict[str, str]:
    """The parameters of a ``Digest …`` challenge (RFC 2617 §3.2.1), unquoted."""
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest", value
    return {k: q or t for k, q, t in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', rest)}


def digest_authorization(challenge: dict[str, str], username: str, password: str, uri: str,
                         nc: str = "00000001", cnonce: str | None = None) -> str:
    """An Authorization answering ``challenge`` for AUTH (RFC 4976 §5.1: method AUTH,
    uri = the relay URI of To-Path, qop=auth), from the RFC 2617 / RFC 7616 formulas."""
    algorithm = challenge.get("algorithm", "MD5")
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
    cnonce = cnonce or os.urandom(8).hex()

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()
    ha1 = hx(f"{username}:{challenge['realm']}:{password}")
    ha2 = hx(f"AUTH:{uri}")
    response = hx(f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{username}", realm="{challenge["realm"]}", '
            f'nonce="{challenge["nonce"]}", uri="{uri}", response="{response}", qop=auth, '
            f'nc={nc}, cnonce="{cnonce}", algorithm={algorithm}')


def relay_uri(port: int, tls: bool) -> str:
    return f"{'msrps' if tls else 'msrp'}://127.0.0.1:{port};tcp"


def read_socket_messages(sock: socket.socket, reader: StreamReader, count: int) -> list[Msg]:
    out: list[Msg] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        out += [parse(m) for m in reader.feed(chunk)]
    return out
