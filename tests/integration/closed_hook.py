"""Targets for [events] on_closed in tests."""

EVENTS: list[tuple[int, int | None, str, str]] = []


def record_closed(record, code, reason, side):
    EVENTS.append((record.id, code, reason, side))


def explode(record, code, reason, side):
    EVENTS.append((record.id, code, reason, side))
    raise RuntimeError("hook failure on purpose")
