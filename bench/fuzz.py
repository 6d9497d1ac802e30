"""Reproducible mutation fuzzer for sipws's input parsers (not a test; tests/unit/test_fuzz_slice.py
runs a CI-sized slice of it).

Four targets, each fed inputs built by a ``random.Random`` seeded from (seed, index), so any input
is rebuilt exactly from those two numbers; nothing compiled, nothing installed:

- ``ws``: the WebSocket server protocol, ``SipServerProtocol`` as built by the ws factory of a
  real ``build_service`` (three configurations), on ``StringTransport`` with a ``Clock`` as the
  reactor (also txaio's loop, so Autobahn's timers run on it).  Each input is one connection: a
  handshake (valid, or mutated field by field and byte by byte) and then a frame stream (random
  opcodes, RSV bits, masks, 7/16/64-bit lengths incl. huge declared ones, fragmentation, control
  frames in between, Close payloads, invalid UTF-8, byte flips/insertions/truncations of valid
  streams), cut into random chunks, with clock jumps in between (handshake and close timeouts).
  Oracle: no exception escapes (nor is logged as a failure); the bytes written are one valid HTTP
  response, and after a 101 only valid server frames (unmasked, RSV 0, known opcodes, control
  payload <= 125, Close with a code an endpoint may send and a UTF-8 reason, text frames UTF-8);
  nothing after a Close and the transport closing once a Close or a refusal was written; the
  protocol's buffers within bounds after every step (``data``: the handshake head limit while
  connecting, one frame header once open, no growth once failed; reassembled message <=
  max_message_size; control payload <= 125); a valid stream delivers exactly its messages; after
  ``connectionLost`` the connection table is empty, one closed event fired, no timer left.
- ``sip``: ``sipws.sip.parse`` on mutated messages from tests/data/sip (captures, RFC 4475).
  Oracle: only ``SipParseError`` (with a reason and a 1xx-6xx status); an accepted message answers
  every accessor, re-serializes and re-parses to an equal message (same start line, same header
  count); after the edits a proxy makes (Via, received/rport, Record-Route, Max-Forwards) it still
  serializes to a message that parses.
- ``framer``: ``StreamFramer`` fed mutated concatenations of those messages (with CRLF
  keep-alives) in random chunkings, random limits.  Oracle: only ``SipParseError`` and nothing
  accepted after one; every message out is whole (head, Content-Length body, within the limit);
  the buffer stays under the limit after every feed; the chunking changes nothing (same messages,
  same pings, same error or remainder as one feed of the whole stream); an unmutated stream comes
  out message for message.
- ``hep``: ``sipws.trace.hep``: ``decode`` and ``split_stream`` on mutated encoded packets and
  streams; ``encode``/``decode`` round trips of random fields (in and out of range);
  ``encode_capture`` against ``encode``.  Oracle: only ``HepError``; decode(encode(p)) == p;
  a decoded packet re-encodes to one that decodes equal; split_stream's packets and rest put
  back together are its input.

Run:  .venv/bin/python bench/fuzz.py [--target ws|sip|framer|hep|all] [--inputs N] [--seed S]
      [--start I] [--max-seconds T]       (the long run: --inputs 1000000, one process per target)
Replay one input: --target T --seed S --start I --inputs 1 --verbose
Exit status 1 if any input broke the oracle; every failure is printed with seed and index.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import random
import re
import struct
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data" / "sip"
DEFAULT_SEED = 20240613
DEFAULT_INPUTS = 10_000
#: Failures kept in full (with the input) per target; the rest are only counted.
KEEP_FAILURES = 20
#: Bytes of a failing input shown in the report.
SHOW_INPUT = 400
TARGET_NAMES = ("ws", "sip", "framer", "hep")


class Violation(AssertionError):
    """The oracle says no."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


# -- results --------------------------------------------------------------------------


@dataclass
class FailureRecord:
    index: int
    kind: str
    detail: str
    input: str


@dataclass
class Result:
    target: str
    seed: int
    start: int
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    failures: list[FailureRecord] = field(default_factory=list)
    failure_count: int = 0
    failure_kinds: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        lines = [
            f"target {self.target}: seed {self.seed}, inputs {self.start}..{self.start + self.inputs - 1}"
            f" ({self.inputs} inputs) in {self.seconds:.1f} s = {self.rate:.0f} inputs/s",
            f"  failures: {self.failure_count}",
        ]
        for outcome, count in sorted(self.outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {count:>9}  {outcome}")
        for kind, count in self.failure_kinds.most_common():
            lines.append(f"  FAILURE x{count}: {kind}")
        for f in self.failures:
            lines.append(
                f"  FAILED input: --target {self.target} --seed {self.seed} --start {f.index} --inputs 1\n"
                f"    {f.kind}\n    {f.detail}\n    input: {f.input}"
            )
        return "\n".join(lines)


def show(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= SHOW_INPUT else text[:SHOW_INPUT] + f"... ({len(text)} chars)"


def input_rng(seed: int, index: int) -> random.Random:
    """The generator of input ``index``: the same bytes for the same (seed, index)."""
    return random.Random((seed << 40) | index)


# -- shared mutators ------------------------------------------------------------------

INTERESTING_BYTES = b'\x00\x01\x08\x7f\x80\xc0\xc3\xe2\xed\xf0\xf4\xfe\xff\r\n\t :;,<>"\\@%[]=?/*+-.0129aZ'
INTERESTING_TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\r\n ", b"\r\n\t", b"\x00", b"\xff", b"\xc3(", b"\xed\xa0\x80",
    b"%00", b"%", b"\\", b'"', b"<", b">", b";", b",", b":", b"=", b"@", b"[", b"]", b"[::1]",
    b"sip:", b"sips:", b"tel:", b";lr", b";branch=", b";tag=", b";received=", b";rport",
    b"SIP/2.0", b"SIP/3.0", b"HTTP/1.1", b"*", b" ", b"\t", b"a" * 300, b"9" * 20, b"-1",
]
INTERESTING_NUMBERS = [0, 1, 2, 9, 10, 99, 100, 125, 126, 127, 128, 255, 256, 65535, 65536,
                       2**31 - 1, 2**31, 2**32 - 1, 2**32, 10**10 - 1, 10**10, 2**63, 2**64]
_NUMBER_RE = re.compile(rb"\d+")


def mutate_bytes(rng: random.Random, data: bytes, ops: int, corpus: list[bytes] | None = None) -> bytes:
    """``ops`` random byte-level edits: flips, sets, cuts, insertions, repeats, splices."""
    buf = bytearray(data)
    for _ in range(ops):
        op = rng.randrange(11)
        n = len(buf)
        pos = rng.randint(0, n)
        if op == 0 and n:
            i = min(pos, n - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[min(pos, n - 1)] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.6 else rng.randrange(256)
        elif op == 2:
            del buf[pos:pos + rng.choice((1, 1, 2, 4, 16, 100))]
        elif op == 3:
            buf[pos:pos] = rng.choice(INTERESTING_TOKENS)
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 5 and n:
            start = rng.randrange(n)
            piece = buf[start:start + rng.randint(1, 80)]
            buf[pos:pos] = piece * rng.choice((1, 1, 2, 10, 100))
        elif op == 6:
            del buf[pos:]  # truncate
        elif op == 7 and corpus:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            buf[pos:pos] = other[start:start + rng.randint(1, 200)]
        elif op == 8:
            numbers = list(_NUMBER_RE.finditer(buf))
            if numbers:
                m = rng.choice(numbers)
                buf[m.start():m.end()] = str(rng.choice(INTERESTING_NUMBERS)).encode()
        elif op == 9 and n > 1:
            a, b = sorted((rng.randrange(n), rng.randrange(n)))
            buf[a:b] = bytes(reversed(buf[a:b])) if rng.random() < 0.5 else buf[a:b].swapcase()
        elif op == 10 and n:
            i = min(pos, n - 1)
            buf[i] = (buf[i] + rng.choice((1, -1, 16, -16, 0x80))) & 0xFF
    return bytes(buf)


def mutate_lines(rng: random.Random, data: bytes, ops: int) -> bytes:
    """Edits of whole header lines: repeat, drop, swap, fold, stretch, rename, reflow values."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(ops):
        if len(lines) < 2:
            break
        i = rng.randrange(1, len(lines))
        op = rng.randrange(9)
        line = lines[i]
        if op == 0:
            lines[i:i] = [line] * rng.choice((1, 2, 70, 71, 260, 300))
        elif op == 1:
            del lines[i]
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3 and len(line) > 2:
            k = rng.randrange(1, len(line))
            lines[i] = line[:k] + rng.choice((b"\r\n ", b"\r\n\t", b" \r\n  ")) + line[k:]
        elif op == 4:
            lines[i] = line + rng.choice((b"a", b";x=y", b", <sip:a@b>", b"%41")) * rng.choice((1, 100, 2100, 9000))
        elif op == 5:
            name, colon, value = line.partition(b":")
            lines[i] = rng.choice((name.upper(), name.lower(), name[:1], name + b" ", b" " + name, b"")) + colon + value
        elif op == 6:
            name, colon, _ = line.partition(b":")
            lines[i] = name + colon + b" " + b"".join(rng.choice(INTERESTING_TOKENS) for _ in range(rng.randint(1, 5)))
        elif op == 7:
            lines[0] = mutate_bytes(rng, lines[0], rng.randint(1, 3))
        else:
            name, colon, value = line.partition(b":")
            parts = value.split(b";")
            rng.shuffle(parts)
            lines[i] = name + colon + b";".join(parts)
    if rng.random() < 0.1:
        body = mutate_bytes(rng, body, 2)
    return b"\r\n".join(lines) + (sep if rng.random() < 0.97 else b"\r\n") + body


def load_corpus() -> list[bytes]:
    paths = sorted((DATA / "captures").glob("*/*.sip")) + sorted((DATA / "rfc4475").glob("*/*.dat"))
    corpus = [p.read_bytes() for p in paths]
    if not corpus:
        raise SystemExit(f"no SIP corpus under {DATA}")
    return corpus


def split_chunks(rng: random.Random, data: bytes, max_chunks: int = 12) -> list[bytes]:
    """Random chunking: whole, byte by byte (short data only), or random cut points."""
    n = len(data)
    mode = rng.randrange(5)
    if n == 0 or mode == 0:
        return [data]
    if mode == 1 and n <= 200:
        return [data[i:i + 1] for i in range(n)]
    cuts = sorted(rng.randrange(1, n + 1) for _ in range(rng.randint(1, max_chunks)))
    chunks, prev = [], 0
    for c in cuts + [n]:
        if c > prev:
            chunks.append(data[prev:c])
            prev = c
    return chunks


# -- target: SIP parser -----------------------------------------------------------------


class SipTarget:
    name = "sip"

    def __init__(self) -> None:
        from sipws.sip import DEFAULT_LIMITS, SipError, SipParseError, parse

        self.parse, self.SipParseError, self.SipError = parse, SipParseError, SipError
        self.max_vias = DEFAULT_LIMITS.max_vias
        self.corpus = load_corpus()
        self.last: bytes = b""

    def generate(self, rng: random.Random) -> bytes:
        data = rng.choice(self.corpus)
        r = rng.random()
        if r < 0.05:
            return data
        if r < 0.35:
            data = mutate_lines(rng, data, rng.randint(1, 4))
        if r >= 0.2:
            data = mutate_bytes(rng, data, rng.choice((1, 1, 2, 3, 5, 10)), self.corpus)
        return data

    def run_one(self, rng: random.Random) -> str:
        data = self.last = self.generate(rng)
        try:
            msg = self.parse(data)
        except self.SipParseError as exc:
            check(bool(exc.reason) and 100 <= exc.status <= 699, f"bad SipParseError {exc.reason!r} {exc.status}")
            return f"rejected {exc.status} {exc.reason.split(':')[0][:48]}"
        kind = "request" if msg.is_request else "response"
        outcome = f"accepted {kind}"
        try:
            self.exercise(msg)
        except self.SipParseError as exc:
            # parse() checks what a proxy relies on; other headers are parsed when read, and
            # a bad one raises SipParseError then (the proxy core answers 400: "bad input")
            outcome = f"accepted {kind}, accessor rejected: {exc.reason.split(':')[0][:40]}"
        out = bytes(msg)
        try:
            again = self.parse(out)
        except self.SipParseError as exc:
            raise Violation(f"re-serialized message rejected: {exc.reason}") from None
        check(again.start_line == msg.start_line, "start line changed on re-parse")
        check(len(again.header_fields()) == len(msg.header_fields()), "header count changed on re-parse")
        check(again == msg, "re-parsed message differs")
        self.proxy_edits(msg)
        return outcome

    def exercise(self, msg: Any) -> None:
        msg.vias, msg.top_via, msg.routes, msg.record_routes, msg.paths, msg.contacts
        msg.from_.tag, msg.to.tag, msg.call_id, msg.cseq, msg.max_forwards, msg.content_length
        msg.supported, msg.require, msg.proxy_require, msg.header_fields(), msg.body
        if msg.is_request and msg.uri[:4].lower() in ("sip:", "sips"):
            msg.request_uri.host

    def proxy_edits(self, msg: Any) -> None:
        """What the edge proxy does to a message; the result must still parse."""
        edited = msg.copy()
        try:
            if edited.is_request and len(edited.vias) >= self.max_vias:
                return  # the proxy answers 483 (sipws.proxy.core: no room for its own Via)
            if edited.is_request:
                edited.decrement_max_forwards()
                edited.set_top_via_received("192.0.2.7", 40123)
                edited.push_via("SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKfuzz")
                edited.push_record_route("<sip:192.0.2.1:5062;transport=udp;lr>")
            elif len(edited.vias) > 1:
                edited.pop_via()  # the proxy's own Via, when the response has one below it
            edited.ensure_content_length()
        except self.SipError:
            return
        try:
            self.parse(bytes(edited))
        except self.SipParseError as exc:
            raise Violation(f"message after the proxy's edits rejected: {exc.reason}") from None


# -- target: stream framer ----------------------------------------------------------------


class FramerTarget:
    name = "framer"

    def __init__(self) -> None:
        from sipws.sip import Limits, SipParseError, StreamFramer

        self.Limits, self.SipParseError, self.StreamFramer = Limits, SipParseError, StreamFramer
        # Stream messages need Content-Length: keep those whose header block has a right one.
        self.corpus = [m for m in load_corpus() if self._framed_length(m) is not None]
        self.last: Any = None

    @staticmethod
    def _framed_length(message: bytes) -> int | None:
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep or message[:1] in (b"\r", b"\n"):
            return None
        found = re.findall(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)", head, re.I)
        if len(found) != 1 or int(found[0]) > len(body):
            return None
        return len(head) + 4 + int(found[0])

    def run_one(self, rng: random.Random) -> str:
        messages = [m[: self._framed_length(m)] for m in rng.choices(self.corpus, k=rng.randint(1, 5))]
        parts: list[bytes] = []
        for m in messages:
            if rng.random() < 0.3:
                parts.append(rng.choice((b"\r\n", b"\r\n\r\n", b"\n", b"\r\n\r\n\r\n\r\n")))
            parts.append(m)
        stream = b"".join(parts)
        mutated = rng.random() < 0.8
        if mutated:
            if rng.random() < 0.3:
                stream = mutate_lines(rng, stream, rng.randint(1, 3))
            stream = mutate_bytes(rng, stream, rng.choice((1, 1, 2, 3, 6)), self.corpus)
        size = rng.choice((65535, 65535, 65535, 4096, 1000, 600, 200))
        limits = self.Limits(max_message_size=size)
        chunks = split_chunks(rng, stream, 20)
        self.last = (size, chunks)
        whole = self._feed_all(limits, [stream])
        cut = self._feed_all(limits, chunks)
        ok_whole, out_whole, pings_whole, rest_whole = whole
        ok_cut, out_cut, pings_cut, rest_cut = cut
        if ok_whole is True:
            check(ok_cut is True, f"chunked feeding failed ({ok_cut}) where one feed did not")
            check(out_cut == out_whole, "chunking changed the messages")
            check(pings_cut == pings_whole, f"chunking changed the pings {pings_cut} != {pings_whole}")
            check(rest_cut == rest_whole, "chunking changed what stays buffered")
        else:
            check(ok_cut is not True, f"one feed failed ({ok_whole}) but chunked feeding did not")
            check(out_cut == out_whole[: len(out_cut)] or not out_whole, "messages before the error differ")
        if not mutated and max(map(len, messages)) <= size:
            check(ok_whole is True and out_whole == messages, "a valid stream did not come out message for message")
        if ok_cut is True:
            return f"accepted {len(out_cut)} messages" + (", rest buffered" if rest_cut else "")
        return f"rejected {ok_cut}"

    def _feed_all(self, limits: Any, chunks: list[bytes]) -> tuple[Any, list[bytes], int, int]:
        framer = self.StreamFramer(limits)
        out: list[bytes] = []
        pings = 0
        max_size = limits.max_message_size
        for chunk in chunks:
            try:
                got = framer.feed(chunk)
            except self.SipParseError as exc:
                check(bool(exc.reason) and 100 <= exc.status <= 699, f"bad SipParseError {exc}")
                try:
                    framer.feed(b"INVITE")
                except self.SipParseError:
                    pass
                else:
                    raise Violation("framer accepted input after an error")
                return exc.reason, out, pings, 0
            pings += framer.pings
            check(framer.buffered <= max_size, f"buffer {framer.buffered} over the limit {max_size}")
            for m in got:
                self._check_whole(m, max_size)
            out.extend(got)
        return True, out, pings, framer.buffered

    def _check_whole(self, message: bytes, max_size: int) -> None:
        check(len(message) <= max_size, f"message of {len(message)} bytes over the limit {max_size}")
        check(message[:1] not in (b"\r", b"\n", b""), "message starts with CR/LF or is empty")
        head, sep, body = message.partition(b"\r\n\r\n")
        check(bool(sep), "message without the end of its header block")
        values = {int(v.strip(b" \t")) for v in re.findall(
            rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(?:\r\n[ \t]+)?([^\r]*)", head + b"\r\n", re.I)}
        check(values == {len(body)}, f"body of {len(body)} bytes, Content-Length {sorted(values)}")


# -- target: HEP codec -------------------------------------------------------------------------


class HepTarget:
    name = "hep"

    def __init__(self) -> None:
        from sipws.trace import hep
        from sipws.trace.errors import HepError

        self.hep, self.HepError = hep, HepError
        self.samples = load_corpus()
        self.last: Any = None

    def random_packet(self, rng: random.Random, valid: bool = True) -> Any:
        hep = self.hep
        values: dict[str, Any] = {}
        for ctype, (name, kind) in hep.CHUNKS.items():
            if rng.random() < 0.5:
                continue
            if kind in ("u8", "u16", "u32"):
                top = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF}[kind]
                value: Any = rng.choice((0, 1, top, rng.randint(0, top)))
                if not valid and rng.random() < 0.2:
                    value = rng.choice((-1, top + 1, True, "1", 1.5, None))
            elif kind == "ipv4":
                value = str(ipaddress.IPv4Address(rng.getrandbits(32)))
                if not valid and rng.random() < 0.2:
                    value = rng.choice(("256.1.1.1", "::1", "", 5, b"\x01\x02\x03\x04"))
            elif kind == "ipv6":
                value = str(ipaddress.IPv6Address(rng.getrandbits(128)))
                if not valid and rng.random() < 0.2:
                    value = rng.choice(("1.2.3.4", ":::", "g::", 7))
            else:
                value = rng.choice((b"", rng.randbytes(rng.randint(0, 40)), rng.choice(self.samples)))
                if not valid and rng.random() < 0.2:
                    value = rng.choice(("text", 3, b"x" * 70000))
            if value is not None:
                values[name] = value
        extra = []
        for _ in range(rng.choice((0, 0, 1, 3))):
            vendor = rng.choice((0, 1, 0x1234, 0xFFFF))
            ctype = rng.choice((0, 0x14, 0x20, 0xFFFF, 0x0F)) if vendor == 0 else rng.randrange(0x10000)
            if vendor == 0 and ctype in hep.CHUNKS and valid:
                ctype = 0x20
            extra.append((vendor, ctype, rng.randbytes(rng.randint(0, 20))))
        return hep.HepPacket(extra=tuple(extra), **values)

    def run_one(self, rng: random.Random) -> str:
        mode = rng.randrange(10)
        if mode < 2:
            return self.round_trip(rng)
        if mode == 2:
            return self.capture(rng)
        if mode < 8:
            return self.decode_mutated(rng)
        return self.split_mutated(rng)

    def round_trip(self, rng: random.Random) -> str:
        hep = self.hep
        valid = rng.random() < 0.7
        packet = self.random_packet(rng, valid)
        self.last = packet
        try:
            data = hep.encode(packet)
        except self.HepError as exc:
            return f"encode rejected: {str(exc).split(':')[0][:40]}"
        check(len(data) <= hep.MAX_PACKET_SIZE, "encoded packet over 65535 bytes")
        back = hep.decode(data)
        check(back == self._normal(packet), f"round trip changed the packet: {back} != {packet}")
        return "round trip ok"

    @staticmethod
    def _normal(packet: Any) -> Any:
        """What decode gives back for a packet encode accepted (addresses in normal form, bytes)."""
        from dataclasses import replace

        changes: dict[str, Any] = {}
        for name, kind in (("src_ipv4", ipaddress.IPv4Address), ("dst_ipv4", ipaddress.IPv4Address),
                           ("src_ipv6", ipaddress.IPv6Address), ("dst_ipv6", ipaddress.IPv6Address)):
            value = getattr(packet, name)
            if value is not None:
                changes[name] = str(kind(value))  # encode takes what ipaddress takes (text, int, packed)
        for name in ("auth_key", "payload", "compressed_payload", "correlation_id", "node_name"):
            value = getattr(packet, name)
            if value is not None:
                changes[name] = bytes(value)
        return replace(packet, **changes)

    def capture(self, rng: random.Random) -> str:
        hep = self.hep
        family = rng.choice((4, 6))
        size = 4 if family == 4 else 16
        args = dict(
            ip_proto=rng.choice((6, 17, 0, 255)),
            src_addr=rng.randbytes(size), dst_addr=rng.randbytes(size),
            src_port=rng.randrange(0x10000), dst_port=rng.randrange(0x10000),
            ts_sec=rng.randrange(2**32), ts_usec=rng.randrange(1_000_000),
            proto_type=rng.choice((1, 0x59)), capture_id=rng.randrange(2**32),
            payload=rng.choice(self.samples)[: rng.randint(0, 2000)],
            auth_key=rng.choice((None, b"", rng.randbytes(8))),
            correlation_id=rng.choice((None, b"12345")),
            node_name=rng.choice((None, b"sipws-1")),
        )
        if rng.random() < 0.2:
            key = rng.choice(("src_port", "ts_sec", "ip_proto", "src_addr"))
            args[key] = {"src_port": 70000, "ts_sec": -1, "ip_proto": 256, "src_addr": b"\x01"}[key]
        self.last = args
        try:
            data = hep.encode_capture(**args)
        except self.HepError as exc:
            return f"capture rejected: {str(exc).split(':')[0][:40]}"
        fields = dict(
            ip_family=hep.FAMILY_IPV4 if family == 4 else hep.FAMILY_IPV6, ip_proto=args["ip_proto"],
            src_port=args["src_port"], dst_port=args["dst_port"], ts_sec=args["ts_sec"],
            ts_usec=args["ts_usec"], proto_type=args["proto_type"], capture_id=args["capture_id"],
            payload=args["payload"], auth_key=args["auth_key"], correlation_id=args["correlation_id"],
            node_name=args["node_name"],
        )
        kind = "ipv4" if family == 4 else "ipv6"
        fields[f"src_{kind}"] = str(ipaddress.ip_address(args["src_addr"]))
        fields[f"dst_{kind}"] = str(ipaddress.ip_address(args["dst_addr"]))
        expected = hep.encode(hep.HepPacket(**fields))
        check(data == expected, "encode_capture differs from encode")
        return "capture ok"

    def _valid_bytes(self, rng: random.Random) -> bytes:
        while True:
            try:
                return self.hep.encode(self.random_packet(rng))
            except self.HepError:
                continue

    def decode_mutated(self, rng: random.Random) -> str:
        hep = self.hep
        data = self._valid_bytes(rng)
        if rng.random() < 0.3:
            data = self._mutate_chunk_headers(rng, data)
        if rng.random() < 0.9:
            data = mutate_bytes(rng, data, rng.choice((1, 1, 2, 4)))
            if rng.random() < 0.5 and len(data) >= 6:  # keep the total length right half the time
                data = data[:4] + struct.pack(">H", len(data) & 0xFFFF) + data[6:]
        self.last = data
        try:
            packet = hep.decode(data)
        except self.HepError as exc:
            return f"decode rejected: {_error_kind(exc)}"
        again = hep.decode(hep.encode(packet))
        check(again == packet, "decoded packet does not survive encode/decode")
        list(hep.iter_chunks(data))
        return "decode accepted"

    def _mutate_chunk_headers(self, rng: random.Random, data: bytes) -> bytes:
        buf = bytearray(data)
        offset = 6
        while offset + 6 <= len(buf):
            length = struct.unpack_from(">H", buf, offset + 4)[0]
            if rng.random() < 0.3:
                field_at = offset + rng.choice((0, 2, 4))
                struct.pack_into(">H", buf, field_at, rng.choice((0, 1, 5, 6, 7, 0x0F, 0xFFFF, length + 1, length - 1)) & 0xFFFF)
            offset += max(length, 6)
        return bytes(buf)

    def split_mutated(self, rng: random.Random) -> str:
        hep = self.hep
        stream = b"".join(self._valid_bytes(rng) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.8:
            stream = mutate_bytes(rng, stream, rng.choice((1, 2, 4)))
        self.last = stream
        rest = b""
        packets: list[bytes] = []
        try:
            for chunk in split_chunks(rng, stream, 8):
                got, rest = hep.split_stream(rest + chunk)
                for p in got:
                    check(len(p) >= hep.HEADER_SIZE and struct.unpack_from(">H", p, 4)[0] == len(p),
                          "split_stream cut a packet that is not its declared length")
                packets.extend(got)
        except self.HepError as exc:
            return f"split rejected: {_error_kind(exc)}"
        check(b"".join(packets) + rest == stream, "split_stream lost or invented bytes")
        decoded = 0
        for p in packets:
            try:
                hep.decode(p)
                decoded += 1
            except self.HepError:
                pass
        return f"split ok, {'all' if decoded == len(packets) else 'not all'} packets decode"


def _error_kind(exc: Exception) -> str:
    text = re.sub(r"0x[0-9a-f]+|\d+|b'[^']*'|b\"[^\"]*\"", "N", str(exc))
    return text[:48]


# -- target: WebSocket server protocol ------------------------------------------------------------

HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE_LINES = [
    b"GET / HTTP/1.1",
    b"Host: sip.example.com",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + HANDSHAKE_KEY.encode(),
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Protocol: sip",
    b"Origin: https://example.com",
]
HANDSHAKE_EXTRA = [
    b"User-Agent: Mozilla/5.0 fuzz", b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    b"Sec-WebSocket-Protocol: msrp, sip", b"Sec-WebSocket-Protocol: sip", b"Origin: https://evil.example.net",
    b"Origin: null", b"Origin: https://a.example.org", b"Sec-WebSocket-Version: 8", b"Sec-WebSocket-Key: AAAA",
    b"Connection: keep-alive, Upgrade", b"Upgrade: h2c", b"X-Forwarded-For: 192.0.2.9", b"Cookie: a=b",
    b"Sec-WebSocket-Version: 13, 8", b"Host:", b"Expect: 100-continue", b"Content-Length: 10",
]
CLOSE_CODES = [0, 1, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
               1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535]
#: The longest incomplete frame header Autobahn may hold (2 + 8 length + 4 mask, minus one byte).
MAX_PENDING_FRAME_HEADER = 13
CONTROL_PAYLOAD_MAX = 125
SIP_MESSAGE = (b"OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS h.invalid;branch=z9hG4bKx\r\n"
               b"Max-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\n"
               b"Call-ID: fz\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
HTTP_HEADER_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[\t\x20-\x7e\x80-\xff]*")
STATUS_LINE_RE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [\t\x20-\x7e\x80-\xff]*")


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = b"\x37\xfa\x21\x3d",
             length: int | None = None, width: int | None = None) -> bytes:
    """A client frame; ``length`` declares another length, ``width`` forces 7/16/64-bit encoding."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    mbit = 0x80 if mask is not None else 0
    if width is None:
        width = 7 if n < 126 else 16 if n < 65536 else 64
    if width == 7:
        head = bytes([first, mbit | (n & 0x7F)])
    elif width == 16:
        head = bytes([first, mbit | 126]) + struct.pack(">H", n & 0xFFFF)
    else:
        head = bytes([first, mbit | 127]) + struct.pack(">Q", n & 0xFFFFFFFFFFFFFFFF)
    if mask is None:
        return head + payload
    return head + mask + _xor(payload, mask)


def _xor(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


class ServerOutput:
    """Checks, as it grows, that what the server wrote is an HTTP response and then frames."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.buf = b""
        self.state = "http"
        self.status: int | None = None
        self.close_code: int | None = None
        self.close_seen = False
        self.frames: list[tuple[int, bytes]] = []
        self.fragments: list[bytes] | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self.state == "http":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                check(len(self.buf) < 16384, "HTTP response head without an end")
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self._check_http(head)
        if self.state == "refused":
            check(not self.buf, f"bytes after a refusal: {self.buf[:40]!r}")
        elif self.state == "frames":
            self._frames()

    def _check_http(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        m = STATUS_LINE_RE.fullmatch(lines[0])
        check(m is not None, f"bad status line {lines[0][:80]!r}")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            check(HTTP_HEADER_RE.fullmatch(line) is not None, f"bad header line {line[:80]!r}")
            name, _, value = line.partition(b":")
            headers.setdefault(name.lower(), []).append(value.strip())
        self.status = int(m.group(1))
        if self.status == 101:
            check(headers.get(b"upgrade", [b""])[0].lower() == b"websocket", "101 without Upgrade: websocket")
            check(b"upgrade" in headers.get(b"connection", [b""])[0].lower(), "101 without Connection: Upgrade")
            check(headers.get(b"sec-websocket-protocol") == [b"sip"], "101 without the sip subprotocol")
            check(b"sec-websocket-extensions" not in headers, "101 accepted an extension")
            if self.key is not None:
                accept = base64.b64encode(hashlib.sha1(self.key.encode() + WS_GUID).digest())
                check(headers.get(b"sec-websocket-accept") == [accept], "wrong Sec-WebSocket-Accept")
            self.state = "frames"
        else:
            check(400 <= self.status <= 599, f"handshake answered {self.status}")
            check(headers.get(b"content-length") == [b"0"], "refusal without Content-Length: 0")
            self.state = "refused"

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            check(not self.close_seen, "bytes after the server's Close frame")
            b0, b1 = buf[0], buf[1]
            check(b1 & 0x80 == 0, "masked server frame")
            check(b0 & 0x70 == 0, "server frame with RSV bits")
            opcode, fin, n, i = b0 & 0x0F, bool(b0 & 0x80), b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, i = struct.unpack_from(">H", buf, 2)[0], 4
                check(n >= 126, "server frame without minimal length encoding")
            elif n == 127:
                if len(buf) < 10:
                    break
                n, i = struct.unpack_from(">Q", buf, 2)[0], 10
                check(65536 <= n < 2**63, "server frame with a bad 64-bit length")
            if len(buf) < i + n:
                break
            payload, buf = buf[i : i + n], buf[i + n :]
            check(opcode in (0, 1, 2, 8, 9, 10), f"server frame with opcode {opcode}")
            if opcode >= 8:
                check(fin and n <= CONTROL_PAYLOAD_MAX, "server control frame fragmented or over 125 bytes")
            if opcode == 8:
                self._check_close(payload)
            elif opcode in (1, 2):
                check(self.fragments is None, "new message inside a fragmented one")
                if fin:
                    self._message(opcode, payload)
                else:
                    self.fragments = [bytes([opcode]), payload]
            elif opcode == 0:
                check(self.fragments is not None, "continuation outside a message")
                self.fragments.append(payload)
                if fin:
                    first, *rest = self.fragments
                    self.fragments = None
                    self._message(first[0], b"".join(rest))
            else:
                self.frames.append((opcode, payload))
        self.buf = buf

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise Violation("server text message is not UTF-8") from None
        self.frames.append((opcode, payload))

    def _check_close(self, payload: bytes) -> None:
        from sipws.transport.ws_common import close_code_allowed

        check(len(payload) != 1, "server Close with a 1-byte payload")
        self.close_seen = True
        if payload:
            code = struct.unpack_from(">H", payload)[0]
            check(close_code_allowed(code), f"server Close with code {code}, which an endpoint may not send")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise Violation("server Close reason is not UTF-8") from None
            self.close_code = code
        else:
            self.close_code = 1005


class WsTarget:
    name = "ws"

    CONFIGS: list[tuple[str, dict[str, Any]]] = [
        ("default", {}),
        ("small", {"ws": {"max_message_size": 1024, "max_msg_chunks": 3}}),
        ("cors", {"http": {"require_origin": False, "cors_mode": 2,
                           "allowed_origins": ["https://example.com", "https://*.example.org"]}}),
    ]

    def __init__(self) -> None:
        import txaio
        from twisted.internet.address import IPv4Address
        from twisted.internet.error import ConnectionDone, ConnectionLost
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.logger import globalLogPublisher
        from twisted.python.failure import Failure

        from sipws.config import config_from_dict
        from sipws.tap import build_service
        from sipws.transport import handshake

        txaio.use_twisted()
        self.clock = Clock()
        self._txaio_config = txaio.config
        self._saved_loop = txaio.config.loop
        txaio.config.loop = self.clock  # Autobahn's timers (batched and plain) on the fake clock
        self.StringTransport, self.IPv4Address, self.Failure = StringTransport, IPv4Address, Failure
        self.ConnectionDone, self.ConnectionLost = ConnectionDone, ConnectionLost
        self.max_head = handshake.MAX_HEAD_SIZE
        self.logged_failures: list[str] = []
        self._observer = self._log_observer
        globalLogPublisher.addObserver(self._observer)
        self._publisher = globalLogPublisher
        self.services = []
        quiet = {"sip": {"listen": [], "upstream": "sip:127.0.0.1:5060;transport=udp"}, "admin": {"listen": ""}}
        for name, overrides in self.CONFIGS:
            data: dict[str, Any] = {"ws": {"listen": ["127.0.0.1:0"]}, **quiet}
            for section, values in overrides.items():
                data[section] = {**data.get(section, {}), **values}
            root = build_service(config_from_dict(data), reactor=self.clock)
            root.set_message_handler(self._delivered)
            factory = root.ws_server.factories["ws"]
            fire = factory.fire_closed
            factory.fire_closed = self._closed_hook(fire)
            self.services.append((name, root, factory))
        self.delivered: list[bytes] = []
        self.closed_events: list[tuple[Any, ...]] = []
        self.last: Any = None
        self.port = 40000

    def close(self) -> None:
        """Put back what was changed in the process: txaio's loop, the log observers."""
        self._txaio_config.loop = self._saved_loop
        self._publisher.removeObserver(self._observer)
        for _, root, _ in self.services:
            watcher = getattr(root, "log_watcher", None)  # added by build_service, removed by stopService
            if watcher is not None:
                self._publisher.removeObserver(watcher)

    def _log_observer(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            from twisted.logger import formatEvent

            self.logged_failures.append(f"{formatEvent(event)}: {event['log_failure'].getErrorMessage()}")

    def _delivered(self, record: Any, data: bytes) -> None:
        self.delivered.append(data)

    def _closed_hook(self, fire: Callable) -> Callable:
        def hook(record: Any, code: Any, reason: str, side: str) -> None:
            self.closed_events.append((record.id, code, reason, side))
            fire(record, code, reason, side)

        return hook

    # -- generation ---------------------------------------------------------------

    def handshake(self, rng: random.Random) -> tuple[bytes, str | None]:
        """A handshake request and the key to check the 101 against (None: mutated)."""
        r = rng.random()
        if r < 0.7:
            return b"\r\n".join(HANDSHAKE_LINES) + b"\r\n\r\n", HANDSHAKE_KEY
        lines = list(HANDSHAKE_LINES)
        key: str | None = None
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(8)
            i = rng.randrange(len(lines))
            if op == 0:
                del lines[max(i, 1)]
            elif op == 1:
                lines.insert(rng.randint(1, len(lines)), rng.choice(HANDSHAKE_EXTRA))
            elif op == 2:
                lines[i] = lines[i].swapcase() if rng.random() < 0.5 else lines[i].lower()
            elif op == 3:
                lines[0] = rng.choice((b"GET /x HTTP/1.1", b"POST / HTTP/1.1", b"GET / HTTP/1.0", b"GET  / HTTP/1.1",
                                       b"GET / HTTP/1.1 x", b"GET http://h/ HTTP/1.1", b"GET /?a=b HTTP/1.1", b"GET"))
            elif op == 4:
                lines.insert(rng.randint(1, len(lines)), b"X-Pad: " + b"p" * rng.choice((100, 4000, 9000)))
            elif op == 5:
                lines[i:i] = [b"X-Many: 1"] * rng.choice((50, 101))
            elif op == 6:
                lines[i] = mutate_bytes(rng, lines[i], rng.randint(1, 3))
            else:
                new_key = base64.b64encode(rng.randbytes(16)).decode()
                lines = [l for l in lines if not l.lower().startswith(b"sec-websocket-key")]
                lines.insert(rng.randint(1, len(lines)), b"Sec-WebSocket-Key: " + new_key.encode())
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        if rng.random() < 0.3:
            data = mutate_bytes(rng, data, rng.randint(1, 3))
        return data, key

    def random_frame(self, rng: random.Random, plan: dict) -> bytes:
        """One frame, valid or not; ``plan['valid']`` turns False once a frame breaks the rules."""
        limit = plan["max_message_size"]
        kind = rng.randrange(16)
        if kind <= 3:  # a whole message, text or binary
            payload = rng.choice((SIP_MESSAGE, b"\r\n", b"\r\n\r\n", b"", rng.randbytes(rng.randint(0, 300)),
                                  b"x" * rng.choice((125, 126, 127, 65535, 65536, limit, limit + 1))))
            opcode = rng.choice((1, 2))
            if opcode == 1:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    plan["valid"] = False
            if len(payload) > limit:
                plan["valid"] = False
            if plan["valid"] and payload not in (b"\r\n", b"\r\n\r\n"):
                plan["expected"].append(payload)
            return ws_frame(opcode, payload)
        if kind <= 5:  # a fragmented message with control frames in between
            payload = rng.choice((SIP_MESSAGE, "é€😀".encode() * 20, rng.randbytes(50)))
            opcode = rng.choice((1, 2))
            pieces = max(1, rng.choice((2, 3, 4, plan["max_chunks"], plan["max_chunks"] + 1)))
            cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(pieces - 1))
            parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
            out = []
            for j, part in enumerate(parts):
                out.append(ws_frame(opcode if j == 0 else 0, part, fin=j == len(parts) - 1))
                if rng.random() < 0.3 and j < len(parts) - 1:
                    out.append(ws_frame(9, b"mid-ping"))
            valid = pieces <= plan["max_chunks"] and len(payload) <= limit
            if opcode == 1:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    valid = False
            if valid and plan["valid"]:
                plan["expected"].append(payload)
            else:
                plan["valid"] = False
            return b"".join(out)
        if kind <= 7:  # Ping / Pong
            payload = rng.choice((b"", b"ping", rng.randbytes(125), b"p" * 126))
            if len(payload) > 125:
                plan["valid"] = False
            return ws_frame(rng.choice((9, 10)), payload)
        if kind == 8:  # Close, every kind of payload
            code = rng.choice(CLOSE_CODES)
            reason = rng.choice((b"", b"bye", "ça".encode(), b"\xff\xfe", b"\xc3", b"r" * 123, b"r" * 124))
            payload = rng.choice((b"", struct.pack(">H", code) + reason, b"\x03"))
            plan["valid"] = False  # the connection ends here
            return ws_frame(8, payload, fin=rng.random() < 0.9)
        if kind == 9:  # reserved opcodes and RSV bits
            plan["valid"] = False
            return ws_frame(rng.choice((3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 1, 2, 9)), b"abc", rsv=rng.randrange(8))
        if kind == 10:  # unmasked
            plan["valid"] = False
            return ws_frame(rng.choice((1, 2, 9, 8)), b"unmasked", mask=None)
        if kind == 11:  # declared length far beyond what follows (memory bombs), then a stream
            plan["valid"] = False
            declared = rng.choice((126, 65535, 65536, limit + 1, 2**31, 2**40, 2**63 - 1, 2**63, 2**64 - 1))
            opcode = rng.choice((1, 2, 0, 8, 9, 10))
            head = ws_frame(opcode, b"", length=declared)
            plan["stream"] = rng.choice((0, 1000, 70000, 300000))
            return head
        if kind == 12:  # non-minimal length encodings
            payload = b"x" * rng.choice((0, 5, 125, 200))
            plan["valid"] = False
            return ws_frame(rng.choice((1, 2, 9)), payload, width=rng.choice((16, 64)))
        if kind == 13:  # a continuation with nothing to continue, or a new message inside one
            plan["valid"] = False
            return ws_frame(0, b"cont") if rng.random() < 0.5 else ws_frame(1, b"a", fin=False) + ws_frame(2, b"b")
        if kind == 14:  # invalid UTF-8 in text, split in a fragment boundary
            plan["valid"] = False
            bad = rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"))
            return ws_frame(1, b"ok" + bad[:1], fin=False) + ws_frame(0, bad[1:] + b"ok")
        plan["valid"] = False  # random bytes
        return rng.randbytes(rng.randint(1, 30))

    # -- one connection --------------------------------------------------------------

    def run_one(self, rng: random.Random) -> str:
        config_name, root, factory = self.services[rng.randrange(len(self.services))]
        self.delivered = []
        self.closed_events = []
        self.logged_failures = []
        self.port = self.port % 20000 + 1
        transport = self.StringTransport(
            peerAddress=self.IPv4Address("TCP", "192.0.2.44", 40000 + self.port),
            hostAddress=self.IPv4Address("TCP", "127.0.0.1", 8080),
        )
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        check(len(root.connections) == 1, f"{len(root.connections)} connections in the table after accept")

        request, key = self.handshake(rng)
        plan = {"valid": key is not None, "expected": [], "max_message_size": factory.maxMessagePayloadSize,
                "max_chunks": factory.max_msg_chunks, "stream": 0}
        frames = [self.random_frame(rng, plan) for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 12)))]
        stream = b"".join(frames)
        mutated = rng.random() < 0.3
        if mutated:
            stream = mutate_bytes(rng, stream, rng.randint(1, 4))
            plan["valid"] = False
        steps: list[Any] = []
        if rng.random() < 0.15:
            steps.extend(split_chunks(rng, request + stream, 16))
        else:
            steps.extend(split_chunks(rng, request, 3))
            steps.extend(split_chunks(rng, stream, 12))
        for _ in range(plan["stream"] // 16384):
            steps.append(rng.randbytes(16) * 1024)
        if rng.random() < 0.25:  # clock jumps between chunks: handshake and close timeouts fire mid-stream
            for _ in range(rng.randint(1, 3)):
                steps.insert(rng.randint(0, len(steps)), rng.choice((0.5, 2.5, 6.0, 12.0)))
        self.last = (config_name, steps)

        output = ServerOutput(key)
        previous_data = 0
        for step in steps:
            if transport.disconnecting:
                break  # the reactor stops reading once the transport is closing
            was_failed = self._failed(protocol)
            if isinstance(step, float):
                self.clock.advance(step)
                fed = 0
            else:
                protocol.dataReceived(step)
                fed = len(step)
            previous_data = self._check_step(protocol, transport, output, previous_data, was_failed, fed)

        if not transport.disconnecting and rng.random() < 0.5:
            was_failed = self._failed(protocol)
            self.clock.advance(rng.choice((3.0, 10.0)))  # handshake / close handshake timeouts
            self._check_step(protocol, transport, output, previous_data, was_failed, 0)
        if transport.disconnecting:
            end = "server closed"
            reason = self.Failure(self.ConnectionDone("closed"))
        else:
            end = "peer dropped"
            reason = self.Failure(self.ConnectionLost("peer went away"))
        protocol.connectionLost(reason)
        self.clock.advance(60.0)
        check(not self.logged_failures, f"failure logged: {self.logged_failures[:1]}")
        check(len(root.connections) == 0, f"{len(root.connections)} connections left in the table")
        check(len(self.closed_events) == 1, f"{len(self.closed_events)} closed events")
        _, code, reason_text, side = self.closed_events[0]
        check(bool(reason_text) or code is not None, "closed event without code or reason")
        check(not self.clock.getDelayedCalls(), f"{len(self.clock.getDelayedCalls())} timers left after the loss")
        if plan["valid"] and output.status == 101:
            got = [p for op, p in output.frames if op in (1, 2)]
            check(self.delivered == plan["expected"], "a valid stream was not delivered message for message")
            check(all(p == b"\r\n" for p in got), "server sent a data message other than a CRLF reply")
        if output.status is None:
            handshake = "no answer"
        elif output.status == 101:
            handshake = "101"
        else:
            handshake = f"refused {output.status}"
        close = "" if output.close_code is None else f", server Close {output.close_code}"
        if output.status == 101 and output.close_code is None and end == "server closed":
            close = ", no Close"
        return f"{handshake}{close}, {end}"

    @staticmethod
    def _failed(protocol: Any) -> bool:
        from autobahn.websocket.protocol import WebSocketProtocol

        return bool(getattr(protocol, "_failed", False)) or protocol.state == WebSocketProtocol.STATE_CLOSED

    def reset(self) -> None:
        """After a finding: drop what the failed input left behind, so the next input starts clean."""
        for _, root, _ in self.services:
            for record in list(root.connections):
                root.connections.remove(record)
        self.clock.advance(60.0)

    def _check_step(self, protocol: Any, transport: Any, output: ServerOutput, previous_data: int,
                    was_failed: bool, fed: int) -> int:
        written = transport.value()
        transport.clear()
        output.feed(written)
        if output.state == "refused" or output.close_seen:
            check(transport.disconnecting, f"transport not closing after a {'Close' if output.close_seen else 'refusal'}")
        from autobahn.websocket.protocol import WebSocketProtocol

        size = len(protocol.data or b"")
        control = sum(map(len, getattr(protocol, "control_frame_data", None) or ()))
        message = sum(map(len, getattr(protocol, "message_data", None) or ()))
        message += sum(map(len, getattr(protocol, "frame_data", None) or ()))  # the frame in progress
        held = size + control + message
        state = protocol.state
        if was_failed:
            # RFC 6455 §7.1.7: after failing, nothing more is processed, so nothing more is kept
            check(held <= previous_data, f"buffers grew from {previous_data} to {held} bytes after the connection failed")
        elif self._failed(protocol):
            # failed during this step: Autobahn may still take in the rest of that read, no more
            check(held <= previous_data + fed, f"{held} bytes buffered, more than was fed ({previous_data} + {fed})")
        elif state == WebSocketProtocol.STATE_CONNECTING:
            check(size <= self.max_head, f"{size} bytes buffered while connecting (limit {self.max_head})")
        else:
            check(size <= MAX_PENDING_FRAME_HEADER, f"{size} bytes buffered in state {state} (limit {MAX_PENDING_FRAME_HEADER})")
            check(control <= CONTROL_PAYLOAD_MAX, f"control frame buffer holds {control} bytes")
            check(message <= protocol.maxMessagePayloadSize, f"message reassembly holds {message} bytes")
        queue = getattr(protocol, "send_queue", None)
        check(not queue, "bytes left in Autobahn's send queue")
        return held


# -- driver ---------------------------------------------------------------------------


TARGETS: dict[str, Callable[[], Any]] = {
    "ws": WsTarget,
    "sip": SipTarget,
    "framer": FramerTarget,
    "hep": HepTarget,
}


def run(target_name: str, seed: int = DEFAULT_SEED, inputs: int = DEFAULT_INPUTS, start: int = 0,
        max_seconds: float | None = None, progress: float | None = None, verbose: bool = False) -> Result:
    """Fuzz one target with inputs start..start+inputs-1 of ``seed``; never raises for a finding."""
    target = TARGETS[target_name]()
    result = Result(target_name, seed, start)
    began = time.perf_counter()
    next_progress = began + progress if progress else None
    try:
        for index in range(start, start + inputs):
            rng = input_rng(seed, index)
            try:
                outcome = target.run_one(rng)
            except Violation as exc:
                _record(result, target, index, f"oracle: {exc}", "")
                outcome = "FAILED"
                if hasattr(target, "reset"):
                    target.reset()
            except Exception as exc:  # noqa: BLE001 - anything else escaping is the finding
                tb = traceback.extract_tb(exc.__traceback__)
                where = next((f"{f.filename.split('/sipws/')[-1]}:{f.lineno} {f.name}" for f in reversed(tb)
                              if "/bench/fuzz.py" not in f.filename), "?")
                _record(result, target, index, f"{type(exc).__name__} at {where}", f"{type(exc).__name__}: {exc}"[:300])
                outcome = "FAILED"
                if hasattr(target, "reset"):
                    target.reset()
            if verbose:
                print(f"input {index}: {outcome}\n  {show(target.last)}")
            result.outcomes[outcome] += 1
            result.inputs += 1
            now = time.perf_counter()
            if next_progress is not None and now >= next_progress:
                next_progress = now + progress
                print(f"[{target_name}] {result.inputs} inputs, {result.inputs / (now - began):.0f}/s, "
                      f"{result.failure_count} failures", flush=True)
            if max_seconds is not None and now - began >= max_seconds:
                break
    finally:
        result.seconds = time.perf_counter() - began
        if hasattr(target, "close"):
            target.close()
    return result


def _record(result: Result, target: Any, index: int, kind: str, detail: str) -> None:
    result.failure_count += 1
    result.failure_kinds[kind[:160]] += 1
    if len(result.failures) < KEEP_FAILURES:
        result.failures.append(FailureRecord(index, kind, detail, show(target.last)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", choices=("all", *TARGET_NAMES))
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs per target")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--start", type=int, default=0, help="index of the first input")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop a target after this long")
    parser.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines (0: none)")
    parser.add_argument("--verbose", action="store_true", help="print every input and its outcome")
    args = parser.parse_args(argv)
    from twisted.logger import globalLogBeginner

    # Log events go nowhere (the ws target watches for logged failures itself).
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    names = TARGET_NAMES if args.target == "all" else (args.target,)
    print(f"fuzz: seed {args.seed}, {args.inputs} inputs per target from index {args.start}: {', '.join(names)}",
          flush=True)
    failed = False
    for name in names:
        result = run(name, args.seed, args.inputs, args.start, args.max_seconds, args.progress or None, args.verbose)
        print(result.report(), flush=True)
        failed = failed or result.failure_count > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
