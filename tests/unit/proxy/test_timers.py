"""TimerQueue: many owners' timers on one clock call."""

from twisted.internet.task import Clock

from sipws.proxy.timers import COMPACT_SLACK, TimerQueue


class Owner:
    def __init__(self, log, tag):
        self._timers = {}
        self.log = log
        self.tag = tag

    def ring(self):
        self.log.append((self.tag, "ring"))

    def boom(self):
        raise RuntimeError("boom")


def ring(owner):
    owner.ring()


def test_timers_fire_in_order_on_a_single_clock_call():
    clock, log = Clock(), []
    queue = TimerQueue(clock)
    a, b = Owner(log, "a"), Owner(log, "b")
    queue.set(a, "x", 2.0, ring)
    queue.set(b, "x", 1.0, ring)
    queue.set(a, "y", 3.0, ring)
    assert len(clock.getDelayedCalls()) == 1 and len(queue) == 3
    clock.advance(1.0)
    assert log == [("b", "ring")]
    clock.advance(2.0)
    assert log == [("b", "ring"), ("a", "ring"), ("a", "ring")]
    assert len(queue) == 0 and not clock.getDelayedCalls()


def test_cancel_and_replace():
    clock, log = Clock(), []
    queue = TimerQueue(clock)
    a = Owner(log, "a")
    queue.set(a, "x", 1.0, ring)
    queue.set(a, "x", 5.0, ring)  # replaces
    clock.advance(1.0)
    assert log == []
    queue.cancel(a, "x")
    assert not clock.getDelayedCalls() and len(queue) == 0
    clock.advance(10)
    assert log == []


def test_a_timer_set_by_a_callback_does_not_hide_an_earlier_one():
    clock, log = Clock(), []
    queue = TimerQueue(clock)
    a, b = Owner(log, "a"), Owner(log, "b")

    def rearm(owner):
        owner.log.append((owner.tag, "rearm"))
        queue.set(owner, "x", 10.0, ring)

    queue.set(a, "x", 1.0, rearm)
    queue.set(b, "x", 2.0, ring)
    clock.advance(1.0)
    clock.advance(1.0)
    assert log == [("a", "rearm"), ("b", "ring")]


def test_a_failing_callback_does_not_stop_the_queue():
    clock, log = Clock(), []
    queue = TimerQueue(clock)
    a, b = Owner(log, "a"), Owner(log, "b")
    queue.set(a, "x", 1.0, Owner.boom)
    queue.set(b, "x", 2.0, ring)
    clock.advance(1.0)
    clock.advance(1.0)
    assert log == [("b", "ring")]


def test_cancelled_entries_are_compacted():
    clock, log = Clock(), []
    queue = TimerQueue(clock)
    keep = Owner(log, "keep")
    queue.set(keep, "x", 100.0, ring)
    owners = [Owner(log, i) for i in range(COMPACT_SLACK * 4)]
    for owner in owners:
        queue.set(owner, "x", 50.0, ring)
    for owner in owners:
        queue.cancel(owner, "x")
    assert len(queue) == 1
    assert len(queue._heap) <= 2 + COMPACT_SLACK
    clock.advance(100)
    assert log == [("keep", "ring")]


def test_owners_timer_table_is_not_tracked_by_the_collector():
    """Only integers in it: thousands of lingering transactions add nothing to a full GC."""
    import gc

    clock, log = Clock(), []
    queue = TimerQueue(clock)
    owner = Owner(log, "a")
    queue.set(owner, "x", 1.0, ring)
    queue.set(owner, "y", 2.0, ring)
    assert not gc.is_tracked(owner._timers)
    clock.advance(2.0)
    assert log == [("a", "ring"), ("a", "ring")]
