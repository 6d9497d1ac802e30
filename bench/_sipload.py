"""Shared machinery of the reliability benches (bench/soak.py, floods.py, faults.py): not a
bench itself (``make bench`` runs it with no arguments, which only prints this text).

- ``Sipws``: sipws as a real subprocess (``.venv/bin/sipws --config F``), its admin
  JSON-RPC (what ``sipws-ctl --json`` prints), RSS and open descriptors from /proc.
- ``Phone``: a WebSocket SIP client on asyncio over a raw socket (masked frames, Pings
  answered with Pongs, Close handshake), with its own small SIP reader so the load
  generator does not trust the parser it is testing.  It answers what reaches it as a
  phone would (MESSAGE/OPTIONS 200; INVITE 180 then 200; BYE 200; CANCEL 200 + 487) and
  records every request it saw, so a caller can check the far end of a call.
- ``Sampler``: latencies and errors by kind over an interval.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _limits  # noqa: E402 - bench/ is not a package

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
SIPWS = ROOT_DIR / ".venv" / "bin" / "sipws"
ORIGIN = "https://phone.example.com"
DOMAIN = "example.com"
#: Seconds a request may wait for its final response before it counts as lost.
ANSWER_TIMEOUT = 10.0
#: Seconds to open and upgrade one connection.
CONNECT_TIMEOUT = 10.0
#: Seconds sipws may take to listen, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
#: Loopback source addresses connections are spread over (127.0.0.2 ...).
SOURCE_ADDRESSES = 200
IP_BIND_ADDRESS_NO_PORT = 24
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
       "c=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\n")
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type"}


def usage_if_bare(doc: str) -> None:
    if __name__ == "__main__" and len(sys.argv) == 1:
        print(doc.strip())


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks stop the sipws and peers a bench started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- sipws as a subprocess ------------------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sipws:
    """sipws started from a TOML text (``{ws}`` and ``{admin}`` are filled in with free ports)."""

    def __init__(self, workdir: Path, toml: str, name: str = "sipws", command: Optional[list[str]] = None) -> None:
        self.ws_port = free_port()
        self.admin_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"{name}.toml"
        if "[limits]" not in toml:  # one load generator, many connections: not a flood here
            toml += _limits.TOML
            print(f"{name}: {_limits.NOTE}", file=sys.stderr)
        self.config.write_text(toml.replace("{ws}", str(self.ws_port)).replace("{admin}", str(self.admin_port)))
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*(command or [str(SIPWS), "--config"]), str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT_DIR))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipws exited ({self.proc.returncode}): {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ws_port), timeout=1.0):
                    pass
                self.rpc("version")
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sipws did not listen within {START_TIMEOUT}s: {self.tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rpc(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """One admin JSON-RPC call (the same as ``sipws-ctl --json METHOD``)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/rpc", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            reply = json.loads(answer.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def tables(self) -> dict[str, int]:
        """connections, edge transactions, standalone-core transactions, bindings, flows."""
        stats = self.rpc("stats")
        sip = stats.get("sip", {})
        registrar = stats.get("registrar", {})
        return {
            "connections": stats["connections"]["current"],
            "transactions": sip.get("transactions", 0),
            "core_transactions": registrar.get("transactions", 0),
            "bindings": registrar.get("bindings", 0),
            "stream_connections": sip.get("stream_connections", 0),
        }

    def counters(self) -> dict[str, int]:
        return self.rpc("stats")["counters"]

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def fds(self) -> int:
        return fd_count(self.pid)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_lines(self, *words: str) -> list[str]:
        text = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in text if any(word in line for word in words)]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


async def wait_tables_zero(sipws: Sipws, timeout: float, keep: Optional[dict[str, int]] = None) -> tuple[bool, dict, float]:
    """Poll until every table is at ``keep`` (default 0); (reached, last tables, seconds)."""
    keep = keep or {}
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    while True:
        tables = await loop.run_in_executor(None, sipws.tables)
        if all(value == keep.get(name, 0) for name, value in tables.items()):
            return True, tables, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return False, tables, time.monotonic() - started
        await asyncio.sleep(0.25)


# -- SIP text ---------------------------------------------------------------------------


@dataclass
class Sip:
    """A received SIP message, read just enough for the load generator."""

    first: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def is_response(self) -> bool:
        return self.first.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first[8:11]) if self.is_response else 0

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0] if not self.is_response else self.cseq[1]

    @property
    def ruri(self) -> str:
        return self.first.split(" ")[1]

    def get(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return ""

    def get_all(self, name: str) -> list[str]:
        out = []
        for key, value in self.headers:
            if key == name:
                out.extend(_split_commas(value) if name in ("via", "record-route", "route") else [value])
        return out

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        number, method = self.get("cseq").split()
        return int(number), method


def _split_commas(value: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in value:
        if char in "<\"":
            depth ^= 1 if char == '"' else 0
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        if char == "," and depth <= 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if current:
        parts.append("".join(current).strip())
    return parts


def read_sip(data: bytes) -> Sip:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers.append((_COMPACT.get(name, name), value.strip()))
    return Sip(lines[0], headers, body)


def uri_of(name_addr: str) -> str:
    if "<" in name_addr:
        return name_addr[name_addr.index("<") + 1:name_addr.index(">")]
    return name_addr.split(";")[0].strip()


# -- WebSocket framing --------------------------------------------------------------------


def client_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    key = os.urandom(4)
    stream = (key * ((size >> 2) + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big") if size else b""
    return head + key + masked


def server_frames(buffer: bytes) -> tuple[list[tuple[int, bytes, bool]], int]:
    """The complete frames at the start of ``buffer``: [(opcode, payload, masked)], bytes used."""
    frames: list[tuple[int, bytes, bool]] = []
    offset = 0
    while len(buffer) - offset >= 2:
        first, second = buffer[offset], buffer[offset + 1]
        size, start = second & 0x7F, offset + 2
        if size == 126:
            if len(buffer) - offset < 4:
                break
            size = struct.unpack_from("!H", buffer, start)[0]
            start += 2
        elif size == 127:
            if len(buffer) - offset < 10:
                break
            size = struct.unpack_from("!Q", buffer, start)[0]
            start += 8
        if len(buffer) - start < size:
            break
        frames.append((first & 0x0F, buffer[start:start + size], bool(second & 0x80)))
        offset = start + size
    return frames, offset


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
            f"Origin: {ORIGIN}\r\nUser-Agent: sipws-reliability\r\n\r\n").encode()


_source_counter = itertools.count()


def source_socket() -> socket.socket:
    """A non-blocking TCP socket bound to the next loopback source address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((f"127.0.0.{2 + next(_source_counter) % SOURCE_ADDRESSES}", 0))
    sock.setblocking(False)
    return sock


# -- measurements -----------------------------------------------------------------------


@dataclass
class Sampler:
    """Round-trip latencies (seconds) and errors by kind since the last ``take``."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)

    def take(self) -> "Sampler":
        taken = Sampler(self.latencies, self.errors, self.counts)
        self.latencies, self.errors, self.counts = [], Counter(), Counter()
        return taken

    def line(self) -> str:
        lat = self.latencies
        return (f"n={len(lat)} p50={percentile(lat, 0.5) * 1e3:.1f}ms p99={percentile(lat, 0.99) * 1e3:.1f}ms "
                f"errors={dict(self.errors) or 0}")


class SipFailure(Exception):
    """A request did not get the answer it should have (the kind is the message)."""


# -- the phone --------------------------------------------------------------------------

_ids = itertools.count(1)


class Phone(asyncio.Protocol):
    """One WebSocket SIP client for one address of record."""

    def __init__(self, port: int, user: str, sampler: Sampler, instance: Optional[str] = None) -> None:
        self.port = port
        self.user = user
        self.sampler = sampler
        self.aor = f"sip:{user}@{DOMAIN}"
        number = next(_ids)
        self.host = f"{user}x{number}.invalid"
        self.contact = f"sip:{user}@{self.host};transport=ws"
        self.tag = f"t{number}{random.getrandbits(32):x}"
        self.instance = instance or f"<urn:uuid:00000000-0000-4000-8000-{random.getrandbits(48):012x}>"
        self.reg_call_id = f"reg{number}-{random.getrandbits(32):x}"
        self.reg_cseq = 0
        self.transport: Any = None
        self.buffer = b""
        self.upgraded: Optional[asyncio.Future] = None
        self.closed: Optional[asyncio.Future] = None
        self.pending: dict[tuple[str, int, str], tuple[asyncio.Future, list[Sip]]] = {}
        #: call id -> methods seen for it (a callee's record of a call), and an event per change.
        self.seen: dict[str, list[str]] = {}
        self.seen_changed = asyncio.Event()
        self.close_code: Optional[int] = None
        self.closing = False
        self.pings = 0

    # asyncio ---------------------------------------------------------------------------

    async def connect(self) -> "Phone":
        loop = asyncio.get_running_loop()
        self.upgraded = loop.create_future()
        self.closed = loop.create_future()
        sock = source_socket()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.port)), CONNECT_TIMEOUT)
            await loop.create_connection(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        await asyncio.wait_for(self.upgraded, CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(upgrade_request(self.port))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.buffer = self.buffer[end + 4:]
            if head.startswith(b"http/1.1 101"):
                self.upgraded.set_result(None)
            else:
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
        self._frames()

    def _frames(self) -> None:
        frames, used = server_frames(self.buffer)
        for opcode, payload, _ in frames:
            if opcode in (OP_TEXT, OP_BINARY):
                try:
                    self._sip(read_sip(payload))
                except (ValueError, IndexError) as exc:
                    self.sampler.errors[f"unreadable SIP: {exc}"[:60]] += 1
            elif opcode == OP_PING:
                self.pings += 1
                self.sampler.counts["pings"] += 1
                self.transport.write(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self.closing:
                    self.sampler.errors[f"server closed {self.close_code}"] += 1
                    self.closing = True
                    self.transport.write(client_frame(payload[:2], OP_CLOSE))
        self.buffer = self.buffer[used:]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.upgraded is not None and not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before 101"))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(SipFailure("connection lost"))
        self.pending.clear()
        if not self.closing:
            self.sampler.errors["connection lost"] += 1

    async def close(self, timeout: float = 5.0) -> None:
        """Close 1000 and wait for the server to close TCP."""
        if self.transport is None or self.closed.done():
            return
        self.closing = True
        self.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except asyncio.TimeoutError:
            self.sampler.errors["close not completed"] += 1
            self.transport.abort()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.closed.done() and not self.closing

    # SIP ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.transport.write(client_frame(data))

    def build(self, method: str, ruri: str, to: str, call_id: str, cseq: int, extra: tuple[str, ...] = (),
              body: str = "", routes: tuple[str, ...] = (), branch: str = "") -> bytes:
        branch = branch or f"z9hG4bK{random.getrandbits(64):x}"
        lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/WS {self.host};branch={branch}", "Max-Forwards: 70"]
        lines += [f"Route: {route}" for route in routes]
        lines += [f"To: {to}", f"From: <{self.aor}>;tag={self.tag}", f"Call-ID: {call_id}",
                  f"CSeq: {cseq} {method}", *extra, f"Content-Length: {len(body.encode())}"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def request(self, data: bytes, call_id: str, cseq: int, method: str,
                      timeout: float = ANSWER_TIMEOUT) -> tuple[Sip, list[Sip], float]:
        """Send a request; (final response, provisionals, round-trip seconds)."""
        if not self.open:
            raise SipFailure("not open")
        future = asyncio.get_running_loop().create_future()
        provisionals: list[Sip] = []
        key = (call_id, cseq, method)
        self.pending[key] = (future, provisionals)
        began = time.perf_counter()
        self.send(data)
        try:
            final = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise SipFailure(f"timeout {method}") from None
        finally:
            self.pending.pop(key, None)
        return final, provisionals, time.perf_counter() - began

    def _sip(self, msg: Sip) -> None:
        if msg.is_response:
            number, method = msg.cseq
            entry = self.pending.get((msg.call_id, number, method))
            if entry is None:
                if msg.status >= 200 and method != "INVITE":
                    self.sampler.errors[f"stray {msg.status} {method}"] += 1
                return
            future, provisionals = entry
            if msg.status < 200:
                provisionals.append(msg)
            elif not future.done():
                future.set_result(msg)
            else:
                self.sampler.errors[f"second final {method}"] += 1
            return
        self._incoming(msg)

    def _note(self, msg: Sip) -> None:
        self.seen.setdefault(msg.call_id, []).append(msg.method)
        self.seen_changed.set()

    def reply(self, req: Sip, status: int, reason: str, body: str = "", contact: bool = False) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {via}" for via in req.get_all("via")]
        if 100 < status < 300:
            lines += [f"Record-Route: {rr}" for rr in req.get_all("record-route")]
        to = req.get("to")
        lines += [f"From: {req.get('from')}", f"To: {to if ';tag=' in to else to + ';tag=' + self.tag}",
                  f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
        if contact:
            lines.append(f"Contact: <{self.contact}>")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        self.send(("\r\n".join(lines) + "\r\n\r\n" + body).encode())

    def _incoming(self, req: Sip) -> None:
        method = req.method
        self._note(req)
        if method == "INVITE":
            self.reply(req, 180, "Ringing", contact=True)
            self.reply(req, 200, "OK", SDP, contact=True)
        elif method in ("MESSAGE", "OPTIONS", "BYE", "NOTIFY", "INFO", "UPDATE"):
            self.reply(req, 200, "OK")
        elif method == "CANCEL":
            self.reply(req, 200, "OK")
        elif method == "ACK":
            pass
        else:
            self.reply(req, 501, "Not Implemented")

    async def saw(self, call_id: str, method: str, timeout: float = ANSWER_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while method not in self.seen.get(call_id, ()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.seen_changed.clear()
            try:
                await asyncio.wait_for(self.seen_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    def forget(self, call_id: str) -> None:
        self.seen.pop(call_id, None)

    # operations --------------------------------------------------------------------------

    async def register(self, expires: int = 600) -> float:
        self.reg_cseq += 1
        data = self.build("REGISTER", f"sip:{DOMAIN}", f"<{self.aor}>", self.reg_call_id, self.reg_cseq, (
            f'Contact: <{self.contact};ob>;+sip.instance="{self.instance}";reg-id=1;expires={expires}',
            "Supported: path, outbound, gruu", f"Expires: {expires}"))
        final, _, rtt = await self.request(data, self.reg_call_id, self.reg_cseq, "REGISTER")
        if final.status != 200:
            raise SipFailure(f"REGISTER {final.status}")
        return rtt

    async def options(self) -> float:
        call_id = f"opt{next(_ids)}"
        data = self.build("OPTIONS", f"sip:{DOMAIN}", f"<sip:{DOMAIN}>", call_id, 1)
        final, _, rtt = await self.request(data, call_id, 1, "OPTIONS")
        if final.status != 200:
            raise SipFailure(f"OPTIONS {final.status}")
        return rtt

    async def message(self, peer: "Phone", text: str = "hello") -> float:
        """MESSAGE to ``peer``'s address of record: counts only if the peer saw it and we got 200."""
        call_id = f"msg{next(_ids)}-{random.getrandbits(32):x}"
        data = self.build("MESSAGE", peer.aor, f"<{peer.aor}>", call_id, 1, ("Content-Type: text/plain",), text)
        try:
            final, _, rtt = await self.request(data, call_id, 1, "MESSAGE")
            if final.status != 200:
                raise SipFailure(f"MESSAGE {final.status}")
            if "MESSAGE" not in peer.seen.get(call_id, ()):
                raise SipFailure("MESSAGE 200 but the peer never saw it")
            return rtt
        finally:
            peer.forget(call_id)

    async def call(self, peer: "Phone", hold: float = 0.0) -> list[float]:
        """INVITE / 180 / 200 / ACK / BYE / 200 to ``peer``, checked at both ends; round trips."""
        call_id = f"call{next(_ids)}-{random.getrandbits(32):x}"
        invite = self.build("INVITE", peer.aor, f"<{peer.aor}>", call_id, 1,
                            (f"Contact: <{self.contact};ob>", "Content-Type: application/sdp"), SDP)
        try:
            final, provisionals, rtt_invite = await self.request(invite, call_id, 1, "INVITE")
            if final.status != 200:
                raise SipFailure(f"INVITE {final.status}")
            if not any(p.status == 180 for p in provisionals):
                raise SipFailure("INVITE 200 without 180")
            routes = tuple(reversed(final.get_all("record-route")))
            target = uri_of(final.get("contact"))
            to = final.get("to")
            ack = self.build("ACK", target, to, call_id, 1, routes=routes)
            self.send(ack)
            if not await peer.saw(call_id, "ACK"):
                raise SipFailure("ACK never reached the callee")
            if hold:
                await asyncio.sleep(hold)
            bye = self.build("BYE", target, to, call_id, 2, routes=routes)
            done, _, rtt_bye = await self.request(bye, call_id, 2, "BYE")
            if done.status != 200:
                raise SipFailure(f"BYE {done.status}")
            if peer.seen.get(call_id, [])[:1] != ["INVITE"] or "BYE" not in peer.seen.get(call_id, ()):
                raise SipFailure(f"callee saw {peer.seen.get(call_id)}")
            return [rtt_invite, rtt_bye]
        finally:
            peer.forget(call_id)


async def raw_connect(port: int, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection from the next loopback source address, ``data`` written."""
    sock = source_socket()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    if data:
        writer.write(data)
    return reader, writer


if __name__ == "__main__":
    print(__doc__.strip())
