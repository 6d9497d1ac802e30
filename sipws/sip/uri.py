"""SIP and SIPS URIs (RFC 3261 §19.1): parse, format, compare.

Parsing is one anchored regular expression whose character classes are
disjoint from the delimiters around them, so matching is linear in the input
(no catastrophic backtracking); the length limit is checked first.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional
from urllib.parse import unquote_to_bytes

from sipws.sip.errors import SipParseError
from sipws.sip.limits import DEFAULT_LIMITS, Limits

_ESC = r"%[0-9A-Fa-f]{2}"
_UNRES = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved )
_USER = rf"(?:[{_UNRES}&=+$,;?/]++|{_ESC})++"
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD = rf"(?:[{_UNRES}&=+$,]++|{_ESC})*+"
_HOST = r"\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9.\-]++"
_PARAMCHAR = rf"(?:[{_UNRES}\[\]/:&+$]|{_ESC})"
_HNVCHAR = rf"(?:[{_UNRES}\[\]/?:+$]|{_ESC})"

_SIP_URI_TAIL = (
    rf"(?P<host>{_HOST})"
    rf"(?::(?P<port>[0-9]{{1,5}}))?"
    rf"(?P<params>(?:;{_PARAMCHAR}++(?:={_PARAMCHAR}++)?+)*+)"
    rf"(?:\?(?P<headers>{_HNVCHAR}++={_HNVCHAR}*+(?:&{_HNVCHAR}++={_HNVCHAR}*+)*+))?"
)
# Two variants so that matching never has to guess whether a user part is
# there: the user class excludes ":" and "@", so each is deterministic.
_SIP_URI_RE = re.compile(
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):(?P<user>{_USER})(?::(?P<password>{_PASSWORD}))?@"
    + _SIP_URI_TAIL)
_SIP_URI_NOUSER_RE = re.compile(
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):" + _SIP_URI_TAIL)
# absoluteURI (RFC 3261 §25): scheme ":" then printable ASCII characters
# except the delimiters that would end a URI inside a header field (" < >).
_ABS_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*+:[!#-;=?-~]++")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_USER_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/"
)
_PASSWORD_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,"
)

#: URI parameters that must match when either URI has them (RFC 3261 §19.1.4).
_ALWAYS_COMPARED = ("user", "ttl", "method", "maddr", "transport")

MAX_PORT = 65535


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        # Escaped octets that are not UTF-8: keep them reversible.
        return unquote_to_bytes(text).decode("latin-1")


def _escape(text: str, safe: frozenset[str]) -> str:
    if all(ch in safe for ch in text):
        return text
    out = []
    for ch in text:
        if ch in safe:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _check_host(host: str) -> str:
    """Validate a host (no brackets for IPv6 on return) and lowercase it."""
    if host.startswith("["):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise SipParseError("bad IPv6 reference in URI") from None
        return inner.lower()
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()  # a fully qualified name may end with a dot
    if all(label.isdigit() for label in labels):
        if _IPV4_RE.fullmatch(host) is None:  # what ipaddress.IPv4Address accepts, faster
            raise SipParseError("bad IPv4 address in URI")
        return host
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise SipParseError("bad host name in URI")
    return host.lower()


def _split_params(text: str) -> dict[str, Optional[str]]:
    """';a=b;lr' (already validated) -> {'a': 'b', 'lr': None}."""
    params: dict[str, Optional[str]] = {}
    for item in text.split(";")[1:]:
        name, eq, value = item.partition("=")
        params[name.lower()] = value if eq else None
    return params


class SipUri:
    """A parsed sip: or sips: URI.

    ``user`` and ``password`` are unescaped; ``host`` is lowercase, IPv6
    without brackets; ``params`` has lowercase names and values as written
    (``None`` for flags such as ``lr``); ``headers`` maps names to values as
    written.  ``str(uri)`` gives the original text for a parsed URI, or a
    freshly formatted one for a URI built from parts.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "_text")

    def __init__(
        self,
        scheme: str = "sip",
        user: Optional[str] = None,
        password: Optional[str] = None,
        host: str = "",
        port: Optional[int] = None,
        params: Optional[dict[str, Optional[str]]] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host.lower()
        self.port = port
        self.params = dict(params) if params else {}
        self.headers = dict(headers) if headers else {}
        self._text: Optional[str] = None

    @property
    def transport(self) -> Optional[str]:
        """The transport parameter, lowercase, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def host_port(self) -> str:
        """host[:port] as written in a URI (IPv6 bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def default_port(self) -> int:
        return 5061 if self.scheme == "sips" or self.transport == "tls" else 5060

    def format(self) -> str:
        """Format from the parts (ignores the original text)."""
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_escape(self.user, _USER_SAFE))
            if self.password is not None:
                out.append(":")
                out.append(_escape(self.password, _PASSWORD_SAFE))
            out.append("@")
        out.append(self.host_port)
        for name, value in self.params.items():
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    def __str__(self) -> str:
        return self._text if self._text is not None else self.format()

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    def copy(self, **changes) -> "SipUri":
        """A new URI with some parts replaced (formatted afresh)."""
        new = SipUri(self.scheme, self.user, self.password, self.host, self.port,
                     self.params, self.headers)
        for name, value in changes.items():
            if name not in SipUri.__slots__ or name.startswith("_"):
                raise TypeError(f"unknown URI part {name!r}")
            setattr(new, name, value)
        return new

    def matches_host_port(self, host: str, port: Optional[int],
                          default_port: Optional[int] = None) -> bool:
        """Does this URI's host and port designate ``host``:``port``?

        A URI without a port designates ``default_port`` (5060, or 5061 for
        sips/transport=tls, when not given): the question a proxy asks when
        deciding whether a Route or Request-URI points at itself.
        """
        mine = self.port if self.port is not None else (
            default_port if default_port is not None else self.default_port())
        if port is None:
            port = default_port if default_port is not None else self.default_port()
        if mine != port:
            return False
        return normalize_host(self.host) == normalize_host(host)

    def _cmp_params(self) -> dict[str, str]:
        return {k: (_unescape(v).lower() if v is not None else "") for k, v in self.params.items()}

    def __eq__(self, other: object) -> bool:
        """URI equivalence per RFC 3261 §19.1.4."""
        if not isinstance(other, SipUri):
            return NotImplemented
        if (self.scheme != other.scheme or self.user != other.user
                or self.password != other.password or self.port != other.port
                or normalize_host(self.host) != normalize_host(other.host)):
            return False
        mine, theirs = self._cmp_params(), other._cmp_params()
        for name in _ALWAYS_COMPARED:
            if mine.get(name) != theirs.get(name):
                return False
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        def hdrs(uri: SipUri) -> dict[str, str]:
            return {_unescape(k).lower(): _unescape(v) for k, v in uri.headers.items()}
        return hdrs(self) == hdrs(other)

    def __hash__(self) -> int:
        return hash((self.scheme, self.user, self.password, normalize_host(self.host), self.port))


def normalize_host(host: str) -> str:
    """Host for comparison (RFC 3261 §19.1.4): lower case, no trailing dot, canonical IPv6."""
    host = host.lower().rstrip(".") if host else host
    if host.startswith("["):
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return host
    return host


def parse_uri(text: str, limits: Limits = DEFAULT_LIMITS) -> SipUri:
    """Parse a sip:/sips: URI; anything else raises SipParseError."""
    if not isinstance(text, str):
        raise TypeError("parse_uri() takes str")
    if len(text) > limits.max_uri_length:
        raise SipParseError("URI too long", 414)
    m = (_SIP_URI_RE if "@" in text else _SIP_URI_NOUSER_RE).fullmatch(text)
    if m is None:
        colon = text.find(":")
        scheme = text[:colon] if colon > 0 else ""
        if scheme and scheme.lower() not in ("sip", "sips") and _SCHEME_RE.fullmatch(scheme):
            raise SipParseError("unsupported URI scheme", 416)
        raise SipParseError("malformed SIP URI")
    g = m.groupdict()
    scheme, user, password, host, port, params, headers = (
        g["scheme"], g.get("user"), g.get("password"), g["host"], g["port"],
        g["params"], g["headers"])
    uri = SipUri.__new__(SipUri)
    uri.scheme = scheme.lower()
    uri.user = _unescape(user) if user is not None else None
    uri.password = _unescape(password) if password is not None else None
    uri.host = _check_host(host)
    if port is not None:
        port_num = int(port)
        if port_num > MAX_PORT:
            raise SipParseError("port out of range in URI")
        uri.port = port_num
    else:
        uri.port = None
    uri.params = _split_params(params) if params else {}
    if headers:
        hdrs: dict[str, str] = {}
        for item in headers.split("&"):
            name, _, value = item.partition("=")
            hdrs[name] = value
        uri.headers = hdrs
    else:
        uri.headers = {}
    uri._text = text
    return uri


def check_absolute_uri(text: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Validate any URI as a proxy must (sip/sips fully, others loosely).

    Returns the lowercase scheme.  Non-SIP URIs (tel:, urn:, http: ...) are
    accepted as opaque text: a proxy relays them without interpreting them.
    """
    if len(text) > limits.max_uri_length:
        raise SipParseError("URI too long", 414)
    colon = text.find(":")
    scheme = text[:colon].lower() if colon > 0 else ""
    if scheme in ("sip", "sips"):
        parse_uri(text, limits)
        return scheme
    if not _ABS_URI_RE.fullmatch(text):
        raise SipParseError("malformed URI")
    return scheme
