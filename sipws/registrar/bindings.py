"""Registrar bindings in memory: address of record -> contacts, with expiry.

Pure code: time comes from an injected clock (anything with ``seconds()``,
such as the reactor or ``twisted.internet.task.Clock``).  A binding is live
while ``clock.seconds() < expires_at``; reads filter on that, so nothing is
ever answered from a stale binding even if ``expire()`` has not run yet.
``expire()`` only frees memory, from a heap ordered by expiry, so a sweep
with nothing due costs one comparison.

Bounded: at most ``max_per_aor`` bindings per address of record and
``max_total`` in the table; ``replace`` refuses (and changes nothing) beyond
either.  There is no persistence: a restart drops every WebSocket connection,
and with them every binding's flow, anyway.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol

from sipws.registrar.errors import TooManyBindings
from sipws.sip.headers import format_params
from sipws.sip.uri import SipUri, normalize_host

#: Bindings one address of record may hold (several tabs, devices, reg-ids).
MAX_BINDINGS_PER_AOR = 16
#: Bindings in the whole table (each costs about a kilobyte).
MAX_BINDINGS = 100_000
#: The heap may hold this many stale entries per live binding (plus
#: HEAP_SLACK) before it is rebuilt: refreshes push entries, never remove.
HEAP_STALE_FACTOR = 2
HEAP_SLACK = 64


class SecondsClock(Protocol):
    """What the table needs of a clock: the reactor or task.Clock fit."""

    def seconds(self) -> float: ...


def aor_of(uri: SipUri) -> str:
    """The normalized address of record of a SIP URI: ``sip:user@host``.

    The scheme becomes ``sip`` (RFC 5630 §3.1.1: a sips and a sip URI with
    the same user and host name one resource), the host is compared as RFC
    3261 §19.1.4 says (lower case, no trailing dot, canonical IPv6), the user
    keeps its case; port, parameters and headers are not part of an AOR.
    The forking proxy normalizes Request-URIs with the same function.
    """
    return SipUri("sip", uri.user, None, normalize_host(uri.host)).format()


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of an address of record.

    ``params`` are the Contact header parameters to echo (names lower case,
    values as written, ``expires`` left out); ``path`` the REGISTER's Path
    values in order (the route set toward the client); ``flow`` the user
    part of the first Path URI (the edge's flow token, opaque here);
    ``instance`` the +sip.instance value without quotes and angle brackets
    (a urn:uuid lower-cased, as URN comparison treats it); ``reg_id`` the
    RFC 5626 reg-id when outbound applied to this registration.
    """

    aor: str
    contact: str
    params: tuple[tuple[str, Optional[str]], ...]
    path: tuple[str, ...]
    flow: Optional[str]
    instance: Optional[str]
    reg_id: Optional[int]
    call_id: str
    cseq: int
    q: float
    expires_at: float

    def expires_in(self, now: float) -> int:
        """Whole seconds left (rounded up, 0 once expired)."""
        return max(0, math.ceil(self.expires_at - now))

    def contact_value(self, now: float) -> str:
        """``<uri>;params;expires=N``: this binding as a 200 lists it."""
        return f"<{self.contact}>{format_params(dict(self.params))};expires={self.expires_in(now)}"


class BindingTable:
    """Every binding, by address of record; limits enforced on commit."""

    def __init__(self, clock: SecondsClock, max_per_aor: int = MAX_BINDINGS_PER_AOR,
                 max_total: int = MAX_BINDINGS) -> None:
        if max_per_aor < 1 or max_total < 1:
            raise ValueError("binding limits must be >= 1")
        self.clock = clock
        self.max_per_aor = max_per_aor
        self.max_total = max_total
        # aor -> bindings, oldest update first (a refresh moves one to the end).
        self._by_aor: dict[str, list[Binding]] = {}
        # flow -> aors holding a binding with that flow.
        self._by_flow: dict[str, set[str]] = {}
        self._total = 0
        # (expires_at, sequence, aor); entries go stale when bindings change.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    # ------------------------------------------------------------ reading

    def bindings(self, aor: str) -> list[Binding]:
        """The AOR's live bindings in update order (oldest first)."""
        now = self.clock.seconds()
        return [b for b in self._by_aor.get(aor, ()) if b.expires_at > now]

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor`` (normalized, see ``aor_of``): highest q
        first, then the most recently registered or refreshed first."""
        live = self.bindings(aor)
        live.reverse()  # most recent first; sort is stable
        live.sort(key=lambda b: -b.q)
        return live

    def __contains__(self, aor: str) -> bool:
        """Does ``aor`` have a live binding?"""
        return bool(self.bindings(aor))

    def counts(self) -> tuple[int, int]:
        """(addresses of record, bindings), expired ones dropped first."""
        self.expire()
        return len(self._by_aor), self._total

    def dump(self) -> list[dict[str, Any]]:
        """Every live binding as plain data (for ``registrar.dump``)."""
        self.expire()
        now = self.clock.seconds()
        return [
            {"aor": b.aor, "contact": b.contact, "flow": b.flow, "instance": b.instance,
             "reg_id": b.reg_id, "expires": b.expires_in(now), "q": b.q, "path": list(b.path)}
            for aor in sorted(self._by_aor) for b in self._by_aor[aor]
        ]

    # ------------------------------------------------------------ writing

    def replace(self, aor: str, bindings: Iterable[Binding]) -> None:
        """Make ``bindings`` the AOR's whole set (empty: remove the AOR).

        All or nothing: raises TooManyBindings, changing nothing, when the
        new set is over ``max_per_aor`` or the table would pass
        ``max_total``.  Expired bindings are dropped from the new set.
        """
        now = self.clock.seconds()
        new = [b for b in bindings if b.expires_at > now]
        old = self._by_aor.get(aor, [])
        if len(new) > len(old) and len(new) > self.max_per_aor:
            raise TooManyBindings("aor", self.max_per_aor)
        if len(new) > len(old) and self._total - len(old) + len(new) > self.max_total:
            self.expire()  # expired bindings may be what fills the table
            old = self._by_aor.get(aor, [])
            if self._total - len(old) + len(new) > self.max_total:
                raise TooManyBindings("total", self.max_total)
        self._set(aor, old, new)
        for b in new:
            if not any(b is o for o in old):
                self._push(b.expires_at, aor)

    def remove_flow(self, flow: str) -> int:
        """Drop every binding registered through ``flow`` (its WebSocket
        connection closed: nothing can reach those contacts any more).
        Returns how many were dropped."""
        removed = 0
        for aor in list(self._by_flow.get(flow, ())):
            old = self._by_aor.get(aor, [])
            keep = [b for b in old if b.flow != flow]
            removed += len(old) - len(keep)
            self._set(aor, old, keep)
        return removed

    def expire(self) -> int:
        """Free expired bindings; how many went.  O(1) when none is due."""
        now = self.clock.seconds()
        heap = self._heap
        removed = 0
        while heap and heap[0][0] <= now:
            _, _, aor = heapq.heappop(heap)
            old = self._by_aor.get(aor)
            if old:
                keep = [b for b in old if b.expires_at > now]
                if len(keep) != len(old):
                    removed += len(old) - len(keep)
                    self._set(aor, old, keep)
        return removed

    def next_expiry(self) -> Optional[float]:
        """When the next heap entry falls due (may be a stale, earlier
        time): a caller scheduling ``expire()`` can wait until then."""
        return self._heap[0][0] if self._heap else None

    # ----------------------------------------------------------- internal

    def _set(self, aor: str, old: list[Binding], new: list[Binding]) -> None:
        for b in old:
            if b.flow is not None:
                aors = self._by_flow.get(b.flow)
                if aors is not None:
                    aors.discard(aor)
                    if not aors:
                        del self._by_flow[b.flow]
        for b in new:
            if b.flow is not None:
                self._by_flow.setdefault(b.flow, set()).add(aor)
        self._total += len(new) - len(old)
        if new:
            self._by_aor[aor] = list(new)
        else:
            self._by_aor.pop(aor, None)

    def _push(self, expires_at: float, aor: str) -> None:
        if len(self._heap) > HEAP_STALE_FACTOR * self._total + HEAP_SLACK:
            self._rebuild_heap()
        self._seq += 1
        heapq.heappush(self._heap, (expires_at, self._seq, aor))

    def _rebuild_heap(self) -> None:
        """One entry per live binding (drops the stale ones refreshes left)."""
        entries = []
        for aor, bindings in self._by_aor.items():
            for b in bindings:
                self._seq += 1
                entries.append((b.expires_at, self._seq, aor))
        heapq.heapify(entries)
        self._heap = entries
