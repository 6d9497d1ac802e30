"""MSRP and MSRPS URIs (RFC 4975 §6, §9; the ``ws`` transport of RFC 7977).

``msrp[s]://[userinfo@]host[:port][/session-id];transport[;param...]``.
Equality (``==`` and ``hash``) follows RFC 4975 §6.1: scheme, host and
transport compare case-insensitively, the port as written (an explicit port
never equals an absent one), the session-id case-sensitively; userinfo and
URI parameters play no part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sipws.msrp.errors import MsrpParseError
from sipws.msrp.limits import MAX_URI_LENGTH

#: The port of a TCP/TLS next hop whose URI names none (IANA "msrp" port).
DEFAULT_PORT = 2855
#: Highest TCP port number.
_MAX_PORT = 65535

_URI_RE = re.compile(
    r"(?P<scheme>[Mm][Ss][Rr][Pp][Ss]?)://"
    r"(?:(?P<user>[A-Za-z0-9\-._~!$&'()*+,=%:]{1,256})@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9\-._~%]{1,255})"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?:/(?P<session>[A-Za-z0-9\-._~+=/]{1,255}))?"
    r";(?P<transport>[A-Za-z0-9]{1,32})"
    r"(?P<params>(?:;[A-Za-z0-9\-.!%*_+`'~]{1,64}(?:=[A-Za-z0-9\-.!%*_+`'~]{1,256})?){0,16})")


@dataclass(frozen=True)
class PeerKey:
    """Where a TCP/TLS MSRP peer is reached: the unit of connection reuse."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'msrps' if self.tls else 'msrp'}://{host}:{self.port}"


@dataclass(frozen=True, eq=False)
class MsrpUri:
    """One MSRP URI; ``str()`` gives it back in its written form."""

    scheme: str
    host: str
    port: int | None = None
    session_id: str | None = None
    transport: str = "tcp"
    user: str | None = None
    params: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        out = [self.scheme, "://"]
        if self.user is not None:
            out += [self.user, "@"]
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        if self.session_id is not None:
            out += ["/", self.session_id]
        out += [";", self.transport]
        for p in self.params:
            out += [";", p]
        return "".join(out)

    def _key(self) -> tuple:
        return (self.scheme.lower(), self.host.lower(), self.port, self.session_id,
                self.transport.lower())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MsrpUri):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def secure(self) -> bool:
        return self.scheme.lower() == "msrps"

    @property
    def peer(self) -> PeerKey:
        """The TCP/TLS peer this URI names (host lower-cased, brackets removed)."""
        host = self.host.lower()
        if host.startswith("["):
            host = host[1:-1]
        return PeerKey(host, self.port if self.port is not None else DEFAULT_PORT, self.secure)


def parse_uri(text: str, max_length: int = MAX_URI_LENGTH) -> MsrpUri:
    """Parse one MSRP URI; ``MsrpParseError`` when it is not one."""
    if not isinstance(text, str):
        raise MsrpParseError("URI is not text")
    if len(text) > max_length:
        raise MsrpParseError("URI too long")
    m = _URI_RE.fullmatch(text)
    if m is None:
        raise MsrpParseError("bad MSRP URI")
    port = m.group("port")
    if port is not None:
        port_no = int(port)
        if not 0 < port_no <= _MAX_PORT:
            raise MsrpParseError("bad port in MSRP URI")
    else:
        port_no = None
    params = m.group("params")
    return MsrpUri(
        scheme=m.group("scheme"), host=m.group("host"), port=port_no,
        session_id=m.group("session"), transport=m.group("transport"),
        user=m.group("user"), params=tuple(params[1:].split(";")) if params else (),
    )


def parse_path(value: str, max_uris: int, max_length: int = MAX_URI_LENGTH) -> tuple[MsrpUri, ...]:
    """A To-Path/From-Path/Use-Path value: URIs separated by single spaces
    (runs of spaces and tabs are accepted)."""
    parts = value.split()
    if not parts:
        raise MsrpParseError("empty path")
    if len(parts) > max_uris:
        raise MsrpParseError("too many URIs in a path")
    return tuple(parse_uri(p, max_length) for p in parts)


def format_path(uris) -> str:
    return " ".join(str(u) for u in uris)
