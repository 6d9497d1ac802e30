"""Filter callables for the tracer tests, referenced as ``[trace] filter``."""

from __future__ import annotations

from typing import Any

#: Every info dict a filter in this module was called with.
CALLS: list[dict[str, Any]] = []


def only_odd_ids(info: dict[str, Any]) -> bool:
    CALLS.append(info)
    return info["id"] % 2 == 1


def broken(info: dict[str, Any]) -> bool:
    CALLS.append(info)
    raise RuntimeError("filter bug")


def remote_port_not_4000(info: dict[str, Any]) -> bool:
    CALLS.append(info)
    return not info["remote"].endswith(":4000")
