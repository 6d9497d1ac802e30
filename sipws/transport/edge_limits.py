"""Per-source limits and bans applied to WebSocket connections (``[limits]``, ws.ban).

The rules are pure (``sipws.edge.limits``, ``sipws.edge.sketch``); this
adapter calls them at three points of an accepted connection's life:

- **accept** (``drop_at_accept``, from ``connectionMade``): a banned peer is
  aborted before a byte is read: no table entry, no closed line, no trace;
  counted (``limits.banned_dropped``) and logged at most once per ban per
  ``LOG_INTERVAL`` seconds with the number of drops, so a banned flood cannot
  flood the log;
- **handshake** (``admit``, from ``processHandshake``, after the request and
  capacity checks): a ban on the client address known only now (from a
  trusted proxy's header) gets 403; too many open connections or too many
  handshakes from the address get 429 (``Retry-After`` for the rate); an
  admitted handshake counts as an open connection until ``released``;
- **each message** (``message_bucket`` per connection, checked in
  ``ws_common``): over the rate the connection is closed with 1008.

The per-address counts live in a ``SharedCounters`` block: one row in a
single process, one row per worker under a master (which creates the block
and passes it to each worker), so a limit holds for the whole instance.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

from twisted.logger import Logger

from sipws.edge import limits as rules
from sipws.edge import sketch
from sipws.edge.networks import parse_address
from sipws.transport import handshake
from sipws.transport.connections import OPEN

log = Logger(namespace="sipws.limits")

#: Counters every stats answer carries (0 until counted).
COUNTERS = (
    "limits.banned_dropped",
    "limits.banned_refused",
    "limits.connections_refused",
    "limits.handshakes_refused",
    "limits.messages_closed",
    "limits.ban_closed",
)


class EdgeLimits:
    """The instance's limits as one worker (or the single process) sees them."""

    def __init__(self, root: Any) -> None:
        self.root = root
        config = root.config.limits
        self.max_connections = config.max_connections_per_ip
        self.handshake_rate = config.handshakes_per_ip_per_second
        self.handshake_burst = config.handshakes_per_ip_burst
        self.message_rate = config.messages_per_connection_per_second
        self.message_burst = config.messages_per_connection_burst
        self.bans = rules.BanList()
        self.ban_log = rules.LogThrottle()
        self.message_log = rules.LogThrottle()
        # A single process counts in a private block of one row; a worker is
        # given the master's shared block (attach_shared) before it starts.
        self.counters = sketch.SharedCounters(bytearray(sketch.block_size(1)), 1, 0, os.urandom(sketch.KEY_BYTES))
        self._mapping: Any = None

    @property
    def counting(self) -> bool:
        return bool(self.max_connections or self.handshake_rate)

    def attach_shared(self, mapping: Any, rows: int, row: int, key: bytes) -> None:
        """Count in the master's block (``mapping``: an mmap of it) as row ``row``."""
        self.counters.release()
        self.counters = sketch.SharedCounters(mapping, rows, row, key)
        self._mapping = mapping

    # -- accept ------------------------------------------------------------------------

    def drop_at_accept(self, protocol: Any) -> bool:
        """True (and the connection aborted) when the peer is banned."""
        if not len(self.bans):
            return False
        host = protocol.transport.getPeer().host
        now = self.root.reactor.seconds()
        ban = self.bans.match(host, now)
        if ban is None:
            return False
        protocol.transport.abortConnection()
        ban.drops += 1
        self.root.stats.incr("limits.banned_dropped")
        self._log_ban(ban, host, now, "dropped at accept")
        return True

    def _log_ban(self, ban: rules.Ban, host: str, now: float, what: str) -> None:
        count = self.ban_log.note(str(ban.network), now)
        if count:
            log.warn("banned source {host} {what} (ban {network}); {count} dropped from this ban "
                     "since the last line (at most one line per {interval:g} s per ban)",
                     host=host, what=what, network=str(ban.network), count=count,
                     interval=self.ban_log.interval)

    # -- handshake ---------------------------------------------------------------------

    def admit(self, protocol: Any) -> Optional[handshake.Refusal]:
        """None to go on with the handshake; a Refusal (403 banned, 429 over a limit) otherwise."""
        record = protocol.record
        host = record.remote[0]
        now = self.root.reactor.seconds()
        if len(self.bans):
            ban = self.bans.match(host, now)
            if ban is not None:
                ban.drops += 1
                self.root.stats.incr("limits.banned_refused")
                return handshake.Refusal(403, f"banned source (ban {ban.network})")
        if not self.counting:
            return None
        source = rules.source_key(host)
        cells = self.counters.cells(source)
        if self.handshake_rate and not self.counters.try_handshake(
                cells, now, self.handshake_rate, self.handshake_burst):
            self.root.stats.incr("limits.handshakes_refused")
            wait = self.counters.retry_after(cells, now, self.handshake_rate, self.handshake_burst)
            return handshake.Refusal(
                429, f"more than {self.handshake_rate:g} handshakes per second from {source} "
                     f"(burst {self.handshake_burst}; [limits] handshakes_per_ip_per_second)",
                (("Retry-After", str(max(1, math.ceil(wait)))),))
        if self.max_connections:
            if not self.counters.try_open(cells, self.max_connections):
                self.root.stats.incr("limits.connections_refused")
                return handshake.Refusal(
                    429, f"more than {self.max_connections} connections from {source} "
                         "([limits] max_connections_per_ip)")
            protocol.limit_source = source
        return None

    def released(self, protocol: Any) -> None:
        """A connection admitted by ``admit`` has ended: its address has one fewer open."""
        source = protocol.limit_source
        protocol.limit_source = None
        self.counters.add_open(self.counters.cells(source), -1)

    # -- messages ----------------------------------------------------------------------

    def message_bucket(self, now: float) -> Optional[rules.TokenBucket]:
        if not self.message_rate:
            return None
        return rules.TokenBucket(self.message_rate, self.message_burst, now)

    def over_message_rate(self, protocol: Any) -> None:
        """Close a connection sending faster than [limits] messages_per_connection_per_second."""
        record = protocol.record
        self.root.stats.incr("limits.messages_closed")
        host, port = record.remote
        count = self.message_log.note(rules.source_key(host), self.root.reactor.seconds())
        if count:
            log.warn("message rate exceeded by {host}:{port} conn={conn_id}: over {rate:g} messages/s "
                     "(burst {burst}), closing with 1008; {count} such connection(s) closed from this "
                     "source since the last line", host=host, port=port, conn_id=record.id,
                     rate=self.message_rate, burst=self.message_burst, count=count)
        protocol.close_for_policy(f"message rate over {self.message_rate:g}/s")

    # -- bans (admin) ------------------------------------------------------------------

    def ban(self, network: Any, until: float, reason: str) -> dict[str, Any]:
        """Ban ``network``; open connections from it are closed with 1008 now."""
        now = self.root.reactor.seconds()
        ban = self.bans.add(network, until, reason, now)
        closed = 0
        for record in list(self.root.connections.values()):
            if record.role != "server" or record.protocol is None:
                continue
            address = parse_address(record.remote[0])
            if address is None or address.version != network.version or address not in network:
                continue
            # Now, not after a close handshake the banned peer may never answer:
            # Close 1008 and TCP closed behind it (a handshake in progress is dropped).
            if record.state == OPEN:
                record.protocol.close_for_policy("banned")
            else:
                record.protocol.abort("banned")
            closed += 1
        if closed:
            self.root.stats.incr("limits.ban_closed", closed)
        log.info("ban {network} for {duration} ({reason}): {closed} open connection(s) closed",
                 network=str(network), duration=f"{until - now:.0f} s" if until else "ever",
                 reason=reason or "no reason given", closed=closed)
        return dict(ban.as_dict(now), closed=closed)

    def unban(self, network: Any) -> dict[str, Any]:
        ban = self.bans.remove(network)
        if ban is not None:
            log.info("unban {network} ({drops} drops while banned)", network=str(network), drops=ban.drops)
        return {"network": str(network), "unbanned": ban is not None,
                "drops": ban.drops if ban is not None else 0}

    def listing(self) -> list[dict[str, Any]]:
        return self.bans.listing(self.root.reactor.seconds())

    def stats(self) -> dict[str, Any]:
        self.bans.expire(self.root.reactor.seconds())
        return {"bans": len(self.bans)}


def install(root: Any) -> None:
    root.limits = EdgeLimits(root)
