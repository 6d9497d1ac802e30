"""Digest authentication of MSRP AUTH requests (RFC 4976 §5.1, §6.3; RFC 2617, RFC 7616).

Pure code; time comes from an injected clock.  sipws holds no user database:
the password of a Digest username ``EXPIRY:USER`` is the TURN-REST credential
the web service already mints for the WebSocket handshake,
``base64(HMAC(secret, username))`` with ``[auth] hmac_secrets`` /
``hmac_algorithm`` (see ``sipws.edge.credentials.check_hmac``), so one
credential serves both.

Nonces are stateless: ``base64url(timestamp || HMAC-SHA256(key, timestamp ||
binding)[:NONCE_MAC_BYTES])`` where ``key`` is random per start and
``binding`` identifies the connection, so a nonce is unforgeable, useless on
another connection and stale after ``NONCE_LIFETIME`` seconds.

Never logged: passwords, the nonce key, digest responses.  Reasons returned
name what was wrong, nothing secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Iterable, Optional

from sipws.msrp.errors import MsrpError
from sipws.msrp.uri import MsrpUri, parse_uri

#: Realm named in challenges (the handshake's realm too).
REALM = "sipws"
#: Seconds a nonce is accepted after it was issued; older ones get stale=true.
NONCE_LIFETIME = 300
#: Bytes of the truncated nonce MAC.
NONCE_MAC_BYTES = 16
#: Longest Authorization value read; longer is refused unread.
MAX_AUTHORIZATION_CHARS = 4096
#: Parameters read from one Authorization value.
MAX_PARAMS = 16
#: Longest identity accepted (the handshake's bound).
MAX_IDENTITY_CHARS = 256
#: Digits of a username's expiry at most (as for the handshake).
MAX_EXPIRY_DIGITS = 12
#: Digest algorithms offered, in the order of the challenges (RFC 7616 §3.7):
#: MD5 first, as RFC 4976 clients implement only it and read the first challenge.
ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
#: HMAC digests for the TURN-REST password (``[auth] hmac_algorithm``).
HMAC_DIGESTS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}

_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]{0,31})\s*=\s*(?:"((?:[^"\\]|\\.){0,1024})"|([^\s,"]{1,1024}))\s*(,|$)')
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")


class DigestError(MsrpError):
    """An Authorization value that cannot be read (the relay answers 401)."""


@dataclass(frozen=True)
class Verdict:
    """Outcome of ``DigestAuth.verify``: ``status`` 200 (``identity`` set,
    ``auth_info`` the Authentication-Info value), 401 (challenge again, with
    ``stale``) or 403 (valid response but the credential is expired)."""

    status: int
    reason: str
    identity: Optional[str] = None
    stale: bool = False
    auth_info: Optional[str] = None
    counts: bool = True  # a failed attempt that counts against the connection's retries


def parse_authorization(value: str) -> dict[str, str]:
    """``Digest k=v, k="v"…`` → lower-case keys to unquoted values; DigestError otherwise."""
    if not isinstance(value, str) or len(value) > MAX_AUTHORIZATION_CHARS:
        raise DigestError("Authorization too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError("Authorization scheme is not Digest")
    params: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if m is None or m.end() == pos:
            raise DigestError("malformed Digest parameters")
        key = m.group(1).lower()
        if key in params or len(params) >= MAX_PARAMS:
            raise DigestError("repeated or too many Digest parameters")
        quoted = m.group(2)
        params[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else m.group(3)
        pos = m.end()
    return params


def _usable_identity(text: str) -> bool:
    return (0 < len(text) <= MAX_IDENTITY_CHARS and text.isprintable()
            and not any(ch.isspace() or ch in '<>"' for ch in text))


class DigestAuth:
    """Challenges and verifies Digest credentials on MSRP AUTH."""

    def __init__(self, clock, hmac_secrets: Iterable[str], hmac_algorithm: str = "sha256",
                 realm: str = REALM, key: Optional[bytes] = None) -> None:
        self._clock = clock
        self._secrets = tuple(s.encode("utf-8") if isinstance(s, str) else bytes(s)
                              for s in hmac_secrets)
        if hmac_algorithm not in HMAC_DIGESTS:
            raise MsrpError(f"unknown HMAC algorithm {hmac_algorithm!r}")
        self._hmac = HMAC_DIGESTS[hmac_algorithm]
        self.realm = realm
        self._key = key if key is not None else secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self._secrets)

    # -- nonces ------------------------------------------------------------------
    def _mac(self, stamp: bytes, binding: bytes) -> bytes:
        return hmac.new(self._key, stamp + binding, hashlib.sha256).digest()[:NONCE_MAC_BYTES]

    def nonce(self, binding: bytes) -> str:
        stamp = struct.pack(">Q", int(self._clock.seconds()))
        return base64.urlsafe_b64encode(stamp + self._mac(stamp, binding)).decode("ascii")

    def _check_nonce(self, nonce: str, binding: bytes) -> Optional[str]:
        """None when fresh and ours; "stale" or "forged" otherwise."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return "forged"
        if len(raw) != 8 + NONCE_MAC_BYTES:
            return "forged"
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(stamp, binding)):
            return "forged"
        age = self._clock.seconds() - struct.unpack(">Q", stamp)[0]
        if age < 0 or age > NONCE_LIFETIME:
            return "stale"
        return None

    # -- challenges --------------------------------------------------------------
    def challenge(self, binding: bytes, stale: bool = False) -> list[tuple[str, str]]:
        """The WWW-Authenticate header fields of a 401, one per algorithm."""
        nonce = self.nonce(binding)
        extra = ", stale=true" if stale else ""
        return [("WWW-Authenticate",
                 f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", algorithm={name}{extra}')
                for name in ALGORITHMS]

    # -- verification ------------------------------------------------------------
    def password(self, username: str, secret: bytes) -> str:
        """The TURN-REST credential of ``username`` under ``secret``."""
        mac = hmac.new(secret, username.encode("utf-8"), self._hmac).digest()
        return base64.b64encode(mac).decode("ascii")

    def verify(self, value: str, binding: bytes, relay_uri: MsrpUri,
               method: str = "AUTH") -> Verdict:
        """Check one Authorization value of an AUTH whose To-Path is ``relay_uri``."""
        try:
            p = parse_authorization(value)
        except DigestError as e:
            return Verdict(401, str(e))
        need = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        missing = [k for k in need if not p.get(k)]
        if missing:
            return Verdict(401, f"Digest without {missing[0]}")
        algorithm = p.get("algorithm", "MD5")
        hash_name = next((n for n in ALGORITHMS if n.lower() == algorithm.lower()), None)
        if hash_name is None:
            return Verdict(401, "unsupported Digest algorithm")
        if p["realm"] != self.realm:
            return Verdict(401, "wrong realm")
        if p["qop"].lower() != "auth":
            return Verdict(401, "qop is not auth")
        if not _NC_RE.fullmatch(p["nc"]):
            return Verdict(401, "malformed nc")
        try:
            if parse_uri(p["uri"]) != relay_uri:
                return Verdict(401, "Digest uri is not the relay URI of To-Path")
        except MsrpError:
            return Verdict(401, "Digest uri is not an MSRP URI")
        username = p["username"]
        expiry, sep, user = username.partition(":")
        if not sep or not expiry.isascii() or not expiry.isdigit() or len(expiry) > MAX_EXPIRY_DIGITS \
                or not _usable_identity(user):
            return Verdict(401, "username is not EXPIRY:USER")
        nonce_problem = self._check_nonce(p["nonce"], binding)
        if nonce_problem == "forged":
            return Verdict(401, "nonce not issued here")
        h = ALGORITHMS[hash_name]

        def hx(text: str) -> str:
            return h(text.encode("utf-8")).hexdigest()

        given = p["response"].lower().encode("ascii", "replace")
        ha2 = hx(f"{method}:{p['uri']}")
        tail = f"{p['nonce']}:{p['nc']}:{p['cnonce']}:auth"
        for secret in self._secrets:
            ha1 = hx(f"{username}:{self.realm}:{self.password(username, secret)}")
            if hmac.compare_digest(hx(f"{ha1}:{tail}:{ha2}").encode("ascii"), given):
                break
        else:
            return Verdict(401, f"wrong Digest response for {user}")
        if nonce_problem == "stale":
            return Verdict(401, "stale nonce", stale=True, counts=False)
        if int(expiry) < self._clock.seconds():
            return Verdict(403, f"credential for {user} expired at {expiry}")
        rspauth = hx(f"{ha1}:{tail}:{hx(':' + p['uri'])}")
        info = f'qop=auth, rspauth="{rspauth}", cnonce="{_quote(p["cnonce"])}", nc={p["nc"]}'
        return Verdict(200, f"Digest {hash_name}", identity=user, auth_info=info, counts=False)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
