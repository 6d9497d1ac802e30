"""Handshake credentials (RFC 7118 §7): TURN-REST style HMAC and JWT, pure.

Browsers cannot set headers on a WebSocket handshake, so credentials travel in
the query string or in cookies:

=========================  ==============================  ===========================
kind                       query parameters                cookies
=========================  ==============================  ===========================
HMAC (TURN REST API form)  ``username``, ``credential``    ``sipws_username``, ``sipws_credential``
JWT                        ``access_token``                ``sipws_token``
=========================  ==============================  ===========================

A query parameter wins over the cookie of the same meaning (it is what the page
asked for explicitly).  ``CredentialChecker.check`` answers with an
``Authenticated`` identity, a ``Denied`` (403: bad, expired, wrong audience...)
or None when no credential of a configured kind was presented (the caller turns
that into 401 or asks the hook).  Reasons name what was wrong, never the
credential or the token.  The clock is injected: expiry is decided against it,
not against the wall clock PyJWT would read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sipws.edge import Denied, EdgeError

#: Seconds of clock skew tolerated on a JWT's ``exp`` and ``nbf`` (minting
#: service and sipws are different machines); HMAC expiries are exact.
JWT_LEEWAY = 30.0
#: Longest credential, token or username read; anything longer is refused
#: unread (bounds the work garbage can cause; the request head is 8 KiB anyway).
MAX_CREDENTIAL_CHARS = 4096
#: Longest identity accepted (it goes into logs, ws.dump and HEP events).
MAX_IDENTITY_CHARS = 256
#: Most query parameters parsed from the request target.
MAX_QUERY_FIELDS = 64
#: The realm named in WWW-Authenticate challenges.
AUTH_REALM = "sipws"
#: Digits of an HMAC username's expiry at most (Unix seconds; 12 digits is year 33658).
MAX_EXPIRY_DIGITS = 12

HMAC_DIGESTS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}

#: Query parameter and cookie names, per credential part.
QUERY_USERNAME, QUERY_CREDENTIAL, QUERY_TOKEN = "username", "credential", "access_token"
COOKIE_USERNAME, COOKIE_CREDENTIAL, COOKIE_TOKEN = "sipws_username", "sipws_credential", "sipws_token"
#: What is replaced by REDACTED in request heads sent to HEP (usernames are not secret).
SECRET_QUERY = (QUERY_CREDENTIAL, QUERY_TOKEN)
SECRET_COOKIES = (COOKIE_CREDENTIAL, COOKIE_TOKEN)
REDACTED = "REDACTED"

#: JWT algorithm per EC curve of a public key: the key type pins the algorithm.
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
JWK_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class KeyFileError(EdgeError):
    """A JWT key file that cannot serve (not PEM, not a public key, wrong type, bad JWKS)."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A handshake's identity and the method that proved it ("hmac", "jwt", "hook")."""

    identity: str
    method: str


@dataclass(frozen=True, slots=True)
class Presented:
    """The credential parts a handshake carried ("" = absent), or why they cannot be read."""

    username: str = ""
    credential: str = ""
    token: str = ""
    problem: str = ""


# ---------------------------------------------------------------- reading credentials


def query_of(target: str) -> dict[str, list[str]]:
    """The request target's query parameters; {} when there are none or too many."""
    _, sep, query = target.partition("?")
    if not sep:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return {}
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def cookies_of(headers: Iterable[str]) -> dict[str, str]:
    """Cookie header values to name -> value (the first of a name wins, quotes removed)."""
    cookies: dict[str, str] = {}
    for header in headers:
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name or name in cookies:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


def presented(query: dict[str, list[str]], cookies: dict[str, str]) -> Presented:
    """Which credential parts the handshake carries: query first, then cookies."""
    parts = []
    for param, cookie in ((QUERY_USERNAME, COOKIE_USERNAME), (QUERY_CREDENTIAL, COOKIE_CREDENTIAL),
                          (QUERY_TOKEN, COOKIE_TOKEN)):
        values = query.get(param)
        if values is not None and len(values) > 1:
            return Presented(problem=f"query parameter {param} given {len(values)} times")
        value = values[0] if values else cookies.get(cookie, "")
        if len(value) > MAX_CREDENTIAL_CHARS:
            return Presented(problem=f"{param} longer than {MAX_CREDENTIAL_CHARS} characters")
        parts.append(value)
    return Presented(*parts)


def usable_identity(text: str) -> bool:
    """An identity fit for logs and From/To comparison: short, printable, no blanks."""
    return (0 < len(text) <= MAX_IDENTITY_CHARS and text.isprintable()
            and not any(ch.isspace() or ch in '<>"' for ch in text))


def challenges(methods: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The WWW-Authenticate headers of a 401 (RFC 7235 requires at least one).

    JWT is the standard Bearer scheme (RFC 6750); the HMAC credentials and the
    hook have no registered scheme, so they get sipws's own names.
    """
    methods = tuple(methods)
    found = []
    if "jwt" in methods:
        found.append(("WWW-Authenticate", f'Bearer realm="{AUTH_REALM}"'))
    if "hmac" in methods:
        found.append(("WWW-Authenticate", f'Sipws-HMAC realm="{AUTH_REALM}"'))
    if not found:
        found.append(("WWW-Authenticate", f'Sipws realm="{AUTH_REALM}"'))
    return tuple(found)


def redact(head: bytes) -> bytes:
    """A request head with the secret query parameters' and cookies' values replaced.

    Used for the HEP events (which carry the raw request): a collector such as
    Homer keeps what it is sent, and a credential is valid until it expires.
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    line = lines[0]
    if "?" in line:
        method, _, rest = line.partition(" ")
        target, sep, version = rest.rpartition(" ")
        if not sep:
            target, version = rest, ""
        path, _, query = target.partition("?")
        fields = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            if eq and urllib.parse.unquote_plus(name) in SECRET_QUERY:
                item = f"{name}={REDACTED}"
            fields.append(item)
        lines[0] = f"{method} {path}?{'&'.join(fields)}" + (f" {version}" if sep else "")
    for i, field in enumerate(lines[1:], 1):
        name, colon, value = field.partition(":")
        if colon and name.strip().lower() == "cookie":
            parts = []
            for part in value.split(";"):
                cname, eq, _ = part.partition("=")
                if eq and cname.strip() in SECRET_COOKIES:
                    part = f"{cname}={REDACTED}"
                parts.append(part)
            lines[i] = f"{name}:{';'.join(parts)}"
    return "\r\n".join(lines).encode("latin-1")


# ---------------------------------------------------------------- keys (read at start-up)


def _pinned_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise KeyFileError(f"EC curve {key.curve.name} not supported (P-256, P-384, P-521)")
        return algorithm
    raise KeyFileError(f"{type(key).__name__.lstrip('_')} is not an RSA or EC public key")


def load_public_key(path: str) -> tuple[Any, str]:
    """A PEM public key file -> (key, the one JWT algorithm it may verify)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path!r} is not a PEM public key (a private key or certificate is not "
                           f"accepted: give the public key alone)") from None
    return key, _pinned_algorithm(key)


def _jwk_algorithm(entry: dict[str, Any]) -> str:
    kty = entry.get("kty")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC":
        algorithm = JWK_EC_ALGORITHMS.get(entry.get("crv"), "")
        if not algorithm:
            raise KeyFileError(f"EC curve {entry.get('crv')!r} not supported (P-256, P-384, P-521)")
    else:
        raise KeyFileError(f"kty {kty!r} not accepted (a JWKS here holds RSA or EC public keys)")
    stated = entry.get("alg")
    if stated is not None and stated != algorithm:
        raise KeyFileError(f"alg {stated!r} does not fit its key (expected {algorithm})")
    if "d" in entry:
        raise KeyFileError("holds a private key: publish only the public part")
    return algorithm


def load_jwks(path: str) -> dict[str, tuple[Any, str]]:
    """A JWKS file -> kid -> (key, algorithm); a single key without kid is filed under ""."""
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read())
    except OSError as exc:
        raise KeyFileError(f"cannot read {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path!r} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"{path!r} has no \"keys\" list")
    keys: dict[str, tuple[Any, str]] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise KeyFileError(f"{path!r} key {number} is not an object")
        kid = entry.get("kid", "")
        where = f"{path!r} key {number}" + (f" (kid {kid!r})" if kid else "")
        if not isinstance(kid, str) or (not kid and len(entries) > 1):
            raise KeyFileError(f"{where}: every key needs a string kid when there are several")
        if kid in keys:
            raise KeyFileError(f"{where}: kid given twice")
        try:
            algorithm = _jwk_algorithm(entry)
            key = jwt.PyJWK(entry, algorithm).key
        except KeyFileError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise KeyFileError(f"{where}: unusable key ({type(exc).__name__})") from None
        keys[kid] = (key, algorithm)
    return keys


# ---------------------------------------------------------------- checking


#: PyJWT errors -> the reason logged (never the exception text: it may quote input).
_JWT_REASONS = (
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


class CredentialChecker:
    """The [auth] HMAC and JWT checks, keys loaded once; ``clock()`` gives Unix seconds."""

    def __init__(self, auth: Any, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.methods = tuple(m for m in auth.methods if m in ("hmac", "jwt"))
        self._secrets = tuple(s.encode("utf-8") for s in auth.hmac_secrets)
        self._digest = HMAC_DIGESTS[auth.hmac_algorithm]
        self._audience = auth.jwt_audience or None
        self._issuer = auth.jwt_issuer or None
        self._claim = auth.jwt_identity_claim
        #: kid -> (key, algorithm); "" = the key for tokens without (or regardless of) kid.
        self._jwt_keys: dict[str, tuple[Any, str]] = {}
        self._any_kid = False
        if auth.jwt_secret:
            self._jwt_keys[""] = (auth.jwt_secret.encode("utf-8"), "HS256")
            self._any_kid = True
        elif auth.jwt_public_key:
            self._jwt_keys[""] = load_public_key(auth.jwt_public_key)
            self._any_kid = True
        elif auth.jwt_jwks:
            self._jwt_keys = load_jwks(auth.jwt_jwks)

    def check(self, given: Presented) -> Authenticated | Denied | None:
        """Try each configured kind whose credential was presented; None when none was."""
        if given.problem:
            return Denied(403, given.problem)
        first: Denied | None = None
        tried = False
        for method in self.methods:
            if method == "hmac" and (given.username or given.credential):
                tried = True
                outcome = self.check_hmac(given.username, given.credential)
            elif method == "jwt" and given.token:
                tried = True
                outcome = self.check_jwt(given.token)
            else:
                continue
            if isinstance(outcome, Authenticated):
                return outcome
            first = first or outcome
        return first if tried else None

    # -- HMAC (TURN REST API form)

    def check_hmac(self, username: str, credential: str) -> Authenticated | Denied:
        if not username or not credential:
            return Denied(403, "username without credential" if username else "credential without username")
        expiry_text, sep, user = username.partition(":")
        if not sep or not expiry_text.isascii() or not expiry_text.isdigit() \
                or len(expiry_text) > MAX_EXPIRY_DIGITS:
            return Denied(403, "username is not EXPIRY:USER")
        if not usable_identity(user):
            return Denied(403, "username's user part is not a usable identity")
        given = _b64decode(credential)
        if given is None:
            return Denied(403, "credential is not base64")
        message = username.encode("utf-8")
        if not any(hmac.compare_digest(hmac.new(secret, message, self._digest).digest(), given)
                   for secret in self._secrets):
            return Denied(403, f"bad HMAC credential for {user}")
        if int(expiry_text) < self.clock():
            return Denied(403, f"HMAC credential for {user} expired at {expiry_text}")
        return Authenticated(user, "hmac")

    # -- JWT

    def check_jwt(self, token: str) -> Authenticated | Denied:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            return Denied(403, "malformed token")
        kid = header.get("kid")
        if self._any_kid:
            key, algorithm = self._jwt_keys[""]
        else:
            if kid is None and len(self._jwt_keys) == 1:
                kid = next(iter(self._jwt_keys))
            if not isinstance(kid, str) or kid not in self._jwt_keys:
                return Denied(403, "token's kid names no key of the JWKS")
            key, algorithm = self._jwt_keys[kid]
        if header.get("alg") != algorithm:
            shown = header.get("alg")
            shown = shown[:20] if isinstance(shown, str) else type(shown).__name__
            return Denied(403, f"algorithm {shown!r} not allowed (the key verifies {algorithm})")
        required = ["exp"] + (["aud"] if self._audience else []) + (["iss"] if self._issuer else [])
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self._audience, issuer=self._issuer,
                # exp / nbf are checked below against the injected clock, not the wall clock
                options={"require": required, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": self._audience is not None},
            )
        except jwt.MissingRequiredClaimError as exc:
            return Denied(403, f"token has no {exc.claim!s:.20} claim")
        except jwt.PyJWTError as exc:
            for kind, reason in _JWT_REASONS:
                if isinstance(exc, kind):
                    return Denied(403, reason)
            return Denied(403, f"invalid token ({type(exc).__name__})")
        except (ValueError, TypeError, KeyError, binascii.Error):
            return Denied(403, "malformed token")
        return self._jwt_claims(claims)

    def _jwt_claims(self, claims: dict[str, Any]) -> Authenticated | Denied:
        now = self.clock()
        exp = claims.get("exp")
        if not _is_number(exp):
            return Denied(403, "token's exp is not a number")
        if now > exp + JWT_LEEWAY:
            return Denied(403, f"token expired at {int(exp)}")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now + JWT_LEEWAY < nbf):
            return Denied(403, "token not valid yet")
        identity = claims.get(self._claim)
        if not isinstance(identity, str) or not usable_identity(identity):
            return Denied(403, f"token's {self._claim} claim is not a usable identity")
        return Authenticated(identity, "jwt")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional; a '+' turned into ' ' by a query
    string that was not percent-encoded is taken back (base64 has no spaces)."""
    if not text.isascii():
        return None
    text = text.replace(" ", "+").replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
