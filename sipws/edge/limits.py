"""Per-source limits as pure rules: token buckets, bans, throttled log lines.

Nothing here reads a clock or touches a socket: every method takes ``now``
(seconds, the reactor's clock) so tests drive time by hand.  The adapter
``sipws.transport.edge_limits`` applies these at accept, at the opening
handshake and per message; ``sipws.edge.sketch`` counts per-address
connections and handshakes across worker processes.

Every table is bounded:

- a ``TokenBucket`` belongs to one connection and dies with it;
- the ``BanList`` holds at most ``MAX_BANS`` entries (an operator's list, not
  an attacker's: only the admin adds to it);
- a ``LogThrottle`` remembers at most ``LOG_THROTTLE_KEYS`` sources; past
  that, events are folded into one "other sources" line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterator, Optional

from sipws.edge import EdgeError
from sipws.edge.networks import IPNetwork, parse_address

#: Most bans held at once (each about 300 bytes; ws.ban past this is refused).
MAX_BANS = 10_000
#: Longest ban duration accepted (seconds; 0 = until unbanned): ten years.
MAX_BAN_DURATION = 10 * 365 * 86400.0
#: IPv6 sources are limited per /64: one host (one home, one browser) gets a
#: whole /64 and could otherwise cycle through 2**64 addresses.
IPV6_SOURCE_PREFIX = 64
#: A throttled log line is written at most once per this many seconds per source.
LOG_INTERVAL = 10.0
#: Sources a LogThrottle remembers; beyond, events go to one shared bucket.
LOG_THROTTLE_KEYS = 1024
#: The shared key for sources a full LogThrottle cannot take.
OTHER_SOURCES = "*"


class BadBan(EdgeError, ValueError):
    """A ban that cannot be made (bad network, bad duration, list full)."""


def source_key(host: str) -> str:
    """The unit limits count: an IPv4 address, an IPv6 /64, or the text itself.

    IPv4-mapped IPv6 (``::ffff:192.0.2.7``) counts as the IPv4 address.  The
    common case (a plain IPv4 string) returns ``host`` itself: no new object
    per connection.
    """
    if "." in host and ":" not in host:
        return host
    address = parse_address(host)
    if address is None:
        return host
    if address.version == 4:
        return str(address)
    network = ipaddress.IPv6Network((int(address) >> (128 - IPV6_SOURCE_PREFIX) << (128 - IPV6_SOURCE_PREFIX),
                                     IPV6_SOURCE_PREFIX))
    return str(network)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one message takes one token.

    Per connection, on the hot path: ``take`` is a few float operations and
    no allocation beyond the floats.  A clock that steps back (wall-clock
    adjustment) adds nothing rather than taking tokens away.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """One token if there is one; False (nothing taken) if not."""
        tokens = self.tokens
        elapsed = now - self.stamp
        if elapsed > 0.0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


# -- bans -----------------------------------------------------------------------------------


@dataclass
class Ban:
    """One banned address or network; ``until`` 0 = until unbanned."""

    network: IPNetwork
    until: float
    reason: str
    created: float
    drops: int = 0

    def remaining(self, now: float) -> Optional[float]:
        """Seconds left, None for a ban without an end."""
        return None if not self.until else max(0.0, self.until - now)

    def as_dict(self, now: float) -> dict:
        remaining = self.remaining(now)
        return {
            "network": str(self.network),
            "remaining": None if remaining is None else round(remaining, 3),
            "until": self.until or None,
            "reason": self.reason,
            "age": round(max(0.0, now - self.created), 3),
            "drops": self.drops,
        }


def parse_ban_network(text: str) -> IPNetwork:
    """An address (a /32 or /128) or a CIDR; host bits are cleared (``192.0.2.7/24`` bans the /24).

    IPv4-mapped IPv6 is turned into IPv4, as peers are matched (networks.py).
    """
    if not isinstance(text, str) or not text.strip() or len(text) > 64:
        raise BadBan(f"not an address or CIDR: {text!r}")
    try:
        network = ipaddress.ip_network(text.strip().strip("[]"), strict=False)
    except ValueError:
        raise BadBan(f"not an address or CIDR: {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None \
            and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.IPv4Network((int(mapped), network.prefixlen - 96), strict=False)
    return network


class BanList:
    """Banned networks, looked up per accepted connection in a few dict probes.

    Bans are indexed by (IP version, prefix length) then by the masked
    network number, so a lookup costs one probe per distinct prefix length in
    use (at most 33 for IPv4, 129 for IPv6), whatever the number of bans.
    Expired bans are dropped when met and by ``expire``.
    """

    def __init__(self, max_bans: int = MAX_BANS) -> None:
        self.max_bans = max_bans
        #: (version, prefixlen) -> {network number: Ban}
        self._index: dict[tuple[int, int], dict[int, Ban]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Ban]:
        for table in self._index.values():
            yield from table.values()

    def add(self, network: IPNetwork, until: float, reason: str, now: float) -> Ban:
        """Ban ``network`` until ``until`` (0 = no end); re-banning updates it, keeps its drops."""
        key = (network.version, network.prefixlen)
        table = self._index.get(key)
        number = int(network.network_address)
        old = table.get(number) if table is not None else None
        if old is not None:
            old.until, old.reason = until, reason
            return old
        if self._count >= self.max_bans:
            self.expire(now)
            if self._count >= self.max_bans:
                raise BadBan(f"the ban list is full ({self.max_bans} entries); unban some first")
        ban = Ban(network, until, reason, now)
        self._index.setdefault(key, {})[number] = ban
        self._count += 1
        return ban

    def remove(self, network: IPNetwork) -> Optional[Ban]:
        key = (network.version, network.prefixlen)
        table = self._index.get(key)
        if table is None:
            return None
        ban = table.pop(int(network.network_address), None)
        if ban is not None:
            self._count -= 1
            if not table:
                del self._index[key]
        return ban

    def match(self, host: str, now: float) -> Optional[Ban]:
        """The ban covering ``host`` (the narrowest, if several), or None; expired ones go."""
        if not self._count:
            return None
        address = parse_address(host)
        if address is None:
            return None
        number = int(address)
        bits = 32 if address.version == 4 else 128
        found: Optional[Ban] = None
        for (version, prefix), table in list(self._index.items()):
            if version != address.version:
                continue
            ban = table.get(number >> (bits - prefix) << (bits - prefix) if prefix else 0)
            if ban is None:
                continue
            if ban.until and ban.until <= now:
                self.remove(ban.network)
                continue
            if found is None or prefix > found.network.prefixlen:
                found = ban
        return found

    def expire(self, now: float) -> int:
        """Drop every ban whose time is up; how many went."""
        gone = [ban for ban in self if ban.until and ban.until <= now]
        for ban in gone:
            self.remove(ban.network)
        return len(gone)

    def listing(self, now: float) -> list[dict]:
        self.expire(now)
        return sorted((ban.as_dict(now) for ban in self), key=lambda b: b["network"])


def ban_until(duration: float, now: float) -> float:
    """The absolute end of a ban of ``duration`` seconds (0 = none)."""
    if duration != duration or duration < 0 or duration > MAX_BAN_DURATION:  # NaN too
        raise BadBan(f"duration: must be between 0 and {MAX_BAN_DURATION:.0f} seconds, got {duration!r}")
    return now + duration if duration else 0.0


# -- throttled log lines --------------------------------------------------------------------


class LogThrottle:
    """At most one log line per source per ``interval``, saying how many events it covers.

    ``note(key, now)`` counts an event and returns the number of events to
    report when a line is due now (the first event of a source, then the
    events of each later interval), or 0 when the line is held back.  An
    attacker cycling through sources fills at most ``max_keys`` entries; the
    rest share ``OTHER_SOURCES``.
    """

    def __init__(self, interval: float = LOG_INTERVAL, max_keys: int = LOG_THROTTLE_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        #: key -> [time of the last line, events since]
        self._seen: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def note(self, key: str, now: float) -> int:
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= self.max_keys:
                self._purge(now)
                if len(self._seen) >= self.max_keys:
                    key = OTHER_SOURCES
                    entry = self._seen.get(key)
            if entry is None:
                self._seen[key] = [now, 0]
                return 1
        entry[1] += 1
        if now - entry[0] >= self.interval:
            count, entry[0], entry[1] = entry[1], now, 0
            return count
        return 0

    def _purge(self, now: float) -> None:
        """Forget sources quiet for a whole interval (their held-back count is dropped)."""
        stale = [k for k, (last, _) in self._seen.items() if now - last >= self.interval]
        for key in stale:
            del self._seen[key]
