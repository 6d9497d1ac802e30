"""Next-hop decisions without DNS (RFC 3261 §16.4-16.6, RFC 3263 rules).

The core decides *where* a request goes as a Target (scheme, host, port or
None, transport); the I/O layer resolves the host (RFC 3263: SRV when no
port and the host is a name, then A/AAAA) and sends.  ``LocalAddresses``
answers "is this URI mine?" and gives the address we write into Via,
Record-Route and Path for each transport.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional

from sipws.proxy.errors import ProxyError
from sipws.sip import SipUri
from sipws.sip.uri import normalize_host

#: Transports toward the SIP core.
SIP_TRANSPORTS = ("udp", "tcp", "tls")
#: Transports of WebSocket flows.
WS_TRANSPORTS = ("ws", "wss")
#: Default port per transport (RFC 3261 §19.1.2, RFC 7118 §7 for ws/wss).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
#: Reserved top-level domain browsers use for their Via/Contact hosts (RFC 7118).
INVALID_TLD = ".invalid"
#: Listening hosts that mean "every address".
_WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})


class NoRoute(ProxyError):
    """A request cannot be sent anywhere (bad scheme, unknown transport...)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@functools.lru_cache(maxsize=1024)
def is_ip_literal(host: str) -> bool:
    """Is ``host`` a literal IPv4 or IPv6 address (no brackets)?  Cached:
    next hops repeat, and this is on the relay's path for every request."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_invalid_host(host: str) -> bool:
    """A ``*.invalid`` name: a WebSocket client's made-up address, never dialled."""
    return host.lower().rstrip(".").endswith(INVALID_TLD) or host.lower() == "invalid"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: transport is udp, tcp, tls, ws or wss; port None = resolve."""

    scheme: str
    host: str
    port: Optional[int]
    transport: str
    #: ws/wss targets given as a URL (an upstream WebSocket server): its path.
    resource: str = "/"

    @property
    def is_ws(self) -> bool:
        return self.transport in WS_TRANSPORTS

    @property
    def reliable(self) -> bool:
        """Everything but UDP is reliable: no retransmissions from us there."""
        return self.transport != "udp"

    @property
    def dialable(self) -> bool:
        """False for a client's ``*.invalid`` host: such a target is never dialled."""
        return not is_invalid_host(self.host)

    @property
    def port_or_default(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.transport]

    @property
    def is_numeric(self) -> bool:
        return is_ip_literal(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"{self.transport}:{host}{port}"


def target_for_uri(uri: SipUri) -> Target:
    """The Target a SIP URI designates (RFC 3263 §4.1 transport choice, no DNS).

    ``;transport=`` wins; otherwise sips means tls and sip means udp (a
    numeric host or explicit port without transport is UDP for sip: in RFC
    3263; for a name without port the resolver may still find SRV records for
    that transport).  ``transport=ws`` means ws for sip: and wss for sips:.
    ``maddr`` overrides the host (RFC 3261 §19.1.1).
    """
    if uri.scheme not in ("sip", "sips"):
        raise NoRoute(f"unsupported URI scheme {uri.scheme!r}", 416)
    transport = uri.transport
    secure = uri.scheme == "sips"
    if transport is None:
        transport = "tls" if secure else "udp"
    elif transport in WS_TRANSPORTS:
        transport = "wss" if secure or transport == "wss" else "ws"
    elif transport == "tcp" and secure:
        transport = "tls"
    elif transport not in SIP_TRANSPORTS:
        raise NoRoute(f"unsupported transport {transport!r}", 400)
    host = uri.params.get("maddr") or uri.host
    return Target(uri.scheme, host.lower(), uri.port, transport)


def target_for_upstream(text: str) -> Target:
    """The Target of the ``[sip] upstream`` setting: a SIP URI or ws:// / wss:// URL."""
    lowered = text.lower()
    if lowered.startswith(("ws://", "wss://")):
        scheme, rest = text.split("://", 1)
        hostport, slash, path = rest.partition("/")
        host, port = split_host_port(hostport)
        transport = scheme.lower()
        return Target("sips" if transport == "wss" else "sip", host.lower(),
                      port if port is not None else DEFAULT_PORTS[transport], transport,
                      "/" + path if slash else "/")
    from sipws.sip import parse_uri

    return target_for_uri(parse_uri(text))


def target_for_via(via, transport: Optional[str] = None) -> Target:
    """Where a response goes (RFC 3261 §18.2.2, RFC 3581): received/rport first."""
    host = via.received or via.host
    rport = via.rport
    port = rport if isinstance(rport, int) and not isinstance(rport, bool) else via.port
    return Target("sip", host.lower(), port, (transport or via.transport).lower())


def split_host_port(text: str) -> tuple[str, Optional[int]]:
    """"HOST", "HOST:PORT" or "[V6]:PORT" -> (host, port or None)."""
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1:]
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit():
        return host, int(port)
    return text, None


@dataclass(frozen=True, slots=True)
class Address:
    """One address we write into Via / Record-Route / Path."""

    transport: str
    host: str
    port: int

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class LocalAddresses:
    """Our own addresses: what we advertise, and what we recognise as us.

    ``listen`` are (transport, host, port) of the SIP-side sockets;
    ``advertise`` ("host[:port]", may be empty) replaces the host (and the
    port, when given) we write.  Extra host names and ports (WebSocket
    listeners, a wildcard socket's real addresses) can be added with
    ``also``: a URI is mine when its host is one of my hosts and its port
    (or the default port of its transport) one of my ports.
    """

    def __init__(self, listen: Iterable[tuple[str, str, int]], advertise: str = "",
                 also: Iterable[tuple[str, int]] = ()) -> None:
        self._listen = [(t.lower(), h.lower(), p) for t, h, p in listen]
        adv_host, adv_port = split_host_port(advertise) if advertise else (None, None)
        self._adv_host = adv_host.lower() if adv_host else None
        self._adv_port = adv_port
        self._hosts = {normalize_host(h) for _, h, _ in self._listen}
        self._ports = {p for _, _, p in self._listen}
        if self._adv_host:
            self._hosts.add(normalize_host(self._adv_host))
        if adv_port is not None:
            self._ports.add(adv_port)
        for host, port in also:
            self._hosts.add(normalize_host(host))
            self._ports.add(port)

    @classmethod
    def from_config(cls, sip_config, also: Iterable[tuple[str, int]] = ()) -> "LocalAddresses":
        return cls([(x.transport, x.host, x.port) for x in sip_config.listen],
                   sip_config.advertise, also)

    def needs_advertise(self) -> bool:
        """A wildcard listener (0.0.0.0, ::) with no ``advertise``: we would
        write an address nobody can reach into Via, Record-Route and Path.
        The I/O layer should refuse to start or warn (its choice)."""
        return not self._adv_host and any(h in _WILDCARDS for _, h, _ in self._listen)

    def transports(self) -> set[str]:
        return {t for t, _, _ in self._listen}

    def address_for(self, transport: str) -> Address:
        """The address we advertise on ``transport`` (udp/tcp/tls).

        NoRoute (503) when we have no socket for it.  WebSocket legs use the
        address of the first SIP socket (browsers never dial it).
        """
        transport = transport.lower()
        if transport in WS_TRANSPORTS:
            if not self._listen:
                raise NoRoute("no SIP socket to name ourselves", 503)
            _, host, port = self._listen[0]
        else:
            for t, host, port in self._listen:
                if t == transport:
                    break
            else:
                raise NoRoute(f"no {transport} socket toward the core", 503)
        host = self._adv_host or host
        port = self._adv_port if self._adv_port is not None else port
        return Address(transport, host, port)

    def is_mine(self, uri: SipUri) -> bool:
        """Does this Route / Request-URI designate us (host and port)?"""
        if uri.scheme not in ("sip", "sips") or normalize_host(uri.host) not in self._hosts:
            return False
        port = uri.port
        if port is None:
            transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
            if transport == "ws" and uri.scheme == "sips":
                transport = "wss"
            port = DEFAULT_PORTS.get(transport, 5060)
        return port in self._ports

    def is_my_sent_by(self, host: str, port: Optional[int], transport: str) -> bool:
        """Is a Via sent-by ours (for responses and loop checks)?"""
        if normalize_host(host) not in self._hosts:
            return False
        if port is None:
            port = DEFAULT_PORTS.get(transport.lower(), 5060)
        return port in self._ports
