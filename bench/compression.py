"""Benchmark: permessage-deflate (RFC 7692) on and off (not a test).

sipws runs in a subprocess (``build_service`` + ``config_from_dict``, epoll reactor,
standalone mode: its built-in registrar answers, so requests are relayed and answered
end to end, log at info into a file) once per configuration:

    off           [ws] compression = false (the default)
    on            compression = true with the default bounds: 12-bit window, no
                  context takeover, memLevel 5
    on-15         no context takeover, 15-bit window, memLevel 8
    on-kept       "on", but the zlib streams kept after each message, as Autobahn's own
                  processor does (what sipws's BoundedDeflate saves; bench-only switch)
    takeover      context takeover, 12-bit window, memLevel 5
    takeover-15   context takeover, 15-bit window, memLevel 8 (zlib's defaults: what
                  an unbounded server, e.g. Autobahn's own accept, would use)

The clients are raw sockets written here, compressing as Chromium does (zlib level 6,
memLevel 8, the window the server allows, context takeover unless told otherwise);
each offers ``permessage-deflate; client_max_window_bits`` as Chromium does.

1. Bytes on the wire: TCP payload (frame headers and masks included, handshake
   excluded) of one realistic call between two browsers over one connection each:
   REGISTER (SIP.js-like, with Authorization) for both, an INVITE with a typical
   Chrome audio+video SDP offer (BUNDLE, 5 ICE candidates per m-line, DTLS fingerprint; 4.7 KB),
   100/180/200 (with the SDP answer), ACK, BYE, 200, and a REGISTER refresh.  Per
   message and direction, each configuration beside "off"; the ratio on/off.
2. Memory per idle connection: N connections (default 2,000) that each sent one
   compressed OPTIONS and read its compressed 200, then stay idle; server VmRSS growth
   / N, per configuration; the ratio to "off" and the difference (what compression
   costs an idle connection).
3. CPU per message: the server's utime+stime (/proc) for M echoes of the REGISTER
   and of the INVITE over one connection (sipws's message handler sends each message
   back: the WebSocket layer alone, where compression's cost is), per configuration;
   the ratio to "off".  Plus zlib alone in this process (µs per
   message compressed / inflated), to see how much of it is zlib, and the same echo
   through sipws's server protocol in this process over an in-memory transport (no
   sockets, no kernel, no other process: the steadiest figure on a shared machine).

Every server starts fresh.  No figure depends on wall-clock time except the seconds
printed for information.

Run: .venv/bin/python bench/compression.py [--connections 2000] [--messages 5000] [--quick]
     [--only wire|memory|cpu]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import _wsload  # noqa: E402  (rss_kb, cpu_seconds, raise_file_limit)
import _limits  # noqa: E402

#: Configurations measured, by name: the [ws] keys of each.
CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"compression": False},
    "on": {"compression": True},
    "on-15": {"compression": True, "compression_max_window_bits": 15, "compression_mem_level": 8},
    # bench only: "on" with the zlib streams kept between messages, as Autobahn alone does
    "on-kept": {"compression": True, "_keep_streams": True},
    "takeover": {"compression": True, "compression_no_context_takeover": False},
    "takeover-15": {"compression": True, "compression_no_context_takeover": False,
                    "compression_max_window_bits": 15, "compression_mem_level": 8},
}
CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"
ORIGIN = "https://phone.example.com"
TIMEOUT = 10.0
SETTLE = 1.0
#: Rounds of the CPU measurement over every configuration (the lowest figure is kept).
ROUNDS = 3
QUICK = {"connections": 300, "messages": 1000}
TAIL = b"\x00\x00\xff\xff"
DOMAIN = "example.com"

# ------------------------------------------------------------------ realistic messages

SDP_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS 5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d
m=audio 56143 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 203.0.113.45
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1467250027 1 udp 2122260223 192.168.1.23 56143 typ host generation 0 network-id 1 network-cost 10
a=candidate:2711742491 1 udp 2122194687 10.8.0.6 49372 typ host generation 0 network-id 2 network-cost 50
a=candidate:435653019 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active generation 0 network-id 1 network-cost 10
a=candidate:3289912957 1 udp 1686052607 203.0.113.45 56143 typ srflx raddr 192.168.1.23 rport 56143 generation 0 network-id 1 network-cost 10
a=candidate:1124311812 1 udp 41885439 198.51.100.17 61012 typ relay raddr 203.0.113.45 rport 56143 generation 0 network-id 1 network-cost 10
a=ice-ufrag:Jq4e
a=ice-pwd:8mAnbT0uP5gK6vGbvsBq0e1T
a=ice-options:trickle
a=fingerprint:sha-256 5B:6C:7E:9A:21:4F:0D:8C:3B:92:AA:17:E4:55:61:C9:0F:3E:88:D2:71:BC:46:19:A0:5F:E7:33:2D:C8:94:0B
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendrecv
a=msid:5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d 0c8f6b9e-3f0a-4d21-8b7e-61b2a9d4e5f1
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3563207941 cname:8yq3Wn2bW9RZ4gD1
a=ssrc:3563207941 msid:5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d 0c8f6b9e-3f0a-4d21-8b7e-61b2a9d4e5f1
m=video 56143 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107 39 40 112 113 114
c=IN IP4 203.0.113.45
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1467250027 1 udp 2122260223 192.168.1.23 56143 typ host generation 0 network-id 1 network-cost 10
a=candidate:2711742491 1 udp 2122194687 10.8.0.6 49372 typ host generation 0 network-id 2 network-cost 50
a=candidate:435653019 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active generation 0 network-id 1 network-cost 10
a=candidate:3289912957 1 udp 1686052607 203.0.113.45 56143 typ srflx raddr 192.168.1.23 rport 56143 generation 0 network-id 1 network-cost 10
a=candidate:1124311812 1 udp 41885439 198.51.100.17 61012 typ relay raddr 203.0.113.45 rport 56143 generation 0 network-id 1 network-cost 10
a=ice-ufrag:Jq4e
a=ice-pwd:8mAnbT0uP5gK6vGbvsBq0e1T
a=ice-options:trickle
a=fingerprint:sha-256 5B:6C:7E:9A:21:4F:0D:8C:3B:92:AA:17:E4:55:61:C9:0F:3E:88:D2:71:BC:46:19:A0:5F:E7:33:2D:C8:94:0B
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendrecv
a=msid:5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d 7e2a9f13-5b64-4c8d-a0f1-3d9c2e7b8a46
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtcp-fb:102 goog-remb
a=rtcp-fb:102 transport-cc
a=rtcp-fb:102 ccm fir
a=rtcp-fb:102 nack
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:106 H264/90000
a=rtcp-fb:106 goog-remb
a=rtcp-fb:106 transport-cc
a=rtcp-fb:106 ccm fir
a=rtcp-fb:106 nack
a=rtcp-fb:106 nack pli
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:107 rtx/90000
a=fmtp:107 apt=106
a=rtpmap:39 AV1/90000
a=rtcp-fb:39 goog-remb
a=rtcp-fb:39 transport-cc
a=rtcp-fb:39 ccm fir
a=rtcp-fb:39 nack
a=rtcp-fb:39 nack pli
a=rtpmap:40 rtx/90000
a=fmtp:40 apt=39
a=rtpmap:112 red/90000
a=rtpmap:113 rtx/90000
a=fmtp:113 apt=112
a=rtpmap:114 ulpfec/90000
a=ssrc-group:FID 2213843447 1093204871
a=ssrc:2213843447 cname:8yq3Wn2bW9RZ4gD1
a=ssrc:2213843447 msid:5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d 7e2a9f13-5b64-4c8d-a0f1-3d9c2e7b8a46
a=ssrc:1093204871 cname:8yq3Wn2bW9RZ4gD1
a=ssrc:1093204871 msid:5dbd3b3c-6c55-4c3a-9d0e-0a7e1b1f4c2d 7e2a9f13-5b64-4c8d-a0f1-3d9c2e7b8a46
""".replace("\n", "\r\n")

SDP_ANSWER = (SDP_OFFER.replace("4611731400430051336", "7738264910374625521")
              .replace("Jq4e", "x9Rt").replace("8mAnbT0uP5gK6vGbvsBq0e1T", "Tq0LmW2bH7yZ4cV9sJ1nE5rK")
              .replace("5B:6C:7E:9A:21:4F", "A1:0F:3C:77:9B:E2").replace("a=setup:actpass", "a=setup:active")
              .replace("192.168.1.23", "192.168.7.41").replace("203.0.113.45", "198.51.100.88"))


class Ua:
    """One browser's SIP, SIP.js-like: random *.invalid Via host, ws Contact, outbound."""

    def __init__(self, user: str, seed: int) -> None:
        import random

        rnd = random.Random(seed)
        word = lambda n: "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))  # noqa: E731
        self.rnd, self.word = rnd, word
        self.user = user
        self.aor = f"sip:{user}@{DOMAIN}"
        self.host = f"{word(12)}.invalid"
        self.contact_user = word(8)
        self.contact = f"sip:{self.contact_user}@{self.host};transport=ws"
        self.instance = f"<urn:uuid:{word(8)}-{word(4)}-4{word(3)}-a{word(3)}-{word(12)}>"
        self.reg_call_id = word(22)
        self.cseq = 1

    def branch(self) -> str:
        return "z9hG4bK" + "".join(self.rnd.choice("0123456789") for _ in range(7))

    def register(self) -> bytes:
        self.cseq += 1
        nonce = base64.b64encode(self.rnd.randbytes(24)).decode()
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/WSS {self.host};branch={self.branch()}",
            "Max-Forwards: 69",
            f"To: <{self.aor}>",
            f"From: <{self.aor}>;tag={self.word(10)}",
            f"Call-ID: {self.reg_call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f'Authorization: Digest algorithm=MD5, username="{self.user}", realm="{DOMAIN}", nonce="{nonce}", '
            f'uri="sip:{DOMAIN}", response="{self.rnd.randbytes(16).hex()}", qop=auth, cnonce="{self.word(12)}", '
            f"nc=00000001",
            f'Contact: <{self.contact}>;+sip.ice;reg-id=1;+sip.instance="{self.instance}";expires=600',
            "Expires: 600",
            "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
            "Supported: path,gruu,outbound",
            "User-Agent: SIP.js/0.21.2",
            "Content-Length: 0",
            "", "",
        ]
        return "\r\n".join(lines).encode()

    def request(self, method: str, ruri: str, to: str, call_id: str, cseq: int, tag: str, body: str = "",
                routes: list[str] = (), to_tag: str = "") -> bytes:
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/WSS {self.host};branch={self.branch()}",
            *(f"Route: {route}" for route in routes),
            "Max-Forwards: 69",
            f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
            f"From: <{self.aor}>;tag={tag}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
        ]
        if method == "INVITE":
            lines += [f"Contact: <{self.contact};ob>",
                      "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
                      "Supported: outbound", "User-Agent: SIP.js/0.21.2", "Content-Type: application/sdp"]
        lines += [f"Content-Length: {len(body.encode())}", "", ""]
        return "\r\n".join(lines).encode() + body.encode()

    def response(self, request: bytes, status: str, to_tag: str, body: str = "") -> bytes:
        """A response to ``request`` copying Via, Record-Route, From, To, Call-ID, CSeq."""
        head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        copied = [line for line in head[1:] if line.split(":", 1)[0].lower() in
                  ("via", "record-route", "from", "call-id", "cseq")]
        to = next(line for line in head[1:] if line.lower().startswith("to:"))
        lines = [f"SIP/2.0 {status}", *copied, to + (f";tag={to_tag}" if ";tag=" not in to else "")]
        if body or status.startswith("200"):
            lines += [f"Contact: <{self.contact};ob>", "Supported: outbound", "User-Agent: SIP.js/0.21.2"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body.encode())}", "", ""]
        return "\r\n".join(lines).encode() + body.encode()


def header_values(message: bytes, name: str) -> list[str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    prefix = name.lower() + ":"
    return [line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith(prefix)]


def options(ua: Ua, body: str = "") -> bytes:
    """OPTIONS to the served domain (answered 200 by the standalone core), REGISTER-like headers."""
    return ua.request("OPTIONS", f"sip:{DOMAIN}", f"sip:{DOMAIN}", ua.word(22), 1, ua.word(10), body)


# ------------------------------------------------------------------ a deflating client


class Client:
    """A blocking WebSocket client that compresses like Chromium and counts TCP payload bytes."""

    def __init__(self, port: int, offer: str | None = CHROMIUM_OFFER, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_IP, _wsload.IP_BIND_ADDRESS_NO_PORT, 1)
        self.sock.bind((source, 0))
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sent = self.received = 0
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET / HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: sip",
                 f"Origin: {ORIGIN}"]
        if offer:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        extension = ""
        for line in head.decode().split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                extension = value.strip()
        self.extension = extension
        params = [p.strip() for p in extension.split(";")[1:]] if extension else []
        self.deflate = bool(extension)
        window = 15
        for param in params:
            if param.startswith("client_max_window_bits="):
                window = int(param.split("=")[1])
        self.takeover = "client_no_context_takeover" not in params
        self.peer_takeover = "server_no_context_takeover" not in params
        self.window = window
        self.compressor = None
        self.decompressor = None

    def send(self, data: bytes) -> int:
        """One text message; returns its TCP payload size (frame header, mask, payload)."""
        rsv = 0
        if self.deflate:
            if self.compressor is None or not self.takeover:
                self.compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.window, 8)
            data = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
            data = data[:-4]
            rsv = 0x40
        length = len(data)
        if length < 126:
            header = struct.pack("!BB", 0x80 | rsv | 0x1, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | rsv | 0x1, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | rsv | 0x1, 0x80 | 127, length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
        frame = header + mask + masked
        self.sock.sendall(frame)
        self.sent += len(frame)
        return len(frame)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        self.received += n
        return data

    def recv(self) -> tuple[bytes, int]:
        """The next data message (Pings skipped) and its TCP payload size."""
        while True:
            first, second = self._read(2)
            size = 2
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
                size += 2
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
                size += 8
            payload = self._read(length)
            size += length
            opcode = first & 0x0F
            if opcode in (0x9, 0xA):
                continue
            if first & 0x40:
                if self.decompressor is None or not self.peer_takeover:
                    self.decompressor = zlib.decompressobj(-15)
                payload = self.decompressor.decompress(payload + TAIL)
            return payload, size

    def recv_final(self) -> tuple[bytes, int]:
        """The next message that is not a 100 Trying (its size included in the total)."""
        total = 0
        while True:
            message, size = self.recv()
            total += size
            if not message.startswith(b"SIP/2.0 100 "):
                return message, total

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------ the server process


def serve(ws: dict[str, Any], log_path: str, echo: bool) -> None:
    _wsload.raise_file_limit()
    ws = dict(ws)
    if ws.pop("_keep_streams", False):
        from sipws.transport import deflate

        deflate.BoundedDeflate.end_compress_message = deflate.PerMessageDeflate.end_compress_message
        deflate.BoundedDeflate.end_decompress_message = deflate.PerMessageDeflate.end_decompress_message
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, \
        textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    out = open(log_path or os.devnull, "a", encoding="utf-8")
    observer = FilteringLogObserver(textFileLogObserver(out), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    from sipws.config import config_from_dict
    from sipws.tap import build_service

    config = config_from_dict({
        "ws": {"listen": ["127.0.0.1:0"], **ws},
        "sip": {"listen": ["udp:127.0.0.1:0"]},
        "registrar": {"domains": [DOMAIN]},
        "admin": {"listen": ""},
        "limits": dict(_limits.OFF),
    })
    root = build_service(config)
    root.privilegedStartService()
    root.startService()
    if echo:  # the WebSocket layer alone: every message sent straight back
        root.set_message_handler(lambda record, data: record.protocol.send_message(data))

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"gc":
                gc.collect()
                sys.stdout.write("ok\n")
                sys.stdout.flush()
            elif line.strip() == b"counters":
                sys.stdout.write(json.dumps(root.stats.snapshot()) + "\n")
                sys.stdout.flush()
            else:
                reactor.stop()

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())
    sys.stdout.write(f"READY {root.listening('ws')[0].getHost().port}\n")
    sys.stdout.flush()
    profile = os.environ.get("SIPWS_BENCH_PROFILE")  # a file: the server's cProfile stats
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        profiler.dump_stats(f"{profile}.{os.getpid()}")
    else:
        reactor.run()
    os._exit(0)


class Server:
    def __init__(self, name: str, logdir: Path, echo: bool = False) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", json.dumps(CONFIGS[name]),
             str(logdir / f"{name}.log"), "echo" if echo else "sip"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=str(ROOT_DIR))
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"server {name} did not start: {line!r}")
        self.port = int(line.split()[1])

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def rss_kb(self) -> int:
        return _wsload.rss_kb(self.proc.pid)

    def cpu(self) -> tuple[float, float]:
        """(utime, stime) in seconds."""
        with open(f"/proc/{self.proc.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ 1. bytes on the wire


def call(port: int) -> list[tuple[str, str, int, int]]:
    """One call between two browsers; (message, direction, payload bytes, TCP bytes) per hop.

    Direction "up" is browser -> sipws (the browser compresses), "down" sipws -> browser
    (sipws compresses)."""
    alice, bob = Ua("alice", 1), Ua("bob", 2)
    a, b = Client(port), Client(port)
    rows: list[tuple[str, str, int, int]] = []

    def up(label: str, client: Client, data: bytes) -> None:
        rows.append((label, "up", len(data), client.send(data)))

    def down(label: str, client: Client, final: bool = True) -> bytes:
        message, size = client.recv_final() if final else client.recv()
        rows.append((label, "down", len(message), size))
        return message

    try:
        for ua, client in ((alice, a), (bob, b)):
            up("REGISTER", client, ua.register())
            down("200 REGISTER", client)
        call_id, tag = bob.word(22), bob.word(10)
        invite = bob.request("INVITE", alice.aor, alice.aor, call_id, 1, tag, SDP_OFFER)
        up("INVITE (SDP offer)", b, invite)
        trying = down("100 Trying", b, final=False)
        assert trying.startswith(b"SIP/2.0 100"), trying[:40]
        relayed = down("INVITE (SDP offer)", a)
        assert relayed.startswith(b"INVITE "), relayed[:40]
        to_tag = alice.word(10)
        up("180 Ringing", a, alice.response(relayed, "180 Ringing", to_tag))
        down("180 Ringing", b)
        up("200 INVITE (SDP answer)", a, alice.response(relayed, "200 OK", to_tag, SDP_ANSWER))
        ok = down("200 INVITE (SDP answer)", b)
        assert ok.startswith(b"SIP/2.0 200"), ok[:40]
        routes = list(reversed(header_values(ok, "Record-Route")))
        target = header_values(ok, "Contact")[0].strip("<>").split(">")[0]
        up("ACK", b, bob.request("ACK", target, alice.aor, call_id, 1, tag, routes=routes, to_tag=to_tag))
        down("ACK", a)
        up("BYE", b, bob.request("BYE", target, alice.aor, call_id, 2, tag, routes=routes, to_tag=to_tag))
        bye = down("BYE", a)
        up("200 BYE", a, alice.response(bye, "200 OK", to_tag))
        down("200 BYE", b)
        up("REGISTER refresh", a, alice.register())
        down("200 REGISTER refresh", a)
    finally:
        a.close()
        b.close()
    return rows


def wire(logdir: Path) -> dict[str, list[tuple[str, str, int, int]]]:
    results = {}
    for name in CONFIGS:
        server = Server(name, logdir)
        try:
            results[name] = call(server.port)
        finally:
            server.stop()
    return results


def report_wire(results: dict[str, list[tuple[str, str, int, int]]]) -> None:
    names = list(CONFIGS)
    print("1. bytes on the wire: TCP payload per message (frame header + mask + payload), one call")
    print(f"   {'message':26s} {'dir':4s} {'SIP':>6s} " + " ".join(f"{n:>11s}" for n in names)
          + "   " + " ".join(f"{n + '/off':>15s}" for n in names[1:]))
    for i, (label, direction, raw, _) in enumerate(results["off"]):
        sizes = [results[n][i][3] for n in names]
        print(f"   {label:26s} {direction:4s} {raw:6d} " + " ".join(f"{s:11d}" for s in sizes)
              + "   " + " ".join(f"{s / sizes[0]:15.2f}" for s in sizes[1:]))
    for direction in ("up", "down", None):
        totals = [sum(r[3] for r in results[n] if direction in (None, r[1])) for n in names]
        label = {"up": "total browser -> sipws", "down": "total sipws -> browser", None: "total both ways"}[direction]
        raw = sum(r[2] for r in results["off"] if direction in (None, r[1]))
        print(f"   {label:26s} {'':4s} {raw:6d} " + " ".join(f"{s:11d}" for s in totals)
              + "   " + " ".join(f"{s / totals[0]:15.2f}" for s in totals[1:]))


# ------------------------------------------------------------------ 2. memory per idle connection


def memory(logdir: Path, count: int) -> dict[str, dict[str, float]]:
    results = {}
    for name in CONFIGS:
        server = Server(name, logdir)
        clients: list[Client] = []
        try:
            warm = [Client(server.port) for _ in range(50)]
            for i, client in enumerate(warm):
                client.send(options(Ua(f"w{i}", i)))
                client.recv_final()
                client.close()
            time.sleep(SETTLE)
            server.ask("gc")
            before = server.rss_kb()
            for i in range(count):
                client = Client(server.port, source=f"127.0.0.{2 + i % _wsload.SOURCE_ADDRESSES}")
                client.send(options(Ua(f"u{i}", 1000 + i)))
                answer, _ = client.recv_final()
                assert answer.startswith(b"SIP/2.0 200"), answer[:60]
                clients.append(client)
            time.sleep(SETTLE)
            server.ask("gc")
            after = server.rss_kb()
        finally:
            for client in clients:
                client.close()
            server.stop()
        results[name] = {"count": count, "before_kb": before, "after_kb": after,
                         "per_conn_kb": (after - before) * 1024 / 1000 / count}
    return results


def report_memory(results: dict[str, dict[str, float]]) -> None:
    off = results["off"]["per_conn_kb"]
    print(f"2. memory per idle connection (server VmRSS growth / N, N = {results['off']['count']}; each sent one "
          "OPTIONS and read its 200)")
    for name, row in results.items():
        extra = "" if name == "off" else (f"   ratio to off {row['per_conn_kb'] / off:5.2f}, "
                                          f"compression costs {row['per_conn_kb'] - off:+6.2f} KB/conn")
        print(f"   {name:12s} RSS {row['before_kb'] / 1024:7.1f} -> {row['after_kb'] / 1024:7.1f} MiB "
              f"{row['per_conn_kb']:7.2f} KB/conn{extra}")


# ------------------------------------------------------------------ 3. CPU per message


def cpu(logdir: Path, messages: int) -> dict[str, dict[str, float]]:
    """Server CPU per echoed message (the WebSocket layer alone: sipws's message handler
    sends each message straight back, so the figure is not lost in the SIP path's cost).
    ROUNDS rounds over all configurations, the lowest figure kept (CPU ticks are 10 ms,
    and the machine may be shared)."""
    ua = Ua("cpu", 7)
    samples = {"REGISTER": ua.register(),
               "INVITE": ua.request("INVITE", "sip:bob@example.com", "sip:bob@example.com", ua.word(22), 1,
                                    ua.word(10), SDP_OFFER)}
    results: dict[str, dict[str, float]] = {name: {} for name in CONFIGS}
    for _ in range(ROUNDS):
        for name in CONFIGS:
            for label, message in samples.items():
                server = Server(name, logdir, echo=True)
                client = Client(server.port)
                try:
                    for _ in range(50):  # warm-up
                        client.send(message)
                        client.recv()
                    user, system = server.cpu()
                    for _ in range(messages):
                        client.send(message)
                        echoed, _size = client.recv()
                    assert echoed == message
                    user_after, system_after = server.cpu()
                finally:
                    client.close()
                    server.stop()
                total = (user_after + system_after - user - system) / messages * 1e6
                user = (user_after - user) / messages * 1e6
                row = results[name]
                row[label] = min(total, row.get(label, total))
                row[f"{label} user"] = min(user, row.get(f"{label} user", user))
                row[f"{label} bytes"] = len(message)
    return results


def in_process(messages: int) -> dict[str, dict[str, float]]:
    """µs of CPU (process_time) per echoed message through sipws's WebSocket server protocol
    in this process, over an in-memory transport: no sockets, no kernel, no other process,
    so the figure is steadier than the end-to-end one.  Lowest of ROUNDS runs."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from sipws.config import config_from_dict
    from sipws.tap import build_service

    ua = Ua("inproc", 11)
    samples = {"REGISTER": ua.register(),
               "INVITE": ua.request("INVITE", "sip:bob@example.com", "sip:bob@example.com", ua.word(22), 1,
                                    ua.word(10), SDP_OFFER)}

    def once(ws: dict[str, Any], message: bytes) -> float:
        root = build_service(config_from_dict({"ws": {"listen": ["127.0.0.1:0"], **ws},
                                               "sip": {"listen": [], "upstream": "sip:127.0.0.1:5060"},
                                               "admin": {"listen": ""}}))
        root.set_message_handler(lambda record, data: record.protocol.send_message(data))
        protocol = root.ws_server.factories["ws"].buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                                    peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol.makeConnection(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        protocol.dataReceived((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                               f"Sec-WebSocket-Protocol: sip\r\nOrigin: {ORIGIN}\r\n"
                               f"Sec-WebSocket-Extensions: {CHROMIUM_OFFER}\r\n\r\n").encode())
        head = transport.value()
        transport.clear()
        assert head.startswith(b"HTTP/1.1 101"), head
        window = 15
        for part in head.decode().split("\r\n"):
            if part.lower().startswith("sec-websocket-extensions:") and "client_max_window_bits=" in part:
                window = int(part.rsplit("client_max_window_bits=", 1)[1].split(";")[0])
        compressed = b"permessage-deflate" in head
        frames = []
        for _ in range(messages):
            data, rsv = message, 0
            if compressed:
                packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window, 8)
                data, rsv = (packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH))[:-4], 0x40
            size = len(data)
            header = (struct.pack("!BBH", 0x80 | rsv | 1, 0x80 | 126, size) if size >= 126
                      else struct.pack("!BB", 0x80 | rsv | 1, 0x80 | size))
            frames.append(header + b"\x00\x00\x00\x00" + data)  # a zero mask key
        gc.collect()
        gc.disable()  # the collector's pauses would land on whichever message triggers them
        try:
            start = time.process_time()
            for frame in frames:
                protocol.dataReceived(frame)
                transport.clear()
            spent = time.process_time() - start
        finally:
            gc.enable()
        return spent / messages * 1e6

    results: dict[str, dict[str, float]] = {}
    for name, config in CONFIGS.items():
        if name == "on-kept":
            continue  # a bench-only switch of the server process, not of this one
        ws = {key: value for key, value in config.items() if not key.startswith("_")}
        results[name] = {label: min(once(ws, message) for _ in range(ROUNDS)) for label, message in samples.items()}
    return results


def zlib_alone(rounds: int = 2000) -> dict[str, dict[str, float]]:
    """µs per message for zlib alone: compress (fresh stream per message, as without context
    takeover) and inflate, per configuration's window and memLevel."""
    alice = Ua("zlib", 9)
    samples = {"REGISTER": alice.register(), "INVITE": alice.request("INVITE", "sip:bob@x", "sip:bob@x", "c", 1, "t",
                                                                      SDP_OFFER)}
    out = {}
    for bits, level in ((12, 5), (15, 8)):
        row = {}
        for label, data in samples.items():
            start = time.process_time()
            for _ in range(rounds):
                c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, level)
                packed = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
            row[f"compress {label}"] = (time.process_time() - start) / rounds * 1e6
            start = time.process_time()
            for _ in range(rounds):
                d = zlib.decompressobj(-bits)
                d.decompress(packed)
            row[f"inflate {label}"] = (time.process_time() - start) / rounds * 1e6
        out[f"{bits} bits, memLevel {level}"] = row
    return out


def report_in_process(results: dict[str, dict[str, float]], messages: int) -> None:
    print(f"   sipws's WebSocket server protocol in this process (in-memory transport, {messages} echoes, lowest of "
          f"{ROUNDS}), µs of CPU per message (ratio to off):")
    for name, row in results.items():
        print(f"     {name:12s} " + ", ".join(f"{label} {value:6.1f} ({value / results['off'][label]:4.2f}x)"
                                          for label, value in row.items()))


def report_cpu(results: dict[str, dict[str, float]], alone: dict[str, dict[str, float]], messages: int) -> None:
    print(f"3. CPU per message: server CPU per echoed message ({messages} in a row, one connection, lowest of "
          f"{ROUNDS} rounds; inflated and compressed again by sipws when on)")
    for size in ("REGISTER", "INVITE"):
        off = results["off"][size]
        print(f"   {size} ({results['off'][size + ' bytes']} B), µs per message: utime+stime (ratio to off) "
              "| utime alone (ratio)")
        user_off = results["off"][f"{size} user"]
        for name, row in results.items():
            print(f"     {name:12s} {row[size]:7.1f} ({row[size] / off:4.2f}x) | {row[size + ' user']:7.1f} "
                  f"({row[size + ' user'] / user_off:4.2f}x)")
    print("   zlib alone in this process, µs per message (a fresh stream each, as without context takeover):")
    for setting, row in alone.items():
        print(f"     {setting:22s} " + ", ".join(f"{k} {v:5.1f}" for k, v in row.items()))


def main(argv: list[str]) -> int:
    if argv and argv[0] == "serve":
        serve(json.loads(argv[1]), argv[2], argv[3] == "echo")
        return 0
    parser = argparse.ArgumentParser(description="permessage-deflate on/off: bytes on the wire, memory, CPU")
    parser.add_argument("--connections", type=int, default=2000, help="idle connections per server (default 2000)")
    parser.add_argument("--messages", type=int, default=5000, help="echoes for the CPU figure (default 5000)")
    parser.add_argument("--quick", action="store_true", help=f"small run: {QUICK}")
    parser.add_argument("--only", choices=("wire", "memory", "cpu"), help="run one part")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.messages = QUICK["connections"], QUICK["messages"]
    _wsload.raise_file_limit()
    started = time.perf_counter()
    print("configurations ([ws] keys): " + "; ".join(f"{n} = {json.dumps(c)}" for n, c in CONFIGS.items()))
    print(_limits.NOTE)
    with tempfile.TemporaryDirectory(prefix="sipws-bench-deflate-") as tmp:
        logdir = Path(tmp)
        if args.only in (None, "wire"):
            report_wire(wire(logdir))
        if args.only in (None, "memory"):
            report_memory(memory(logdir, args.connections))
        if args.only in (None, "cpu"):
            report_cpu(cpu(logdir, args.messages), zlib_alone(), args.messages)
            report_in_process(in_process(args.messages), args.messages)
    print(f"total {time.perf_counter() - started:.0f} s (wall, for information)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
