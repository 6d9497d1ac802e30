"""Configuration: TOML in, typed frozen dataclasses out.

Every key has a default, so an empty file (or no file) is a valid
configuration.  Anything wrong - an unknown section or key, a wrong type, a
value out of range, a certificate that cannot be read - raises ConfigError
whose message is one line naming the key, e.g.
``config: [ws] max_msg_chunks: must be >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from sipws import config_values as check
from sipws.config_values import (
    KEEPALIVE_MECHANISMS, LOG_LEVELS, MAX_EXPIRES, MAX_MESSAGE_SIZE, MAX_MSRP_CHUNK, MIN_MESSAGE_SIZE,
    MIN_MSRP_CHUNK, TLS_VERSIONS, ConfigError, HostPort, SipListen,
)
# Part of this module's interface for callers that read configurations:
from sipws.config_values import parse_host_port, resolve_callable

__all__ = ["Config", "ConfigError", "HostPort", "SipListen", "config_from_dict", "load_config",
           "parse_host_port", "resolve_callable"]

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
    #: WebSocket subprotocols accepted, from "sip" (RFC 7118) and "msrp" (RFC 7977).
    subprotocols: tuple[str, ...] = ("sip",)


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
    subprotocols: tuple[str, ...] = ("sip",)
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
class MsrpConfig:
    """The MSRP relay for WebSocket clients (RFC 7977, RFC 4976), docs/msrp.md."""

    #: AUTH is required before SEND/REPORT ([auth] at the handshake counts when it is required).
    require_auth: bool = False
    #: Largest body of one chunk, bytes: larger chunks get 413.  RFC 4975 asks senders for
    #: chunks of at most 2048 bytes only so that messages can interleave; it sets no cap,
    #: and file-transfer clients send larger ones.  64 KiB bounds the memory one chunk holds.
    max_chunk_size: int = 65536
    #: "msrp" may be enabled on a plain [ws] listener (tests, loopback): RFC 7977 wants wss.
    allow_insecure: bool = False
    #: host:port written into the Use-Path URI; "" = the first [msrp] listen entry, else
    #: the first [wss] (or, with allow_insecure, [ws]) listener.
    advertise: str = ""
    #: Expires of an AUTH 200 (seconds): a client asking longer gets this (RFC 4976 §5.1).
    expires: int = 1800
    #: TCP/TLS sockets where MSRP peers reach the relay (``tcp:HOST:PORT``, ``tls:HOST:PORT``).
    listen: tuple[SipListen, ...] = ()
    #: Bytes waiting toward one next hop (a slow reader) before its sessions fail.
    max_backlog: int = 4 * 1024 * 1024
    #: A TCP/TLS connection to a peer idle this long is closed.
    peer_idle_timeout: float = 300.0
    #: Seconds to open a TCP connection to a peer (TLS gets [wss] tls_handshake_timeout on top).
    peer_connect_timeout: float = 5.0
    #: TLS toward peers (msrps:) verifies certificate and host name ([wss] ca_list or system CAs).
    verify_peers: bool = True


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
    msrp: MsrpConfig = field(default_factory=MsrpConfig)

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections replaced (tests build variants this way)."""
        return dataclasses.replace(self, **sections)



# --------------------------------------------------------------------------
# Schema: section -> key -> checker.  A checker taking three arguments also
# sees the raw section (for defaults such as `port`).

_COMMON_WS = {
    "listen": check.listen_list("port"),
    "port": check.port,
    "resource": check.resource,
    "handshake_timeout": check.positive_float,
    "max_connections": check.int_range(0),
    "send_timeout": check.positive_float,
    "max_msg_chunks": check.int_range(1, 65535),
    "max_message_size": check.int_range(MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE),
    "compression": check.boolean,
    "compression_max_window_bits": check.window_bits,
    "compression_no_context_takeover": check.boolean,
    "compression_mem_level": check.int_range(1, 9),
    "proxy_protocol_from": check.cidrs,
    "subprotocols": check.subprotocols,
}

_SCHEMA: dict[str, tuple[type, dict[str, Callable[..., Any]]]] = {
    "ws": (WsConfig, dict(_COMMON_WS)),
    "wss": (
        WssConfig,
        {
            **_COMMON_WS,
            "certificate": check.readable_path("cert"),
            "private_key": check.readable_path("file"),
            "ca_list": check.readable_path("file"),
            "require_client_cert": check.boolean,
            "min_tls_version": check.choice(*TLS_VERSIONS),
            "tls_handshake_timeout": check.positive_float,
            "verify_server": check.boolean,
            "cert_check_on_conn_reusage": check.boolean,
        },
    ),
    "http": (
        HttpConfig,
        {
            "require_origin": check.boolean,
            "allowed_origins": check.origins,
            "cors_mode": check.int_range(0, 2),
            "document_root": check.directory,
            "trusted_proxies": check.cidrs,
        },
    ),
    "keepalive": (
        KeepaliveConfig,
        {
            "mechanism": check.choice(*KEEPALIVE_MECHANISMS),
            "timeout": check.positive_float,
            "interval": check.positive_float,
            "ping_data": check.ping_data,
        },
    ),
    "sip": (
        SipConfig,
        {
            "listen": check.sip_listen,
            "advertise": check.advertise,
            "upstream": check.upstream,
            "flow_token_secret": check.string,
            "contact_mode": check.choice("path", "alias"),
            "max_message_size": check.int_range(MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE),
            "max_headers": check.int_range(8, 65535),
            "max_header_line": check.int_range(256, MAX_MESSAGE_SIZE),
            "max_uri_length": check.int_range(64, MAX_MESSAGE_SIZE),
            "max_vias": check.int_range(1, 1024),
            "t1": check.positive_float,
            "t2": check.positive_float,
            "t4": check.positive_float,
            "udp_buffer_size": check.int_range(0, MAX_UDP_BUFFER),
        },
    ),
    "registrar": (
        RegistrarConfig,
        {
            "domains": check.domains,
            "min_expires": check.int_range(1, MAX_EXPIRES),
            "max_expires": check.int_range(1, MAX_EXPIRES),
            "default_expires": check.int_range(1, MAX_EXPIRES),
        },
    ),
    "client": (
        ClientConfig,
        {
            "origin": check.origin,
            "headers": check.headers_table,
            "certificate": check.readable_path("file"),
            "private_key": check.readable_path("file"),
            "max_queued_messages": check.int_range(1, 100_000),
            "max_queued_bytes": check.int_range(1024, MAX_MESSAGE_SIZE * 16),
        },
    ),
    "trace": (
        TraceConfig,
        {
            "destination": check.trace_destination,
            "on": check.boolean,
            "filter": check.callable_ref,
            "capture_id": check.int_range(0, 2**32 - 1),
            "auth_key": check.string,
            "node_name": check.string,
            "queue_size": check.int_range(1, 10_000_000),
        },
    ),
    "admin": (AdminConfig, {"listen": check.endpoint_string, "token": check.string}),
    "events": (EventsConfig, {"on_closed": check.callable_ref}),
    "log": (LogConfig, {"level": check.choice(*LOG_LEVELS), "format": check.choice("text", "json")}),
    "server": (ServerConfig, {"workers": check.workers}),
    "auth": (
        AuthConfig,
        {
            "required": check.boolean,
            "hmac_secrets": check.secrets,
            "hmac_algorithm": check.choice("sha256", "sha1"),
            "jwt_secret": check.jwt_secret,
            "jwt_public_key": check.jwt_key_file("load_public_key"),
            "jwt_jwks": check.jwt_key_file("load_jwks"),
            "jwt_audience": check.string,
            "jwt_issuer": check.string,
            "jwt_identity_claim": check.string,
            "hook": check.callable_ref,
            "bind_identity": check.boolean,
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "max_connections_per_ip": check.int_range(0),
            "handshakes_per_ip_per_second": check.rate,
            "handshakes_per_ip_burst": check.int_range(1),
            "messages_per_connection_per_second": check.rate,
            "messages_per_connection_burst": check.int_range(1),
        },
    ),
    "msrp": (
        MsrpConfig,
        {
            "require_auth": check.boolean,
            "max_chunk_size": check.int_range(MIN_MSRP_CHUNK, MAX_MSRP_CHUNK),
            "allow_insecure": check.boolean,
            "advertise": check.advertise,
            "expires": check.int_range(1, MAX_EXPIRES),
            "listen": check.msrp_listen,
            "max_backlog": check.int_range(64 * 1024, 1 << 30),
            "peer_idle_timeout": check.positive_float,
            "peer_connect_timeout": check.positive_float,
            "verify_peers": check.boolean,
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
    if "msrp" in config.ws.subprotocols and not config.msrp.allow_insecure:
        raise ConfigError("[ws] subprotocols", "msrp only on [wss] (RFC 7977 requires secure WebSockets); "
                                               "[msrp] allow_insecure = true permits it for tests and loopback")
    if any(entry.transport == "tls" for entry in config.msrp.listen) and not wss.certificate:
        raise ConfigError("[msrp] listen", "tls: entries need [wss] certificate and private_key")
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
