"""Per-address counts shared by worker processes: a count-min sketch in one memory block.

The kernel spreads one client address's connections over the workers
(SO_REUSEPORT hashes the 4-tuple), so a per-address limit that each worker
checked on its own would be N times too generous.  The master creates one
shared memory block (``memfd`` + ``mmap``, sipws.workers.master) and gives
every worker a view of it; this module is the pure part: the layout and the
arithmetic on a writable buffer.

Layout.  The block has one **row per worker**; a worker writes only its own
row (no locks, no atomic read-modify-write across processes), and readers
add the rows up.  A row holds, for ``DEPTH`` hash functions of ``WIDTH``
cells each:

- ``conn[d][w]``: connections open now (incremented when a handshake is
  admitted, decremented when that connection ends);
- ``hs[slot][d][w]`` and ``stamp[slot][d][w]``: handshakes counted in a time
  window, two slots (the current window and the previous one, by parity of
  the window number), each stamped with its window number so a stale slot
  reads as zero.

All values are native int32 (aligned stores; a reader never sees half a
value).  An address maps to one cell per hash row through BLAKE2b keyed
with a random key chosen by the master at start (so an outsider cannot aim
addresses at one cell); its count is the smallest of its ``DEPTH`` cells.

Bounds (documented in docs/limits.md):

- memory: ``ROW_BYTES`` per worker (640 KiB), whatever the number of
  addresses: a flood of distinct sources cannot grow it;
- a count-min sketch never under-counts; it over-counts only when other
  addresses share all ``DEPTH`` cells: with C connections open in the
  instance, the excess is at most e*C/WIDTH with probability 1 - e**-DEPTH
  (98 %): 3 at 10,000 connections, 33 at 100,000;
- two workers admitting the same address in the same microsecond both see
  the other's increment (each increments first, then checks, then undoes a
  refusal), so the limit is never passed; in that race both may refuse;
- the handshake rate is a sliding window of ``burst / rate`` seconds holding
  at most ``burst`` handshakes (the previous window weighted by how much of
  it still overlaps): the long-run rate is ``rate``, a burst is at most
  ``burst``, and no interval of ``burst / rate`` seconds admits more than
  ``2 * burst``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

#: Hash rows and cells per row of the sketch.
DEPTH = 4
WIDTH = 8192
#: int32 values per worker row: conn (D*W) + hs counts (2*D*W) + hs stamps (2*D*W).
_CELLS = DEPTH * WIDTH
ROW_INTS = 5 * _CELLS
ROW_BYTES = 4 * ROW_INTS
#: Window numbers are stored modulo 2**31 (int32); a stale stamp matches only after 2**31 windows.
_STAMP_MASK = 0x7FFFFFFF
#: Bytes of the random hash key the master chooses.
KEY_BYTES = 16


def block_size(rows: int) -> int:
    """Bytes of a block for ``rows`` workers."""
    return ROW_BYTES * max(rows, 1)


class SharedCounters:
    """One worker's view of the block: reads every row, writes row ``row`` only."""

    def __init__(self, buffer: Any, rows: int, row: int, key: bytes) -> None:
        if len(buffer) < block_size(rows):
            raise ValueError(f"shared block of {len(buffer)} bytes, {block_size(rows)} needed")
        if not 0 <= row < rows:
            raise ValueError(f"row {row} not in 0..{rows - 1}")
        self.rows = rows
        self.row = row
        self.key = key
        self._view = memoryview(buffer).cast("B")[:block_size(rows)].cast("i")
        self._mine = row * ROW_INTS

    # -- addresses to cells ------------------------------------------------------------

    def cells(self, source: str) -> tuple[int, ...]:
        """The cell (0..WIDTH-1) of ``source`` in each hash row, offset into the row."""
        digest = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=4 * DEPTH,
                                 key=self.key).digest()
        return tuple(d * WIDTH + int.from_bytes(digest[4 * d:4 * d + 4], "little") % WIDTH
                     for d in range(DEPTH))

    def _sum(self, offset: int) -> int:
        view = self._view
        return sum(view[r * ROW_INTS + offset] for r in range(self.rows))

    # -- open connections --------------------------------------------------------------

    def open_count(self, cells: tuple[int, ...]) -> int:
        """Connections open from the address (never fewer than the truth)."""
        return min(self._sum(c) for c in cells)

    def add_open(self, cells: tuple[int, ...], delta: int) -> None:
        view, base = self._view, self._mine
        for c in cells:
            value = view[base + c] + delta
            view[base + c] = value if value > 0 else 0

    def try_open(self, cells: tuple[int, ...], limit: int) -> bool:
        """Count one more open connection if that keeps the address at most ``limit``."""
        self.add_open(cells, 1)
        if self.open_count(cells) > limit:
            self.add_open(cells, -1)
            return False
        return True

    # -- handshake rate ----------------------------------------------------------------

    def _slot_offsets(self, slot: int, cell: int) -> tuple[int, int]:
        count = _CELLS + slot * _CELLS + cell
        return count, count + 2 * _CELLS

    def _window_sum(self, cell: int, number: int) -> int:
        """Handshakes in window ``number`` for one cell, over every row."""
        count_at, stamp_at = self._slot_offsets(number & 1, cell)
        stamp = number & _STAMP_MASK
        view = self._view
        total = 0
        for r in range(self.rows):
            base = r * ROW_INTS
            if view[base + stamp_at] == stamp:
                total += view[base + count_at]
        return total

    def handshakes(self, cells: tuple[int, ...], now: float, window: float) -> float:
        """The sliding-window estimate of handshakes in the last ``window`` seconds."""
        position = now / window
        number = math.floor(position)
        weight = 1.0 - (position - number)
        return min(self._window_sum(c, number) + weight * self._window_sum(c, number - 1) for c in cells)

    def add_handshake(self, cells: tuple[int, ...], now: float, window: float, delta: int) -> None:
        number = math.floor(now / window)
        stamp = number & _STAMP_MASK
        view, base = self._view, self._mine
        for c in cells:
            count_at, stamp_at = self._slot_offsets(number & 1, c)
            if view[base + stamp_at] != stamp:
                view[base + count_at] = 0
                view[base + stamp_at] = stamp
            value = view[base + count_at] + delta
            view[base + count_at] = value if value > 0 else 0

    def try_handshake(self, cells: tuple[int, ...], now: float, window: float, limit: int) -> bool:
        """Count one more handshake if the window then holds at most ``limit``."""
        self.add_handshake(cells, now, window, 1)
        if self.handshakes(cells, now, window) > limit + 1e-9:
            self.add_handshake(cells, now, window, -1)
            return False
        return True

    # -- upkeep ------------------------------------------------------------------------

    def clear_row(self, row: int) -> None:
        """Zero a row (the master does it for a worker that died: its connections are gone)."""
        start = row * ROW_INTS * 4
        raw = self._view.cast("B")
        raw[start:start + ROW_BYTES] = bytes(ROW_BYTES)

    def release(self) -> None:
        self._view.release()
