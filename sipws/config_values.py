"""Configuration values: the parsed value types and one checker per kind of value.

Each checker takes (key, raw TOML value) - some also the raw section - and returns
the typed value, or raises ConfigError with one line naming the key.  sipws.config
puts them together into the schema of sections and keys.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
from dataclasses import dataclass
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
#: WebSocket subprotocols sipws speaks: SIP (RFC 7118) and MSRP (RFC 7977).
SUBPROTOCOLS = ("sip", "msrp")
#: Smallest and largest [msrp] max_chunk_size (bytes of one chunk's body).
MIN_MSRP_CHUNK = 2048
MAX_MSRP_CHUNK = 1024 * 1024
#: MSRP's registered port (RFC 4975 §15.3), for [msrp] listen entries without one.
MSRP_PORT = 2855
#: An Origin (RFC 6454 serialisation): scheme "://" host[:port], nothing after.
_ORIGIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+$")


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
# Value checkers: each takes (key, raw value) and returns the typed value.

_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string", list: "a list"}


def expect(key: str, value: Any, kind: type) -> Any:
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


def int_range(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        value = expect(key, value, int)
        if value < lo:
            raise ConfigError(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(key, f"must be <= {hi}, got {value}")
        return value

    return check


def positive_float(key: str, value: Any) -> float:
    value = expect(key, value, float)
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")
    return value


def boolean(key: str, value: Any) -> bool:
    return expect(key, value, bool)


def string(key: str, value: Any) -> str:
    return expect(key, value, str)


def choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        value = expect(key, value, str)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


port = int_range(1, 65535)


def resource(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if not value.startswith("/") or any(c in value for c in " ?#\r\n\t"):
        raise ConfigError(key, f"must be a path starting with '/', got {value!r}")
    return value


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def check_host(key: str, host: str, original: str) -> str:
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
            port = parse_port(key, rest[1:], original)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = parse_port(key, port_text, original)
    elif text.count(":") > 1:
        raise ConfigError(key, f"write IPv6 addresses as [ADDR]:PORT, got {original!r}")
    else:
        host = text
    if port is None:
        raise ConfigError(key, f"missing port in {original!r}")
    return HostPort(check_host(key, host, original), port)


def parse_port(key: str, text: str, original: str) -> int:
    # Port 0 (pick any) is allowed in listeners so tests can bind safely.
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(key, f"bad port in {original!r}")
    return int(text)


def string_list(key: str, value: Any) -> list[str]:
    value = expect(key, value, list)
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(key, f"must be a list of strings, got item {item!r}")
    return value


def listen_list(default_port_key: str) -> Callable[[str, Any, dict], tuple[HostPort, ...]]:
    def check(key: str, value: Any, section: dict) -> tuple[HostPort, ...]:
        port = section.get(default_port_key)
        return tuple(parse_host_port(key, item, port) for item in string_list(key, value))

    return check


def sip_listen(key: str, value: Any, section: dict) -> tuple[SipListen, ...]:
    result = []
    for item in string_list(key, value):
        transport, sep, rest = item.partition(":")
        if not sep or transport not in SIP_TRANSPORTS:
            raise ConfigError(
                key, f"entries are udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT, got {item!r}"
            )
        address = parse_host_port(key, rest, 5061 if transport == "tls" else 5060)
        result.append(SipListen(transport, address.host, address.port))
    return tuple(result)


def origins(key: str, value: Any) -> tuple[str, ...]:
    result = []
    for item in string_list(key, value):
        if item != "null" and not _ORIGIN_RE.match(item):
            raise ConfigError(
                key, f"entries are origins like https://example.com or 'null', got {item!r}"
            )
        result.append(item.lower())
    return tuple(result)


def ping_data(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if len(value.encode()) > MAX_CONTROL_PAYLOAD:
        raise ConfigError(key, f"must be at most {MAX_CONTROL_PAYLOAD} bytes, got {len(value.encode())}")
    return value


def directory(key: str, value: Any) -> str:
    """A readable directory, kept as an absolute path (relative = to the working directory)."""
    value = expect(key, value, str)
    if not value:
        return value
    if not os.path.isdir(value):
        raise ConfigError(key, f"{value!r} is not a directory")
    if not os.access(value, os.R_OK | os.X_OK):
        raise ConfigError(key, f"directory {value!r} is not readable")
    return os.path.abspath(value)


def readable_path(kind: str) -> Callable[[str, Any], str]:
    """A file (or, for certificates, a directory of PEM files) that must be readable."""

    def check(key: str, value: Any) -> str:
        value = expect(key, value, str)
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


def endpoint_string(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if value and not re.match(r"^(tcp|unix|tcp6|ssl):", value):
        raise ConfigError(key, f"must be a Twisted endpoint like tcp:8088 or unix:/path, got {value!r}")
    return value


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Handshake headers sipws writes itself; configuring them would break the upgrade.
_RESERVED_HEADERS = frozenset(
    ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
     "sec-websocket-protocol", "sec-websocket-extensions", "origin")
)


def headers_table(key: str, value: Any) -> tuple[tuple[str, str], ...]:
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


def origin(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if value and not _ORIGIN_RE.match(value):
        raise ConfigError(key, f"must be an origin like https://sipws.example.com, got {value!r}")
    return value


def trace_destination(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if not value:
        return value
    proto, sep, rest = value.partition(":")
    if not sep or proto not in ("udp", "tcp"):
        raise ConfigError(key, f"must be udp:HOST:PORT or tcp:HOST:PORT, got {value!r}")
    parse_host_port(key, rest, None)
    return value


def upstream(key: str, value: Any) -> str:
    value = expect(key, value, str)
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


def domains(key: str, value: Any) -> tuple[str, ...]:
    items = expect(key, value, list)
    domains = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(key, f"must be a list of domain names, got {item!r}")
        lowered = item.lower()
        if not _DOMAIN_RE.match(lowered):
            raise ConfigError(key, f"not a domain name: {item!r}")
        domains.append(lowered)
    return tuple(domains)


def advertise(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if value:
        parse_host_port(key, value, 0)
    return value


def msrp_listen(key: str, value: Any) -> tuple[SipListen, ...]:
    """``tcp:HOST:PORT`` / ``tls:HOST:PORT`` entries (MSRP has no UDP)."""
    entries = []
    for text in string_list(key, value):
        transport, sep, rest = text.partition(":")
        if not sep or transport not in ("tcp", "tls"):
            raise ConfigError(key, f"entries must look like tcp:HOST:PORT or tls:HOST:PORT, got {text!r}")
        address = parse_host_port(key, rest, MSRP_PORT)
        entries.append(SipListen(transport, address.host, address.port))
    return tuple(entries)


def subprotocols(key: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct names from SUBPROTOCOLS, in the operator's order."""
    names = string_list(key, value)
    if not names:
        raise ConfigError(key, f"must name at least one of {', '.join(SUBPROTOCOLS)}")
    for name in names:
        if name not in SUBPROTOCOLS:
            raise ConfigError(key, f"must be among {', '.join(SUBPROTOCOLS)}, got {name!r}")
    if len(set(names)) != len(names):
        raise ConfigError(key, f"names a subprotocol twice: {names!r}")
    return tuple(names)


def callable_ref(key: str, value: Any) -> str:
    """``package.module:callable``; resolved now so a typo stops start-up."""
    value = expect(key, value, str)
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


def cidrs(key: str, value: Any) -> tuple[str, ...]:
    """A list of addresses or CIDRs, normalised (``10.0.0.0/8``, ``::1/128``)."""
    from sipws.edge.networks import BadNetwork, parse_network

    result = []
    for item in string_list(key, value):
        try:
            result.append(str(parse_network(item)))
        except BadNetwork as exc:
            raise ConfigError(key, str(exc)) from None
    return tuple(result)


def secrets(key: str, value: Any) -> tuple[str, ...]:
    items = string_list(key, value)
    if any(not item for item in items):
        raise ConfigError(key, "an empty secret verifies nothing")
    return tuple(items)


def jwt_key_file(loader_name: str) -> Callable[[str, Any], str]:
    """A readable file that ``sipws.edge.credentials.<loader_name>`` accepts: a PEM RSA/EC
    public key, or a JWKS of RSA/EC keys; read now so a wrong file stops start-up."""
    readable = readable_path("file")

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


def jwt_secret(key: str, value: Any) -> str:
    value = expect(key, value, str)
    if value and len(value.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(key, f"must be at least {MIN_JWT_SECRET_BYTES} bytes for HS256 (RFC 7518 §3.2), "
                               f"got {len(value.encode('utf-8'))}")
    return value


def rate(key: str, value: Any) -> float:
    value = expect(key, value, float)
    if value < 0:
        raise ConfigError(key, f"must be >= 0 (0 = no limit), got {value}")
    return value


def window_bits(key: str, value: Any) -> int:
    """9..15: RFC 7692 allows 8, but zlib cannot compress raw deflate with an 8-bit window."""
    if value == 8 and not isinstance(value, bool):
        raise ConfigError(key, "must be 9..15, got 8 (RFC 7692 allows 8, zlib cannot compress with it)")
    return int_range(9, 15)(key, value)



#: Most worker processes one instance runs ([server] workers).
MAX_WORKERS = 64


def workers(key: str, value: Any) -> int:
    """A worker count, or "auto" = the CPUs this process may run on."""
    if value == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, MAX_WORKERS))
    if isinstance(value, str):
        raise ConfigError(key, f'must be an integer or "auto", got {value!r}')
    return int_range(1, MAX_WORKERS)(key, value)
