"""Sets of IP networks (CIDRs) and the address checks made against them.

Used by ``[ws] proxy_protocol_from``, ``[http] trusted_proxies`` and bans.
An IPv4 peer seen on a dual-stack socket as ``::ffff:a.b.c.d`` is matched as
``a.b.c.d``, so operators write IPv4 CIDRs for IPv4 clients whatever the socket.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from sipws.edge import EdgeError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadNetwork(EdgeError, ValueError):
    """Text that is not an address or a CIDR."""


def parse_network(text: str) -> IPNetwork:
    """``10.0.0.0/8``, ``192.0.2.7`` (a /32), ``2001:db8::/32``; host bits must be zero."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise BadNetwork(f"not an address or CIDR: {text!r} ({exc})") from None


def parse_address(text: str) -> IPAddress | None:
    """An address, IPv4-mapped IPv6 unwrapped; None for anything that is not one."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """An immutable set of networks with a membership test on address strings."""

    __slots__ = ("networks", "_cache")

    #: Addresses whose answer is remembered (a connection flood repeats a few sources).
    CACHE_SIZE = 4096

    def __init__(self, networks: Iterable[IPNetwork | str] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            parse_network(n) if isinstance(n, str) else n for n in networks
        )
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet({[str(n) for n in self.networks]})"

    def __contains__(self, host: object) -> bool:
        if not self.networks or not isinstance(host, str):
            return False
        known = self._cache.get(host)
        if known is not None:
            return known
        address = parse_address(host)
        found = address is not None and any(
            address.version == net.version and address in net for net in self.networks
        )
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = found
        return found
