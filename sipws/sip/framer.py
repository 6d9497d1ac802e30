"""Split a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3).

Messages on a stream are framed by Content-Length, which is therefore
required.  CRLFs between messages are keep-alives (RFC 5626 §3.5.1) and are
skipped.  The framer only frames; each message it returns is still to be
``parse()``d.  After an error it refuses further input: the caller closes
the connection, since the stream position is lost.
"""

from __future__ import annotations

import re

from sipws.sip.errors import SipParseError
from sipws.sip.limits import DEFAULT_LIMITS, Limits

_CL_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(?:\r\n[ \t]+)?([^\r]*)", re.IGNORECASE)
_MAX_CL_DIGITS = 10
_NOT_CRLF_RE = re.compile(rb"[^\r\n]")


class StreamFramer:
    """Incremental framer: ``feed(bytes) -> [complete message bytes, ...]``."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._failed = False
        self._run = bytearray()  # CR/LF bytes seen since the last message or ping
        #: Double-CRLF keep-alive pings (RFC 5626 §3.5.1) seen by the last
        #: feed(); a server answers each with a single CRLF pong.
        self.pings = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buf)

    def _fail(self, reason: str, status: int = 400) -> SipParseError:
        self._failed = True
        self._buf = bytearray()
        return SipParseError(reason, status)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages now complete."""
        if self._failed:
            raise SipParseError("stream framing already failed")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        self.pings = 0
        run = self._run
        pos = 0
        n = len(buf)
        max_size = self._limits.max_message_size
        while pos < n:
            # Skip keep-alive CRLFs (and bare LFs some clients send).
            c = buf[pos]
            if c == 13 or c == 10:
                m = _NOT_CRLF_RE.search(buf, pos)
                stop = m.start() if m is not None else n
                run += buf[pos:stop]
                pings = run.count(b"\r\n\r\n")
                if pings:
                    self.pings += pings
                    # Keep what follows the last ping counted.  count() and replace()
                    # match left to right without overlap; rfind() found a later,
                    # overlapping CRLFCRLF and dropped the first half of the next ping.
                    marked = run.replace(b"\r\n\r\n", b"\x00")
                    del run[:len(run) - (len(marked) - marked.rfind(b"\x00") - 1)]
                if len(run) > 3:
                    del run[:-3]  # enough to complete a ping split across feeds
                pos = stop
                continue
            run.clear()
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > max_size:
                    raise self._fail("header block too large", 513)
                break
            if end - pos > max_size:
                raise self._fail("header block too large", 513)
            length = -1
            for m in _CL_RE.finditer(buf, pos, end + 2):
                value = m.group(1).strip(b" \t")
                if not value.isdigit() or len(value) > _MAX_CL_DIGITS:
                    raise self._fail("bad Content-Length")
                v = int(value)
                if length >= 0 and v != length:
                    raise self._fail("conflicting Content-Length values")
                length = v
            if length < 0:
                raise self._fail("missing Content-Length on a stream")
            total = end + 4 + length
            if total - pos > max_size:
                raise self._fail("message too large", 513)
            if total > n:
                break
            out.append(bytes(buf[pos:total]))
            pos = total
        if pos:
            del buf[:pos]
        return out
