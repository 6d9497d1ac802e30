"""One clock call for all transaction timers (pure; the clock is injected).

Each RFC 3261 transaction runs two or three timers at once (retransmit,
timeout, linger), and most are cancelled long before they expire.  Giving
each its own reactor ``DelayedCall`` costs about six Python objects per timer,
and Twisted keeps cancelled calls in its heap until it compacts it; with a few
thousand requests a second that is tens of thousands of live objects, which
every full garbage collection must walk (measured with bench/relay.py: pauses
of 100 ms and more).

``TimerQueue`` keeps one heap of ``(when, seq, owner, name, function)``
tuples and a single clock call for the earliest.  The owner holds its live
timers as ``owner._timers[name] = seq`` and the queue calls
``function(owner)`` (a plain function, not a bound method, so a pending timer
makes no reference cycle through its owner); cancelling is dropping that
entry (the heap entry goes stale and is skipped or compacted away).  Holding
only integers, an owner's ``_timers`` dict is never tracked by the cyclic
garbage collector: thousands of transactions linger under load, and each
tracked object lengthens every full collection.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Callable

from twisted.logger import Logger

log = Logger(namespace="sipws.proxy.timers")

#: Compact the heap when stale entries exceed half the live ones plus this many.
COMPACT_SLACK = 256


class TimerQueue:
    """Timers of many owners on one clock call."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Any, str, Callable[[Any], None]]] = []
        self._seq = itertools.count()
        self._live = 0
        self._call: Any = None
        self._call_at = math.inf

    def __len__(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return self._live

    def set(self, owner: Any, name: str, delay: float, function: Callable[[Any], None]) -> None:
        """Run ``function(owner)`` in ``delay`` seconds unless cancelled;
        replaces the owner's timer of the same name."""
        if owner._timers.pop(name, None) is not None:
            self._live -= 1
        when = self.clock.seconds() + delay
        seq = next(self._seq)
        owner._timers[name] = seq
        heapq.heappush(self._heap, (when, seq, owner, name, function))
        self._live += 1
        if when < self._call_at:
            self._arm(when)

    def cancel(self, owner: Any, name: str) -> None:
        if owner._timers.pop(name, None) is None:
            return
        self._live -= 1
        if self._live == 0:
            self._heap.clear()
            self._disarm()
        elif len(self._heap) > self._live + (self._live >> 1) + COMPACT_SLACK:
            # Stale entries keep their owners alive: at most half as many as
            # live ones (amortised O(1) per cancel: each pass halves nothing
            # but needs live/2 cancels before the next one).
            self._heap = [e for e in self._heap if _is_live(e)]
            heapq.heapify(self._heap)

    # -- the one clock call -----------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._disarm()
        self._call_at = when
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._run)

    def _disarm(self) -> None:
        call, self._call = self._call, None
        self._call_at = math.inf
        if call is not None and call.active():
            call.cancel()

    def _run(self) -> None:
        self._call = None
        # While running, set() must not arm: the earliest timer is known only
        # once the due ones are done (a callback may set a later timer first).
        self._call_at = -math.inf
        heap = self._heap
        now = self.clock.seconds()
        try:
            while heap and heap[0][0] <= now:
                _, seq, owner, name, function = heapq.heappop(heap)
                if owner._timers.get(name) != seq:
                    continue  # cancelled or replaced
                del owner._timers[name]
                self._live -= 1
                try:
                    function(owner)
                except Exception:
                    log.failure("timer {name} of {owner!r} failed", name=name, owner=owner)
        finally:
            while heap and not _is_live(heap[0]):
                heapq.heappop(heap)
            self._call_at = math.inf
            if heap:
                self._arm(heap[0][0])


def _is_live(entry: tuple[float, int, Any, str, Callable[[Any], None]]) -> bool:
    return entry[2]._timers.get(entry[3]) == entry[1]
