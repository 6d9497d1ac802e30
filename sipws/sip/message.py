"""SIP messages: parse once, read lazily, edit by splicing header lines.

A parsed message keeps its start line, its header fields as the text lines
they were written as (folding included) and its body.  Structured values
(Via, Contact, URIs ...) are parsed only when asked for.  Edits replace,
insert or delete whole header fields; everything not edited stays byte for
byte, and an untouched message serializes to exactly the input bytes.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

from sipws.sip.errors import SipError, SipParseError
from sipws.sip.headers import (
    _CANON_CACHE,
    LIST_HEADERS,
    NameAddr,
    Via,
    display_name_for,
    header_key,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_comma,
    _split_semi,
)
from sipws.sip.limits import DEFAULT_LIMITS, Limits
from sipws.sip.uri import SipUri, check_absolute_uri, parse_uri
from sipws.sip.validate import (
    FAST_NAME_ADDR,
    FAST_PATH_MAX,
    FAST_RURI,
    FAST_VIA,
    check_name_addr,
    check_name_addrs,
    check_vias,
)

SIP_VERSION = "SIP/2.0"
#: Max-Forwards value assumed when the header is absent (RFC 3261 §8.1.1.6).
DEFAULT_MAX_FORWARDS = 70
#: Largest Max-Forwards accepted (the field is 0-255 in practice; RFC 4475
#: §3.1.2.5 treats 300 as an overlarge value to reject).
MAX_MAX_FORWARDS = 255
#: Digits accepted in Content-Length (anything longer is over any limit).
_MAX_CL_DIGITS = 10

# What a header value we write must never contain (header injection).
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
# received= takes an IPv4/IPv6 address (token characters and ':' cover both).
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:]+")
# Header names this module writes itself (no need to validate them).
_OWN_NAMES = frozenset({"Via", "Record-Route", "Path", "Max-Forwards", "Content-Length",
                        "Content-Type"})
# The common request line: token method, a simple sip/sips Request-URI.
_REQUEST_LINE_RE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]++) (" + FAST_RURI.pattern + r") SIP/2\.0")
# callid = word [ "@" word ] (RFC 3261 §25.1)
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]++"
_CALL_ID_RE = re.compile(_WORD + "(?:@" + _WORD + ")?")
# The name of each header field: text after a CRLF not followed by SP/HTAB,
# up to the first colon on that line.
_NAME_RE = re.compile(r"\r\n([^ \t:\r\n][^:\r\n]*+):")
_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
_WS = " \t"

_REQUIRED = frozenset({"from", "to", "call-id", "cseq", "via"})
# Bytes allowed in a header block besides CR LF pairs: HTAB, printable ASCII
# and every byte >= 0x80 (UTF-8 validity is checked by decoding).
_PRINTABLE = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_CRLF = b"\r\n"
_BARE_CRLF_RE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# A control byte not escaped by a backslash (an escaped backslash before it
# does not count: "\\\\" then NUL is still a bare NUL).
_BARE_CTL_RE = re.compile(rb"(?:^|[^\\])(?:\\\\)*[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards")
(_K_VIA, _K_NAME_ADDRS, _K_NAME_ADDR, _K_CSEQ, _K_CALL_ID, _K_MAX_FORWARDS,
 _K_CONTENT_LENGTH) = range(7)
# Header fields parse() checks eagerly, and how.
_CHECKED = {
    "via": _K_VIA,
    "contact": _K_NAME_ADDRS, "route": _K_NAME_ADDRS, "record-route": _K_NAME_ADDRS,
    "path": _K_NAME_ADDRS,
    "from": _K_NAME_ADDR, "to": _K_NAME_ADDR,
    "cseq": _K_CSEQ, "call-id": _K_CALL_ID, "max-forwards": _K_MAX_FORWARDS,
    "content-length": _K_CONTENT_LENGTH,
}

#: Distinct header values remembered as valid, per kind and per Limits: a
#: dialog repeats its From, To, Call-ID, Contact and route set in every
#: message, so each distinct text is checked once, not once per message.
VALID_CACHE_SIZE = 8192
_VALID: dict[Limits, tuple[set[str], ...]] = {}


#: The Limits asked for last and its sets: a process parses with one Limits almost
#: always, and hashing a frozen dataclass (all its fields) costs more than the lookup.
_LAST_VALID: list = [None, None]


def _valid_sets(limits: Limits) -> tuple[set[str], ...]:
    last = _LAST_VALID
    if last[0] is limits:
        return last[1]
    sets = _VALID.get(limits)
    if sets is None:
        if len(_VALID) >= 16:  # a handful of Limits per process; bounded anyway
            _VALID.clear()
        sets = _VALID[limits] = tuple(set() for _ in range(_K_CONTENT_LENGTH + 1))
    last[0], last[1] = limits, sets
    return sets


REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 429: "Provide Referrer Identity", 430: "Flow Failed",
    439: "First Hop Lacks Outbound Support", 440: "Max-Breadth Exceeded",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def _value_of(field: str) -> str:
    """The unfolded, stripped value of one raw header field."""
    value = field[field.index(":") + 1:]
    if "\r\n" in value:
        value = _FOLD_RE.sub(" ", value)
    return value.strip(_WS)


def _check_value(value: str) -> None:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise SipParseError("header value contains CR, LF or NUL")


class Message:
    """Common part of Request and Response."""

    __slots__ = ("_start", "_keys", "_fields", "_body", "_raw", "_limits",
                 "_vias", "_top", "_nvias", "_cseq", "__weakref__")

    is_request: bool = False

    # ------------------------------------------------------------- reading

    def _index(self, name: str) -> int:
        key = header_key(name)
        try:
            return self._keys.index(key)
        except ValueError:
            return -1

    def has(self, name: str) -> bool:
        """Is there at least one header field of this name (any form)?"""
        return header_key(name) in self._keys

    def get(self, name: str) -> Optional[str]:
        """The first value of a header (first list element for list headers)."""
        key = header_key(name)
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        value = _value_of(self._fields[i])
        if key in LIST_HEADERS and "," in value:
            parts = split_comma(value)
            return parts[0] if parts else ""
        return value

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, in order, list headers split at commas."""
        key = header_key(name)
        split = key in LIST_HEADERS
        out: list[str] = []
        for k, field in zip(self._keys, self._fields):
            if k == key:
                value = _value_of(field)
                if split and "," in value:
                    out.extend(split_comma(value))
                elif not split or value:
                    out.append(value)
        return out

    def header_fields(self) -> list[tuple[str, str]]:
        """(name as written, unfolded value) for every header field, in order."""
        return [(f[:f.index(":")].rstrip(_WS), _value_of(f)) for f in self._fields]

    @property
    def vias(self) -> list[Via]:
        if self._vias is None:
            self._vias = [parse_via(v) for v in self.get_all("via")]
            self._nvias = len(self._vias)
            if self._vias:
                self._top = self._vias[0]
        return self._vias

    @property
    def top_via(self) -> Optional[Via]:
        """The first Via, parsed once per message (the others are not parsed)."""
        top = self._top
        if top is not None:
            return top
        if self._vias is not None:
            return self._vias[0] if self._vias else None
        i = self._index("via")
        if i < 0:
            return None
        top = self._top = parse_via(self._first_value(i)[0])
        return top

    def raw_fields(self, keys: frozenset[str]) -> list[str]:
        """The header fields of these keys exactly as written (name included), in
        order: for hashing what a message carries without parsing values."""
        return [f for k, f in zip(self._keys, self._fields) if k in keys]

    def top_via_text(self) -> Optional[str]:
        """The first Via value as written (nothing parsed)."""
        i = self._index("via")
        return None if i < 0 else self._first_value(i)[0]

    def use_top_via(self, via: Via) -> None:
        """Take ``via`` as the parsed first Via: the caller knows it is the same
        text (our own Via coming back in a response), so it is not parsed again."""
        self._top = via

    @property
    def via_count(self) -> int:
        """How many Via values (parse() counted them; nothing is parsed again)."""
        n = self._nvias
        if n is None:
            n = self._nvias = len(self.get_all("via"))
        return n

    def header_contains(self, name: str, text: str) -> bool:
        """Does any field of this name contain ``text`` as written (a cheap
        pre-check before parsing values)?"""
        key = header_key(name)
        return any(k == key and text in f for k, f in zip(self._keys, self._fields))

    def _name_addrs(self, name: str, allow_star: bool = False) -> list[NameAddr]:
        return [parse_name_addr(v, self._limits, allow_star) for v in self.get_all(name)]

    @property
    def routes(self) -> list[NameAddr]:
        return self._name_addrs("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._name_addrs("record-route")

    @property
    def paths(self) -> list[NameAddr]:
        return self._name_addrs("path")

    @property
    def contacts(self) -> list[NameAddr]:
        contacts = self._name_addrs("contact", allow_star=True)
        if len(contacts) > 1 and any(c.is_star for c in contacts):
            raise SipParseError("'*' Contact mixed with others")
        return contacts

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.get("from") or "", self._limits)

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.get("to") or "", self._limits)

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method), parsed once per message: a response's method, the
        transaction keys and the proxy's checks all ask for it."""
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = parse_cseq(self.get("cseq") or "")
        return cseq

    @property
    def max_forwards(self) -> Optional[int]:
        value = self.get("max-forwards")
        return None if value is None else int(value)

    @property
    def content_length(self) -> Optional[int]:
        value = self.get("content-length")
        return None if value is None else int(value)

    @property
    def supported(self) -> list[str]:
        return self.get_all("supported")

    @property
    def require(self) -> list[str]:
        return self.get_all("require")

    @property
    def proxy_require(self) -> list[str]:
        return self.get_all("proxy-require")

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def start_line(self) -> str:
        return self._start

    # ----------------------------------------------------------- equality

    def _canonical(self) -> tuple:
        return (self.is_request, self._start_parts(),
                [(k, " ".join(_value_of(f).split())) for k, f in zip(self._keys, self._fields)],
                self._body)

    def _start_parts(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        """Same kind, start line, header names (compact = full) and values
        (white space normalised), same body."""
        if not isinstance(other, Message):
            return NotImplemented
        return self._canonical() == other._canonical()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------- editing

    def _touch(self) -> None:
        self._raw = None
        self._vias = None
        self._top = None
        self._nvias = None
        self._cseq = None

    def _first_value(self, i: int) -> tuple[str, Optional[str]]:
        """(first value, field with that value removed or None if it was the only one)."""
        field = self._fields[i]
        value = _value_of(field)
        if "," not in value:
            return value, None
        parts = split_comma(value)
        if len(parts) <= 1:
            return (parts[0] if parts else value), None
        name = field[:field.index(":")]
        return parts[0], f"{name}: {', '.join(parts[1:])}"

    def _insert_field(self, key: str, name: str, value: str, at_front: bool) -> None:
        if _BAD_VALUE_RE.search(value) is not None:
            raise SipParseError("header value contains CR, LF or NUL")
        if name not in _OWN_NAMES and not is_token(name):
            raise SipParseError("bad header name")
        keys = self._keys
        if at_front and key in keys:
            i = keys.index(key)
        else:
            i = 0 if at_front else len(keys)
        keys.insert(i, key)
        self._fields.insert(i, f"{name}: {value}")
        self._raw = None
        if key == "via":
            self._vias = None
            self._top = None
            self._nvias = None
        elif key == "cseq":
            self._cseq = None

    def _pop_first(self, key: str) -> str:
        try:
            i = self._keys.index(key)
        except ValueError:
            raise SipError(f"no {display_name_for(key)} header") from None
        value, rest = self._first_value(i)
        if rest is None:
            del self._keys[i]
            del self._fields[i]
        else:
            self._fields[i] = rest
        if key == "via" or key == "cseq":
            self._touch()
        else:
            self._raw = None  # a Route popped: the parsed Vias and CSeq still hold
        return value

    def push_via(self, value: Union[str, Via]) -> None:
        """Insert a Via value on top (a Via object becomes the cached top Via)."""
        nvias = self._nvias
        self._insert_field("via", "Via", str(value), True)
        if nvias is not None:
            self._nvias = nvias + 1
        if isinstance(value, Via):
            self._top = value

    def pop_via(self) -> str:
        """Remove and return the top Via value."""
        return self._pop_first("via")

    def set_top_via_received(self, received: Optional[str], rport: Optional[int]) -> None:
        """Set received= and rport= on the top Via (RFC 3261 §18.2.1, RFC 3581).

        ``None`` leaves that parameter as it is.  Existing parameters keep
        their place and spelling; new ones are appended.
        """
        keys = self._keys
        if "via" not in keys:
            raise SipError("no Via header")
        i = keys.index("via")
        new = {}
        if received is not None:
            if _PARAM_VALUE_RE.fullmatch(received) is None:
                raise SipParseError("bad received value")
            new["received"] = "received=" + received
        if rport is not None:
            new["rport"] = f"rport={int(rport)}"
        field = self._fields[i]
        if "," in field or '"' in field:
            # Several values in the field, or quoted parameters: the general way.
            first, rest = self._first_value(i)
            name = field[:field.index(":")]
            head = f"{name}: {first}"
            tail = "" if rest is None else ", " + rest[rest.index(":") + 2:]
            parts = _split_semi(head)
        else:
            parts = field.split(";")
            tail = ""
        for j in range(1, len(parts)):
            pname = parts[j].partition("=")[0].strip().lower()  # also folding CRLFs
            if pname in new:
                parts[j] = new.pop(pname)
        if new:
            parts.extend(new.values())
        self._fields[i] = ";".join(parts) + tail
        self._raw = None
        self._vias = None
        self._top = None  # the count stays

    def push_record_route(self, value: str) -> None:
        self._insert_field("record-route", "Record-Route", str(value), True)

    def push_path(self, value: str) -> None:
        self._insert_field("path", "Path", str(value), True)

    def pop_route(self) -> str:
        """Remove and return the first Route value."""
        return self._pop_first("route")

    def decrement_max_forwards(self) -> int:
        """Max-Forwards minus one (an absent header counts as 70); the new value."""
        keys = self._keys
        if "max-forwards" not in keys:
            keys.append("max-forwards")
            self._fields.append(f"Max-Forwards: {DEFAULT_MAX_FORWARDS - 1}")
            self._raw = None
            return DEFAULT_MAX_FORWARDS - 1
        i = keys.index("max-forwards")
        field = self._fields[i]
        colon = field.index(":")
        current = int(field[colon + 1:])  # validated by parse(); int() skips LWS
        if current <= 0:
            raise SipError("Max-Forwards is already 0")
        current -= 1
        self._fields[i] = f"{field[:colon]}: {current}"
        self._raw = None
        return current

    def set_max_forwards(self, n: int) -> None:
        if not 0 <= n <= MAX_MAX_FORWARDS:
            raise SipParseError("Max-Forwards out of range")
        self.remove_header("max-forwards")
        self._insert_field("max-forwards", "Max-Forwards", str(n), False)

    def add_header(self, name: str, value: str) -> None:
        """Append a header field."""
        self._insert_field(header_key(name), name, value, False)

    def push_header(self, name: str, value: str) -> None:
        """Insert a field before the first of its name (or first of all)."""
        self._insert_field(header_key(name), name, value, True)

    def set_header(self, name: str, value: str) -> None:
        """Replace every field of this name with one (in the first one's place)."""
        key = header_key(name)
        _check_value(value)
        try:
            i = self._keys.index(key)
        except ValueError:
            self._insert_field(key, name, value, False)
            return
        self._fields[i] = f"{name}: {value}"
        j = len(self._keys) - 1
        while j > i:
            if self._keys[j] == key:
                del self._keys[j]
                del self._fields[j]
            j -= 1
        self._touch()

    def remove_header(self, name: str) -> int:
        """Remove every field of this name; how many were removed."""
        key = header_key(name)
        count = self._keys.count(key)
        if count:
            keep = [(k, f) for k, f in zip(self._keys, self._fields) if k != key]
            self._keys = [k for k, _ in keep]
            self._fields = [f for _, f in keep]
            self._touch()
        return count

    def set_body(self, data: bytes, content_type: Optional[str] = None) -> None:
        """Replace the body; Content-Length follows, Content-Type if given."""
        self._body = bytes(data)
        if content_type is not None:
            self.set_header("Content-Type", content_type)
        elif not data:
            self.remove_header("content-type")
        self.set_header("Content-Length", str(len(self._body)))

    def ensure_content_length(self) -> None:
        """Make Content-Length present and right (needed on stream transports)."""
        i = self._index("content-length")
        if i < 0 or int(_value_of(self._fields[i])) != len(self._body):
            self.set_header("Content-Length", str(len(self._body)))

    # ------------------------------------------------------- serializing

    def __bytes__(self) -> bytes:
        raw = self._raw
        if raw is not None:
            return raw
        if "content-length" not in self._keys:
            self._keys.append("content-length")
            self._fields.append(f"Content-Length: {len(self._body)}")
        head = "\r\n".join([self._start, *self._fields])
        raw = head.encode("utf-8") + b"\r\n\r\n" + self._body
        self._raw = raw
        return raw

    def __len__(self) -> int:
        return len(bytes(self))

    def copy(self) -> "Message":
        new = type(self).__new__(type(self))
        new._start = self._start
        new._keys = list(self._keys)
        new._fields = list(self._fields)
        new._body = self._body
        new._raw = self._raw
        new._limits = self._limits
        # Same fields: the parsed Vias (never changed in place) are shared.
        new._vias = self._vias
        new._top = self._top
        new._nvias = self._nvias
        new._cseq = self._cseq
        new._init_start_copy(self)
        return new

    def _init_start_copy(self, other: "Message") -> None:
        raise NotImplementedError


class Request(Message):
    """A SIP request: ``method``, ``uri`` (raw text), ``request_uri`` (parsed)."""

    __slots__ = ("method", "uri", "_ruri")
    is_request = True

    @property
    def request_uri(self) -> SipUri:
        """The Request-URI parsed; SipParseError (416) for non-SIP schemes."""
        if self._ruri is None:
            self._ruri = parse_uri(self.uri, self._limits)
        return self._ruri

    def set_request_uri(self, uri: Union[str, SipUri]) -> None:
        text = str(uri)
        check_absolute_uri(text, self._limits)
        if " " in text:
            raise SipParseError("space in Request-URI")
        self.uri = text
        self._ruri = uri if isinstance(uri, SipUri) else None
        self._start = f"{self.method} {text} {SIP_VERSION}"
        self._touch()

    def _start_parts(self) -> tuple:
        return (self.method, self.uri)

    def _init_start_copy(self, other: "Message") -> None:
        self.method = other.method  # type: ignore[attr-defined]
        self.uri = other.uri  # type: ignore[attr-defined]
        self._ruri = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response: ``status`` and ``reason``; ``method`` from CSeq."""

    __slots__ = ("status", "reason")
    is_request = False

    @property
    def method(self) -> str:
        return self.cseq[1]

    def _start_parts(self) -> tuple:
        return (self.status, self.reason)

    def _init_start_copy(self, other: "Message") -> None:
        self.status = other.status  # type: ignore[attr-defined]
        self.reason = other.reason  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ------------------------------------------------------------------ parse


def is_keepalive(data: bytes) -> bool:
    """Is this datagram / WebSocket message only CRLFs (a keep-alive, RFC 5626)?

    Such data is not a SIP message: ``parse()`` would reject it as empty.
    """
    if not data or data[:1] not in (b"\r", b"\n"):
        return False  # the common case, decided without copying the message
    return not bytes(data).strip(b"\r\n")



def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Union[Request, Response]:
    """Parse one complete SIP message (a WebSocket message or a datagram).

    Leading CRLFs are ignored.  Without Content-Length the body is the rest
    of ``data``; with it, the body is that many bytes, which must be there,
    and bytes beyond it are discarded (RFC 3261 §18.3).  Raises
    SipParseError, and nothing else, for malformed or over-limit input.
    """
    if not isinstance(data, bytes):
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError("parse() takes bytes")
    if len(data) > limits.max_message_size:
        raise SipParseError("message too large", 513)
    if data[:1] == b"\r" or data[:1] == b"\n":
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if not data:
            raise SipParseError("empty message")
        raise SipParseError("no end of header block")
    head = data[:end]
    # Only CRLF pairs and HTAB may remain once printable bytes are removed.
    ctl = head.translate(None, _PRINTABLE)
    if ctl != _CRLF * (len(ctl) >> 1):
        _check_controls(head)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header block is not UTF-8") from None
    fields = text.split("\r\n")
    start = fields[0]
    del fields[0]
    folded = False
    if len(fields) > limits.max_headers:
        fields = _unfold(fields)  # the limit counts fields, not lines
        folded = True
        if len(fields) > limits.max_headers:
            raise SipParseError("too many header fields")
    # Every field's name, in one C-level pass.  Continuation lines (folding)
    # and lines without a colon have no match: the counts then differ.
    names = _NAME_RE.findall(text)
    if len(names) != len(fields):
        if not folded:
            fields = _unfold(fields)
            folded = True
        if len(names) != len(fields):
            raise SipParseError("header line without name and colon")
    if end > limits.max_header_line:
        # Only a header block longer than the limit can hold a field over it;
        # the limit counts bytes, folded continuation lines included.
        line_limit = limits.max_header_line
        if len(start.encode()) > line_limit or any(
                len(f) * 4 > line_limit and len(f.encode()) > line_limit for f in fields):
            raise SipParseError("header field too long")
    keys = list(map(_CANON_CACHE.get, names))
    if None in keys:
        keys = [k if k is not None else header_key(n) for k, n in zip(keys, names)]
    # The start line first: a wrong SIP version deserves its own 505.
    m = _REQUEST_LINE_RE.fullmatch(start)
    if m is not None and len(start) < limits.max_uri_length:
        msg: Union[Request, Response] = Request.__new__(Request)
        msg.method, msg.uri = m.groups()
        msg._ruri = None
        is_request = True
    elif start[:4].upper() == "SIP/":
        msg = _parse_status_line(start)
        is_request = False
    else:
        msg = _parse_request_line(start, limits)
        is_request = True
    if not _REQUIRED.issubset(keys):
        missing = sorted(_REQUIRED.difference(keys))
        raise SipParseError(f"missing {', '.join(display_name_for(k) for k in missing)}")

    # One pass over the fields a proxy relies on.
    body_start = end + 4
    length = -1
    nvias = 0
    cseq_method = ""
    checked_get = _CHECKED.get
    # A value no longer than the URI limit cannot hold a URI over it.
    fast_max = min(FAST_PATH_MAX, limits.max_uri_length)
    valid = _valid_sets(limits)
    for key, field, name in zip(keys, fields, names):
        kind = checked_get(key)
        if kind is None:
            continue
        value = field[len(name) + 1:].strip(_WS)
        if folded and "\r\n" in value:
            value = _FOLD_RE.sub(" ", value).strip(_WS)
        seen = valid[kind]
        if value in seen:  # checked before (never a list: those are not remembered)
            if kind == _K_VIA:
                nvias += 1
            elif kind == _K_CSEQ:
                cseq_method = value.split(None, 1)[1].strip(_WS)
            elif kind == _K_CONTENT_LENGTH:
                n = int(value)
                if length >= 0 and n != length:
                    raise SipParseError("conflicting Content-Length values")
                length = n
            continue
        if kind == _K_VIA:
            if "," in value or len(value) > FAST_PATH_MAX or "rport=" in value or \
                    FAST_VIA.fullmatch(value) is None:
                nvias += check_vias(value)
            else:
                nvias += 1
        elif kind == _K_NAME_ADDR:
            if len(value) > fast_max or FAST_NAME_ADDR.fullmatch(value) is None:
                check_name_addr(value, limits)
        elif kind == _K_CSEQ:
            cseq_method = parse_cseq(value)[1]
        elif kind == _K_CALL_ID:
            if _CALL_ID_RE.fullmatch(value) is None:
                raise SipParseError("bad Call-ID")
        elif kind == _K_MAX_FORWARDS:
            if (not value.isdigit() or not value.isascii() or len(value) > _MAX_CL_DIGITS
                    or int(value) > MAX_MAX_FORWARDS):
                raise SipParseError("bad Max-Forwards")
        elif kind == _K_NAME_ADDRS:
            if ("," in value or len(value) > fast_max
                    or FAST_NAME_ADDR.fullmatch(value) is None):
                check_name_addrs(value, limits, key == "contact")
        elif kind == _K_CONTENT_LENGTH:
            if not value.isdigit() or not value.isascii() or len(value) > _MAX_CL_DIGITS:
                raise SipParseError("bad Content-Length")
            n = int(value)
            if length >= 0 and n != length:
                raise SipParseError("conflicting Content-Length values")
            length = n
        if "," not in value:
            if len(seen) >= VALID_CACHE_SIZE:
                seen.clear()
            seen.add(value)
    if nvias > limits.max_vias:
        raise SipParseError("too many Via values")
    for key in _SINGLE:
        if keys.count(key) > 1:
            raise SipParseError(f"more than one {display_name_for(key)}")

    # Body framing.
    if length >= 0:
        if body_start + length > len(data):
            raise SipParseError("Content-Length larger than the message body")
        if body_start + length < len(data):
            data = data[:body_start + length]
    body = data[body_start:]

    if is_request and cseq_method != msg.method:
        raise SipParseError("CSeq method does not match the request method")
    msg._start = start
    msg._keys = keys
    msg._fields = fields
    msg._body = body
    msg._raw = data
    msg._limits = limits
    msg._vias = None
    msg._top = None
    msg._nvias = nvias
    msg._cseq = None
    return msg


def _check_controls(head: bytes) -> None:
    """Slow path of the control-character check.

    CR and LF must come as CRLF pairs; other controls (NUL, BEL, DEL ...)
    are allowed only as the second byte of a quoted-pair (RFC 3261 §25.1,
    RFC 4475 §3.1.1.2), never bare.
    """
    if _BARE_CRLF_RE.search(head) is not None:
        raise SipParseError("bare CR or LF in header block")
    if _BARE_CTL_RE.search(head) is not None:
        raise SipParseError("control character in header block")


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (starting with SP/HTAB) to their field."""
    fields: list[str] = []
    for line in lines:
        c0 = line[:1]
        if c0 == " " or c0 == "\t":
            if not fields:
                raise SipParseError("continuation line before first header")
            fields[-1] = fields[-1] + "\r\n" + line
        else:
            fields.append(line)
    return fields


def _parse_request_line(start: str, limits: Limits) -> Request:
    parts = start.split(" ")
    if len(parts) != 3:
        raise SipParseError("malformed request line")
    method, uri, version = parts
    if not is_token(method):
        raise SipParseError("bad method")
    if version != SIP_VERSION:
        if version.upper() == SIP_VERSION:
            pass
        elif _VERSION_RE.fullmatch(version):
            raise SipParseError("unsupported SIP version", 505)
        else:
            raise SipParseError("malformed request line")
    if len(uri) > limits.max_uri_length:
        raise SipParseError("Request-URI too long", 414)
    if FAST_RURI.fullmatch(uri) is None:
        scheme = check_absolute_uri(uri, limits)
        if (scheme == "sip" or scheme == "sips") and parse_uri(uri, limits).headers:
            # RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
            raise SipParseError("headers in Request-URI")
    req = Request.__new__(Request)
    req.method = method
    req.uri = uri
    req._ruri = None
    return req


def _parse_status_line(start: str) -> Response:
    code = start[8:11]
    if start[:8] == "SIP/2.0 " and len(code) == 3 and start[11:12] in (" ", "") \
            and code.isdigit() and code.isascii() and code[0] in "123456":
        # The usual form, decided without splitting (same result as below).
        resp = Response.__new__(Response)
        resp.status = int(code)
        resp.reason = start[12:]
        return resp
    version, _, rest = start.partition(" ")
    if version.upper() != SIP_VERSION:
        if _VERSION_RE.fullmatch(version):
            raise SipParseError("unsupported SIP version", 505)
        raise SipParseError("malformed status line")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
        raise SipParseError("bad status code")
    resp = Response.__new__(Response)
    resp.status = int(code)
    resp.reason = reason
    return resp


# ---------------------------------------------------------- make_response


def make_response(request: Request, status: int, reason: Optional[str] = None,
                  to_tag: Optional[str] = None,
                  extra_headers: Iterable[tuple[str, str]] = ()) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2).

    Via fields, From, To, Call-ID and CSeq are copied; a To-tag is added
    when given, the status is above 100 and To has none.  Content-Length: 0.
    """
    if not 100 <= status <= 699:
        raise SipError(f"bad status code {status}")
    if reason is None:
        reason = REASON_PHRASES.get(status, "Unknown")
    _check_value(reason)
    keys: list[str] = []
    fields: list[str] = []
    for k, field in zip(request._keys, request._fields):
        if k == "via":
            keys.append(k)
            fields.append(field)
    for key in ("from", "to", "call-id", "cseq"):
        i = request._keys.index(key)
        field = request._fields[i]
        if key == "to" and to_tag and status > 100:
            value = _value_of(field)
            if parse_name_addr(value, request._limits).tag is None:
                field = f"{field[:field.index(':')]}: {value};tag={to_tag}"
        keys.append(key)
        fields.append(field)
    for name, value in extra_headers:
        _check_value(value)
        keys.append(header_key(name))
        fields.append(f"{name}: {value}")
    keys.append("content-length")
    fields.append("Content-Length: 0")
    resp = Response.__new__(Response)
    resp.status = status
    resp.reason = reason
    resp._start = f"{SIP_VERSION} {status} {reason}"
    resp._keys = keys
    resp._fields = fields
    resp._body = b""
    resp._raw = None
    resp._limits = request._limits
    # The same Via fields as the request's: its parsed Vias serve.
    resp._vias = request._vias
    resp._top = request._top
    resp._nvias = request._nvias
    resp._cseq = request._cseq  # the same CSeq field
    return resp
