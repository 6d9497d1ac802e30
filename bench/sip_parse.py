"""Benchmark of the SIP message layer (not a test).

1. A typical ~730-byte INVITE from a WebSocket client (JsSIP-like, with
   SDP): parse, push a Via, set received/rport on the client's Via, push two
   Record-Routes, decrement Max-Forwards, serialize.  Reference:
   ``http.client.parse_headers`` on the same header block, timed in the same
   process and run.  Target: ratio <= 0.75.
2. StreamFramer throughput on a 10 MB stream of mixed messages, fed in 4 KB
   chunks; reference: ``bytes.find`` of every CRLFCRLF in the same stream.

Run: .venv/bin/python bench/sip_parse.py
"""

from __future__ import annotations

import http.client
import io
import sys
import timeit
from pathlib import Path

from sipws.sip import StreamFramer, parse

TARGET_RATIO = 0.75
CAPTURED = (Path(__file__).resolve().parents[1] / "tests" / "data" / "sip" / "captures"
            / "jssip" / "jssip_04_INVITE.sip")
REPEATS = 7

SDP = (
    b"v=0\r\n"
    b"o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"t=0 0\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\n"
    b"c=IN IP4 0.0.0.0\r\n"
    b"a=ice-ufrag:Xy7d\r\n"
    b"a=ice-pwd:q3tRn0Kd9c2bXyzl1PLmnoA7\r\n"
    b"a=setup:actpass\r\n"
    b"a=sendrecv\r\n"
    b"a=rtpmap:111 opus/48000/2\r\n"
)

HEAD = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;branch=z9hG4bK6307497\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=p1ilo8b9k4\r\n"
    b"Call-ID: 0rm0fb4uv2gq3m6ou7ek\r\n"
    b"CSeq: 7264 INVITE\r\n"
    b"Contact: <sip:t8f4gq1l@7d5ka3jfi1ak.invalid;transport=ws;ob>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Session-Expires: 90\r\n"
    b"Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
    b"Supported: timer,ice,replaces,outbound\r\n"
    b"User-Agent: JsSIP 3.10.0\r\n"
)


def build_invite() -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(SDP) + SDP


INVITE = build_invite()
HEADER_BLOCK = INVITE[INVITE.index(b"\r\n") + 2:INVITE.index(b"\r\n\r\n") + 4]


def relay_path_plain(data: bytes = INVITE) -> bytes:
    """The relay's sequence: received/rport, our Via, 2 Record-Routes, Max-Forwards."""
    msg = parse(data)
    msg.set_top_via_received("198.51.100.7", 61234)
    msg.push_via("SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws.0a1b2c3d4e5f;rport")
    msg.push_record_route("<sip:192.0.2.10:5062;transport=udp;lr>")
    msg.push_record_route("<sip:192.0.2.10:8080;transport=ws;lr>")
    msg.decrement_max_forwards()
    return bytes(msg)


def reference(block: bytes = HEADER_BLOCK):
    return http.client.parse_headers(io.BytesIO(block))


def header_block(message: bytes) -> bytes:
    return message[message.index(b"\r\n") + 2:message.index(b"\r\n\r\n") + 4]


def best_us(func, number: int) -> float:
    times = timeit.repeat(func, number=number, repeat=REPEATS)
    return min(times) / number * 1e6


def mixed_stream(target: int = 10 * 1024 * 1024) -> bytes:
    ok = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.10:5062;branch=z9hG4bKsipws.1;rport=5062\r\n"
        b"Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;branch=z9hG4bK6307497;received=198.51.100.7\r\n"
        b"To: <sip:bob@example.com>;tag=as1\r\n"
        b"From: \"Alice\" <sip:alice@example.com>;tag=p1ilo8b9k4\r\n"
        b"Call-ID: 0rm0fb4uv2gq3m6ou7ek\r\nCSeq: 7264 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    options = (
        b"OPTIONS sip:ping@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK77\r\n"
        b"f: <sip:ka@example.com>;tag=1\r\nt: <sip:ping@example.com>\r\n"
        b"i: 77@192.0.2.1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    unit = INVITE + b"\r\n\r\n" + ok + options
    return unit * (target // len(unit) + 1)


def main() -> int:
    print(f"INVITE: {len(INVITE)} bytes, header block {len(HEADER_BLOCK)} bytes")
    assert parse(relay_path_plain()).max_forwards == 68
    n = 20000
    ref = best_us(reference, n)
    parse_only = best_us(lambda: parse(INVITE), n)
    full = best_us(relay_path_plain, n)
    print(f"http.client.parse_headers (reference, parse only): {ref:7.2f} us/msg")
    print(f"sipws parse only:                                  {parse_only:7.2f} us/msg "
          f"(ratio {parse_only / ref:.2f})")
    print(f"sipws parse+Via+received/rport+2xRR+MF+serialize:  {full:7.2f} us/msg "
          f"(ratio {full / ref:.2f}, target <= {TARGET_RATIO})")
    if CAPTURED.exists():
        real = CAPTURED.read_bytes()
        block = header_block(real)
        ref_real = best_us(lambda: reference(block), n)
        full_real = best_us(lambda: relay_path_plain(real), n)
        print(f"same on the captured JsSIP INVITE ({len(real)} bytes): {full_real:7.2f} us/msg vs "
              f"reference {ref_real:.2f} (ratio {full_real / ref_real:.2f})")

    stream = mixed_stream()
    chunk = 4096
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]

    def frame_all() -> int:
        framer = StreamFramer()
        count = 0
        for c in chunks:
            count += len(framer.feed(c))
        return count

    def find_all() -> int:
        pos, count = 0, 0
        while True:
            pos = stream.find(b"\r\n\r\n", pos)
            if pos < 0:
                return count
            pos += 4
            count += 1

    messages = frame_all()
    t_framer = min(timeit.repeat(frame_all, number=1, repeat=3))
    t_find = min(timeit.repeat(find_all, number=1, repeat=3))
    mb = len(stream) / 1e6
    print(f"StreamFramer: {mb:.1f} MB, {messages} messages in 4 KB chunks: "
          f"{mb / t_framer:7.1f} MB/s ({messages / t_framer / 1e3:.0f} k msg/s)")
    print(f"bytes.find CRLFCRLF over the same stream (reference): {mb / t_find:7.1f} MB/s "
          f"(framer/reference ratio {t_framer / t_find:.1f}x slower)")
    verdict = "MET" if full / ref <= TARGET_RATIO else "NOT MET"
    print(f"target ratio <= {TARGET_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
