"""The two ends of bench/relay.py that are not proxies (not a bench itself: ``make bench``
would run it with no arguments, which only prints this text).

- The **core** (``run_responder``): one UDP socket on 127.0.0.1 playing the SIP core behind
  the proxy.  OPTIONS, MESSAGE, BYE, REGISTER: 200 OK.  INVITE: a UAS, 100, 180 and 200
  with Contact, the Record-Route set copied and an SDP answer.  ACK: no answer.  For every
  Call-ID that began with an INVITE it records the sequence of distinct requests it saw
  (a retransmission, same method and top-Via branch, is answered again but not recorded),
  and answers the BYE with ``X-Core-Saw: INVITE,ACK,MESSAGE,BYE`` (what it saw, in order),
  so the caller can check the far end of its own call (a retransmitted BYE gets the same
  answer again).  Line commands on stdin:
  ``stats`` (one JSON line: calls seen in order, out of order, still open; requests by
  method; in-dialog requests that still carried a Route; then the counters restart) and
  ``samples`` (one JSON line: the first request of each method since the last ``samples``,
  as received, for bench/relay.py --show).
- The **load generators** (``run_options_load``, ``run_calls_load``, ``run_show``): one
  asyncio process, N WebSocket connections over raw sockets (upgrade with
  ``Sec-WebSocket-Protocol: sip`` and an Origin, masked frames), each keeping a window of
  OPTIONS or calls outstanding.

Both speak to the orchestrator (bench/relay.py) one line at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from _sipload import server_frames  # noqa: E402 - bench/ is not a package

ORIGIN = "https://phone.example.com"
MAX_DATAGRAM = 65535
WS_OPCODE_TEXT = 0x1
WS_OPCODE_BINARY = 0x2
WS_OPCODE_CLOSE = 0x8
WS_OPCODE_PING = 0x9
WS_OPCODE_PONG = 0xA
#: Seconds without a single response before the load generator gives up on a phase.
STALL_TIMEOUT = 10.0
#: Seconds one call may take from INVITE to the BYE's 200 before it counts as failed
#: (above Kamailio's fr_timer of 10 s, so a 408 from a proxy arrives first).
CALL_TIMEOUT = 15.0
#: Seconds one connection may take to open and upgrade.
STEP_TIMEOUT = 10.0
#: Requests (options) or calls every connection makes before the measured phase.
WARMUP_OPTIONS_PER_CLIENT = 20
WARMUP_CALLS_PER_CLIENT = 5
#: The core's 2xx retransmission (RFC 3261 §13.3.1.4): T1, doubling up to T2, until the ACK,
#: given up after 64*T1; and how many ended calls it remembers to answer a retransmitted BYE.
T1, T2 = 0.5, 4.0
RETRANSMIT_FOR = 64 * T1
RETRANSMIT_SCAN = 0.05
ENDED_REMEMBERED = 50000
#: Seconds --show leaves its REGISTER to be answered before the call.
SHOW_REGISTER_WAIT = 0.3
#: What the core must have seen of every counted call, in order.
CALL_SEQUENCE = ["INVITE", "ACK", "MESSAGE", "BYE"]
SDP_OFFER = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 8\r\n"
             "c=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")
SDP_ANSWER = (b"v=0\r\no=core 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
              b"c=IN IP4 127.0.0.1\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id", b"m": b"contact",
            b"l": b"content-length", b"c": b"content-type"}


# -- reading SIP, just enough -------------------------------------------------------------


def read_head(message: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """(first line, lower-case full header name -> values in order); the body is ignored."""
    end = message.find(b"\r\n\r\n")
    lines = message[:end if end >= 0 else len(message)].split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        headers.setdefault(_COMPACT.get(name, name), []).append(value.strip())
    return lines[0], headers


def split_commas(values: list[bytes]) -> list[bytes]:
    """Header values that may be comma-joined (Via, Record-Route, Route), one per entry."""
    out = []
    for value in values:
        depth, start = 0, 0
        for index, char in enumerate(value):
            if char == 0x3C:  # <
                depth += 1
            elif char == 0x3E:  # >
                depth -= 1
            elif char == 0x2C and depth == 0:  # ,
                out.append(value[start:index].strip())
                start = index + 1
        out.append(value[start:].strip())
    return out


def uri_of(name_addr: bytes) -> bytes:
    if b"<" in name_addr:
        return name_addr[name_addr.index(b"<") + 1:name_addr.index(b">")]
    return name_addr.split(b";")[0].strip()


def _branch(via: bytes) -> bytes:
    start = via.find(b"branch=")
    if start < 0:
        return b""
    end = start + 7
    while end < len(via) and via[end] not in b";, ":
        end += 1
    return via[start + 7:end]


# -- the core (UDP responder / UAS) ---------------------------------------------------------


@dataclass
class CoreStats:
    in_order: int = 0
    out_of_order: int = 0
    bad_examples: list[str] = field(default_factory=list)
    retransmissions: int = 0
    resent_2xx: int = 0
    route_left: int = 0
    by_method: dict[str, int] = field(default_factory=dict)


class Core:
    """The SIP core behind the proxy: answers what the bench sends, records every call."""

    def __init__(self, port: int) -> None:
        self.contact = f"Contact: <sip:core@127.0.0.1:{port}>".encode()
        #: Call-ID -> (methods seen in order, (method, branch) seen)
        self.calls: dict[bytes, tuple[list[str], set[tuple[bytes, bytes]]]] = {}
        self.stats = CoreStats()
        self.samples: dict[str, str] = {}
        #: Call-ID -> [the 2xx to INVITE, address, next resend, interval, give-up time] until the ACK
        self.unacked: dict[bytes, list] = {}
        #: Call-ID -> the answer to its BYE (a retransmitted BYE gets it again), oldest first
        self.ended: dict[bytes, bytes] = {}

    def take_stats(self) -> dict[str, Any]:
        stats = self.stats
        report = {"in_order": stats.in_order, "out_of_order": stats.out_of_order, "open": len(self.calls),
                  "bad_examples": stats.bad_examples, "retransmissions": stats.retransmissions,
                  "resent_2xx": stats.resent_2xx, "unacked_2xx": len(self.unacked),
                  "route_left": stats.route_left, "by_method": stats.by_method}
        self.stats = CoreStats()
        self.calls.clear()
        self.unacked.clear()
        return report

    def take_samples(self) -> dict[str, str]:
        samples, self.samples = self.samples, {}
        return samples

    def resend(self, now: float, sendto: Any) -> None:
        """Send again every 2xx to INVITE whose ACK has not come in time."""
        for call_id, entry in list(self.unacked.items()):
            if now >= entry[4]:
                del self.unacked[call_id]
            elif now >= entry[2]:
                self.stats.resent_2xx += 1
                entry[3] = min(entry[3] * 2, T2)
                entry[2] = now + entry[3]
                try:
                    sendto(entry[0], entry[1])
                except OSError:
                    pass

    def handle(self, data: bytes, address: Any = None) -> list[bytes]:
        """The datagrams to send back for one received datagram."""
        if data.startswith(b"SIP/2.0"):
            return []
        first, headers = read_head(data)
        method = first.split(b" ", 1)[0].decode("ascii", "replace")
        if method == "OPTIONS":
            # the OPTIONS scenario's hot path: nothing recorded
            return [self.reply(headers, b"200 OK")]
        stats = self.stats
        stats.by_method[method] = stats.by_method.get(method, 0) + 1
        if method not in self.samples:
            self.samples[method] = data.decode("utf-8", "replace")
        call_id = headers.get(b"call-id", [b""])[0]
        vias = headers.get(b"via", [b""])
        key = (method.encode(), _branch(vias[0]))
        call = self.calls.get(call_id)
        if call is None and method == "BYE" and call_id in self.ended:
            stats.retransmissions += 1
            return [self.ended[call_id]]
        if method == "INVITE" and call is None and b"tag=" not in headers.get(b"to", [b""])[0]:
            call = self.calls[call_id] = ([], set())
        if call is not None:
            if key in call[1]:
                stats.retransmissions += 1
                if method == "ACK":
                    return []
            else:
                call[1].add(key)
                call[0].append(method)
                if method != "INVITE" and b"route" in headers:
                    stats.route_left += 1
        if method == "INVITE":
            final = self.reply(headers, b"200 OK", dialog=True, body=SDP_ANSWER)
            if address is not None:
                now = time.monotonic()
                self.unacked[call_id] = [final, address, now + T1, T1, now + RETRANSMIT_FOR]
            return [self.reply(headers, b"100 Trying", tag=False), self.reply(headers, b"180 Ringing", dialog=True),
                    final]
        if method == "ACK":
            self.unacked.pop(call_id, None)
            return []
        extra: list[bytes] = []
        if method == "BYE" and call is not None:
            seen = call[0]
            extra.append(b"X-Core-Saw: " + ",".join(seen).encode())
            if seen == CALL_SEQUENCE:
                stats.in_order += 1
            else:
                stats.out_of_order += 1
                if len(stats.bad_examples) < 5:
                    stats.bad_examples.append(f"{call_id.decode(errors='replace')}: {','.join(seen)}")
            del self.calls[call_id]
            answer = self.reply(headers, b"200 OK", extra=extra)
            self.ended[call_id] = answer
            if len(self.ended) > ENDED_REMEMBERED:
                del self.ended[next(iter(self.ended))]
            return [answer]
        elif method == "REGISTER":
            extra += [b"Contact: " + value for value in headers.get(b"contact", [])]
            extra += [b"Path: " + value for value in headers.get(b"path", [])]
        return [self.reply(headers, b"200 OK", extra=extra)]

    def reply(self, headers: dict[bytes, list[bytes]], status: bytes, tag: bool = True, dialog: bool = False,
              body: bytes = b"", extra: list[bytes] = ()) -> bytes:
        out = [b"SIP/2.0 " + status]
        out += [b"Via: " + value for value in headers.get(b"via", [])]
        if dialog:
            out += [b"Record-Route: " + value for value in headers.get(b"record-route", [])]
        out += [b"From: " + value for value in headers.get(b"from", [])]
        to = headers.get(b"to", [b""])[0]
        out.append(b"To: " + (to if not tag or b";tag=" in to else to + b";tag=core"))
        out += [b"Call-ID: " + value for value in headers.get(b"call-id", [])]
        out += [b"CSeq: " + value for value in headers.get(b"cseq", [])]
        if dialog:
            out.append(self.contact)
        out += extra
        if body:
            out.append(b"Content-Type: application/sdp")
        out.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(out) + b"\r\n\r\n" + body


def run_responder() -> int:
    """Answer every datagram on 127.0.0.1:0 until stdin closes; prints ``READY PORT``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    core = Core(port)
    print(f"READY {port}", flush=True)
    recvfrom, sendto, handle = sock.recvfrom, sock.sendto, core.handle
    stdin = sys.stdin
    next_scan = time.monotonic() + RETRANSMIT_SCAN
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, "sip")
        selector.register(stdin, selectors.EVENT_READ, "commands")
        while True:
            events = selector.select(RETRANSMIT_SCAN)
            now = time.monotonic()
            if now >= next_scan:
                core.resend(now, sendto)
                next_scan = now + RETRANSMIT_SCAN
            for key, _ in events:
                if key.data == "commands":
                    line = stdin.readline()
                    if not line:
                        return 0
                    command = line.strip()
                    if command == "stats":
                        print(json.dumps(core.take_stats()), flush=True)
                    elif command == "samples":
                        print(json.dumps(core.take_samples()), flush=True)
                    continue
                while True:
                    try:
                        data, address = recvfrom(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    for reply in handle(data, address):
                        try:
                            sendto(reply, address)
                        except OSError:
                            pass  # a full socket buffer: the proxy's retransmission covers it


# -- the load generators ----------------------------------------------------------------------


def _mask(payload: bytes) -> bytes:
    """A client frame's payload XORed with a fresh 4-byte key, key first (RFC 6455 §5.3)."""
    key = random.getrandbits(32).to_bytes(4, "big")
    size = len(payload)
    stream = (key * ((size >> 2) + 1))[:size]
    return key + (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def client_frame(payload: bytes, opcode: int = WS_OPCODE_TEXT) -> bytes:
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + _mask(payload)


def options(client: int, seq: int, run: str) -> tuple[bytes, bytes]:
    """(Call-ID, OPTIONS request) for one request of one client."""
    call_id = f"{run}-{client}-{seq}".encode()
    request = (
        f"OPTIONS sip:bench@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS c{client}x{run}.invalid;branch=z9hG4bK{run}{client}x{seq}\r\n"
        f"Max-Forwards: 70\r\n"
        f"To: <sip:bench@example.com>\r\n"
        f"From: <sip:load{client}@example.com>;tag=t{run}{client}\r\n"
        f"Call-ID: {call_id.decode()}\r\n"
        f"CSeq: {seq} OPTIONS\r\n"
        f"Accept: application/sdp\r\n"
        f"User-Agent: sipws-bench\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    return call_id, request


def _call_id(message: bytes) -> bytes:
    start = message.find(b"\r\nCall-ID:")
    if start < 0:
        lowered = message.lower()
        start = lowered.find(b"\r\ncall-id:")
        if start < 0:
            start = lowered.find(b"\r\ni:")
            if start < 0:
                return b""
            start += 4
        else:
            start += 10
    else:
        start += 10
    end = message.find(b"\r\n", start)
    return message[start:end].strip()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Shared:
    """What all connections of one load generator share."""

    remaining: int = 0
    outstanding: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    completed: int = 0
    last_progress: float = 0.0
    done: Optional[asyncio.Future] = None
    run: str = "w"

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1

    def finished(self) -> None:
        """One request or call ended (answered, completed or failed)."""
        self.outstanding -= 1
        self.last_progress = time.perf_counter()
        if self.outstanding == 0 and self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


class WsClient(asyncio.Protocol):
    """One WebSocket connection: upgrade, then hand every SIP message to ``_message``."""

    def __init__(self, index: int, port: int, shared: Shared, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.port = port
        self.shared = shared
        self.upgraded: asyncio.Future = loop.create_future()
        self.buffer = b""
        self.transport: Any = None
        self.seq = 0
        self.closed = False
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: sip\r\nOrigin: {ORIGIN}\r\nUser-Agent: sipws-bench\r\n\r\n"
        ).encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.buffer = self.buffer[end + 4:]
            if head.startswith(b"http/1.1 101") and b"\r\nsec-websocket-protocol: sip" in head:
                self.upgraded.set_result(None)
            else:
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
        frames, used = server_frames(self.buffer)
        for opcode, payload, masked in frames:
            if masked:
                raise SystemExit("server sent a masked frame")
            if opcode in (WS_OPCODE_TEXT, WS_OPCODE_BINARY):
                self._message(payload)
            elif opcode == WS_OPCODE_PING:
                self.transport.write(client_frame(payload, WS_OPCODE_PONG))
            elif opcode == WS_OPCODE_CLOSE and not self.closing:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                print(f"client {self.index}: server closed ({code} {payload[2:]!r})", file=sys.stderr)
        self.buffer = self.buffer[used:]

    def _message(self, message: bytes) -> None:
        raise NotImplementedError

    def send_next(self) -> None:
        raise NotImplementedError

    def expire(self, now: float) -> None:
        """Fail what has waited too long (calls only)."""

    def pending_count(self) -> int:
        return 0

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before 101"))
        elif self.pending_count() and not self.closing:
            print(f"client {self.index}: connection lost with {self.pending_count()} pending", file=sys.stderr)


class OptionsClient(WsClient):
    """OPTIONS with a window of outstanding requests; latency per request."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pending: dict[bytes, float] = {}

    def pending_count(self) -> int:
        return len(self.pending)

    def _message(self, message: bytes) -> None:
        shared = self.shared
        sent = self.pending.pop(_call_id(message), None)
        if sent is None:
            shared.unknown += 1
            return
        shared.latencies.append(time.perf_counter() - sent)
        status = message[8:11].decode("ascii", "replace")
        shared.statuses[status] = shared.statuses.get(status, 0) + 1
        if status == "200":
            shared.completed += 1
        else:
            shared.failures[f"OPTIONS {status}"] = shared.failures.get(f"OPTIONS {status}", 0) + 1
        shared.finished()
        self.send_next()

    def send_next(self) -> None:
        shared = self.shared
        if shared.remaining <= 0 or self.closed:
            return
        shared.remaining -= 1
        shared.outstanding += 1
        self.seq += 1
        call_id, request = options(self.index, self.seq, shared.run)
        self.pending[call_id] = time.perf_counter()
        self.transport.write(client_frame(request))


# states of one call
INVITING, MESSAGING, BYEING = "INVITE", "MESSAGE", "BYE"


class Call:
    __slots__ = ("call_id", "state", "started", "routes", "target", "to", "ringing", "seq")

    def __init__(self, call_id: str, seq: int) -> None:
        self.call_id = call_id
        self.seq = seq
        self.state = INVITING
        self.started = time.perf_counter()
        self.routes: list[bytes] = []
        self.target = b""
        self.to = b""
        self.ringing = False


class CallClient(WsClient):
    """Calls with a window of calls in progress: INVITE with SDP, 100/180/200, ACK, an in-dialog
    MESSAGE, BYE; counted only when every final response was 200 and the core's answer to the
    BYE says it saw INVITE, ACK, MESSAGE, BYE in that order."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: dict[bytes, Call] = {}
        self.host = f"c{self.index}x{random.getrandbits(32):x}.invalid"
        self.aor = f"sip:load{self.index}@example.com"
        self.tag = f"t{self.index}x{random.getrandbits(32):x}"

    def pending_count(self) -> int:
        return len(self.calls)

    def build(self, method: str, ruri: str, to: str, call: Call, cseq: int, extra: tuple[str, ...] = (),
              body: str = "", routes: list[bytes] = ()) -> bytes:
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{call.call_id}x{cseq}{method[0]}", "Max-Forwards: 70"]
        lines += [f"Route: {route.decode()}" for route in routes]
        lines += [f"To: {to}", f"From: <{self.aor}>;tag={self.tag}", f"Call-ID: {call.call_id}",
                  f"CSeq: {cseq} {method}", *extra, f"Content-Length: {len(body.encode())}"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def send_next(self) -> None:
        shared = self.shared
        if shared.remaining <= 0 or self.closed:
            return
        shared.remaining -= 1
        shared.outstanding += 1
        self.seq += 1
        call = Call(f"{shared.run}-{self.index}-{self.seq}", self.seq)
        self.calls[call.call_id.encode()] = call
        callee = f"sip:callee{self.index}x{self.seq}@example.com"
        self.transport.write(client_frame(self.build(
            "INVITE", callee, f"<{callee}>", call, 1,
            (f"Contact: <sip:load{self.index}@{self.host};transport=ws;ob>", "Content-Type: application/sdp",
             "Allow: INVITE,ACK,CANCEL,BYE,MESSAGE,OPTIONS", "Supported: outbound"), SDP_OFFER)))

    def _fail(self, call: Call, reason: str) -> None:
        del self.calls[call.call_id.encode()]
        shared = self.shared
        shared.failures[reason] = shared.failures.get(reason, 0) + 1
        shared.finished()
        self.send_next()

    def expire(self, now: float) -> None:
        for call in [call for call in self.calls.values() if now - call.started > CALL_TIMEOUT]:
            self._fail(call, f"timeout waiting for the {call.state} final response")

    def _message(self, message: bytes) -> None:
        shared = self.shared
        first, headers = read_head(message)
        if not first.startswith(b"SIP/2.0 "):
            shared.unknown += 1
            return
        call = self.calls.get(headers.get(b"call-id", [b""])[0])
        if call is None:
            shared.unknown += 1  # a late answer to a call already failed
            return
        status = int(first[8:11])
        cseq = headers.get(b"cseq", [b"0 ?"])[0].split()
        method = cseq[1].decode("ascii", "replace") if len(cseq) > 1 else "?"
        if method != call.state:
            if method == INVITING and status == 200:
                shared.note("INVITE 200 repeated")
            else:
                shared.note(f"{status} {method} during {call.state}")
            return
        if status < 200:
            if status == 180:
                call.ringing = True
            return
        shared.statuses[f"{method} {status}"] = shared.statuses.get(f"{method} {status}", 0) + 1
        if status != 200:
            self._fail(call, f"{method} {status}")
            return
        if method == INVITING:
            shared.latencies.append(time.perf_counter() - call.started)
            if not call.ringing:
                shared.note("200 INVITE before any 180")
            record_routes = split_commas(headers.get(b"record-route", []))
            shared.note(f"{len(record_routes)} Record-Route in the 200 INVITE")
            call.routes = record_routes[::-1]
            call.target = uri_of(headers.get(b"contact", [b""])[0])
            call.to = headers.get(b"to", [b""])[0]
            target, to = call.target.decode(), call.to.decode()
            write = self.transport.write
            write(client_frame(self.build("ACK", target, to, call, 1, routes=call.routes)))
            call.state = MESSAGING
            write(client_frame(self.build("MESSAGE", target, to, call, 2, ("Content-Type: text/plain",),
                                          "hello from the bench", routes=call.routes)))
        elif method == MESSAGING:
            call.state = BYEING
            self.transport.write(client_frame(self.build("BYE", call.target.decode(), call.to.decode(), call, 3,
                                                         routes=call.routes)))
        else:
            saw = headers.get(b"x-core-saw", [b""])[0].decode()
            if saw != ",".join(CALL_SEQUENCE):
                self._fail(call, f"core saw {saw or 'nothing'}")
                return
            del self.calls[call.call_id.encode()]
            shared.completed += 1
            shared.finished()
            self.send_next()


async def _phase(clients: list[WsClient], shared: Shared, count: int, window: int, run: str) -> float:
    loop = asyncio.get_running_loop()
    shared.remaining = count
    shared.outstanding = 0
    shared.completed = 0
    shared.latencies = []
    shared.statuses = {}
    shared.failures = {}
    shared.notes = {}
    shared.unknown = 0
    shared.run = run
    shared.done = loop.create_future()
    started = shared.last_progress = time.perf_counter()
    for _ in range(window):
        for client in clients:
            client.send_next()
    while not shared.done.done():
        try:
            await asyncio.wait_for(asyncio.shield(shared.done), 1.0)
        except asyncio.TimeoutError:
            now = time.perf_counter()
            for client in clients:
                client.expire(now)
            if now - shared.last_progress > STALL_TIMEOUT + CALL_TIMEOUT:
                raise SystemExit(f"nothing ended for {STALL_TIMEOUT + CALL_TIMEOUT:.0f}s: {shared.outstanding} "
                                 f"outstanding, {shared.remaining} not sent, statuses {shared.statuses}")
    return time.perf_counter() - started


async def _connect(kind: type, port: int, count: int, shared: Shared) -> list[WsClient]:
    loop = asyncio.get_running_loop()
    clients = []
    for index in range(count):
        client = kind(index, port, shared, loop)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
        await asyncio.wait_for(client.upgraded, STEP_TIMEOUT)
        client.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(client)
    return clients


async def _close(clients: list[WsClient]) -> None:
    for client in clients:
        client.closing = True
        client.transport.write(client_frame(struct.pack("!H", 1000), WS_OPCODE_CLOSE))
    await asyncio.sleep(0.2)
    for client in clients:
        client.transport.abort()


async def run_load(scenario: str, port: int, count: int, units: int, window: int) -> None:
    """Connect, warm up, print READY, wait for a line on stdin, measure ``units`` OPTIONS or calls,
    print one JSON line."""
    shared = Shared()
    kind = CallClient if scenario == "calls" else OptionsClient
    warmup = WARMUP_CALLS_PER_CLIENT if scenario == "calls" else WARMUP_OPTIONS_PER_CLIENT
    clients = await _connect(kind, port, count, shared)
    await _phase(clients, shared, warmup * count, window, "w")
    warm_failures = dict(shared.failures)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = await _phase(clients, shared, units, window, "m")
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    latencies = shared.latencies
    print(json.dumps({
        "completed": shared.completed, "attempted": units, "seconds": elapsed, "statuses": shared.statuses,
        "failures": shared.failures, "warmup_failures": warm_failures, "notes": shared.notes,
        "unknown_responses": shared.unknown, "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": max(latencies, default=float("nan")) * 1e3,
        "load_cpu": cpu,
    }), flush=True)
    await _close(clients)


async def run_show(port: int) -> None:
    """One client: a REGISTER, then one call; prints what it received as one JSON line."""
    shared = Shared()
    received: list[str] = []

    class Recorder(CallClient):
        def _message(self, message: bytes) -> None:
            received.append(message.decode("utf-8", "replace"))
            if message.startswith(b"SIP/2.0") and b" REGISTER\r\n" in message:
                return
            super()._message(message)

    client = (await _connect(Recorder, port, 1, shared))[0]
    call = Call("show-register", 0)
    register = client.build("REGISTER", "sip:example.com", f"<{client.aor}>", call, 1, (
        f'Contact: <sip:load0@{client.host};transport=ws;ob>;+sip.instance="<urn:uuid:'
        f'00000000-0000-4000-8000-000000000001>";reg-id=1;expires=600', "Supported: path, outbound, gruu",
        "Expires: 600"))
    client.transport.write(client_frame(register))
    await asyncio.sleep(SHOW_REGISTER_WAIT)
    await asyncio.wait_for(_phase([client], shared, 1, 1, "show"), CALL_TIMEOUT + 5)
    print(json.dumps({"completed": shared.completed, "failures": shared.failures, "received": received}),
          flush=True)
    await _close([client])


if __name__ == "__main__":
    print(__doc__.strip())
