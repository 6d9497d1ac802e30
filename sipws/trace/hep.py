"""HEPv3 codec: ``HepPacket`` <-> bytes, pure (no I/O, no clock).

Wire format (HEP3 specification as used by Homer, heplify, sngrep)::

    "HEP3" | total length (uint16, header included) | chunk | chunk | ...
    chunk = vendor id (uint16) | type id (uint16) | length (uint16, the
            6-byte chunk header included) | body

All integers are big-endian.  Vendor 0 is the generic vendor whose chunk types
this module knows by name (``CHUNKS``); chunks of other vendors, and generic
types it does not name, are kept verbatim in ``HepPacket.extra`` so a decoded
packet re-encodes to the same information.

``decode`` raises ``HepError`` and nothing else for any input: bad magic, a
total length that differs from the data, a chunk shorter than its header or
running past the end, a fixed-size chunk of the wrong size, a generic chunk
given twice.  Over TCP packets come back to back with no framing beyond the
length field: ``split_stream`` cuts a byte stream into packets.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, fields
from typing import Any, Iterable

from sipws.trace.errors import HepError

MAGIC = b"HEP3"
#: Bytes of the packet header (magic + total length) and of a chunk header.
HEADER_SIZE = 6
CHUNK_HEADER_SIZE = 6
#: The total length field is 16 bits.
MAX_PACKET_SIZE = 0xFFFF

GENERIC_VENDOR = 0

# Generic chunk types.
IP_FAMILY = 0x01
IP_PROTO = 0x02
IPV4_SRC = 0x03
IPV4_DST = 0x04
IPV6_SRC = 0x05
IPV6_DST = 0x06
SRC_PORT = 0x07
DST_PORT = 0x08
TS_SEC = 0x09
TS_USEC = 0x0A
PROTO_TYPE = 0x0B
CAPTURE_ID = 0x0C
KEEPALIVE_TIMER = 0x0D
AUTH_KEY = 0x0E
PAYLOAD = 0x0F
COMPRESSED_PAYLOAD = 0x10
CORRELATION_ID = 0x11
VLAN_ID = 0x12
NODE_NAME = 0x13

# Values of the IP family chunk (the BSD AF_INET / Linux AF_INET6 numbers).
FAMILY_IPV4 = 2
FAMILY_IPV6 = 10
# Values of the IP protocol chunk.
IPPROTO_TCP = 6
IPPROTO_UDP = 17
# Values of the protocol type chunk.
PROTO_SIP = 0x01
#: "net" events: connection accepted/closed, as OpenSIPS traces them.
PROTO_NET = 0x59

# Body kinds: fixed-size integers, addresses, or free-length octets.
_U8, _U16, _U32, _IPV4, _IPV6, _OCTETS = "u8", "u16", "u32", "ipv4", "ipv6", "octets"
_FIXED_SIZE = {_U8: 1, _U16: 2, _U32: 4, _IPV4: 4, _IPV6: 16}
_INT_FORMAT = {_U8: ">B", _U16: ">H", _U32: ">I"}
_INT_MAX = {_U8: 0xFF, _U16: 0xFFFF, _U32: 0xFFFFFFFF}

#: Generic chunk type -> (HepPacket field, body kind), in wire order.
CHUNKS: dict[int, tuple[str, str]] = {
    IP_FAMILY: ("ip_family", _U8),
    IP_PROTO: ("ip_proto", _U8),
    IPV4_SRC: ("src_ipv4", _IPV4),
    IPV4_DST: ("dst_ipv4", _IPV4),
    IPV6_SRC: ("src_ipv6", _IPV6),
    IPV6_DST: ("dst_ipv6", _IPV6),
    SRC_PORT: ("src_port", _U16),
    DST_PORT: ("dst_port", _U16),
    TS_SEC: ("ts_sec", _U32),
    TS_USEC: ("ts_usec", _U32),
    PROTO_TYPE: ("proto_type", _U8),
    CAPTURE_ID: ("capture_id", _U32),
    KEEPALIVE_TIMER: ("keepalive_timer", _U16),
    AUTH_KEY: ("auth_key", _OCTETS),
    PAYLOAD: ("payload", _OCTETS),
    COMPRESSED_PAYLOAD: ("compressed_payload", _OCTETS),
    CORRELATION_ID: ("correlation_id", _OCTETS),
    VLAN_ID: ("vlan_id", _U16),
    NODE_NAME: ("node_name", _OCTETS),
}

_HEADER = struct.Struct(">4sH")
_CHUNK_HEADER = struct.Struct(">HHH")


@dataclass(frozen=True)
class HepPacket:
    """One HEPv3 packet; ``None`` means the chunk is absent.

    Addresses are text in ``ipaddress`` normal form ("::1", not "0::1");
    octet chunks (auth key, payload, correlation id, node name) are bytes.
    ``extra`` holds other chunks as (vendor, type, body) in wire order.
    """

    ip_family: int | None = None
    ip_proto: int | None = None
    src_ipv4: str | None = None
    dst_ipv4: str | None = None
    src_ipv6: str | None = None
    dst_ipv6: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    ts_sec: int | None = None
    ts_usec: int | None = None
    proto_type: int | None = None
    capture_id: int | None = None
    keepalive_timer: int | None = None
    auth_key: bytes | None = None
    payload: bytes | None = None
    compressed_payload: bytes | None = None
    correlation_id: bytes | None = None
    vlan_id: int | None = None
    node_name: bytes | None = None
    extra: tuple[tuple[int, int, bytes], ...] = ()

    @property
    def src_ip(self) -> str | None:
        """The source address, whichever family it is."""
        return self.src_ipv4 if self.src_ipv4 is not None else self.src_ipv6

    @property
    def dst_ip(self) -> str | None:
        return self.dst_ipv4 if self.dst_ipv4 is not None else self.dst_ipv6

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch from the s/µs chunks (None if absent)."""
        if self.ts_sec is None:
            return None
        return self.ts_sec + (self.ts_usec or 0) / 1_000_000


_FIELD_NAMES = frozenset(f.name for f in fields(HepPacket))


# -- encoding ----------------------------------------------------------------


def _chunk(vendor: int, ctype: int, body: bytes) -> bytes:
    length = CHUNK_HEADER_SIZE + len(body)
    if length > MAX_PACKET_SIZE:
        raise HepError(f"chunk 0x{ctype:02x} too long ({len(body)} bytes)")
    return _CHUNK_HEADER.pack(vendor, ctype, length) + body


def _encode_body(ctype: int, kind: str, value: Any) -> bytes:
    name = CHUNKS[ctype][0]
    if kind in _INT_FORMAT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HepError(f"{name} must be an integer, got {value!r}")
        if not 0 <= value <= _INT_MAX[kind]:
            raise HepError(f"{name} out of range: {value}")
        return struct.pack(_INT_FORMAT[kind], value)
    if kind == _IPV4:
        try:
            return ipaddress.IPv4Address(value).packed
        except (ValueError, TypeError):
            raise HepError(f"{name} must be an IPv4 address, got {value!r}") from None
    if kind == _IPV6:
        try:
            return ipaddress.IPv6Address(value).packed
        except (ValueError, TypeError):
            raise HepError(f"{name} must be an IPv6 address, got {value!r}") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise HepError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def encode(packet: HepPacket) -> bytes:
    """The wire form of a packet; HepError if a value does not fit its chunk."""
    parts: list[bytes] = []
    for ctype, (name, kind) in CHUNKS.items():
        value = getattr(packet, name)
        if value is not None:
            parts.append(_chunk(GENERIC_VENDOR, ctype, _encode_body(ctype, kind, value)))
    for item in packet.extra:
        try:
            vendor, ctype, body = item
        except (TypeError, ValueError):
            raise HepError(f"extra chunk must be (vendor, type, body), got {item!r}") from None
        if vendor == GENERIC_VENDOR and ctype in CHUNKS:
            raise HepError(f"generic chunk 0x{ctype:02x} belongs in its named field")
        if not (0 <= vendor <= 0xFFFF and 0 <= ctype <= 0xFFFF) or not isinstance(body, bytes):
            raise HepError(f"bad extra chunk {item!r}")
        parts.append(_chunk(vendor, ctype, body))
    body = b"".join(parts)
    total = HEADER_SIZE + len(body)
    if total > MAX_PACKET_SIZE:
        raise HepError(f"packet too long: {total} bytes > {MAX_PACKET_SIZE}")
    return _HEADER.pack(MAGIC, total) + body


def build(**values: Any) -> bytes:
    """Shorthand: ``encode(HepPacket(**values))``; unknown names raise HepError."""
    unknown = set(values) - _FIELD_NAMES
    if unknown:
        raise HepError(f"unknown HEP fields: {', '.join(sorted(unknown))}")
    return encode(HepPacket(**values))


# -- fast path for the tracer ---------------------------------------------------

# The fixed-size chunks every captured message carries, packed in one go:
# family, IP protocol, source and destination address, ports, timestamp s/µs,
# protocol type, capture id -- in wire (type) order.
_FIXED_V4 = struct.Struct(">HHHB HHHB HHH4s HHH4s HHHH HHHH HHHI HHHI HHHB HHHI")
_FIXED_V6 = struct.Struct(">HHHB HHHB HHH16s HHH16s HHHH HHHH HHHI HHHI HHHB HHHI")


def encode_capture(ip_proto: int, src_addr: bytes, dst_addr: bytes, src_port: int,
                   dst_port: int, ts_sec: int, ts_usec: int, proto_type: int,
                   capture_id: int, payload: bytes, auth_key: bytes | None = None,
                   correlation_id: bytes | None = None, node_name: bytes | None = None) -> bytes:
    """Same bytes as ``encode(HepPacket(...))`` for a captured message, faster.

    Addresses are packed (4 bytes: IPv4 chunks 0x03/0x04; 16 bytes: IPv6
    chunks 0x05/0x06; both of one family).  HepError if a value does not fit.
    """
    try:
        if len(src_addr) == 4 and len(dst_addr) == 4:
            fixed, family, src_type, dst_type, addr_len = _FIXED_V4, FAMILY_IPV4, IPV4_SRC, IPV4_DST, 10
        elif len(src_addr) == 16 and len(dst_addr) == 16:
            fixed, family, src_type, dst_type, addr_len = _FIXED_V6, FAMILY_IPV6, IPV6_SRC, IPV6_DST, 22
        else:
            raise HepError("addresses must be both 4 or both 16 bytes")
        head = fixed.pack(
            0, IP_FAMILY, 7, family,
            0, IP_PROTO, 7, ip_proto,
            0, src_type, addr_len, src_addr,
            0, dst_type, addr_len, dst_addr,
            0, SRC_PORT, 8, src_port,
            0, DST_PORT, 8, dst_port,
            0, TS_SEC, 10, ts_sec,
            0, TS_USEC, 10, ts_usec,
            0, PROTO_TYPE, 7, proto_type,
            0, CAPTURE_ID, 10, capture_id,
        )
    except struct.error as exc:
        raise HepError(f"value out of range: {exc}") from None
    parts = [b"", head]
    if auth_key is not None:
        parts.append(_chunk(GENERIC_VENDOR, AUTH_KEY, auth_key))
    parts.append(_chunk(GENERIC_VENDOR, PAYLOAD, payload))
    if correlation_id is not None:
        parts.append(_chunk(GENERIC_VENDOR, CORRELATION_ID, correlation_id))
    if node_name is not None:
        parts.append(_chunk(GENERIC_VENDOR, NODE_NAME, node_name))
    total = HEADER_SIZE + sum(len(part) for part in parts)
    if total > MAX_PACKET_SIZE:
        raise HepError(f"packet too long: {total} bytes > {MAX_PACKET_SIZE}")
    parts[0] = _HEADER.pack(MAGIC, total)
    return b"".join(parts)


# -- decoding ----------------------------------------------------------------


def decode(data: bytes) -> HepPacket:
    """Parse exactly one packet occupying all of ``data``."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise HepError(f"truncated header: {len(data)} bytes")
    magic, total = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise HepError(f"bad magic {magic!r}")
    if total != len(data):
        raise HepError(f"total length {total} but {len(data)} bytes given")
    values: dict[str, Any] = {}
    extra: list[tuple[int, int, bytes]] = []
    offset = HEADER_SIZE
    while offset < total:
        if total - offset < CHUNK_HEADER_SIZE:
            raise HepError(f"truncated chunk header at offset {offset}")
        vendor, ctype, length = _CHUNK_HEADER.unpack_from(data, offset)
        if length < CHUNK_HEADER_SIZE:
            raise HepError(f"chunk length {length} < {CHUNK_HEADER_SIZE} at offset {offset}")
        end = offset + length
        if end > total:
            raise HepError(f"chunk 0x{ctype:02x} at offset {offset} runs past the end")
        body = data[offset + CHUNK_HEADER_SIZE : end]
        offset = end
        if vendor != GENERIC_VENDOR or ctype not in CHUNKS:
            extra.append((vendor, ctype, body))
            continue
        name, kind = CHUNKS[ctype]
        if name in values:
            raise HepError(f"chunk 0x{ctype:02x} ({name}) given twice")
        values[name] = _decode_body(ctype, name, kind, body)
    return HepPacket(extra=tuple(extra), **values)


def _decode_body(ctype: int, name: str, kind: str, body: bytes) -> Any:
    size = _FIXED_SIZE.get(kind)
    if size is not None and len(body) != size:
        raise HepError(f"chunk 0x{ctype:02x} ({name}) must be {size} bytes, got {len(body)}")
    if kind in _INT_FORMAT:
        return int.from_bytes(body, "big")
    if kind == _IPV4:
        return str(ipaddress.IPv4Address(body))
    if kind == _IPV6:
        return str(ipaddress.IPv6Address(body))
    return body


def packet_length(buffer: bytes) -> int | None:
    """Length of the packet at the start of ``buffer``; None until 6 bytes are there.

    HepError when the buffer does not start a HEPv3 packet, so a stream reader
    can drop a peer that sends garbage instead of waiting forever.
    """
    if len(buffer) < HEADER_SIZE:
        if not MAGIC.startswith(bytes(buffer[:4])):
            raise HepError("bad magic")
        return None
    magic, total = _HEADER.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise HepError(f"bad magic {magic!r}")
    if total < HEADER_SIZE:
        raise HepError(f"total length {total} < {HEADER_SIZE}")
    return total


def split_stream(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut back-to-back packets from a TCP stream: (complete packets, rest)."""
    packets: list[bytes] = []
    view = bytes(buffer)
    offset = 0
    while True:
        total = packet_length(view[offset : offset + HEADER_SIZE])
        if total is None or len(view) - offset < total:
            return packets, view[offset:]
        packets.append(view[offset : offset + total])
        offset += total


def iter_chunks(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(vendor, type, body) of each chunk in wire order (after full validation)."""
    decode(data)
    offset = HEADER_SIZE
    while offset < len(data):
        vendor, ctype, length = _CHUNK_HEADER.unpack_from(data, offset)
        yield vendor, ctype, bytes(data[offset + CHUNK_HEADER_SIZE : offset + length])
        offset += length
