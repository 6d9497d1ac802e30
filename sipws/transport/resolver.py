"""RFC 3263 next-hop resolution for the SIP side, with a TTL cache.

The proxy core decides *where* a request goes as a ``Target`` (transport,
host, port or None); this module turns it into socket addresses:

- a numeric host is used as it is (default port of the transport when none);
- a name with an explicit port: A, then AAAA (RFC 3263 §4.2);
- a name without port: SRV ``_sip._udp`` / ``_sip._tcp`` / ``_sips._tcp``
  ordered by priority and, within a priority, by weight (RFC 2782); each SRV
  target resolved by A/AAAA; no SRV record → A/AAAA on the default port.

NAPTR is not consulted: the transport is always known here (the URI's
``transport`` parameter, its scheme, or the ``[sip] upstream`` setting).
Answers are cached for their TTL (bounded below and above, and in entry
count), so a busy relay does not query DNS per request.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DomainError

from sipws.errors import SipwsError
from sipws.proxy.targets import DEFAULT_PORTS, Target, is_ip_literal

log = Logger(namespace="sipws.transport.resolver")

#: Cache bounds: answers live at least MIN_TTL and at most MAX_TTL seconds.
MIN_TTL = 1.0
MAX_TTL = 3600.0
#: Distinct names kept in the cache; the least recently used goes first.
MAX_CACHE_ENTRIES = 4096
#: SRV service label per transport (RFC 3263 §4.1).
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
#: At most this many addresses are tried for one target.
MAX_ADDRESSES = 16

Address = tuple[str, int]


class ResolveError(SipwsError):
    """A target's name does not resolve (no such name, no address, DNS failure)."""


def order_srv(records: list[tuple[int, int, int, str]], rng: random.Random) -> list[tuple[int, int, int, str]]:
    """RFC 2782 order: ascending priority; within one priority a weighted
    random permutation (weight 0 entries get a small chance, as the RFC says)."""
    result: list[tuple[int, int, int, str]] = []
    for priority in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == priority]
        while group:
            total = sum(r[1] for r in group)
            if total == 0:
                pick = rng.randrange(len(group))
            else:
                point = rng.uniform(0, total)
                running = 0
                pick = len(group) - 1
                for index, record in enumerate(group):
                    running += record[1]
                    if running >= point:
                        pick = index
                        break
            result.append(group.pop(pick))
    return result


class SipResolver:
    """``resolve(target) -> Deferred[list[(ip, port)]]``, failing with ResolveError."""

    def __init__(self, clock: Any, resolver: Any = None, rng: Optional[random.Random] = None) -> None:
        self.clock = clock
        #: The twisted.names resolver; built on first use (reading resolv.conf
        #: and the hosts file), so a relay that only sees numeric hosts never does.
        self._resolver = resolver
        self.rng = rng or random.Random()
        self._cache: OrderedDict[tuple[str, str, Optional[int]], tuple[float, list[Address]]] = OrderedDict()
        #: Lookups that went to DNS (not answered from the cache): for stats.
        self.queries = 0

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            from twisted.names.client import createResolver

            self._resolver = createResolver()
        return self._resolver

    @resolver.setter
    def resolver(self, value: Any) -> None:
        self._resolver = value

    def resolve(self, target: Target) -> defer.Deferred:
        host = target.host.strip("[]")
        if is_ip_literal(host):
            return defer.succeed([(host, target.port_or_default)])
        key = (target.transport, host.lower().rstrip("."), target.port)
        cached = self._cache.get(key)
        if cached is not None:
            expires, addresses = cached
            if expires > self.clock.seconds():
                self._cache.move_to_end(key)
                return defer.succeed(list(addresses))
            del self._cache[key]
        self.queries += 1
        d = self._lookup(key[1], target)
        d.addCallback(self._store, key)
        return d

    def _store(self, answer: tuple[list[Address], float], key: tuple) -> list[Address]:
        addresses, ttl = answer
        ttl = min(max(ttl, MIN_TTL), MAX_TTL)
        self._cache[key] = (self.clock.seconds() + ttl, addresses)
        while len(self._cache) > MAX_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return list(addresses)

    @defer.inlineCallbacks
    def _lookup(self, name: str, target: Target):
        if target.port is not None:
            addresses, ttl = yield self._addresses(name, target.port)
        else:
            addresses, ttl = yield self._srv(name, target)
        if not addresses:
            raise ResolveError(f"{name} has no address")
        return addresses[:MAX_ADDRESSES], ttl

    @defer.inlineCallbacks
    def _srv(self, name: str, target: Target):
        prefix = SRV_PREFIX.get(target.transport)
        records: list[tuple[int, int, int, str]] = []
        ttl = MAX_TTL
        if prefix:
            try:
                answers, _, _ = yield self.resolver.lookupService(prefix + name)
            except (DNSNameError, DomainError):
                answers = []
            except defer.TimeoutError as exc:
                raise ResolveError(f"DNS timeout for {prefix}{name}") from exc
            except Exception as exc:  # noqa: BLE001 - any resolver failure is a DNS failure here
                raise ResolveError(f"DNS failure for {prefix}{name}: {exc}") from exc
            for answer in answers:
                if answer.type == dns.SRV:
                    srv = answer.payload
                    records.append((srv.priority, srv.weight, srv.port, str(srv.target)))
                    ttl = min(ttl, answer.ttl)
        if not records:
            return (yield self._addresses(name, DEFAULT_PORTS[target.transport]))
        addresses: list[Address] = []
        for _, _, port, srv_target in order_srv(records, self.rng):
            if srv_target in (".", ""):
                continue  # "service decidedly not available" (RFC 2782)
            try:
                found, found_ttl = yield self._addresses(srv_target, port)
            except ResolveError:
                continue
            addresses.extend(found)
            ttl = min(ttl, found_ttl)
            if len(addresses) >= MAX_ADDRESSES:
                break
        return addresses, ttl

    @defer.inlineCallbacks
    def _addresses(self, name: str, port: int):
        """A records, then AAAA; (addresses, smallest TTL)."""
        addresses: list[Address] = []
        ttl = MAX_TTL
        for lookup, rtype in ((self.resolver.lookupAddress, dns.A), (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield lookup(name)
            except (DNSNameError, DomainError):
                continue
            except defer.TimeoutError as exc:
                raise ResolveError(f"DNS timeout for {name}") from exc
            except Exception as exc:  # noqa: BLE001
                raise ResolveError(f"DNS failure for {name}: {exc}") from exc
            for answer in answers:
                if answer.type == rtype:
                    addresses.append((answer.payload.dottedQuad() if rtype == dns.A
                                      else _v6_text(answer.payload.address), port))
                    ttl = min(ttl, answer.ttl)
            if addresses:
                break
        if not addresses:
            raise ResolveError(f"{name} has no A or AAAA record")
        return addresses, float(ttl)


def _v6_text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))
