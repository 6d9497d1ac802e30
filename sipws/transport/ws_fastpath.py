"""The common WebSocket case without Autobahn's general machinery (server role).

Nearly every message a SIP client sends is one complete, masked, unfragmented
text (or binary) frame, and nearly every message sipws sends back is one
unmasked frame.  Autobahn handles those through a general state machine
(frame header object, per-frame callbacks, a masker object, traffic
statistics): about three quarters of the CPU the WebSocket layer costs per
relayed message (bench/relay_cpu.py).

``take_frames`` reads such frames straight from the bytes just received and
hands each payload to ``onMessage``; it stops at the first byte that is not
the plain case — a fragment, a control frame, RSV bits, an unmasked frame, a
length over the limits, invalid UTF-8 in a text frame, an incomplete frame —
and returns the rest for Autobahn, which then does exactly what it always
did (close codes included).  ``frame_header`` builds the header of an
unmasked single-frame message for sending.  Both are used only while no
extension (permessage-deflate) is in use and Autobahn holds no partial data.
"""

from __future__ import annotations

import struct
from typing import Any

#: First header byte of an unfragmented text / binary frame (FIN, no RSV bits).
TEXT_FIN = 0x81
BINARY_FIN = 0x82
#: Second header byte: the MASK bit, and the 7-bit length codes for longer lengths.
MASK_BIT = 0x80
LENGTH_16 = 126
LENGTH_64 = 127
#: Bytes of a frame header before the payload: 2, a 2-byte length, a 4-byte mask.
_MASK_SIZE = 4
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


def unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR the payload with the repeated 4-byte mask (RFC 6455 §5.3), in C via big ints."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def take_frames(protocol: Any, data: bytes) -> bytes:
    """Deliver the plain complete frames at the start of ``data``; the bytes left over.

    ``protocol`` is an open server protocol with nothing buffered.
    """
    limit = protocol.maxMessagePayloadSize
    frame_limit = protocol.maxFramePayloadSize
    if frame_limit and (not limit or frame_limit < limit):
        limit = frame_limit
    stats = protocol.factory.root.stats
    size = len(data)
    i = 0
    while size - i >= 2 + _MASK_SIZE:
        first = data[i]
        second = data[i + 1]
        if (first != TEXT_FIN and first != BINARY_FIN) or not second & MASK_BIT:
            break
        length = second & 0x7F
        j = i + 2
        if length == LENGTH_16:
            if size - j < 2:
                break
            length = _U16.unpack_from(data, j)[0]
            if length < LENGTH_16:
                break  # not the minimal encoding: Autobahn refuses it
            j += 2
        elif length == LENGTH_64:
            break  # over 64 KiB: beyond any SIP message limit, Autobahn decides
        if limit and length > limit:
            break
        end = j + _MASK_SIZE + length
        if end > size:
            break
        payload = unmask(data[j:j + _MASK_SIZE], data[j + _MASK_SIZE:end])
        binary = first == BINARY_FIN
        if not binary:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn closes with 1007
        i = end
        stats.incr("ws.frames_in")
        protocol.onMessage(payload, binary)
        if protocol.state != protocol.STATE_OPEN:
            break  # closed by the handler: Autobahn handles the rest as it would
    return data[i:] if i else data


def frame_header(length: int, binary: bool) -> bytes:
    """The header of one unmasked, unfragmented data frame of ``length`` bytes."""
    first = BINARY_FIN if binary else TEXT_FIN
    if length < LENGTH_16:
        return bytes((first, length))
    if length < 0x10000:
        return bytes((first, LENGTH_16)) + _U16.pack(length)
    return bytes((first, LENGTH_64)) + _U64.pack(length)
