"""CPU per relayed request and per call, in process (not a test).

The whole relay of one sipws process — Autobahn's server protocol with
sipws's mixin, the hub, the Relay adapter, the edge proxy and its
transactions, the SIP UDP port — is driven in memory:

- WebSocket clients are real ``SipServerProtocol`` instances on Twisted
  ``StringTransport``s (handshake, masked frames in, frames out);
- the SIP core is a UDP socket on 127.0.0.1 owned by this script: sipws's
  datagrams really go through the kernel (``sendto``), and the core's
  answers are read by the port's own ``doRead`` (``recvfrom``/``recvmsg``);
- time is a virtual clock (the reactor is never run): transaction timers
  fire as the clock advances at the modelled rate, inside the measurement.

Only the calls into sipws are timed, with CPU time (``time.process_time``):
building the peers' messages and reading sipws's output is not counted.
Scenarios, both directions:

- OPTIONS ws→core: a client's OPTIONS to the core, the 200 back;
- OPTIONS core→ws: the core's OPTIONS to a client's flow, the 200 back;
- call ws→core: INVITE with SDP, (100 hop by hop) 180, 200 with SDP, ACK,
  an in-dialog MESSAGE and 200, BYE and 200 — through the Record-Routes;
- call core→ws: the same dialog started by the core toward a client's flow.

Also measured: the cyclic garbage collector during the run (``gc.callbacks``:
count and the longest pause of full collections) and one full
``gc.collect()`` at the end, while the transactions of the last 32 s of
virtual time (RFC 6026 timer L) are still lingering.

``--ref TREE`` measures a second source tree (``git worktree add /tmp/wt-ref
BASE``) in the same run: both trees run as child processes, alternated,
best of ``--rounds``, and the ratio this tree / reference is printed.

``--steady 40`` instead runs calls both ways at 700/s for 40 s of virtual
time — past timer L, so the lingering transactions reach their steady number
(~28,000 calls) — and reports the collector's pauses then.

Run: .venv/bin/python bench/relay_cpu.py [--ref /tmp/wt-ref] [--quick] [--profile FILE]
     .venv/bin/python bench/relay_cpu.py --ref /tmp/wt-ref --steady 40 --rounds 1
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT_DIR = Path(__file__).resolve().parents[1]

#: Defaults: OPTIONS per direction, calls per direction, modelled rates (per second).
DEFAULT_OPTIONS = 6000
DEFAULT_CALLS = 3000
QUICK_OPTIONS = 2000
QUICK_CALLS = 1000
OPTIONS_RATE = 3000.0
CALL_RATE = 700.0
#: WebSocket clients the messages are spread over.
CLIENTS = 50
#: Rounds per tree with --ref (alternated); the best round of each counts.
DEFAULT_ROUNDS = 3
#: Requests and calls per direction before measuring (imports, caches, allocator warm).
WARMUP = 300
#: Empty timed regions measured to take the CPU clock's own cost out.
CALIBRATION = 5000
#: Seconds a child run may take.
CHILD_TIMEOUT = 900.0
SECRET = "relay-cpu-bench"
MASK = b"\x37\xfa\x21\x3d"
SDP = (b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       b"a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\n"
       b"c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7d\r\n"
       b"a=ice-pwd:q3tRn0Kd9c2bXyzl1PLmnoA7\r\n"
       b"a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:0A:1B:"
       b"2C:3D:4E:5F:60:71:82:93:A4:B5:C6\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n"
       b"a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")


# ------------------------------------------------------------------ the clock


class _Call:
    __slots__ = ("time", "f", "args", "kw", "cancelled", "called")

    def __init__(self, when: float, f: Callable, args: tuple, kw: dict) -> None:
        self.time, self.f, self.args, self.kw = when, f, args, kw
        self.cancelled = self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True

    def getTime(self) -> float:
        return self.time


class BenchReactor:
    """The real reactor for sockets, a virtual heap clock for time."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.now = 1_000_000.0
        self._heap: list = []
        self._seq = itertools.count()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Callable, *args: Any, **kw: Any) -> _Call:
        call = _Call(self.now + max(0.0, delay), f, args, kw)
        heapq.heappush(self._heap, (call.time, next(self._seq), call))
        return call

    def advance(self, amount: float) -> None:
        self.now += amount
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            _, _, call = heapq.heappop(heap)
            if call.active():
                call.called = True
                call.f(*call.args, **call.kw)


# ------------------------------------------------------------ wire helpers


def ws_frame(payload: bytes) -> bytes:
    """One masked text frame, as a browser sends it."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    mask = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + MASK + masked


def ws_messages(data: bytes) -> list[bytes]:
    """The payloads of the unmasked frames a server wrote."""
    out = []
    i = 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = struct.unpack_from("!H", data, i)[0]
            i += 2
        elif n == 127:
            n = struct.unpack_from("!Q", data, i)[0]
            i += 8
        out.append(data[i:i + n])
        i += n
    return out


def handshake(i: int) -> bytes:
    return ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {'dGhlIHNhbXBsZSBub25jZQ=='}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: sip\r\nOrigin: https://bench.example\r\n"
            f"User-Agent: relay_cpu {i}\r\n\r\n").encode()


def message(start: str, headers: list[str], body: bytes = b"", ctype: str = "application/sdp") -> bytes:
    lines = [start, *headers]
    if body:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(request: bytes, status: int, reason: str, to_tag: str = "", extra: tuple = (),
           body: bytes = b"", record_route: bool = False) -> bytes:
    from sipws.sip import parse

    req = parse(request)
    headers = [f"Via: {v}" for v in req.get_all("via")]
    if record_route:
        headers += [f"Record-Route: {v}" for v in req.get_all("record-route")]
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    headers += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
                f"CSeq: {req.get('cseq')}", *extra]
    return message(f"SIP/2.0 {status} {reason}", headers, body)


def route_set(response: bytes, reverse: bool) -> list[str]:
    from sipws.sip import parse

    rrs = parse(response).get_all("record-route")
    return [f"Route: {r}" for r in (reversed(rrs) if reverse else rrs)]


# --------------------------------------------------------------- the run


class Rig:
    """One sipws service tree on a virtual clock, its clients and its core."""

    def __init__(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from sipws.config import config_from_dict
        from sipws.tap import build_service

        self.core = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.core.bind(("127.0.0.1", 0))
        self.core.settimeout(5.0)
        self.core_addr = self.core.getsockname()
        config = config_from_dict({
            "ws": {"listen": ["127.0.0.1:0"]},
            "sip": {"listen": ["udp:127.0.0.1:0"], "flow_token_secret": SECRET,
                    "upstream": f"sip:127.0.0.1:{self.core_addr[1]};transport=udp"},
            "admin": {"listen": ""},
            "log": {"level": "warn"},
        })
        self.clock = BenchReactor(reactor)
        self.root = build_service(config, reactor=self.clock)
        self.root.privilegedStartService()
        self.root.startService()
        self.udp = self.root.listening("sip-udp")[0]
        self.sip_addr = ("127.0.0.1", self.udp.getHost().port)
        ws_port = self.root.listening("ws")[0]
        factory = ws_port.factory
        self.clients = []
        for i in range(CLIENTS):
            peer = IPv4Address("TCP", "192.0.2.10", 40000 + i)
            proto = factory.buildProtocol(peer)
            transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", ws_port.getHost().port),
                                        peerAddress=peer)
            proto.makeConnection(transport)
            proto.dataReceived(handshake(i))
            assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200]
            transport.clear()
            self.clients.append((proto, transport, proto.record.id))
        self.tokens = self.root.relay.tokens
        self.cpu = 0.0
        self.regions = 0
        #: cProfile.Profile enabled only inside sipws (--profile).
        self.profiler: Any = None
        self.gc_pauses: list[tuple[int, float]] = []
        self._gc_start = 0.0
        self.seq = itertools.count(1)

    # -- timed entry points into sipws ----------------------------------------------

    def from_client(self, client: int, data: bytes) -> None:
        proto = self.clients[client][0]
        self.timed(proto.dataReceived, ws_frame(data))

    def from_core(self, data: bytes) -> None:
        self.core.sendto(data, self.sip_addr)
        self.timed(self.udp.doRead)

    def advance(self, seconds: float) -> None:
        self.timed(self.clock.advance, seconds)

    def timed(self, f: Callable, *args: Any) -> None:
        profiler = self.profiler
        if profiler is not None:
            profiler.enable()
        t = time.process_time()
        f(*args)
        self.cpu += time.process_time() - t
        self.regions += 1
        if profiler is not None:
            profiler.disable()

    def clock_overhead(self, samples: int = CALIBRATION) -> float:
        """CPU seconds one timed region costs with nothing in it: reading the
        process CPU clock is a system call (tens of microseconds on a loaded
        virtual machine), so each region's figure includes about one read."""
        cpu, regions = self.cpu, self.regions
        self.cpu = 0.0
        for _ in range(samples):
            self.timed(_nothing)
        overhead = self.cpu / samples
        self.cpu, self.regions = cpu, regions
        return overhead

    # -- what sipws sent -------------------------------------------------------------

    def to_client(self, client: int) -> list[bytes]:
        transport = self.clients[client][1]
        data = transport.value()
        transport.clear()
        return ws_messages(data)

    def to_core(self) -> bytes:
        return self.core.recv(65535)

    def gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_start))

    # -- scenarios ---------------------------------------------------------------------

    def options_from_ws(self, a: int) -> None:
        n = next(self.seq)
        req = message("OPTIONS sip:bob@example.com SIP/2.0", [
            f"Via: SIP/2.0/WS h{a}k3l2.invalid;branch=z9hG4bK{n}o",
            "Max-Forwards: 70", "To: <sip:bob@example.com>",
            f"From: <sip:alice{a}@example.com>;tag=f{n}", f"Call-ID: opt{n}@bench",
            "CSeq: 1 OPTIONS", "Accept: application/sdp", "Supported: outbound",
            "User-Agent: JsSIP 3.13.8"])
        self.from_client(a, req)
        out = self.to_core()
        self.from_core(answer(out, 200, "OK", to_tag=f"c{n}"))
        got = self.to_client(a)
        assert got and got[-1].startswith(b"SIP/2.0 200"), got

    def options_from_core(self, b: int) -> None:
        n = next(self.seq)
        token = self.tokens.make(self.clients[b][2])
        port = self.sip_addr[1]
        req = message(f"OPTIONS sip:u{b}@h{b}k3l2.invalid;transport=ws SIP/2.0", [
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.core_addr[1]};branch=z9hG4bKc{n};rport",
            f"Route: <sip:{token}@127.0.0.1:{port};transport=udp;lr>",
            "Max-Forwards: 70", f"To: <sip:u{b}@example.com>",
            f"From: <sip:core@example.com>;tag=k{n}", f"Call-ID: copt{n}@core", "CSeq: 1 OPTIONS"])
        self.from_core(req)
        got = self.to_client(b)
        assert got and got[-1].startswith(b"OPTIONS"), got
        self.from_client(b, answer(got[-1], 200, "OK", to_tag=f"b{n}"))
        out = self.to_core()
        assert out.startswith(b"SIP/2.0 200"), out[:80]

    def call_from_ws(self, a: int) -> None:
        n = next(self.seq)
        host = f"h{a}k3l2.invalid"
        dialog = [f"From: \"Alice\" <sip:alice{a}@example.com>;tag=f{n}", f"Call-ID: call{n}@bench"]
        invite = message("INVITE sip:bob@example.com SIP/2.0", [
            f"Via: SIP/2.0/WS {host};branch=z9hG4bK{n}i", "Max-Forwards: 70",
            "To: <sip:bob@example.com>", *dialog, "CSeq: 1 INVITE",
            f"Contact: <sip:a{a}@{host};transport=ws;ob>", "Session-Expires: 90",
            "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY",
            "Supported: timer,ice,replaces,outbound", "User-Agent: JsSIP 3.13.8"], SDP)
        self.from_client(a, invite)
        at_core = self.to_core()
        core_contact = f"Contact: <sip:bob@127.0.0.1:{self.core_addr[1]}>"
        self.from_core(answer(at_core, 100, "Trying"))
        self.from_core(answer(at_core, 180, "Ringing", to_tag=f"t{n}", extra=(core_contact,),
                              record_route=True))
        ok = answer(at_core, 200, "OK", to_tag=f"t{n}", extra=(core_contact,), body=SDP,
                    record_route=True)
        self.from_core(ok)
        got = self.to_client(a)
        assert [m[:11] for m in got] == [b"SIP/2.0 100", b"SIP/2.0 180", b"SIP/2.0 200"], got
        routes = route_set(got[-1], reverse=True)
        to = f"To: <sip:bob@example.com>;tag=t{n}"
        ruri = f"sip:bob@127.0.0.1:{self.core_addr[1]}"
        self.from_client(a, message(f"ACK {ruri} SIP/2.0", [
            f"Via: SIP/2.0/WS {host};branch=z9hG4bK{n}a", *routes, "Max-Forwards: 70", to,
            *dialog, "CSeq: 1 ACK"]))
        assert self.to_core().startswith(b"ACK")
        for cseq, method, body in ((2, "MESSAGE", b"hello"), (3, "BYE", b"")):
            req = message(f"{method} {ruri} SIP/2.0", [
                f"Via: SIP/2.0/WS {host};branch=z9hG4bK{n}{method[0]}", *routes, "Max-Forwards: 70",
                to, *dialog, f"CSeq: {cseq} {method}"], body, "text/plain")
            self.from_client(a, req)
            at_core = self.to_core()
            assert at_core.startswith(method.encode()), at_core[:60]
            self.from_core(answer(at_core, 200, "OK"))
            got = self.to_client(a)
            assert got and got[-1].startswith(b"SIP/2.0 200"), got

    def call_from_core(self, b: int) -> None:
        n = next(self.seq)
        token = self.tokens.make(self.clients[b][2])
        port = self.sip_addr[1]
        core = f"127.0.0.1:{self.core_addr[1]}"
        dialog = [f"From: <sip:core@example.com>;tag=k{n}", f"Call-ID: ccall{n}@core"]
        contact = f"sip:u{b}@h{b}k3l2.invalid;transport=ws"
        invite = message(f"INVITE {contact} SIP/2.0", [
            f"Via: SIP/2.0/UDP {core};branch=z9hG4bKc{n}i;rport",
            f"Route: <sip:{token}@127.0.0.1:{port};transport=udp;lr>",
            f"Record-Route: <sip:{core};lr>", "Max-Forwards: 70",
            f"To: <sip:u{b}@example.com>", *dialog, "CSeq: 10 INVITE",
            f"Contact: <sip:core@{core}>", "Allow: INVITE,ACK,CANCEL,BYE,MESSAGE,OPTIONS"], SDP)
        self.from_core(invite)
        assert self.to_core().startswith(b"SIP/2.0 100")
        got = self.to_client(b)
        assert got and got[-1].startswith(b"INVITE"), got
        at_b = got[-1]
        b_contact = (f"Contact: <{contact}>",)
        self.from_client(b, answer(at_b, 180, "Ringing", to_tag=f"b{n}", extra=b_contact,
                                   record_route=True))
        assert self.to_core().startswith(b"SIP/2.0 180")
        self.from_client(b, answer(at_b, 200, "OK", to_tag=f"b{n}", extra=b_contact, body=SDP,
                                   record_route=True))
        ok = self.to_core()
        assert ok.startswith(b"SIP/2.0 200"), ok[:60]
        routes = route_set(ok, reverse=True)
        # The core's own Record-Route is first in its reversed list: a UAC
        # starts at the next one (its own entry is not a Route for itself).
        routes = [r for r in routes if f"<sip:{core};lr>" not in r]
        to = f"To: <sip:u{b}@example.com>;tag=b{n}"
        self.from_core(message(f"ACK {contact} SIP/2.0", [
            f"Via: SIP/2.0/UDP {core};branch=z9hG4bKc{n}a;rport", *routes, "Max-Forwards: 70",
            to, *dialog, "CSeq: 10 ACK"]))
        got = self.to_client(b)
        assert got and got[-1].startswith(b"ACK"), got
        for cseq, method, body in ((11, "MESSAGE", b"hello"), (12, "BYE", b"")):
            self.from_core(message(f"{method} {contact} SIP/2.0", [
                f"Via: SIP/2.0/UDP {core};branch=z9hG4bKc{n}{method[0]};rport", *routes,
                "Max-Forwards: 70", to, *dialog, f"CSeq: {cseq} {method}"], body, "text/plain"))
            got = self.to_client(b)
            assert got and got[-1].startswith(method.encode()), got
            self.from_client(b, answer(got[-1], 200, "OK"))
            out = self.to_core()
            assert out.startswith(b"SIP/2.0 200"), out[:60]

    def stop(self) -> None:
        self.root.stopService()
        self.core.close()


def _nothing() -> None:
    pass


def phase(rig: Rig, count: int, rate: float, step: Callable[[int], None]) -> float:
    """CPU seconds sipws spent on ``count`` runs of ``step``, the clock advancing at
    ``rate``; the cost of reading the CPU clock itself, measured right after, is
    taken out."""
    rig.cpu = 0.0
    rig.regions = 0
    tick = 1.0 / rate
    for i in range(count):
        step(i % CLIENTS)
        rig.advance(tick)
    cpu, regions = rig.cpu, rig.regions
    return max(0.0, cpu - regions * rig.clock_overhead())


def measure(options: int, calls: int, profile: str | None = None) -> dict[str, Any]:
    rig = Rig()
    for i in range(WARMUP):  # warm-up, not counted
        rig.options_from_ws(i % CLIENTS)
        rig.options_from_core(i % CLIENTS)
        rig.call_from_ws(i % CLIENTS)
        rig.call_from_core(i % CLIENTS)
        rig.advance(0.001)
    rig.advance(60.0)  # let the warm-up's transactions end
    profiler = None
    if profile:
        import cProfile

        profiler = rig.profiler = cProfile.Profile()
    gc.callbacks.append(rig.gc_callback)
    result: dict[str, Any] = {}
    result["options_ws_to_core_us"] = phase(rig, options, OPTIONS_RATE, rig.options_from_ws) / options * 1e6
    result["options_core_to_ws_us"] = phase(rig, options, OPTIONS_RATE, rig.options_from_core) / options * 1e6
    rig.advance(60.0)
    rig.gc_pauses.clear()
    result["call_ws_to_core_us"] = phase(rig, calls, CALL_RATE, rig.call_from_ws) / calls * 1e6
    result["call_core_to_ws_us"] = phase(rig, calls, CALL_RATE, rig.call_from_core) / calls * 1e6
    gc.callbacks.remove(rig.gc_callback)
    if profiler is not None:
        rig.profiler = None
        profiler.dump_stats(profile)
    full = [p for g, p in rig.gc_pauses if g == 2]
    result["calls_gc_full_collections"] = len(full)
    result["calls_gc_full_max_ms"] = max(full, default=0.0) * 1e3
    result["calls_gc_total_ms"] = sum(p for _, p in rig.gc_pauses) * 1e3
    proxy = rig.root.relay.proxy
    result["lingering_transactions"] = len(proxy.table)
    t = time.perf_counter()
    gc.collect()
    result["gc_collect_ms"] = (time.perf_counter() - t) * 1e3
    result["gc_tracked_objects"] = len(gc.get_objects())
    rig.stop()
    return result


def measure_steady(seconds: float) -> dict[str, Any]:
    """Calls both ways at CALL_RATE for ``seconds`` of virtual time: long enough
    (> 32 s, RFC 6026 timer L) and the lingering transactions reach their
    steady number; what the cyclic collector then costs."""
    rig = Rig()
    for i in range(WARMUP):
        rig.options_from_ws(i % CLIENTS)
        rig.call_from_ws(i % CLIENTS)
        rig.call_from_core(i % CLIENTS)
        rig.advance(0.001)
    rig.advance(60.0)
    gc.callbacks.append(rig.gc_callback)
    count = int(seconds * CALL_RATE)
    steps = (rig.call_from_ws, rig.call_from_core)
    rig.cpu = 0.0
    rig.regions = 0
    for i in range(count):
        steps[i % 2](i % CLIENTS)
        rig.advance(1.0 / CALL_RATE)
    gc.callbacks.remove(rig.gc_callback)
    rig.cpu = max(0.0, rig.cpu - rig.regions * rig.clock_overhead())
    full = [p for g, p in rig.gc_pauses if g == 2]
    proxy = rig.root.relay.proxy
    result = {
        "steady_calls": count,
        "steady_call_us": rig.cpu / count * 1e6,
        "steady_gc_full_collections": len(full),
        "steady_gc_full_max_ms": max(full, default=0.0) * 1e3,
        "steady_gc_full_mean_ms": (sum(full) / len(full) * 1e3) if full else 0.0,
        "steady_gc_total_ms": sum(p for _, p in rig.gc_pauses) * 1e3,
        "steady_lingering_transactions": len(proxy.table),
    }
    t = time.perf_counter()
    gc.collect()
    result["steady_gc_collect_ms"] = (time.perf_counter() - t) * 1e3
    result["steady_gc_tracked_objects"] = len(gc.get_objects())
    rig.stop()
    return result


STEADY_LABELS = [
    ("steady_calls", "calls (half each way)"),
    ("steady_call_us", "CPU per call (us)"),
    ("steady_lingering_transactions", "transactions at the end"),
    ("steady_gc_full_collections", "full GCs"),
    ("steady_gc_full_max_ms", "longest full GC (ms)"),
    ("steady_gc_full_mean_ms", "mean full GC (ms)"),
    ("steady_gc_total_ms", "all GC pauses (ms)"),
    ("steady_gc_collect_ms", "gc.collect() at the end (ms)"),
    ("steady_gc_tracked_objects", "GC-tracked objects"),
]


# -------------------------------------------------------------- comparison


LABELS = [
    ("options_ws_to_core_us", "OPTIONS ws->core (us CPU)"),
    ("options_core_to_ws_us", "OPTIONS core->ws (us CPU)"),
    ("call_ws_to_core_us", "call ws->core (us CPU)"),
    ("call_core_to_ws_us", "call core->ws (us CPU)"),
    ("calls_gc_full_collections", "full GCs during calls"),
    ("calls_gc_full_max_ms", "longest full GC (ms)"),
    ("calls_gc_total_ms", "all GC pauses, calls (ms)"),
    ("lingering_transactions", "transactions at the end"),
    ("gc_collect_ms", "gc.collect() at the end (ms)"),
    ("gc_tracked_objects", "GC-tracked objects"),
]
#: Figures where the best round is the smallest (all of them).


def child(tree: Path, options: int, calls: int, steady: float = 0.0) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--options", str(options),
           "--calls", str(calls)]
    if steady:
        cmd += ["--steady", str(steady)]
    out = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT)
    if out.returncode != 0:
        raise SystemExit(f"child run in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", type=int, default=None, help="OPTIONS per direction")
    parser.add_argument("--calls", type=int, default=None, help="calls per direction")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ref", type=Path, help="reference source tree measured in the same run")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--profile", help="run under cProfile, write the stats here, print the top")
    parser.add_argument("--steady", type=float, default=0.0, metavar="SECONDS",
                        help="instead: calls at 700/s for SECONDS of virtual time (40 reaches "
                             "the steady number of lingering transactions), GC pauses")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = args.options or (QUICK_OPTIONS if args.quick else DEFAULT_OPTIONS)
    calls = args.calls or (QUICK_CALLS if args.quick else DEFAULT_CALLS)
    if args.child:
        print(json.dumps(measure_steady(args.steady) if args.steady else measure(options, calls)))
        return 0
    if args.profile:
        result = measure(options, calls, args.profile)
        import pstats

        pstats.Stats(args.profile).sort_stats("tottime").print_stats(35)
        for key, label in LABELS:
            print(f"{label:32} {result[key]:10.1f}")
        return 0
    trees = [("this tree", ROOT_DIR)] + ([("reference", args.ref.resolve())] if args.ref else [])
    best: dict[str, dict[str, Any]] = {}
    labels = STEADY_LABELS if args.steady else LABELS
    for round_no in range(args.rounds):
        for name, tree in trees:
            result = child(tree, options, calls, args.steady)
            print(f"round {round_no + 1} {name}: " + ", ".join(
                f"{k}={v:.1f}" for k, v in result.items()), flush=True)
            prior = best.setdefault(name, dict(result))
            for key, value in result.items():
                prior[key] = min(prior[key], value)
    if args.steady:
        print(f"\nsteady load in process: calls both ways at {CALL_RATE:.0f}/s for "
              f"{args.steady:g} s of virtual time, {CLIENTS} WebSocket clients, UDP core on "
              f"127.0.0.1; best of {args.rounds} rounds")
    else:
        print(f"\nrelay CPU in process: {options} OPTIONS and {calls} calls per direction, "
              f"{CLIENTS} WebSocket clients, UDP core on 127.0.0.1; best of {args.rounds} rounds; "
              "[limits] at their defaults (on: the message-rate check runs on every message, "
              f"{OPTIONS_RATE / CLIENTS:.0f} OPTIONS/s per connection stays under its 100/s)")
    header = f"{'':32} {'this tree':>12}"
    if args.ref:
        header += f" {'reference':>12} {'ratio':>7}"
    print(header)
    for key, label in labels:
        mine = best["this tree"][key]
        line = f"{label:32} {mine:12.1f}"
        if args.ref:
            ref = best["reference"][key]
            ratio = mine / ref if ref else float("nan")
            line += f" {ref:12.1f} {ratio:7.2f}"
        print(line)
    if args.ref and not args.steady:
        mine = best["this tree"]
        ref = best["reference"]
        for kind in ("options", "call"):
            keys = [k for k, _ in LABELS if k.startswith(kind) and k.endswith("_us")]
            m = sum(mine[k] for k in keys)
            r = sum(ref[k] for k in keys)
            print(f"{kind} both directions: {m:.1f} us vs {r:.1f} us: ratio {m / r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
