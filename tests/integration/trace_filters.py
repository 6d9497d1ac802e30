"""Targets for [trace] filter in the integration tests."""

from __future__ import annotations

from typing import Any

CALLS: list[dict[str, Any]] = []


def odd_ids_only(info: dict[str, Any]) -> bool:
    CALLS.append(info)
    return info["id"] % 2 == 1
