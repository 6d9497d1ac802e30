"""Pure rules of the worker model: each worker's configuration, connection ids, merged answers.

Nothing here touches a socket or a process; the master (``master.py``) and the
workers (``worker.py``) carry these decisions out, and tests check them in memory.

- **Ports.** Each worker owns its SIP-side sockets, so that the core's requests
  for a flow reach the process holding the flow without crossing a process
  boundary: worker *i* listens on every ``[sip] listen`` port **+ i** (port 0
  stays 0: each worker gets its own ephemeral port) and writes the
  ``[sip] advertise`` port + *i* into Via, Record-Route and Path.  The same
  for ``[msrp] listen`` and ``[msrp] advertise`` (the Use-Path URI).
- **Connection ids.** A worker takes ids from blocks the master leases to it;
  blocks never overlap and are never leased twice, so an id names one
  connection for the whole run, across workers and across restarts, and the
  master knows which worker owns an id (``ws.close`` goes there).
- **Merging.** ``ws.dump`` answers are merged in the requested order and cut to
  the limit; ``stats`` answers add up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

from sipws.config import Config, SipListen
from sipws.errors import SipwsError
from sipws.proxy.targets import split_host_port

#: Connection ids leased to a worker at a time.
ID_BLOCK_SIZE = 100_000
#: A worker asks for its next block once this share of the current one is used.
ID_RENEW_AT = 0.5
#: Where the standalone hop listens in a worker whose [sip] listen has no tcp: entry.
LOOPBACK = "127.0.0.1"


class WorkersError(SipwsError):
    """Root of the worker model's errors."""


class IdsExhausted(WorkersError):
    """A worker used up its leased ids before the master's next lease arrived."""


# -- each worker's configuration ---------------------------------------------------------


def shifted_port(port: int, index: int) -> int:
    """A per-worker port: ``port + index``; 0 (ephemeral) stays 0."""
    return port + index if port else 0


def worker_listen(listen: Iterable[SipListen], index: int) -> tuple[SipListen, ...]:
    return tuple(SipListen(e.transport, e.host, shifted_port(e.port, index)) for e in listen)


def worker_advertise(advertise: str, index: int) -> str:
    """``[sip] advertise`` for worker ``index``: the port shifted, when one is given."""
    if not advertise:
        return advertise
    host, port = split_host_port(advertise)
    if port is None:
        return advertise
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index}"


def msrp_without_listen(config: Config, workers: int) -> Optional[str]:
    """A warning when MSRP is on across several workers with no ``[msrp] listen``: a chunk for
    a session held by another worker travels to it over its MSRP port, and without one the two
    clients cannot reach each other (docs/msrp.md "Workers")."""
    if workers < 2 or config.msrp.listen:
        return None
    if "msrp" not in config.ws.subprotocols and "msrp" not in config.wss.subprotocols:
        return None
    return (f"[msrp] listen is empty with {workers} workers: MSRP clients connected to different "
            f"workers cannot exchange messages (each worker needs its MSRP port; docs/msrp.md)")


def highest_port(config: Config, workers: int) -> Optional[tuple[str, int]]:
    """The largest SIP port any worker would use, if one passes 65535 (a config error)."""
    for entry in config.sip.listen:
        if entry.port and entry.port + workers - 1 > 65535:
            return (str(entry), entry.port + workers - 1)
    for entry in config.msrp.listen:
        if entry.port and entry.port + workers - 1 > 65535:
            return (str(entry), entry.port + workers - 1)
    for key, advertise in (("[sip] advertise", config.sip.advertise), ("[msrp] advertise", config.msrp.advertise)):
        if advertise:
            _, port = split_host_port(advertise)
            if port is not None and port + workers - 1 > 65535:
                return (key, port + workers - 1)
    return None


def worker_config(config: Config, index: int, standalone_upstream: str = "") -> Config:
    """The configuration worker ``index`` runs with.

    Its SIP ports are shifted, the admin listener is the master's (off here),
    and in standalone mode its upstream is the master's built-in registrar,
    reached over TCP (so every worker has a tcp: socket for the way back).
    """
    sip = config.sip
    listen = worker_listen(sip.listen, index)
    changes: dict[str, Any] = {"listen": listen, "advertise": worker_advertise(sip.advertise, index)}
    if standalone_upstream:
        changes["upstream"] = standalone_upstream
        if not any(entry.transport == "tcp" for entry in listen):
            changes["listen"] = listen + (SipListen("tcp", LOOPBACK, 0),)
    workers = config.server.workers
    msrp = config.msrp
    return config.replace(
        sip=dataclasses.replace(sip, **changes),
        # MSRP like SIP: each worker's own sockets and Use-Path port, so that a chunk for a
        # session held by another worker reaches it over TCP/TLS (docs/msrp.md "Workers")
        msrp=dataclasses.replace(msrp, listen=worker_listen(msrp.listen, index),
                                 advertise=worker_advertise(msrp.advertise, index)),
        admin=dataclasses.replace(config.admin, listen=""),
        # [ws]/[wss] max_connections is per instance: each worker takes its share
        ws=dataclasses.replace(config.ws, max_connections=worker_share(config.ws.max_connections, workers)),
        wss=dataclasses.replace(config.wss, max_connections=worker_share(config.wss.max_connections, workers)),
    )


def worker_share(max_connections: int, workers: int) -> int:
    """One worker's part of an instance's max_connections (0 = no cap stays 0), rounded up."""
    return -(-max_connections // max(workers, 1))


# -- connection ids ------------------------------------------------------------------------


class IdLeases:
    """The master's ledger of id blocks: who holds which, and the next free one."""

    def __init__(self, block_size: int = ID_BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._next_block = 0
        #: block number -> worker index
        self._owners: dict[int, int] = {}

    def lease(self, worker: int) -> int:
        """A fresh block for ``worker``; returns its first id."""
        block = self._next_block
        self._next_block += 1
        self._owners[block] = worker
        return block * self.block_size + 1

    def owner(self, conn_id: int) -> Optional[int]:
        """The worker whose block holds ``conn_id`` (None: never leased)."""
        if conn_id < 1:
            return None
        return self._owners.get((conn_id - 1) // self.block_size)

    def forget(self, worker: int) -> None:
        """A worker died: its blocks are not handed out again, and no longer have an owner."""
        for block, owner in list(self._owners.items()):
            if owner == worker:
                del self._owners[block]


class LeasedIds:
    """A worker's id source: ids from leased blocks, asking for the next block early.

    ``renew`` is called (once per block) when half of the current block is used;
    the master answers by calling ``add_block``.  Iterating past the last id
    with no new block raises IdsExhausted (bounded: the master's answer is a
    loopback round trip, the half block is 50,000 connections).
    """

    def __init__(self, first: int, renew: Callable[[], None], block_size: int = ID_BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._renew = renew
        self._next = first
        self._end = first + block_size
        self._renew_at = first + int(block_size * ID_RENEW_AT)
        self._asked = False
        self._spare: list[int] = []

    def add_block(self, first: int) -> None:
        self._spare.append(first)
        self._asked = False

    def __iter__(self) -> "LeasedIds":
        return self

    def __next__(self) -> int:
        if self._next >= self._end:
            if not self._spare:
                raise IdsExhausted("connection ids used up before the master leased more")
            first = self._spare.pop(0)
            self._next, self._end = first, first + self.block_size
            self._renew_at = first + int(self.block_size * ID_RENEW_AT)
        conn_id = self._next
        self._next += 1
        if conn_id >= self._renew_at and not self._asked and not self._spare:
            self._asked = True
            self._renew()
        return conn_id


# -- merged admin answers ------------------------------------------------------------------


def merge_dumps(answers: Iterable[dict[str, Any]], order: str, limit: int) -> dict[str, Any]:
    """Several workers' ``ws.dump`` answers as one, in ``order``, at most ``limit`` entries.

    Each worker already returned its first ``limit`` entries in that order, so
    the merged first ``limit`` are among them.
    """
    connections: list[dict[str, Any]] = []
    total = 0
    for answer in answers:
        connections.extend(answer.get("connections", ()))
        total += int(answer.get("total", 0))
    if order == "used_desc":
        connections.sort(key=lambda c: (c.get("idle", 0), c["id"]))
    elif order == "used_asc":
        connections.sort(key=lambda c: (-c.get("idle", 0), c["id"]))
    else:
        connections.sort(key=lambda c: c["id"])
    return {"connections": connections[:limit], "total": total, "truncated": total > limit}


def add_up(answers: list[Any]) -> Any:
    """Numbers add up, dicts merge key by key, anything else keeps the first worker's value.

    Booleans are not numbers here: the first worker's value stands (the master
    overrides the ones it owns, such as ``accepting``).
    """
    if not answers:
        return None
    first = answers[0]
    if isinstance(first, bool):
        return first
    if isinstance(first, (int, float)):
        return sum(a for a in answers if isinstance(a, (int, float)) and not isinstance(a, bool))
    if isinstance(first, dict):
        keys: list[str] = []
        for answer in answers:
            if isinstance(answer, dict):
                keys.extend(k for k in answer if k not in keys)
        return {k: add_up([a[k] for a in answers if isinstance(a, dict) and k in a]) for k in keys}
    return first
