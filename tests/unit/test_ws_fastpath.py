"""The WebSocket fast path: plain whole frames read directly, everything else left to Autobahn."""

from __future__ import annotations

import os
import struct

from sipws.stats import Stats
from sipws.transport import ws_fastpath

MASK = b"\x11\x22\x33\x44"
OPEN, CLOSING = 1, 2


def masked(payload: bytes, first: int = 0x81, mask: bytes = MASK, length_code: int | None = None) -> bytes:
    n = len(payload)
    if length_code is not None:
        head = bytes((first, 0x80 | length_code))
        head += struct.pack("!H", n) if length_code == 126 else struct.pack("!Q", n)
    elif n < 126:
        head = bytes((first, 0x80 | n))
    else:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Root:
    def __init__(self) -> None:
        self.stats = Stats()


class Factory:
    def __init__(self) -> None:
        self.root = Root()


class Proto:
    STATE_OPEN = OPEN

    def __init__(self, limit: int = 65535, close_after: int | None = None) -> None:
        self.maxMessagePayloadSize = limit
        self.maxFramePayloadSize = limit
        self.factory = Factory()
        self.state = OPEN
        self.got: list[tuple[bytes, bool]] = []
        self.close_after = close_after

    def onMessage(self, payload: bytes, binary: bool) -> None:
        self.got.append((payload, binary))
        if self.close_after is not None and len(self.got) >= self.close_after:
            self.state = CLOSING


def test_unmask_matches_the_rfc_definition():
    for n in (0, 1, 3, 4, 5, 125, 126, 1000):
        data = os.urandom(n)
        mask = os.urandom(4)
        assert ws_fastpath.unmask(mask, data) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_whole_frames_are_delivered_and_counted():
    proto = Proto()
    sip = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"
    big = b"M" * 300  # 16-bit length
    rest = ws_fastpath.take_frames(proto, masked(sip) + masked(big) + masked(b"\x00\xff", 0x82))
    assert rest == b""
    assert proto.got == [(sip, False), (big, False), (b"\x00\xff", True)]
    assert proto.factory.root.stats.get("ws.frames_in") == 3


def test_a_partial_frame_is_left_for_autobahn():
    proto = Proto()
    frame = masked(b"hello world")
    rest = ws_fastpath.take_frames(proto, masked(b"one") + frame[:7])
    assert proto.got == [(b"one", False)]
    assert rest == frame[:7]


def test_anything_but_the_plain_case_stops_the_fast_path():
    cases = [
        masked(b"frag", 0x01),                      # FIN not set (fragment)
        masked(b"cont", 0x80),                      # continuation
        masked(b"ping", 0x89),                      # control frame
        masked(b"rsv", 0xC1),                       # RSV1 set
        bytes((0x81, 3)) + b"abc",                  # unmasked
        masked(b"\xff\xfe", 0x81),                  # invalid UTF-8 in text
        masked(b"short", length_code=126),          # 16-bit length for 5 bytes (not minimal)
        masked(b"x" * 200, length_code=127),        # 64-bit length
    ]
    for frame in cases:
        proto = Proto()
        data = frame + masked(b"after")
        assert ws_fastpath.take_frames(proto, data) == data, frame[:2]
        assert proto.got == []


def test_over_the_limit_is_left_for_autobahn():
    proto = Proto(limit=100)
    frame = masked(b"x" * 101)
    assert ws_fastpath.take_frames(proto, frame) == frame
    assert proto.got == []


def test_stops_once_the_handler_closed_the_connection():
    proto = Proto(close_after=1)
    second = masked(b"two")
    assert ws_fastpath.take_frames(proto, masked(b"one") + second) == second
    assert proto.got == [(b"one", False)]


def test_frame_header():
    assert ws_fastpath.frame_header(5, False) == b"\x81\x05"
    assert ws_fastpath.frame_header(125, True) == b"\x82\x7d"
    assert ws_fastpath.frame_header(126, False) == b"\x81\x7e\x00\x7e"
    assert ws_fastpath.frame_header(65535, False) == b"\x81\x7e\xff\xff"
    assert ws_fastpath.frame_header(65536, False) == b"\x81\x7f" + struct.pack("!Q", 65536)
