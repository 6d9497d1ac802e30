"""Fixtures: a real sipws on 127.0.0.1 port 0, started and stopped per test."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher

from sipws.config import config_from_dict
from sipws.tap import SipwsService, build_service

#: Longest any single wait in these tests may take.
WAIT = 10.0

#: Sections that keep a test's sipws from binding fixed ports.
#: No SIP sockets and no admin listener; an upstream so that standalone mode (which
#: needs a SIP socket) stays off unless a test asks for it (tests/integration/test_standalone.py).
QUIET = {"sip": {"listen": [], "upstream": "sip:127.0.0.1:5060;transport=udp"}, "admin": {"listen": ""}}


def make_config(overrides: dict[str, Any] | None = None):
    data: dict[str, Any] = {"ws": {"listen": ["127.0.0.1:0"]}, **QUIET}
    for section, values in (overrides or {}).items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data)


def start(config) -> SipwsService:
    root = build_service(config)
    root.privilegedStartService()
    root.startService()
    return root


def port_of(root: SipwsService, kind: str = "ws") -> int:
    return root.listening(kind)[0].getHost().port


@pytest.fixture
def sipws_factory():
    """Call with config overrides; every service started is stopped at teardown."""
    started: list[SipwsService] = []

    def factory(overrides: dict[str, Any] | None = None) -> SipwsService:
        root = start(make_config(overrides))
        started.append(root)
        return root

    yield factory
    for root in started:
        if root.running:
            pytest_twisted.blockon(root.stopService().addTimeout(WAIT, reactor))


def in_thread(fn: Callable, *args: Any, **kwargs: Any) -> defer.Deferred:
    """Run a blocking client function without blocking the reactor."""
    return threads.deferToThread(fn, *args, **kwargs).addTimeout(WAIT, reactor)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, step: float = 0.02):
    """Poll until predicate() is true; fail the test after timeout seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        yield sleep(step)


@pytest.fixture
def sipws_log():
    """The formatted text of every sipws log event emitted during the test."""
    lines: list[str] = []

    def observer(event):
        if event.get("log_namespace", "").startswith("sipws"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)
