"""The periodic malloc_trim: called on its interval while running, never after stop."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipws.memory import MALLOC_TRIM_INTERVAL, MallocTrimmer, find_malloc_trim


def test_trim_runs_every_interval_while_running_only():
    clock, calls = Clock(), []
    trimmer = MallocTrimmer(clock, lambda pad: calls.append(pad) or 1)
    trimmer.startService()
    clock.advance(MALLOC_TRIM_INTERVAL - 0.1)
    assert calls == []
    clock.advance(0.2)
    clock.advance(MALLOC_TRIM_INTERVAL)
    assert calls == [0, 0]
    trimmer.stopService()
    clock.advance(10 * MALLOC_TRIM_INTERVAL)
    assert calls == [0, 0] and not clock.getDelayedCalls()


def test_without_malloc_trim_nothing_is_scheduled():
    clock = Clock()
    trimmer = MallocTrimmer(clock, None)
    trimmer.startService()
    assert not clock.getDelayedCalls()
    trimmer.stopService()


def test_glibc_has_malloc_trim_here():
    """Debian's glibc: the real function is found and callable."""
    trim = find_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
