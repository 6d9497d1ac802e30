"""Per-address counts shared by worker processes: a count-min sketch in one memory block.

The kernel spreads one client address's connections over the workers
(SO_REUSEPORT hashes the 4-tuple), so a per-address limit that each worker
checked on its own would be N times too generous.  The master creates one
shared memory block (``memfd`` + ``mmap``, sipws.workers.master) and gives
every worker a view of it; this module is the pure part: the layout and the
arithmetic on a writable buffer.

Layout.  The block has one **row per worker** of open-connection counts,
then one **shared area** for the handshake rate:

- ``conn[row][d][w]`` (int32): connections open now from the addresses of
  that cell, incremented when a worker admits a handshake and decremented
  when that connection ends.  A worker writes only its own row (no locks,
  no lost updates); readers add the rows up; the master zeroes the row of a
  worker that died (its connections died with it);
- ``tat[d][w]`` (float64): the handshake rate as GCRA (the "virtual
  scheduling" form of a token bucket: a theoretical arrival time per cell,
  ``rate`` and ``burst`` exactly as a bucket's).  This is the one place
  workers write the same memory: a read-compare-write of one aligned 8-byte
  value, no lock.

An address maps to one cell per hash row through BLAKE2b keyed with a
random key the master chooses at start (an outsider cannot aim addresses at
one cell); its count is the smallest of its ``DEPTH`` cells, its arrival
time the earliest.

Bounds (docs/limits.md says the same):

- memory: ``ROW_BYTES`` per worker (128 KiB) plus ``SHARED_BYTES`` (256 KiB),
  whatever the number of addresses: a flood of distinct sources cannot grow it;
- a count-min sketch never under-counts; it over-counts only when other
  addresses share all ``DEPTH`` cells: with C connections open in the
  instance, the excess is at most e*C/WIDTH with probability 1 - e**-DEPTH
  (98 %): 3 at 10,000 connections, 33 at 100,000.  The same holds for the
  arrival times (a cell's is never earlier than any of its addresses');
- connections: two workers admitting the same address in the same
  microsecond each see the other's increment (increment, check, undo a
  refusal), so the limit is never passed; in that race both may refuse;
- handshakes: two workers updating the same cell within the same
  microsecond can lose one update (the later write wins): at most
  ``workers - 1`` extra handshakes per such race, never more than
  ``burst + rate * t + (workers - 1) * races``.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: Hash rows and cells per row of the sketch.
DEPTH = 4
WIDTH = 8192
_CELLS = DEPTH * WIDTH
#: Bytes of one worker's row (int32 open-connection counts) and of the shared rate area (float64).
ROW_BYTES = 4 * _CELLS
SHARED_BYTES = 8 * _CELLS
#: Bytes of the random hash key the master chooses.
KEY_BYTES = 16


def block_size(rows: int) -> int:
    """Bytes of a block for ``rows`` workers."""
    return ROW_BYTES * max(rows, 1) + SHARED_BYTES


class SharedCounters:
    """One worker's view of the block: reads every row, writes its own row and the rate area."""

    def __init__(self, buffer: Any, rows: int, row: int, key: bytes) -> None:
        if len(buffer) < block_size(rows):
            raise ValueError(f"shared block of {len(buffer)} bytes, {block_size(rows)} needed")
        if not 0 <= row < rows:
            raise ValueError(f"row {row} not in 0..{rows - 1}")
        self.rows = rows
        self.row = row
        self.key = key
        raw = memoryview(buffer).cast("B")
        self._raw = raw
        self._conn = raw[:ROW_BYTES * rows].cast("i")
        self._tat = raw[ROW_BYTES * rows:ROW_BYTES * rows + SHARED_BYTES].cast("d")
        self._mine = row * _CELLS

    # -- addresses to cells ------------------------------------------------------------

    def cells(self, source: str) -> tuple[int, ...]:
        """The cell of ``source`` in each hash row (an index 0..DEPTH*WIDTH-1)."""
        digest = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=4 * DEPTH,
                                 key=self.key).digest()
        return tuple(d * WIDTH + int.from_bytes(digest[4 * d:4 * d + 4], "little") % WIDTH
                     for d in range(DEPTH))

    # -- open connections --------------------------------------------------------------

    def open_count(self, cells: tuple[int, ...]) -> int:
        """Connections open from the address (never fewer than the truth)."""
        view, rows = self._conn, range(self.rows)
        return min(sum(view[r * _CELLS + c] for r in rows) for c in cells)

    def add_open(self, cells: tuple[int, ...], delta: int) -> None:
        view, base = self._conn, self._mine
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

    # -- handshake rate (GCRA) ---------------------------------------------------------

    def try_handshake(self, cells: tuple[int, ...], now: float, rate: float, burst: int) -> bool:
        """Admit one handshake if the address's bucket (``rate``/s, ``burst``) has a token.

        GCRA: each cell holds the time its bucket would be full again plus
        the tokens taken ("theoretical arrival time").  A handshake fits when
        the earliest of the address's cells is at most ``(burst - 1) / rate``
        ahead of now; it then moves every one of its cells on by ``1 / rate``.
        A refused handshake changes nothing (a flood does not push its own
        refusals further out).
        """
        view = self._tat
        interval = 1.0 / rate
        earliest = min(view[c] for c in cells)
        if earliest < now:
            earliest = now
        if earliest - now > (burst - 1) * interval + 1e-9:
            return False
        for c in cells:
            tat = view[c]
            view[c] = (tat if tat > now else now) + interval
        return True

    def retry_after(self, cells: tuple[int, ...], now: float, rate: float, burst: int) -> float:
        """Seconds until ``try_handshake`` would admit the address again."""
        earliest = min(self._tat[c] for c in cells)
        return max(0.0, earliest - now - (burst - 1) / rate)

    # -- upkeep ------------------------------------------------------------------------

    def clear_row(self, row: int) -> None:
        """Zero a row (the master does it for a worker that died: its connections are gone)."""
        start = row * ROW_BYTES
        self._raw[start:start + ROW_BYTES] = bytes(ROW_BYTES)

    def release(self) -> None:
        for view in (self._conn, self._tat, self._raw):
            view.release()
