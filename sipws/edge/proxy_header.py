"""PROXY protocol v1 and v2 headers (HAProxy's "PROXY protocol" specification).

A load balancer in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, nginx
``proxy_protocol on``, AWS NLB, ...) writes one header at the very start of a
connection naming the client it accepted the connection from.  This module
reads that header from bytes only: no sockets, no reactor.

Why our own parser and not ``twisted.protocols.haproxy``: Twisted's refuses
the short v1 form ``PROXY UNKNOWN\\r\\n`` that the specification allows and
HAProxy's health checks send, and its wrapper has no list of trusted senders.

``parse_proxy_header(data)`` is called with everything received so far:

- ``None``: not enough bytes yet (call again with more);
- a ``ProxyHeader``: its ``source`` is the client's (host, port), or None
  when the socket's own address stays (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC or
  AF_UNIX), and ``length`` says how many bytes the header took (the rest
  belongs to the wrapped protocol);
- ``ProxyHeaderError``: the bytes are not a header, or not one we accept.
  Its reason never quotes more than ``MAX_QUOTED`` bytes of the peer's input.

Work is bounded: at most ``MAX_V1_LENGTH`` bytes are looked at for v1 and a
v2 header longer than ``MAX_V2_LENGTH`` is refused before it is buffered, so
a caller that keeps only the bytes it has fed holds at most that many.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from sipws.edge import EdgeError

#: v1: the longest header the specification allows, CRLF included.
MAX_V1_LENGTH = 107
#: v2: the 16-byte fixed part plus addresses and TLVs.  The specification lets
#: the length field reach 65535; real senders write at most a few hundred bytes
#: (addresses, SSL and unique-id TLVs), so anything longer is refused.
MAX_V2_LENGTH = 2048
#: The most bytes a caller ever needs to buffer before the header is known.
MAX_HEADER_LENGTH = max(MAX_V1_LENGTH, MAX_V2_LENGTH)
#: Bytes of peer input an error reason may quote (repr'd).
MAX_QUOTED = 24

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16

#: v2 commands (low nibble of byte 13) and families / protocols (byte 14).
V2_LOCAL = 0x0
V2_PROXY = 0x1
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
PROTO_UNSPEC, PROTO_STREAM, PROTO_DGRAM = 0x0, 0x1, 0x2
#: Address block lengths for the families carrying addresses (source, destination, ports).
V2_INET_LENGTH = 12
V2_INET6_LENGTH = 36

MAX_PORT = 65535


class ProxyHeaderError(EdgeError, ValueError):
    """The connection does not start with an acceptable PROXY header; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header.  ``source``/``destination`` are None when the socket's addresses stay."""

    version: int
    command: str  # "PROXY", "LOCAL" (v2) or "UNKNOWN" (v1)
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def _quote(data: bytes) -> str:
    """A short, safe rendering of peer bytes for a log line."""
    shown = repr(bytes(data[:MAX_QUOTED]))
    return shown + ("..." if len(data) > MAX_QUOTED else "")


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, None if more bytes are needed; see the module doc."""
    data = bytes(data[:MAX_HEADER_LENGTH])
    if not data:
        return None
    # Refused as soon as the bytes cannot begin either header: a client that
    # sends HTTP straight away is told at once, not after the timeout.
    for prefix, parse in ((V1_PREFIX, _parse_v1), (V2_SIGNATURE, _parse_v2)):
        count = min(len(data), len(prefix))
        if data[:count] == prefix[:count]:
            return parse(data) if count == len(prefix) else None
    raise ProxyHeaderError(f"not a PROXY header: {_quote(data)}")


# -- v1 -------------------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyHeaderError(f"v1 header without CRLF in {MAX_V1_LENGTH} bytes")
        if b"\n" in data:
            raise ProxyHeaderError("v1 header line ends without CR")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    if not text.isprintable():
        raise ProxyHeaderError("v1 header has control characters")
    parts = text.split(" ")
    length = end + 2
    family = parts[1] if len(parts) > 1 else ""
    if family == "UNKNOWN":
        # The rest of the line, if any, is to be ignored (specification §2.1).
        return ProxyHeader(1, "UNKNOWN", None, None, length)
    if family not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, got {_quote(family.encode())}")
    if len(parts) != 6:
        raise ProxyHeaderError(f"v1 {family} header needs 6 fields, got {len(parts)}")
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(parts[2], version, "source"), _v1_port(parts[4], "source"))
    destination = (_v1_address(parts[3], version, "destination"), _v1_port(parts[5], "destination"))
    return ProxyHeader(1, "PROXY", source, destination, length)


def _v1_address(text: str, version: int, which: str) -> str:
    try:
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError(f"v1 {which} address is not IPv{version}: {_quote(text.encode())}") from None
    return _host(address)


def _v1_port(text: str, which: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > MAX_PORT:
        raise ProxyHeaderError(f"v1 {which} port is not 0-{MAX_PORT}: {_quote(text.encode())}")
    return int(text)


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text; an IPv4-mapped IPv6 address as plain IPv4 (as sipws matches them)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# -- v2 -------------------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED_LENGTH:
        return None
    version_command, family_protocol, body_length = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    version, command = version_command >> 4, version_command & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2 signature with version {version}")
    if command not in (V2_LOCAL, V2_PROXY):
        raise ProxyHeaderError(f"v2 command {command} is neither LOCAL nor PROXY")
    total = V2_FIXED_LENGTH + body_length
    if total > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"v2 header of {total} bytes exceeds {MAX_V2_LENGTH}")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family > AF_UNIX or protocol > PROTO_DGRAM:
        raise ProxyHeaderError(f"v2 address family/protocol 0x{family_protocol:02x} unknown")
    if len(data) < total:
        return None
    if command == V2_LOCAL:
        # A health check or a connection of the balancer's own: the socket's address stays.
        return ProxyHeader(2, "LOCAL", None, None, total)
    if family in (AF_INET, AF_INET6) and protocol == PROTO_DGRAM:
        raise ProxyHeaderError("v2 header names a UDP client on a stream connection")
    if family == AF_UNSPEC or family == AF_UNIX or protocol == PROTO_UNSPEC:
        # No usable client address (specification §2.2: ignore it, use the socket's).
        return ProxyHeader(2, "PROXY", None, None, total)
    body = data[V2_FIXED_LENGTH:total]
    if family == AF_INET:
        if body_length < V2_INET_LENGTH:
            raise ProxyHeaderError(f"v2 AF_INET addresses need {V2_INET_LENGTH} bytes, got {body_length}")
        src = ipaddress.IPv4Address(body[0:4])
        dst = ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
    else:
        if body_length < V2_INET6_LENGTH:
            raise ProxyHeaderError(f"v2 AF_INET6 addresses need {V2_INET6_LENGTH} bytes, got {body_length}")
        src = ipaddress.IPv6Address(body[0:16])
        dst = ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
    # Anything after the addresses is TLVs (ALPN, SNI, SSL, unique id...): skipped.
    return ProxyHeader(2, "PROXY", (_host(src), sport), (_host(dst), dport), total)


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v1 header (tests, docs); None source → ``PROXY UNKNOWN``."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    destination = destination or (("::1" if ":" in source[0] else "127.0.0.1"), 0)
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None = None,
             tlvs: bytes = b"") -> bytes:
    """A v2 header (tests, docs); None source → LOCAL."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | V2_LOCAL, 0, len(tlvs)) + tlvs
    ipv6 = ":" in source[0]
    destination = destination or (("::1" if ipv6 else "127.0.0.1"), 0)
    cls = ipaddress.IPv6Address if ipv6 else ipaddress.IPv4Address
    body = (cls(source[0]).packed + cls(destination[0]).packed
            + struct.pack("!HH", source[1], destination[1]) + tlvs)
    family = (AF_INET6 if ipv6 else AF_INET) << 4 | PROTO_STREAM
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | V2_PROXY, family, len(body)) + body
