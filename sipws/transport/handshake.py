"""The WebSocket opening-handshake policy, as pure functions.

The server runs ``parse_request_head`` and ``check_request`` on the raw HTTP
request head before Autobahn sees it, so every refusal is decided here, in
one order, with one status per reason:

====================================================  ======
request head over MAX_HEAD_SIZE                        431
unparseable request line or header                     400
method other than GET                                  405
HTTP version other than 1.1                            505
path other than the configured resource                404
server disabled (ws.disable)                           503
no Host, no ``Upgrade: websocket``, no
``Connection: upgrade``                                400
Sec-WebSocket-Version other than 13                    426 (+ Sec-WebSocket-Version: 13)
Sec-WebSocket-Key not base64 of 16 bytes               400
no enabled subprotocol offered ([ws] subprotocols)     400 (+ Sec-WebSocket-Protocol: the enabled ones)
Origin missing (require_origin) or not allowed         403
(then, in ws_server) banned source, [limits] exceeded   403 / 429 (edge_limits.py)
====================================================  ======

After these, ``[auth]`` (sipws.transport.auth) may answer 401 (no
credentials, with WWW-Authenticate) or 403 (bad or expired ones).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

#: Largest request head (request line + headers) accepted, bytes.
MAX_HEAD_SIZE = 8192
#: Most header fields accepted in a request head.
MAX_HEAD_FIELDS = 100
#: The only WebSocket version spoken (RFC 6455).
WEBSOCKET_VERSION = "13"
#: The subprotocol of RFC 7118.
SUBPROTOCOL = "sip"
#: The subprotocol of RFC 7977 (MSRP over WebSocket).
MSRP_SUBPROTOCOL = "msrp"
#: Length of a Sec-WebSocket-Key once base64-decoded (RFC 6455 §4.1).
KEY_BYTES = 16

STATUS_TEXT = {
    101: "Switching Protocols",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class HandshakePolicy:
    """What the configuration says about handshakes ([ws]/[wss] resource, [http])."""

    resource: str = "/"
    require_origin: bool = True
    allowed_origins: tuple[str, ...] = ()
    cors_mode: int = 0
    #: Subprotocols this listener accepts ([ws]/[wss] subprotocols).
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused handshake: HTTP status, a reason for the log, extra response headers."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A parsed request head; header names are lowercase, values in arrival order."""

    method: str
    target: str
    version: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def find_head_end(data: bytes) -> int:
    """Index just past the blank line ending the head, or -1 if not there yet."""
    end = data.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_request_head(head: bytes) -> HandshakeRequest | Refusal:
    """Split a complete request head (ending in CRLFCRLF) into its parts."""
    if len(head) > MAX_HEAD_SIZE:
        return Refusal(431, f"request head of {len(head)} bytes exceeds {MAX_HEAD_SIZE}")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(400, "request head is not ASCII")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        # the query is cut: credentials travel there ([auth], docs/authentication.md)
        return Refusal(400, f"malformed request line {lines[0].split('?', 1)[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, list[str]] = {}
    count = 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            return Refusal(400, f"malformed header line {line[:80]!r}")
        count += 1
        if count > MAX_HEAD_FIELDS:
            return Refusal(431, f"more than {MAX_HEAD_FIELDS} header fields")
        headers.setdefault(name.lower(), []).append(value.strip())
    return HandshakeRequest(method, target, version, headers)


def _tokens(values: list[str] | None) -> list[str]:
    """Comma-separated tokens of every value of a header, stripped."""
    if not values:
        return []
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


def _valid_key(key: str | None) -> bool:
    if key is None or len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Exact match, or ``scheme://*.domain[:port]`` matching any subdomain."""
    if not allowed:
        return True
    origin = origin.lower()
    for pattern in allowed:
        if pattern == origin:
            return True
        scheme, sep, host = pattern.partition("://*.")
        if not sep or "://" not in origin:
            continue
        o_scheme, o_rest = origin.split("://", 1)
        if o_scheme == scheme and o_rest.endswith("." + host) and len(o_rest) > len(host) + 1:
            # the part before the suffix is a subdomain label, not a port or path
            prefix = o_rest[: -len(host) - 1]
            if "/" not in prefix and ":" not in prefix:
                return True
    return False


def check_request(request: HandshakeRequest, policy: HandshakePolicy, accepting: bool) -> Refusal | None:
    """None if the handshake may proceed, else why not."""
    if request.method != "GET":
        return Refusal(405, f"method {request.method[:20]} not allowed", (("Allow", "GET"),))
    if request.version != "HTTP/1.1":
        return Refusal(505, f"unsupported {request.version[:20]}")
    if request.path != policy.resource:
        return Refusal(404, f"resource {request.path[:80]!r} not served")
    if not accepting:
        return Refusal(503, "server disabled")
    if not request.header("host"):
        return Refusal(400, "Host header missing")
    if "websocket" not in (t.lower() for t in _tokens(request.headers.get("upgrade"))):
        return Refusal(400, "Upgrade: websocket missing")
    if "upgrade" not in (t.lower() for t in _tokens(request.headers.get("connection"))):
        return Refusal(400, "Connection: upgrade missing")
    versions = request.headers.get("sec-websocket-version")
    if versions is None or len(versions) != 1 or versions[0] != WEBSOCKET_VERSION:
        shown = ",".join(versions) if versions else "none"
        return Refusal(
            426,
            f"Sec-WebSocket-Version {shown[:20]} not supported",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    keys = request.headers.get("sec-websocket-key")
    if keys is None or len(keys) != 1 or not _valid_key(keys[0]):
        return Refusal(400, "Sec-WebSocket-Key is not base64 of 16 bytes")
    protocols = _tokens(request.headers.get("sec-websocket-protocol"))
    if choose_subprotocol(protocols, policy.subprotocols) is None:
        enabled = ", ".join(policy.subprotocols)
        offered = ",".join(protocols)[:80] or "none"
        return Refusal(
            400,
            f"no enabled subprotocol offered (offered {offered}, enabled {enabled})",
            (("Sec-WebSocket-Protocol", enabled),),
        )
    if len(protocols) != len(set(protocols)):
        return Refusal(400, "duplicate subprotocol offered")
    origins = request.headers.get("origin")
    if origins is None:
        if policy.require_origin:
            return Refusal(403, "Origin header missing")
    elif len(origins) != 1:
        return Refusal(400, "several Origin headers")
    elif not origin_allowed(origins[0], policy.allowed_origins):
        return Refusal(403, f"origin {origins[0][:80]!r} not allowed")
    return None


def choose_subprotocol(offered: list[str], enabled: tuple[str, ...]) -> str | None:
    """The first offered subprotocol (in the client's order, exact token) that is enabled."""
    for name in offered:
        if name in enabled:
            return name
    return None


def offered_subprotocols(request: HandshakeRequest) -> list[str]:
    """The request's Sec-WebSocket-Protocol tokens, in order."""
    return _tokens(request.headers.get("sec-websocket-protocol"))


def accept_headers(request: HandshakeRequest, policy: HandshakePolicy) -> dict[str, str]:
    """Headers added to the 101 besides the ones Autobahn writes (CORS, cors_mode)."""
    origin = request.header("origin")
    if policy.cors_mode == 1:
        return {"Access-Control-Allow-Origin": "*"}
    if policy.cors_mode == 2 and origin is not None:
        return {"Access-Control-Allow-Origin": origin}
    return {}


def refusal_response(refusal: Refusal) -> bytes:
    """The complete HTTP response for a refusal: no body, no banner, then close."""
    text = STATUS_TEXT.get(refusal.status, "Error")
    lines = [f"HTTP/1.1 {refusal.status} {text}"]
    lines.extend(f"{name}: {value}" for name, value in refusal.headers)
    lines.append("Content-Length: 0")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
