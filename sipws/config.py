"""Configuration: TOML in, typed frozen dataclasses out.

Every key has a default, so an empty file (or no file) is a valid
configuration.  Anything wrong - an unknown section or key, a wrong type, a
value out of range, a certificate that cannot be read - raises ConfigError
whose message is one line naming the key, e.g.
``config: [ws] max_msg_chunks: must be >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from sipws.errors import SipwsError

#: Largest payload of a WebSocket control frame (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD = 125
#: Smallest message size limit we accept: a SIP message shorter than this is useless.
MIN_MESSAGE_SIZE = 256
#: Largest message size limit we accept (16 MiB): beyond this a single peer could
#: hold a worrying amount of memory in a reassembly buffer.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
TLS_VERSIONS = ("1.2", "1.3")
KEEPALIVE_MECHANISMS = ("none", "ping", "pong")
SIP_TRANSPORTS = ("udp", "tcp", "tls")


class ConfigError(SipwsError):
    """A configuration problem; str() is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config: {key}: {problem}")


# --------------------------------------------------------------------------
# Parsed value types


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listening or target address; host is a literal IP or a DNS name."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipListen:
    """One SIP-side socket: ``udp:HOST:PORT``, ``tcp:...`` or ``tls:...``."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{HostPort(self.host, self.port)}"


# --------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class WsConfig:
    listen: tuple[HostPort, ...] = (HostPort("127.0.0.1", 8080),)
    port: int = 80
    resource: str = "/"
    handshake_timeout: float = 5.0
    #: Server role: open connections accepted on these listeners at once; 0 = no cap of its own.
    max_connections: int = 0
    send_timeout: float = 10.0
    max_msg_chunks: int = 16
    max_message_size: int = 65535
    # permessage-deflate (RFC 7692), docs/websocket.md "Compression"
    compression: bool = False
    compression_max_window_bits: int = 12
    compression_no_context_takeover: bool = True
    compression_mem_level: int = 5
    #: CIDRs whose connections begin with a PROXY protocol v1/v2 header; () = off.
    proxy_protocol_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class WssConfig:
    listen: tuple[HostPort, ...] = ()
    port: int = 443
    resource: str = "/"
    handshake_timeout: float = 5.0
    #: Server role: open connections accepted on these listeners at once; 0 = no cap of its own.
    max_connections: int = 0
    send_timeout: float = 10.0
    max_msg_chunks: int = 16
    max_message_size: int = 65535
    compression: bool = False
    compression_max_window_bits: int = 12
    compression_no_context_takeover: bool = True
    compression_mem_level: int = 5
    proxy_protocol_from: tuple[str, ...] = ()
    certificate: str = ""
    private_key: str = ""
    ca_list: str = ""
    require_client_cert: bool = False
    min_tls_version: str = "1.2"
    tls_handshake_timeout: float = 5.0
    verify_server: bool = True
    cert_check_on_conn_reusage: bool = False


@dataclass(frozen=True)
class HttpConfig:
    require_origin: bool = True
    allowed_origins: tuple[str, ...] = ()
    cors_mode: int = 0
    #: Directory whose files plain GETs (no Upgrade) are answered from; "" = off.
    document_root: str = ""
    #: CIDRs whose Forwarded / X-Forwarded-For headers name the client; () = none.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeepaliveConfig:
    mechanism: str = "ping"
    timeout: float = 180.0
    interval: float = 1.0
    ping_data: str = "sipws"


@dataclass(frozen=True)
class SipConfig:
    listen: tuple[SipListen, ...] = (
        SipListen("udp", "127.0.0.1", 5062),
        SipListen("tcp", "127.0.0.1", 5062),
    )
    advertise: str = ""
    #: Where clients' requests go; "" = standalone mode (the built-in registrar).
    upstream: str = ""
    flow_token_secret: str = ""
    #: "path" (Path on REGISTER) or "alias" (Contact rewritten for cores that ignore Path).
    contact_mode: str = "path"
    # Parser limits (issue: SIP message layer)
    max_message_size: int = 65535
    max_headers: int = 256
    max_header_line: int = 8192
    max_uri_length: int = 2048
    max_vias: int = 70
    # RFC 3261 timer values
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Bytes asked for each SIP UDP socket's receive and send buffer; 0 = kernel default.
    udp_buffer_size: int = 4 * 1024 * 1024


#: Largest [sip] udp_buffer_size accepted (1 GiB).
MAX_UDP_BUFFER = 1 << 30


@dataclass(frozen=True)
class RegistrarConfig:
    """Standalone mode's registrar (used only when [sip] upstream is empty)."""

    #: Domains served; empty = any domain.
    domains: tuple[str, ...] = ()
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 600


@dataclass(frozen=True)
class ClientConfig:
    """The WebSocket client role (sipws dialling ws:// and wss:// servers)."""

    origin: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    certificate: str = ""
    private_key: str = ""
    max_queued_messages: int = 64
    max_queued_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class TraceConfig:
    destination: str = ""
    on: bool = False
    filter: str = ""
    capture_id: int = 0
    auth_key: str = ""
    node_name: str = ""
    queue_size: int = 10000


@dataclass(frozen=True)
class AdminConfig:
    listen: str = "tcp:8088:interface=127.0.0.1"
    token: str = ""


@dataclass(frozen=True)
class EventsConfig:
    on_closed: str = ""


@dataclass(frozen=True)
class ServerConfig:
    """The process model: one process, or a master supervising worker processes."""

    #: Worker processes; 1 = a single process (no master).  ``"auto"`` in the
    #: file becomes the number of CPUs when the configuration is read.
    workers: int = 1


@dataclass(frozen=True)
class AuthConfig:
    """Authenticated handshakes (RFC 7118 §7), docs/authentication.md."""

    #: A handshake without valid credentials is refused (401 none, 403 bad or expired).
    required: bool = False
    #: TURN REST API style credentials: username "EXPIRY:USER", credential base64(HMAC(secret, username)).
    #: Several secrets: any of them verifies (rotation without restarting clients).
    hmac_secrets: tuple[str, ...] = ()
    hmac_algorithm: str = "sha256"
    #: JWT (query access_token or cookie sipws_token): HS256 secret, or a PEM public key, or a JWKS file.
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_jwks: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_identity_claim: str = "sub"
    #: package.module:callable deciding a handshake itself (identity, Deferred, or a denial).
    hook: str = ""
    #: The authenticated identity owns the connection: REGISTER To / initial From must name it.
    bind_identity: bool = False

    @property
    def methods(self) -> tuple[str, ...]:
        """The credential kinds configured, in the order they are tried."""
        kinds = []
        if self.hmac_secrets:
            kinds.append("hmac")
        if self.jwt_secret or self.jwt_public_key or self.jwt_jwks:
            kinds.append("jwt")
        if self.hook:
            kinds.append("hook")
        return tuple(kinds)


@dataclass(frozen=True)
class LimitsConfig:
    """Per-source limits, per instance (across workers); 0 = no limit.  docs/limits.md."""

    #: Open WebSocket connections from one client address (a NAT of browsers is one address).
    max_connections_per_ip: int = 1000
    #: Handshakes one client address may start per second, after a burst of this many.
    handshakes_per_ip_per_second: float = 50.0
    handshakes_per_ip_burst: int = 500
    #: Messages one connection may send per second, after a burst of this many.
    messages_per_connection_per_second: float = 100.0
    messages_per_connection_burst: int = 500


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    ws: WsConfig = field(default_factory=WsConfig)
    wss: WssConfig = field(default_factory=WssConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections replaced (tests build variants this way)."""
        return dataclasses.replace(self, **sections)


# --------------------------------------------------------------------------
# Value checkers: each takes (key, raw value) and returns the typed value.

_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string", list: "a list"}


def _expect(key: str, value: Any, kind: type) -> Any:
    # bool is a subclass of int in Python; TOML keeps them apart, so do we.
    if kind is int and isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be {_TYPE_NAMES[kind]}, got {value!r}")
    return value


def _int_range(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        value = _expect(key, value, int)
        if value < lo:
            raise ConfigError(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(key, f"must be <= {hi}, got {value}")
        return value

    return check


def _positive_float(key: str, value: Any) -> float:
    value = _expect(key, value, float)
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")
    return value


def _bool(key: str, value: Any) -> bool:
    return _expect(key, value, bool)


def _str(key: str, value: Any) -> str:
    return _expect(key, value, str)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        value = _expect(key, value, str)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


_port = _int_range(1, 65535)


def _resource(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if not value.startswith("/") or any(c in value for c in " ?#\r\n\t"):
        raise ConfigError(key, f"must be a path starting with '/', got {value!r}")
    return value


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _check_host(key: str, host: str, original: str) -> str:
    if not host:
        raise ConfigError(key, f"missing host in {original!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _HOST_RE.match(host):
        raise ConfigError(key, f"bad host in {original!r}")
    return host


def parse_host_port(key: str, text: str, default_port: int | None) -> HostPort:
    """Parse ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``."""
    original = text
    port: int | None = default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(key, f"unterminated '[' in {original!r}")
        host, rest = text[1:end], text[end + 1 :]
        if ":" not in host:
            raise ConfigError(key, f"brackets are for IPv6 addresses, got {original!r}")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(key, f"bad address {original!r}")
            port = _parse_port(key, rest[1:], original)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(key, port_text, original)
    elif text.count(":") > 1:
        raise ConfigError(key, f"write IPv6 addresses as [ADDR]:PORT, got {original!r}")
    else:
        host = text
    if port is None:
        raise ConfigError(key, f"missing port in {original!r}")
    return HostPort(_check_host(key, host, original), port)


def _parse_port(key: str, text: str, original: str) -> int:
    # Port 0 (pick any) is allowed in listeners so tests can bind safely.
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(key, f"bad port in {original!r}")
    return int(text)


def _string_list(key: str, value: Any) -> list[str]:
    value = _expect(key, value, list)
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(key, f"must be a list of strings, got item {item!r}")
    return value


def _listen_list(default_port_key: str) -> Callable[[str, Any, dict], tuple[HostPort, ...]]:
    def check(key: str, value: Any, section: dict) -> tuple[HostPort, ...]:
        port = section.get(default_port_key)
        return tuple(parse_host_port(key, item, port) for item in _string_list(key, value))

    return check


def _sip_listen(key: str, value: Any, section: dict) -> tuple[SipListen, ...]:
    result = []
    for item in _string_list(key, value):
        transport, sep, rest = item.partition(":")
        if not sep or transport not in SIP_TRANSPORTS:
            raise ConfigError(
                key, f"entries are udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT, got {item!r}"
            )
        address = parse_host_port(key, rest, 5061 if transport == "tls" else 5060)
        result.append(SipListen(transport, address.host, address.port))
    return tuple(result)


def _origins(key: str, value: Any) -> tuple[str, ...]:
    result = []
    for item in _string_list(key, value):
        if item != "null" and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+$", item):
            raise ConfigError(
                key, f"entries are origins like https://example.com or 'null', got {item!r}"
            )
        result.append(item.lower())
    return tuple(result)


def _ping_data(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if len(value.encode()) > MAX_CONTROL_PAYLOAD:
        raise ConfigError(key, f"must be at most {MAX_CONTROL_PAYLOAD} bytes, got {len(value.encode())}")
    return value


def _directory(key: str, value: Any) -> str:
    """A readable directory, kept as an absolute path (relative = to the working directory)."""
    value = _expect(key, value, str)
    if not value:
        return value
    if not os.path.isdir(value):
        raise ConfigError(key, f"{value!r} is not a directory")
    if not os.access(value, os.R_OK | os.X_OK):
        raise ConfigError(key, f"directory {value!r} is not readable")
    return os.path.abspath(value)


def _readable_path(kind: str) -> Callable[[str, Any], str]:
    """A file (or, for certificates, a directory of PEM files) that must be readable."""

    def check(key: str, value: Any) -> str:
        value = _expect(key, value, str)
        if not value:
            return value
        if kind == "cert" and os.path.isdir(value):
            if not os.access(value, os.R_OK | os.X_OK):
                raise ConfigError(key, f"directory {value!r} is not readable")
            return value
        if not os.path.exists(value):
            raise ConfigError(key, f"file {value!r} does not exist")
        if not os.path.isfile(value):
            raise ConfigError(key, f"{value!r} is not a file")
        try:
            with open(value, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(key, f"cannot read {value!r}: {exc.strerror}") from None
        return value

    return check


def _endpoint_string(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if value and not re.match(r"^(tcp|unix|tcp6|ssl):", value):
        raise ConfigError(key, f"must be a Twisted endpoint like tcp:8088 or unix:/path, got {value!r}")
    return value


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Handshake headers sipws writes itself; configuring them would break the upgrade.
_RESERVED_HEADERS = frozenset(
    ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
     "sec-websocket-protocol", "sec-websocket-extensions", "origin")
)


def _headers_table(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a table of header names to values, got {value!r}")
    result = []
    for name, text in value.items():
        if not _HEADER_NAME_RE.match(name) or name.lower() in _RESERVED_HEADERS:
            raise ConfigError(key, f"bad or reserved header name {name!r}")
        if not isinstance(text, str) or any(c in text for c in "\r\n"):
            raise ConfigError(key, f"header {name!r} needs a one-line string value")
        result.append((name, text))
    return tuple(result)


def _origin(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if value and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+$", value):
        raise ConfigError(key, f"must be an origin like https://sipws.example.com, got {value!r}")
    return value


def _trace_destination(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if not value:
        return value
    proto, sep, rest = value.partition(":")
    if not sep or proto not in ("udp", "tcp"):
        raise ConfigError(key, f"must be udp:HOST:PORT or tcp:HOST:PORT, got {value!r}")
    parse_host_port(key, rest, None)
    return value


def _upstream(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if value == "":
        return value  # standalone mode
    lowered = value.lower()
    if lowered.startswith(("ws://", "wss://")):
        rest = value.split("://", 1)[1]
        hostport = rest.split("/", 1)[0]
        if not hostport:
            raise ConfigError(key, f"missing host in {value!r}")
        parse_host_port(key, hostport, 0)
        return value
    if not lowered.startswith(("sip:", "sips:")):
        raise ConfigError(key, f"must be a sip:/sips: URI or a ws:// / wss:// URL, got {value!r}")
    hostpart = value.split(":", 1)[1].split(";", 1)[0]
    if "@" in hostpart:
        hostpart = hostpart.rsplit("@", 1)[1]
    parse_host_port(key, hostpart, 0)
    match = re.search(r";transport=([^;>]*)", value, re.IGNORECASE)
    if match and match.group(1).lower() not in SIP_TRANSPORTS + ("ws",):
        raise ConfigError(key, f"unsupported transport {match.group(1)!r}")
    return value


#: Longest registration sipws accepts as a setting (one week; RFC 3261 allows up to 2**32-1).
MAX_EXPIRES = 7 * 24 * 3600
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _domains(key: str, value: Any) -> tuple[str, ...]:
    items = _expect(key, value, list)
    domains = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(key, f"must be a list of domain names, got {item!r}")
        lowered = item.lower()
        if not _DOMAIN_RE.match(lowered):
            raise ConfigError(key, f"not a domain name: {item!r}")
        domains.append(lowered)
    return tuple(domains)


def _advertise(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if value:
        parse_host_port(key, value, 0)
    return value


def _callable_ref(key: str, value: Any) -> str:
    """``package.module:callable``; resolved now so a typo stops start-up."""
    value = _expect(key, value, str)
    if value:
        resolve_callable(key, value)
    return value


def resolve_callable(key: str, ref: str) -> Callable[..., Any]:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(key, f"must be package.module:callable, got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is a config problem
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(key, f"{module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(key, f"{ref!r} is not callable")
    return target


def _cidrs(key: str, value: Any) -> tuple[str, ...]:
    """A list of addresses or CIDRs, normalised (``10.0.0.0/8``, ``::1/128``)."""
    from sipws.edge.networks import BadNetwork, parse_network

    result = []
    for item in _string_list(key, value):
        try:
            result.append(str(parse_network(item)))
        except BadNetwork as exc:
            raise ConfigError(key, str(exc)) from None
    return tuple(result)


def _secrets(key: str, value: Any) -> tuple[str, ...]:
    items = _string_list(key, value)
    if any(not item for item in items):
        raise ConfigError(key, "an empty secret verifies nothing")
    return tuple(items)


def _jwt_key_file(loader_name: str) -> Callable[[str, Any], str]:
    """A readable file that ``sipws.edge.credentials.<loader_name>`` accepts: a PEM RSA/EC
    public key, or a JWKS of RSA/EC keys; read now so a wrong file stops start-up."""
    readable = _readable_path("file")

    def check(key: str, value: Any) -> str:
        value = readable(key, value)
        if value:
            from sipws.edge import credentials

            try:
                getattr(credentials, loader_name)(value)
            except credentials.KeyFileError as exc:
                raise ConfigError(key, str(exc)) from None
        return value

    return check


#: Shortest jwt_secret: an HS256 key at least as long as the hash (RFC 7518 §3.2).
MIN_JWT_SECRET_BYTES = 32


def _jwt_secret(key: str, value: Any) -> str:
    value = _expect(key, value, str)
    if value and len(value.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(key, f"must be at least {MIN_JWT_SECRET_BYTES} bytes for HS256 (RFC 7518 §3.2), "
                               f"got {len(value.encode('utf-8'))}")
    return value


def _rate(key: str, value: Any) -> float:
    value = _expect(key, value, float)
    if value < 0:
        raise ConfigError(key, f"must be >= 0 (0 = no limit), got {value}")
    return value


def _window_bits(key: str, value: Any) -> int:
    """9..15: RFC 7692 allows 8, but zlib cannot compress raw deflate with an 8-bit window."""
    if value == 8 and not isinstance(value, bool):
        raise ConfigError(key, "must be 9..15, got 8 (RFC 7692 allows 8, zlib cannot compress with it)")
    return _int_range(9, 15)(key, value)


# --------------------------------------------------------------------------
# Schema: section -> key -> checker.  A checker taking three arguments also
# sees the raw section (for defaults such as `port`).

#: Most worker processes one instance runs ([server] workers).
MAX_WORKERS = 64


def _workers(key: str, value: Any) -> int:
    """A worker count, or "auto" = the CPUs this process may run on."""
    if value == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, MAX_WORKERS))
    if isinstance(value, str):
        raise ConfigError(key, f'must be an integer or "auto", got {value!r}')
    return _int_range(1, MAX_WORKERS)(key, value)


_COMMON_WS = {
    "listen": _listen_list("port"),
    "port": _port,
    "resource": _resource,
    "handshake_timeout": _positive_float,
    "max_connections": _int_range(0),
    "send_timeout": _positive_float,
    "max_msg_chunks": _int_range(1, 65535),
    "max_message_size": _int_range(MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE),
    "compression": _bool,
    "compression_max_window_bits": _window_bits,
    "compression_no_context_takeover": _bool,
    "compression_mem_level": _int_range(1, 9),
    "proxy_protocol_from": _cidrs,
}

_SCHEMA: dict[str, tuple[type, dict[str, Callable[..., Any]]]] = {
    "ws": (WsConfig, dict(_COMMON_WS)),
    "wss": (
        WssConfig,
        {
            **_COMMON_WS,
            "certificate": _readable_path("cert"),
            "private_key": _readable_path("file"),
            "ca_list": _readable_path("file"),
            "require_client_cert": _bool,
            "min_tls_version": _choice(*TLS_VERSIONS),
            "tls_handshake_timeout": _positive_float,
            "verify_server": _bool,
            "cert_check_on_conn_reusage": _bool,
        },
    ),
    "http": (
        HttpConfig,
        {
            "require_origin": _bool,
            "allowed_origins": _origins,
            "cors_mode": _int_range(0, 2),
            "document_root": _directory,
            "trusted_proxies": _cidrs,
        },
    ),
    "keepalive": (
        KeepaliveConfig,
        {
            "mechanism": _choice(*KEEPALIVE_MECHANISMS),
            "timeout": _positive_float,
            "interval": _positive_float,
            "ping_data": _ping_data,
        },
    ),
    "sip": (
        SipConfig,
        {
            "listen": _sip_listen,
            "advertise": _advertise,
            "upstream": _upstream,
            "flow_token_secret": _str,
            "contact_mode": _choice("path", "alias"),
            "max_message_size": _int_range(MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE),
            "max_headers": _int_range(8, 65535),
            "max_header_line": _int_range(256, MAX_MESSAGE_SIZE),
            "max_uri_length": _int_range(64, MAX_MESSAGE_SIZE),
            "max_vias": _int_range(1, 1024),
            "t1": _positive_float,
            "t2": _positive_float,
            "t4": _positive_float,
            "udp_buffer_size": _int_range(0, MAX_UDP_BUFFER),
        },
    ),
    "registrar": (
        RegistrarConfig,
        {
            "domains": _domains,
            "min_expires": _int_range(1, MAX_EXPIRES),
            "max_expires": _int_range(1, MAX_EXPIRES),
            "default_expires": _int_range(1, MAX_EXPIRES),
        },
    ),
    "client": (
        ClientConfig,
        {
            "origin": _origin,
            "headers": _headers_table,
            "certificate": _readable_path("file"),
            "private_key": _readable_path("file"),
            "max_queued_messages": _int_range(1, 100_000),
            "max_queued_bytes": _int_range(1024, MAX_MESSAGE_SIZE * 16),
        },
    ),
    "trace": (
        TraceConfig,
        {
            "destination": _trace_destination,
            "on": _bool,
            "filter": _callable_ref,
            "capture_id": _int_range(0, 2**32 - 1),
            "auth_key": _str,
            "node_name": _str,
            "queue_size": _int_range(1, 10_000_000),
        },
    ),
    "admin": (AdminConfig, {"listen": _endpoint_string, "token": _str}),
    "events": (EventsConfig, {"on_closed": _callable_ref}),
    "log": (LogConfig, {"level": _choice(*LOG_LEVELS), "format": _choice("text", "json")}),
    "server": (ServerConfig, {"workers": _workers}),
    "auth": (
        AuthConfig,
        {
            "required": _bool,
            "hmac_secrets": _secrets,
            "hmac_algorithm": _choice("sha256", "sha1"),
            "jwt_secret": _jwt_secret,
            "jwt_public_key": _jwt_key_file("load_public_key"),
            "jwt_jwks": _jwt_key_file("load_jwks"),
            "jwt_audience": _str,
            "jwt_issuer": _str,
            "jwt_identity_claim": _str,
            "hook": _callable_ref,
            "bind_identity": _bool,
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "max_connections_per_ip": _int_range(0),
            "handshakes_per_ip_per_second": _rate,
            "handshakes_per_ip_burst": _int_range(1),
            "messages_per_connection_per_second": _rate,
            "messages_per_connection_burst": _int_range(1),
        },
    ),
}


def _build_section(name: str, raw: Any) -> Any:
    cls, checkers = _SCHEMA[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]", f"must be a table, got {raw!r}")
    values: dict[str, Any] = {}
    for key in raw:
        if key not in checkers:
            raise ConfigError(f"[{name}] {key}", "unknown key")
    for key, value in raw.items():
        checker = checkers[key]
        label = f"[{name}] {key}"
        if checker.__code__.co_argcount == 3:
            values[key] = checker(label, value, raw)
        else:
            values[key] = checker(label, value)
    # Listeners written without a port take the section's `port`.
    if "listen" not in raw and "port" in raw and name in ("ws", "wss"):
        defaults = getattr(cls(), "listen")
        values["listen"] = tuple(HostPort(a.host, raw["port"]) for a in defaults)
    return cls(**values)


def _check_cross(config: Config) -> None:
    """Rules that involve more than one key."""
    wss = config.wss
    if wss.listen:
        if not wss.certificate:
            raise ConfigError("[wss] certificate", "required when [wss] listen is set")
        if not os.path.isdir(wss.certificate) and not wss.private_key:
            raise ConfigError("[wss] private_key", "required when [wss] certificate is a file")
    if any(entry.transport == "tls" for entry in config.sip.listen) and not wss.certificate:
        raise ConfigError("[sip] listen", "tls: entries need [wss] certificate and private_key")
    if wss.require_client_cert and not wss.ca_list:
        raise ConfigError("[wss] ca_list", "required when require_client_cert is true")
    registrar = config.registrar
    if registrar.min_expires > registrar.max_expires:
        raise ConfigError("[registrar] min_expires",
                          f"must be <= max_expires ({registrar.max_expires}), got {registrar.min_expires}")
    if not registrar.min_expires <= registrar.default_expires <= registrar.max_expires:
        raise ConfigError("[registrar] default_expires",
                          f"must be between min_expires and max_expires, got {registrar.default_expires}")
    auth = config.auth
    if (auth.required or auth.bind_identity) and not auth.methods:
        which = "required" if auth.required else "bind_identity"
        raise ConfigError(f"[auth] {which}", "needs hmac_secrets, jwt_secret, jwt_public_key, jwt_jwks or hook")
    jwt_keys = [k for k in ("jwt_secret", "jwt_public_key", "jwt_jwks") if getattr(auth, k)]
    if len(jwt_keys) > 1:
        raise ConfigError(f"[auth] {jwt_keys[1]}", f"set only one of jwt_secret, jwt_public_key, jwt_jwks "
                                                  f"(also set: {jwt_keys[0]})")
    if not auth.jwt_identity_claim:
        raise ConfigError("[auth] jwt_identity_claim", "must name a claim, got ''")
    if not config.sip.upstream and config.sip.advertise \
            and not any(entry.transport == "tcp" for entry in config.sip.listen):
        raise ConfigError("[sip] advertise", "standalone mode ([sip] upstream empty) with an advertised "
                                             "address needs a tcp: entry in [sip] listen")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate an already-parsed TOML document."""
    sections: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in _SCHEMA:
            raise ConfigError(f"[{name}]", "unknown section")
        sections[name] = _build_section(name, raw)
    config = Config(**sections)
    _check_cross(config)
    return config


def load_config(path: str | None) -> Config:
    """Read and validate a TOML file; None means the built-in defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("--config", f"file {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data)
