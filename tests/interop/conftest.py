"""Fixtures shared by the interop tests."""

import pytest


@pytest.fixture
def peers():
    """``peers(peer)`` registers a started third-party process (Kamailio, a browser UA,
    HAProxy ...); every one is stopped (by its pid) at teardown, last first. A peer that
    fails to stop does not keep the others running: the first failure is raised once all
    have been stopped."""
    started: list = []

    def add(peer):
        started.append(peer)
        return peer

    yield add
    failure = None
    for peer in reversed(started):
        try:
            peer.stop()
        except Exception as exc:  # noqa: BLE001 - raised below, after the others stop
            failure = failure or exc
    if failure is not None:
        raise failure
