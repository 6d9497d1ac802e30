"""The open-file limit decision (sipws/fdlimit.py), pure: no limit of this process changes."""

from __future__ import annotations

import resource

import pytest

from sipws import fdlimit
from sipws.config import ConfigError, config_from_dict
from sipws.fdlimit import FD_RESERVE, MAX_FILES, MIN_CONNECTIONS, Limits, apply, assess, plan

INF = resource.RLIM_INFINITY


def test_soft_limit_goes_up_to_the_hard_limit_without_privileges():
    assert plan(Limits(1024, 20000), nr_open=1_048_576, privileged=False) == Limits(20000, 20000)


def test_root_raises_the_hard_limit_to_nr_open_then_soft_to_it():
    assert plan(Limits(1024, 20000), nr_open=1_048_576, privileged=True) == Limits(1_048_576, 1_048_576)


def test_root_raises_the_hard_limit_no_further_than_max_files():
    huge = MAX_FILES * 4
    assert plan(Limits(1024, 4096), nr_open=huge, privileged=True) == Limits(MAX_FILES, MAX_FILES)


def test_root_raises_the_hard_limit_no_further_than_nr_open():
    assert plan(Limits(1024, 4096), nr_open=65536, privileged=True) == Limits(65536, 65536)


def test_limits_are_never_lowered():
    # a hard limit above fs.nr_open (nr_open lowered later): soft goes to nr_open, hard stays
    assert plan(Limits(300_000, 2_000_000), nr_open=1_048_576, privileged=True) == Limits(1_048_576, 2_000_000)
    assert plan(Limits(5000, 5000), nr_open=1000, privileged=True) == Limits(5000, 5000)


def test_an_unlimited_hard_limit_stays_and_soft_goes_to_nr_open():
    assert plan(Limits(1024, INF), nr_open=524_288, privileged=True) == Limits(524_288, INF)


def test_no_warning_when_the_limit_holds_the_configured_connections():
    result = assess(100_000 + FD_RESERVE, wanted=100_000)
    assert result.capacity == 100_000
    assert result.warning == ""


def test_warning_when_the_limit_is_one_short_of_the_configured_connections():
    result = assess(100_000 + FD_RESERVE - 1, wanted=100_000)
    assert result.capacity == 99_999
    assert "too low for max_connections 100000" in result.warning
    assert f"at least {100_000 + FD_RESERVE}" in result.warning


def test_without_a_cap_warning_only_when_few_connections_fit():
    assert assess(MIN_CONNECTIONS + FD_RESERVE, wanted=0).warning == ""
    low = assess(MIN_CONNECTIONS + FD_RESERVE - 1, wanted=0)
    assert "leaves room for only" in low.warning
    assert "\n" not in low.warning


def test_wanted_connections_counts_sections_with_listeners_only():
    config = config_from_dict({"ws": {"listen": ["127.0.0.1:0"], "max_connections": 3000},
                               "wss": {"max_connections": 5000}})
    assert fdlimit.wanted_connections(config) == 3000


def test_max_connections_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"\[ws\] max_connections"):
        config_from_dict({"ws": {"max_connections": -1}})


class FakeRlimit:
    """getrlimit/setrlimit over a stored pair; optionally refuses raising the hard limit."""

    def __init__(self, soft: int, hard: int, may_raise_hard: bool) -> None:
        self.limits = (soft, hard)
        self.may_raise_hard = may_raise_hard

    def get(self, which: int) -> tuple[int, int]:
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if limits[1] > self.limits[1] and not self.may_raise_hard:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def test_apply_falls_back_to_the_soft_limit_when_the_hard_one_may_not_rise():
    fake = FakeRlimit(1024, 20000, may_raise_hard=False)  # root without CAP_SYS_RESOURCE
    before, after, problem = apply(1_048_576, True, fake.get, fake.set)
    assert (before, after) == (Limits(1024, 20000), Limits(20000, 20000))
    assert "cannot raise the hard limit" in problem


def test_apply_as_root_raises_both():
    fake = FakeRlimit(1024, 20000, may_raise_hard=True)
    before, after, problem = apply(1_048_576, True, fake.get, fake.set)
    assert after == Limits(1_048_576, 1_048_576)
    assert problem == ""
    line = fdlimit.describe(before, after, assess(after.soft, 0), problem)
    assert line.startswith("open-file limit: soft 1024 -> 1048576, hard 20000 -> 1048576;")


def test_service_leaves_the_process_alone_unless_it_owns_it():
    class Root:
        config = config_from_dict({})
        owns_process = False

    service = fdlimit.FileLimitService(Root())
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    service.privilegedStartService()
    assert service.assessment is None
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


def test_with_workers_max_connections_is_per_instance_and_each_worker_takes_its_share():
    from sipws.workers.plan import worker_config

    config = config_from_dict({"ws": {"listen": ["127.0.0.1:0"], "max_connections": 10001},
                               "wss": {"max_connections": 300}, "server": {"workers": 4}})
    assert fdlimit.wanted_connections(config) == 2501  # what one worker's limit must hold
    worker = worker_config(config, 1)
    assert (worker.ws.max_connections, worker.wss.max_connections) == (2501, 75)
    uncapped = worker_config(config_from_dict({"server": {"workers": 4}}), 0)
    assert uncapped.ws.max_connections == 0
