"""MSRP messages (RFC 4975 §5.1, §7, §9): parse, read, re-serialize, frame.

A parsed message keeps its start line and header lines as written, so an
unedited message serializes to exactly its input, and ``with_paths`` (the
one edit a relay makes) replaces only the To-Path and From-Path lines.
Every header the relay or an adapter reads is checked at ``parse`` time, so
the accessors never fail afterwards.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

from sipws.msrp.errors import MsrpParseError
from sipws.msrp.limits import DEFAULT_LIMITS, Limits
from sipws.msrp.uri import MsrpUri, format_path, parse_path

_CRLF = b"\r\n"
_DASHES = b"-------"
#: Continuation flags of an end-line: last chunk, more to come, aborted.
FLAGS = frozenset("$+#")
# ident = ALPHANUM 3*31ident-char (RFC 4975 §9)
_TID = rb"[A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31}"
_REQ_RE = re.compile(rb"MSRP (" + _TID + rb") ([A-Z]{1,32})")
_RESP_RE = re.compile(rb"MSRP (" + _TID + rb") ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]{0,256}))?")
_START_RE = re.compile(rb"MSRP (" + _TID + rb") ")
_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]{1,64}")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-+%=]{0,255}")
_BYTE_RANGE_RE = re.compile(r"([0-9]{1,18})-([0-9]{1,18}|\*)/([0-9]{1,18}|\*)")
_STATUS_RE = re.compile(r"([0-9]{3}) ([0-9]{3})(?: (.*))?")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+/[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]*;.*)?")

# Header fields that may appear at most once, by lower-case name.
_SINGLE = ("to-path", "from-path", "message-id", "byte-range", "success-report",
           "failure-report", "content-type", "status", "expires", "min-expires",
           "max-expires", "use-path")
_PATHS = ("to-path", "from-path", "use-path")

#: Reason phrases this package writes (RFC 4975 §10, RFC 4976 §9).
COMMENTS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    408: "Request Timeout", 413: "Stop Sending Message", 415: "Unsupported Media Type",
    423: "Interval Out-of-Bounds", 481: "Session Does Not Exist",
    501: "Method Not Implemented", 506: "Session Already Bound",
}


class MsrpMessage:
    """What requests and responses share.  Build with ``parse``."""

    is_request = False
    __slots__ = ("tid", "flag", "body", "_start", "_lines", "_names", "_values",
                 "_has_body", "_parsed")

    def __init__(self, tid: str, start: bytes, lines: list[bytes], names: list[str],
                 values: list[str], has_body: bool, body: bytes, flag: str,
                 parsed: dict) -> None:
        self.tid = tid
        self.flag = flag
        self.body = body
        self._start = start
        self._lines = lines
        self._names = names
        self._values = values
        self._has_body = has_body
        self._parsed = parsed

    # -- reading ---------------------------------------------------------
    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header field in order, ``(name as written, value)``."""
        return list(zip(self._names, self._values))

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        key = name.lower()
        for n, v in zip(self._names, self._values):
            if n.lower() == key:
                return v
        return None

    @property
    def to_path(self) -> tuple[MsrpUri, ...]:
        return self._parsed["to-path"]

    @property
    def from_path(self) -> tuple[MsrpUri, ...]:
        return self._parsed["from-path"]

    @property
    def use_path(self) -> Optional[tuple[MsrpUri, ...]]:
        return self._parsed.get("use-path")

    @property
    def message_id(self) -> Optional[str]:
        return self._parsed.get("message-id")

    @property
    def byte_range(self) -> Optional[tuple[int, Optional[int], Optional[int]]]:
        return self._parsed.get("byte-range")

    @property
    def success_report(self) -> str:
        return self._parsed.get("success-report", "no")

    @property
    def failure_report(self) -> str:
        return self._parsed.get("failure-report", "yes")

    @property
    def content_type(self) -> Optional[str]:
        return self._parsed.get("content-type")

    @property
    def expires(self) -> Optional[int]:
        return self._parsed.get("expires")

    @property
    def status_header(self) -> Optional[tuple[int, int, str]]:
        """The Status header of a REPORT: ``(namespace, code, text)``."""
        return self._parsed.get("status")

    # -- writing ---------------------------------------------------------
    def __bytes__(self) -> bytes:
        out = [self._start, _CRLF]
        for line in self._lines:
            out += [line, _CRLF]
        if self._has_body:
            out += [_CRLF, self.body, _CRLF]
        out += [_DASHES, self.tid.encode("ascii"), self.flag.encode("ascii"), _CRLF]
        return b"".join(out)

    def with_paths(self, to_path: Iterable[MsrpUri], from_path: Iterable[MsrpUri]):
        """A copy with new To-Path and From-Path; every other byte kept."""
        to_path, from_path = tuple(to_path), tuple(from_path)
        if not to_path or not from_path:
            raise MsrpParseError("a path needs at least one URI")
        lines = list(self._lines)
        values = list(self._values)
        for i, name in enumerate(self._names):
            key = name.lower()
            if key == "to-path":
                values[i] = format_path(to_path)
                lines[i] = b"To-Path: " + values[i].encode("utf-8")
            elif key == "from-path":
                values[i] = format_path(from_path)
                lines[i] = b"From-Path: " + values[i].encode("utf-8")
        parsed = dict(self._parsed)
        parsed["to-path"] = to_path
        parsed["from-path"] = from_path
        clone = object.__new__(type(self))
        for slot in MsrpMessage.__slots__:
            setattr(clone, slot, getattr(self, slot))
        for slot in type(self).__slots__:
            setattr(clone, slot, getattr(self, slot))
        clone._lines = lines
        clone._values = values
        clone._parsed = parsed
        return clone

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._start[:80]!r} flag={self.flag}>"


class MsrpRequest(MsrpMessage):
    """An MSRP request: ``method`` is SEND, REPORT, AUTH or another UPALPHA name."""

    is_request = True
    __slots__ = ("method",)


class MsrpResponse(MsrpMessage):
    """An MSRP transaction response: ``status`` (int) and ``comment`` (str)."""

    __slots__ = ("status", "comment")


Message = Union[MsrpRequest, MsrpResponse]


def _check_value(key: str, value: str, limits: Limits, parsed: dict) -> None:
    if key in _PATHS:
        parsed[key] = parse_path(value, limits.max_path_uris, limits.max_uri_length)
    elif key == "message-id":
        if not _MESSAGE_ID_RE.fullmatch(value):
            raise MsrpParseError("bad Message-ID")
        parsed[key] = value
    elif key == "byte-range":
        m = _BYTE_RANGE_RE.fullmatch(value)
        if m is None:
            raise MsrpParseError("bad Byte-Range")
        start = int(m.group(1))
        end = None if m.group(2) == "*" else int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if start < 1 or (end is not None and end < start - 1) or (
                total is not None and end is not None and end > total):
            raise MsrpParseError("inconsistent Byte-Range")
        parsed[key] = (start, end, total)
    elif key == "success-report":
        v = value.lower()
        if v not in ("yes", "no"):
            raise MsrpParseError("bad Success-Report")
        parsed[key] = v
    elif key == "failure-report":
        v = value.lower()
        if v not in ("yes", "no", "partial"):
            raise MsrpParseError("bad Failure-Report")
        parsed[key] = v
    elif key in ("expires", "min-expires", "max-expires"):
        if not _DIGITS_RE.fullmatch(value):
            raise MsrpParseError(f"bad {key}")
        parsed[key] = int(value)
    elif key == "status":
        m = _STATUS_RE.fullmatch(value)
        if m is None:
            raise MsrpParseError("bad Status")
        parsed[key] = (int(m.group(1)), int(m.group(2)), m.group(3) or "")
    elif key == "content-type":
        if not _MEDIA_TYPE_RE.fullmatch(value):
            raise MsrpParseError("bad Content-Type")
        parsed[key] = value


def _end_of_message(data: bytes, tid: bytes) -> int:
    """Offset where the end-line of a complete message ``data`` starts."""
    core = data[:-2] if data.endswith(_CRLF) else data
    n = len(tid) + 8  # dashes, tid, flag
    if len(core) < n + 2 or core[-n:-1] != _DASHES + tid or core[-n - 2:-n] != _CRLF:
        raise MsrpParseError("no end-line for this transaction")
    return len(core) - n


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse exactly one complete MSRP message (request or response)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MsrpParseError("message is not bytes")
    data = bytes(data)
    if len(data) > limits.max_message_size:
        raise MsrpParseError("message too large", 413)
    eol = data.find(_CRLF, 0, limits.max_header_bytes)
    if eol < 0:
        raise MsrpParseError("no start line")
    start = data[:eol]
    m = _REQ_RE.fullmatch(start)
    if m is not None:
        cls, status = MsrpRequest, None
    else:
        m = _RESP_RE.fullmatch(start)
        if m is None:
            raise MsrpParseError("bad start line")
        cls, status = MsrpResponse, int(m.group(2))
        if status < 100:
            raise MsrpParseError("bad status code")
    tid_b = m.group(1)
    end = _end_of_message(data, tid_b)
    flag = chr(data[end + 7 + len(tid_b)])
    if flag not in FLAGS:
        raise MsrpParseError("bad continuation flag")
    middle = data[eol + 2:end]  # header lines, then maybe blank line + body + CRLF
    blank = middle.find(b"\r\n\r\n", 0, limits.max_header_bytes)
    if blank >= 0:
        head = middle[:blank]
        if blank + 4 > len(middle) - 2:
            raise MsrpParseError("blank line without a body")
        body = middle[blank + 4:len(middle) - 2]
        has_body = True
    else:
        if not middle.endswith(_CRLF):
            raise MsrpParseError("no header fields")
        head = middle[:-2]
        body = b""
        has_body = False
    if len(head) + eol > limits.max_header_bytes:
        raise MsrpParseError("header section too large", 413)
    lines = head.split(_CRLF)
    if len(lines) > limits.max_headers:
        raise MsrpParseError("too many header fields", 413)
    names: list[str] = []
    values: list[str] = []
    parsed: dict = {}
    for line in lines:
        colon = line.find(b":")
        if colon <= 0:
            raise MsrpParseError("bad header line")
        try:
            name = line[:colon].decode("ascii")
            value = line[colon + 1:].decode("utf-8").strip(" \t")
        except UnicodeDecodeError:
            raise MsrpParseError("header not UTF-8") from None
        if not _NAME_RE.fullmatch(name) or _BAD_VALUE_RE.search(value):
            raise MsrpParseError("bad header line")
        key = name.lower()
        if key in parsed and key in _SINGLE:
            raise MsrpParseError(f"repeated {name}")
        _check_value(key, value, limits, parsed)
        parsed.setdefault(key, None)
        names.append(name)
        values.append(value)
    if parsed.get("to-path") is None or parsed.get("from-path") is None:
        raise MsrpParseError("To-Path and From-Path are required")
    parsed = {k: v for k, v in parsed.items() if v is not None}
    if has_body:
        if cls is MsrpResponse:
            raise MsrpParseError("a response has no body")
        if "content-type" not in parsed:
            raise MsrpParseError("a body needs a Content-Type")
    tid = tid_b.decode("ascii")
    msg = cls(tid, start, lines, names, values, has_body, body, flag, parsed)
    if cls is MsrpRequest:
        msg.method = m.group(2).decode("ascii")
    else:
        msg.status = status
        comment = m.group(3)
        try:
            msg.comment = comment.decode("utf-8") if comment else ""
        except UnicodeDecodeError:
            raise MsrpParseError("comment not UTF-8") from None
    return msg


def build(start: str, tid: str, headers: Iterable[tuple[str, str]], body: Optional[bytes] = None,
          flag: str = "$") -> bytes:
    """Serialize a message this package writes itself (values are trusted)."""
    out = [start.encode("utf-8"), _CRLF]
    for name, value in headers:
        if _BAD_VALUE_RE.search(value):
            raise MsrpParseError("control character in a header value")
        out += [name.encode("ascii"), b": ", value.encode("utf-8"), _CRLF]
    if body is not None:
        out += [_CRLF, body, _CRLF]
    out += [_DASHES, tid.encode("ascii"), flag.encode("ascii"), _CRLF]
    return b"".join(out)


def make_response(request: MsrpRequest, status: int, comment: Optional[str] = None,
                  extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """The hop's response to ``request`` (RFC 4975 §7.2), same transaction id:
    From-Path is the first To-Path URI (the responder); To-Path is the first
    From-Path URI for SEND (responses to SEND go one hop), the whole From-Path
    for other methods (their responses travel back through relays, RFC 4976)."""
    if comment is None:
        comment = COMMENTS.get(status, "")
    start = f"MSRP {request.tid} {status}" + (f" {comment}" if comment else "")
    back = request.from_path[:1] if request.method == "SEND" else request.from_path
    headers = [("To-Path", format_path(back)), ("From-Path", str(request.to_path[0]))]
    headers += list(extra)
    return build(start, request.tid, headers)


class MessageSplitter:
    """Frame a TCP/TLS byte stream into MSRP messages.

    ``feed(bytes) -> [complete message bytes, ...]``.  A message ends at the
    first ``CRLF -------TID`` followed by a flag and CRLF, TID being its own
    transaction id (RFC 4975 §5.1).  After an error the splitter refuses
    more input: the caller closes the connection.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._marker: Optional[bytes] = None  # CRLF + dashes + tid of the message in progress
        self._scan = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buf)

    def _fail(self, reason: str, status: int = 400) -> MsrpParseError:
        self._failed = True
        self._buf = bytearray()
        return MsrpParseError(reason, status)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed:
            raise MsrpParseError("stream framing already failed")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        limits = self._limits
        while buf:
            if self._marker is None:
                skip = 0
                while skip < len(buf) and buf[skip] in (13, 10):
                    skip += 1  # stray CRLFs between messages
                if skip:
                    del buf[:skip]
                    if not buf:
                        break
                eol = buf.find(_CRLF, 0, limits.max_header_bytes)
                if eol < 0:
                    probe = bytes(buf[:5])
                    if len(buf) >= limits.max_header_bytes or not b"MSRP "[:len(probe)] == probe:
                        raise self._fail("bad start line")
                    break
                m = _START_RE.match(buf, 0, eol + 1)
                if m is None:
                    raise self._fail("bad start line")
                self._marker = _CRLF + _DASHES + m.group(1)
                self._scan = eol
            marker = self._marker
            tail = len(marker) + 3  # flag + CRLF
            found = -1
            while True:
                i = buf.find(marker, self._scan)
                if i < 0:
                    self._scan = max(self._scan, len(buf) - len(marker) + 1)
                    break
                if len(buf) < i + tail:
                    self._scan = i
                    break
                if buf[i + len(marker)] in b"$+#" and buf[i + len(marker) + 1:i + tail] == _CRLF:
                    found = i + tail
                    break
                self._scan = i + 1
            if found < 0:
                if len(buf) > limits.max_message_size:
                    raise self._fail("message too large", 413)
                break
            if found > limits.max_message_size:
                raise self._fail("message too large", 413)
            out.append(bytes(buf[:found]))
            del buf[:found]
            self._marker = None
            self._scan = 0
        return out
