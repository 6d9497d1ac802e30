"""Header field names and the structured header values a proxy reads.

Everything here works on one already-unfolded header value (str) and raises
SipParseError for malformed text.  Scanners are single passes over the text.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional, Union

from sipws.sip.errors import SipParseError
from sipws.sip.limits import DEFAULT_LIMITS, Limits
from sipws.sip.uri import SipUri, check_absolute_uri, parse_uri

#: Compact forms (RFC 3261 §7.3.3, RFC 3265, RFC 3515, RFC 3892, RFC 4028,
#: RFC 4474, RFC 3841) -> full names.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

#: Headers whose grammar is a comma-separated list (values may be split and
#: combined, RFC 3261 §7.3.1).  Authorization-like headers are not here.
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "path", "service-route", "contact",
        "supported", "require", "proxy-require", "unsupported", "allow",
        "allow-events", "accept", "accept-encoding", "accept-language",
        "content-encoding", "content-language", "in-reply-to", "alert-info",
        "call-info", "error-info", "warning", "p-associated-uri",
        "security-client", "security-server", "security-verify",
        "accept-contact", "reject-contact", "request-disposition",
        "history-info", "reason", "p-asserted-identity",
        "p-preferred-identity", "privacy",
    }
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A display name without quotes: tokens separated by LWS (non-ASCII allowed
# on purpose: some clients write UTF-8 names unquoted).
_DISPLAY_CHAR = r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]"
_BARE_DISPLAY_RE = re.compile(rf"{_DISPLAY_CHAR}++(?:[ \t]++{_DISPLAY_CHAR}++)*+")
# gen-value = token / host / quoted-string (quoted handled separately)
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+|\[[0-9A-Fa-f:.]+\]")
_WS = " \t"

_CANON_CACHE: dict[str, str] = {}
_CANON_CACHE_MAX = 4096
_KNOWN_CASE = {name.lower(): name for name in COMPACT_FORMS.values()}
_KNOWN_CASE.update({n: n.title() for n in ("route", "record-route", "path", "max-forwards",
                                           "cseq", "require", "proxy-require", "expires")})
_KNOWN_CASE.update({"cseq": "CSeq", "www-authenticate": "WWW-Authenticate"})


def header_key(name: str) -> str:
    """Lookup key for a header name: lowercase full name (compact expanded).

    Raises SipParseError when ``name`` is not a token (after dropping the
    white space allowed before the colon).
    """
    key = _CANON_CACHE.get(name)
    if key is not None:
        return key
    stripped = name.rstrip(_WS)
    if not stripped or not _TOKEN_RE.fullmatch(stripped):
        raise SipParseError("bad header name")
    lower = stripped.lower()
    full = COMPACT_FORMS.get(lower)
    key = full.lower() if full is not None else lower
    if len(_CANON_CACHE) < _CANON_CACHE_MAX:
        _CANON_CACHE[name] = key
    return key


def display_name_for(key: str) -> str:
    """A conventional spelling for a header key (for headers we add)."""
    known = _KNOWN_CASE.get(key)
    if known:
        return known
    return "-".join(part.capitalize() for part in key.split("-"))


def is_token(text: str) -> bool:
    return bool(text) and _TOKEN_RE.fullmatch(text) is not None


def split_comma(text: str) -> list[str]:
    """Split a list header value at top-level commas.

    Commas inside quoted strings and inside <...> do not split.  Empty
    elements (``a,,b``) are dropped, as RFC 7230-style lists allow; the
    elements are returned stripped.  Unbalanced quotes or brackets raise.
    """
    if '"' not in text and "<" not in text:
        if ">" in text:
            raise SipParseError("unbalanced angle brackets")
        return [p for p in (part.strip(_WS) for part in text.split(",")) if p]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_angle = False
    while i < n:
        ch = text[i]
        if ch == '"' and not in_angle:
            i = _skip_quoted(text, i)
            continue
        if ch == "<":
            if in_angle:
                raise SipParseError("nested angle brackets")
            in_angle = True
        elif ch == ">":
            if not in_angle:
                raise SipParseError("unbalanced angle brackets")
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_angle:
        raise SipParseError("unbalanced angle brackets")
    parts.append(text[start:])
    return [p for p in (part.strip(_WS) for part in parts) if p]


def _skip_quoted(text: str, i: int) -> int:
    """Index just past the quoted string starting at text[i] == '"'."""
    n = len(text)
    i += 1
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    raise SipParseError("unterminated quoted string")


def _unquote(quoted: str) -> str:
    """'"a\\"b"' -> 'a"b' (quoted-pair resolved)."""
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\" and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def quote(text: str) -> str:
    """Format a quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_semi(text: str) -> list[str]:
    """Split at ';' outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    parts = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i = _skip_quoted(text, i)
            continue
        if ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_params(items: list[str], value_re: "re.Pattern[str]" = _GEN_VALUE_RE
                 ) -> dict[str, Optional[str]]:
    """[' tag=1', 'lr', 'x="a b"'] -> {'tag': '1', 'lr': None, 'x': '"a b"'}.

    Names are lowercased; values are kept as written (quoted strings with
    their quotes) so that formatting gives them back unchanged.
    """
    params: dict[str, Optional[str]] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip(_WS)
        if not name or not _TOKEN_RE.fullmatch(name):
            raise SipParseError("bad parameter name")
        if eq:
            value = value.strip(_WS)
            if value.startswith('"'):
                if len(value) < 2 or _skip_quoted(value, 0) != len(value):
                    raise SipParseError("bad quoted parameter value")
            elif not value_re.fullmatch(value):
                raise SipParseError("bad parameter value")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, Optional[str]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------- Via

_VIA_RE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]++)[ \t]*+/[ \t]*+([A-Za-z0-9\-.!%*_+`'~]++)[ \t]*+/[ \t]*+"
    r"([A-Za-z0-9\-.!%*_+`'~]++)[ \t]++"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-.]++)(?:[ \t]*+:[ \t]*+([0-9]{1,5}))?+[ \t]*+"
)
# Via parameter values: gen-value, plus a bare IPv6 address (received=).
_VIA_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+")


class Via:
    """One Via value (RFC 3261 §20.42).

    ``rport`` is None when absent, True when present without a value, or the
    port number.  ``params`` holds every parameter (lowercase names; None for
    flags) in order, including branch, received and rport.
    """

    __slots__ = ("protocol", "transport", "host", "port", "params", "_text")

    def __init__(self, transport: str, host: str, port: Optional[int] = None,
                 params: Optional[dict[str, Optional[str]]] = None,
                 protocol: str = "SIP/2.0") -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = dict(params) if params else {}
        self._text: Optional[str] = None

    @property
    def branch(self) -> Optional[str]:
        return self.params.get("branch")

    @property
    def received(self) -> Optional[str]:
        return self.params.get("received")

    @property
    def rport(self) -> Union[None, bool, int]:
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        return True if value is None else int(value)

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        # Via objects are not changed once made (messages share them): format once.
        text = self._text
        if text is None:
            text = self._text = (f"{self.protocol}/{self.transport} {self.sent_by}"
                                 f"{format_params(self.params)}")
        return text

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return str(self).lower() == str(other).lower()

    __hash__ = None  # type: ignore[assignment]


def parse_via(text: str) -> Via:
    """Parse one Via value (no commas)."""
    parts = _split_semi(text.strip(_WS))
    m = _VIA_RE.fullmatch(parts[0])
    if m is None:
        raise SipParseError("malformed Via")
    name, version, transport, host, port = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipParseError("unsupported Via protocol")
    if host.startswith("["):
        host = _check_ip6(host[1:-1])
    else:
        host = host.lower()
    via = Via.__new__(Via)
    via.protocol = "SIP/2.0"
    via.transport = transport.upper()
    via.host = host
    via.port = _port(port) if port is not None else None
    via.params = parse_params(parts[1:], _VIA_VALUE_RE) if len(parts) > 1 else {}
    via._text = None
    rport = via.params.get("rport", "")
    if rport and (not rport.isdigit() or len(rport) > 5 or int(rport) > 65535):
        raise SipParseError("bad rport in Via")
    if "branch" in via.params and not via.params["branch"]:
        raise SipParseError("empty branch in Via")
    return via


def _check_ip6(text: str) -> str:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise SipParseError("bad IPv6 address") from None
    return text.lower()


def _port(text: str) -> int:
    value = int(text)
    if value > 65535:
        raise SipParseError("port out of range")
    return value


# ---------------------------------------------------------------- NameAddr


class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact,
    Route, Record-Route, Path ...), or the Contact ``*``.

    ``uri`` is a SipUri for sip:/sips: and None for other schemes, whose text
    is always in ``raw_uri``.  ``params`` are the header parameters (after
    the URI), lowercase names, values as written.
    """

    __slots__ = ("display", "raw_uri", "params", "is_star", "_uri", "_limits")

    def __init__(self, uri: Union[SipUri, str, None] = None, display: Optional[str] = None,
                 params: Optional[dict[str, Optional[str]]] = None, is_star: bool = False) -> None:
        self.display = display
        self.raw_uri = str(uri) if uri is not None else ""
        self._uri = uri if isinstance(uri, SipUri) else None
        self.params = dict(params) if params else {}
        self.is_star = is_star
        self._limits = DEFAULT_LIMITS

    @property
    def uri(self) -> Optional[SipUri]:
        if self._uri is None and not self.is_star:
            scheme = self.raw_uri[:5].lower()
            if scheme.startswith("sip:") or scheme.startswith("sips:"):
                self._uri = parse_uri(self.raw_uri, self._limits)
        return self._uri

    @property
    def tag(self) -> Optional[str]:
        return self.params.get("tag")

    def with_params(self, **params: Optional[str]) -> "NameAddr":
        new = NameAddr(self._uri if self._uri is not None else self.raw_uri,
                       self.display, self.params, self.is_star)
        new.raw_uri = self.raw_uri
        new.params.update(params)
        return new

    def __str__(self) -> str:
        if self.is_star:
            return "*"
        if self.display is not None:
            head = f"{quote(self.display)} <{self.raw_uri}>"
        else:
            head = f"<{self.raw_uri}>"
        return head + format_params(self.params)

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.display, self.raw_uri, self.params, self.is_star) == (
            other.display, other.raw_uri, other.params, other.is_star)

    __hash__ = None  # type: ignore[assignment]


def parse_name_addr(text: str, limits: Limits = DEFAULT_LIMITS,
                    allow_star: bool = False) -> NameAddr:
    """Parse one name-addr / addr-spec with parameters."""
    text = text.strip(_WS)
    na = NameAddr.__new__(NameAddr)
    na._limits = limits
    na._uri = None
    na.is_star = False
    na.display = None
    if text == "*":
        if not allow_star:
            raise SipParseError("'*' not allowed here")
        na.raw_uri = ""
        na.params = {}
        na.is_star = True
        return na
    if text.startswith('"'):
        end = _skip_quoted(text, 0)
        na.display = _unquote(text[:end])
        lt = end
        while lt < len(text) and text[lt] in _WS:
            lt += 1
        if lt >= len(text) or text[lt] != "<":
            raise SipParseError("quoted display name without <URI>")
    else:
        lt = text.find("<")
        if lt > 0:
            display = text[:lt].rstrip(_WS)
            if not _BARE_DISPLAY_RE.fullmatch(display):
                raise SipParseError("bad display name")
            na.display = display
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("missing '>'")
        raw_uri = text[lt + 1:gt]
        rest = text[gt + 1:].lstrip(_WS)
    else:
        if ">" in text:
            raise SipParseError("unbalanced angle brackets")
        semi = text.find(";")
        raw_uri = text if semi < 0 else text[:semi]
        raw_uri = raw_uri.rstrip(_WS)
        rest = "" if semi < 0 else text[semi:]
        # RFC 3261 §20.10: an addr-spec containing ',' '?' or ';' needs <>.
        if "," in raw_uri or "?" in raw_uri:
            raise SipParseError("URI with ',' or '?' must be in <>")
    if not raw_uri:
        raise SipParseError("empty URI")
    head = raw_uri[:5].lower()
    if head.startswith("sip:") or head == "sips:":
        na._uri = parse_uri(raw_uri, limits)  # validates it too: parsed once
    else:
        check_absolute_uri(raw_uri, limits)
    na.raw_uri = raw_uri
    if rest:
        if rest[0] != ";":
            raise SipParseError("junk after URI")
        na.params = parse_params(_split_semi(rest)[1:])
    else:
        na.params = {}
    return na


def parse_cseq(text: str) -> tuple[int, str]:
    """'314159 INVITE' -> (314159, 'INVITE'); number < 2**32."""
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise SipParseError("malformed CSeq")
    num, method = parts
    method = method.strip(_WS)
    if not num.isdigit() or not num.isascii() or not _TOKEN_RE.fullmatch(method):
        raise SipParseError("malformed CSeq")
    if len(num) > 10 or int(num) > 0xFFFFFFFF:
        raise SipParseError("CSeq number too large")
    return int(num), method
