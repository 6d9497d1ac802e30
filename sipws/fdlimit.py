"""The open-file limit: raised at start-up as far as allowed, checked against the load.

Every WebSocket connection is one file descriptor, so RLIMIT_NOFILE bounds how
many browsers one sipws process can hold.  Distributions start services with a
soft limit of 1024 (and often a hard limit of 4096 to 524288); a process may
raise its own soft limit up to the hard limit, and a root process (or one with
CAP_SYS_RESOURCE) the hard limit too, up to the kernel's ``fs.nr_open``.

At start-up, when sipws runs as the process (``twistd sipws`` or ``sipws``; an
in-process embedding such as the test harness leaves process-wide settings
alone), ``FileLimitService``:

1. raises the soft limit to the hard limit; as root it first raises the hard
   limit to ``min(fs.nr_open, MAX_FILES)`` (never lowers it);
2. logs one line: the limits before and after, and how many connections fit;
3. warns in one line when that is too low for the configured load.

The configured load: the sum of ``max_connections`` over the ``[ws]`` and
``[wss]`` sections that have listeners, plus FD_RESERVE descriptors for
everything else (listeners, SIP sockets, connections toward the core, admin,
log files, HEP, DNS).  With no cap configured (``max_connections = 0``, the
default) there is no load to compare with; the warning then fires only when the
limit leaves room for fewer than MIN_CONNECTIONS connections.

The pure decision (``plan`` and ``assess``) is separate from the system calls
(``apply``), so tests drive it with any numbers.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger(namespace="sipws.fdlimit")

#: Highest hard limit sipws sets for itself as root (the kernel's fs.nr_open also bounds it).
MAX_FILES = 1_048_576
#: Descriptors kept for what is not a WebSocket connection from a client.
FD_RESERVE = 512
#: With no max_connections configured, warn when fewer connections than this fit.
MIN_CONNECTIONS = 1000
#: Where Linux publishes the largest RLIMIT_NOFILE a process may have.
NR_OPEN_PATH = "/proc/sys/fs/nr_open"
#: Used when NR_OPEN_PATH cannot be read (the kernel's default fs.nr_open).
DEFAULT_NR_OPEN = 1_048_576


@dataclass(frozen=True)
class Limits:
    soft: int
    hard: int


@dataclass(frozen=True)
class Assessment:
    """How many client connections fit, and the warning to log (empty: none)."""

    capacity: int
    wanted: int  # connections the configuration asks for (0 = no cap configured)
    warning: str


def _finite(value: int, ceiling: int) -> int:
    """RLIM_INFINITY (and anything above the kernel's ceiling) read as the ceiling."""
    if value == resource.RLIM_INFINITY or value < 0 or value > ceiling:
        return ceiling
    return value


def plan(current: Limits, nr_open: int, privileged: bool) -> Limits:
    """The limits to ask for: soft raised to hard; as root, hard raised to min(nr_open, MAX_FILES).

    Never lowers either limit.  A hard limit of RLIM_INFINITY stays as it is;
    the soft limit then goes to nr_open, the most Linux lets a process have.
    """
    hard = current.hard
    if privileged:
        ceiling = min(nr_open, MAX_FILES)
        if hard != resource.RLIM_INFINITY and hard < ceiling:
            hard = ceiling
    soft = _finite(hard, nr_open)
    if current.soft == resource.RLIM_INFINITY or current.soft > soft:
        soft = current.soft
    return Limits(soft, hard)


def wanted_connections(config: Any) -> int:
    """Connections one process must hold: max_connections of every section with listeners;
    with ``[server] workers`` each worker holds its share (and inherits this process's limit)."""
    workers = max(getattr(getattr(config, "server", None), "workers", 1), 1)
    total = 0
    for section in (config.ws, config.wss):
        if section.listen:
            total += -(-section.max_connections // workers)
    return total


def assess(soft: int, wanted: int, nr_open: int = DEFAULT_NR_OPEN) -> Assessment:
    """Whether ``soft`` descriptors hold ``wanted`` connections plus FD_RESERVE."""
    soft = _finite(soft, nr_open)
    capacity = max(soft - FD_RESERVE, 0)
    warning = ""
    if wanted:
        if capacity < wanted:
            warning = (
                f"open-file limit {soft} is too low for max_connections {wanted} "
                f"(+{FD_RESERVE} reserved): at most {capacity} connections; raise it to at least "
                f"{wanted + FD_RESERVE} (LimitNOFILE= in the unit, ulimit -n, or start as root)"
            )
    elif capacity < MIN_CONNECTIONS:
        warning = (
            f"open-file limit {soft} leaves room for only {capacity} connections "
            f"({FD_RESERVE} reserved); raise it (LimitNOFILE= in the unit, ulimit -n, or start as root)"
        )
    return Assessment(capacity, wanted, warning)


def read_nr_open(path: str = NR_OPEN_PATH) -> int:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return DEFAULT_NR_OPEN


def apply(
    nr_open: int,
    privileged: bool,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[Limits, Limits, str]:
    """Raise RLIMIT_NOFILE as planned: (before, after, why a step failed or "")."""
    before = Limits(*getrlimit(resource.RLIMIT_NOFILE))
    target = plan(before, nr_open, privileged)
    problem = ""
    if target != before:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target.soft, target.hard))
        except (ValueError, OSError) as exc:
            # No CAP_SYS_RESOURCE after all (a container): the soft limit alone.
            problem = f"cannot raise the hard limit to {target.hard}: {exc}"
            fallback = plan(before, nr_open, privileged=False)
            if fallback != before:
                try:
                    setrlimit(resource.RLIMIT_NOFILE, (fallback.soft, fallback.hard))
                except (ValueError, OSError) as exc2:
                    problem = f"cannot raise the open-file limit: {exc2}"
    after = Limits(*getrlimit(resource.RLIMIT_NOFILE))
    return before, after, problem


def _show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def describe(before: Limits, after: Limits, assessment: Assessment, problem: str) -> str:
    """The one start-up line."""
    if after == before:
        change = f"soft {_show(after.soft)}, hard {_show(after.hard)} (unchanged)"
    else:
        change = (f"soft {_show(before.soft)} -> {_show(after.soft)}, "
                  f"hard {_show(before.hard)} -> {_show(after.hard)}")
    wanted = f", max_connections {assessment.wanted}" if assessment.wanted else ""
    line = f"open-file limit: {change}; room for {assessment.capacity} connections{wanted}"
    return line + (f" ({problem})" if problem else "")


class FileLimitService(Service):
    """Raises and checks the open-file limit before any listener is bound."""

    name = "fdlimit"

    def __init__(self, root: Any, privileged: Optional[bool] = None) -> None:
        self.root = root
        self.privileged = privileged
        self.assessment: Optional[Assessment] = None

    def privilegedStartService(self) -> None:
        # Before the listeners bind and before twistd drops root (--uid): raising
        # the hard limit needs root.
        if getattr(self.root, "owns_process", False):
            self.check()
        super().privilegedStartService()

    def check(self) -> Assessment:
        import os

        privileged = self.privileged if self.privileged is not None else os.geteuid() == 0
        nr_open = read_nr_open()
        before, after, problem = apply(nr_open, privileged)
        self.assessment = assess(after.soft, wanted_connections(self.root.config), nr_open)
        log.info("{line}", line=describe(before, after, self.assessment, problem))
        if self.assessment.warning:
            log.warn("{line}", line=self.assessment.warning)
        return self.assessment


def install(root: Any) -> None:
    FileLimitService(root).setServiceParent(root)
