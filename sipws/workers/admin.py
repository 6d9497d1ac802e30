"""One admin endpoint for a multi-process instance: the master asks its workers.

Every method of ``sipws.admin.methods`` keeps its parameters, checks and
errors (they are bound here, in the master, first):

- ``ws.dump`` merges every worker's connections in the requested order and
  cuts to the limit; ``stats`` adds the workers' figures up and lists the
  workers; ``registrar.dump`` is the master's (the standalone core runs here),
  with connection ids from the workers;
- ``ws.close``, ``ws.ping``, ``ws.pong`` go to the worker that owns the id
  (known from the id leases);
- ``ws.disable``, ``ws.enable``, ``trace``, ``tls.reload`` go to every worker,
  and the state they set is handed to a worker started later;
- ``ws.connect`` runs on the first ready worker;
- ``ws.ban``, ``ws.unban`` go to every worker; the master keeps the list and
  hands it to a worker started later; ``ws.bans`` is the master's list with
  each ban's drops added up over the workers;
- ``workers`` lists the worker processes (also answered by a single process).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer

from sipws.admin import methods
from sipws.admin.metrics import render_stats
from sipws.workers.control import ControlError
from sipws.workers.plan import add_up, merge_dumps


def _ready(master: Any) -> list[Any]:
    ready = [h for h in master.supervisor.handles if h.ready]
    if not ready:
        raise methods.AdminError("no worker is running (starting or restarting)", methods.NOT_AVAILABLE)
    return ready


def _ask(handle: Any, name: str, params: Any) -> defer.Deferred:
    def failed(failure: Any) -> None:
        error = failure.value
        if isinstance(error, ControlError):
            raise methods.AdminError(f"worker {handle.index}: {error.message}"
                                     if error.code == methods.INTERNAL_ERROR else error.message, error.code)
        return failure

    return handle.control.call("admin", method=name, params=params).addErrback(failed)


def _ask_all(master: Any, name: str, params: Any) -> defer.Deferred:
    """Every ready worker's answer, in worker order; the first error wins."""
    handles = _ready(master)
    asked = [_ask(h, name, params) for h in handles]
    gathered = defer.gatherResults(asked, consumeErrors=True)

    def unwrap(failure: Any) -> None:
        failure.trap(defer.FirstError)
        failure.value.subFailure.raiseException()

    return gathered.addCallbacks(lambda answers: list(zip(handles, answers)), unwrap)


def call(master: Any, name: str, params: Any) -> Any:
    method = methods.METHODS.get(name)
    if method is None:
        raise methods.AdminError(f"method not found: {name}", methods.METHOD_NOT_FOUND)
    bound = methods.bind(method, params)
    handler = _HANDLERS.get(name)
    if handler is None:
        return _ask_all(master, name, bound).addCallback(lambda answers: answers[0][1])
    return handler(master, bound)


def _dump(master: Any, bound: dict[str, Any]) -> defer.Deferred:
    def merge(answers: list[Any]) -> dict[str, Any]:
        for handle, answer in answers:
            for entry in answer.get("connections", ()):
                entry["worker"] = handle.index
        return merge_dumps([a for _, a in answers], bound["order"], bound["limit"])

    return _ask_all(master, "ws.dump", bound).addCallback(merge)


def _to_owner(name: str) -> Any:
    def handler(master: Any, bound: dict[str, Any]) -> Any:
        conn_id = bound["id"]
        owner = master.supervisor.leases.owner(conn_id)
        handles = master.supervisor.handles
        if owner is None or not handles[owner].ready:
            raise methods.NoSuchConnection(conn_id)
        return _ask(handles[owner], name, bound)

    return handler


def _accepting(state: bool) -> Any:
    def handler(master: Any, bound: dict[str, Any]) -> Any:
        master.accepting = state
        return _ask_all(master, "ws.enable" if state else "ws.disable", bound).addCallback(
            lambda _: {"accepting": state})

    return handler


def _trace(master: Any, bound: dict[str, Any]) -> Any:
    def remember(answers: list[Any]) -> Any:
        if bound.get("state") is not None:
            master.trace_state = bound["state"]
        return answers[0][1]

    return _ask_all(master, "trace", bound).addCallback(remember)


def _tls_reload(master: Any, bound: dict[str, Any]) -> Any:
    return _ask_all(master, "tls.reload", bound).addCallback(
        lambda answers: dict(answers[0][1], workers=len(answers)))


def _connect(master: Any, bound: dict[str, Any]) -> Any:
    return _ask(_ready(master)[0], "ws.connect", bound)


def _ban(master: Any, bound: dict[str, Any]) -> Any:
    """The master keeps the list (for workers started later); every worker applies the ban."""
    from sipws.edge.limits import BadBan, ban_until

    now = master.reactor.seconds()
    try:
        ban = master.bans.add(bound["network"], ban_until(bound["duration"], now), bound["reason"], now)
    except BadBan as exc:
        raise methods.AdminError(str(exc), methods.NOT_AVAILABLE) from None

    def merge(answers: list[Any]) -> dict[str, Any]:
        result = dict(ban.as_dict(now))
        result["drops"] = sum(int(a.get("drops", 0)) for _, a in answers)
        result["closed"] = sum(int(a.get("closed", 0)) for _, a in answers)
        return result

    return _ask_all(master, "ws.ban", bound).addCallback(merge)


def _unban(master: Any, bound: dict[str, Any]) -> Any:
    removed = master.bans.remove(bound["network"]) is not None

    def merge(answers: list[Any]) -> dict[str, Any]:
        return {"network": str(bound["network"]), "unbanned": removed or any(a.get("unbanned") for _, a in answers),
                "drops": sum(int(a.get("drops", 0)) for _, a in answers)}

    return _ask_all(master, "ws.unban", bound).addCallback(merge)


def _bans(master: Any, bound: dict[str, Any]) -> Any:
    """The master's list, each ban's drops added up over the workers."""
    def merge(answers: list[Any]) -> dict[str, Any]:
        drops: dict[str, int] = {}
        for _, answer in answers:
            for entry in answer.get("bans", ()):
                drops[entry["network"]] = drops.get(entry["network"], 0) + int(entry.get("drops", 0))
        listing = master.bans.listing(master.reactor.seconds())
        for entry in listing:
            entry["drops"] = drops.get(entry["network"], 0)
        return {"bans": listing, "count": len(listing)}

    return _ask_all(master, "ws.bans", bound).addCallback(merge)


def _limits_stats(master: Any) -> dict[str, Any]:
    master.bans.expire(master.reactor.seconds())
    return {"bans": len(master.bans)}


def workers_list(master: Any) -> list[dict[str, Any]]:
    now = master.reactor.seconds()
    listing = []
    for handle in master.supervisor.handles:
        info = handle.info or {}
        listing.append({
            "index": handle.index,
            "pid": handle.pid,
            "state": "ready" if handle.ready else ("starting" if handle.process is not None else "down"),
            "uptime": round(now - handle.started_at, 3) if handle.process is not None else None,
            "restarts": handle.restarts,
            "ports": info.get("ports", {}),
        })
    return listing


def _stats(master: Any, bound: dict[str, Any]) -> Any:
    def merge(answers: list[Any]) -> dict[str, Any]:
        total = add_up([a for _, a in answers])
        total["accepting"] = bool(master.accepting)
        total["limits"] = _limits_stats(master)  # every worker holds the same bans: not a sum
        per_worker = {h.index: a.get("connections", {}).get("current", 0) for h, a in answers}
        total["workers"] = [dict(w, connections=per_worker.get(w["index"])) for w in workers_list(master)]
        registrar = methods.registrar_counts(master)  # the standalone core runs in the master
        if registrar is not None:
            total["registrar"] = registrar
        return total

    return _ask_all(master, "stats", bound).addCallback(merge)


def _registrar_dump(master: Any, bound: dict[str, Any]) -> Any:
    standalone = getattr(master, "standalone", None)
    if standalone is None or not standalone.enabled:
        return methods.registrar_dump(master)  # raises the usual "standalone mode is off"
    handles = _ready(master)
    asked = defer.gatherResults([h.control.call("flows") for h in handles], consumeErrors=True)

    def fill(maps: list[dict[str, int]]) -> dict[str, Any]:
        flows: dict[str, int] = {}
        for mapping in maps:
            flows.update(mapping)
        return methods.registrar_listing(standalone, flows)

    return asked.addCallback(fill)


def _workers(master: Any, bound: dict[str, Any]) -> dict[str, Any]:
    return {"master_pid": os.getpid(), "workers": workers_list(master)}


_HANDLERS = {
    "ws.dump": _dump,
    "ws.close": _to_owner("ws.close"),
    "ws.ping": _to_owner("ws.ping"),
    "ws.pong": _to_owner("ws.pong"),
    "ws.disable": _accepting(False),
    "ws.enable": _accepting(True),
    "ws.connect": _connect,
    "trace": _trace,
    "stats": _stats,
    "ws.ban": _ban,
    "ws.unban": _unban,
    "ws.bans": _bans,
    "version": lambda master, bound: methods.version(master),
    "tls.reload": _tls_reload,
    "registrar.dump": _registrar_dump,
    "workers": _workers,
}


def render_metrics(master: Any) -> defer.Deferred:
    """``/metrics`` of the instance: totals, each worker's own figures, the workers' health."""
    handles = [h for h in master.supervisor.handles if h.ready]
    asked = defer.gatherResults([_ask(h, "stats", {}) for h in handles], consumeErrors=True)

    def page(answers: list[dict[str, Any]]) -> bytes:
        total = add_up(answers) or {}
        total["accepting"] = bool(master.accepting)
        total["limits"] = _limits_stats(master)
        registrar = methods.registrar_counts(master)
        if registrar is not None:
            total["registrar"] = registrar
        workers = GaugeMetricFamily("sipws_workers", "worker processes by state", labels=["state"])
        states = [w["state"] for w in workers_list(master)]
        for state in ("ready", "starting", "down"):
            workers.add_metric([state], states.count(state))
        restarts = CounterMetricFamily("sipws_worker_restarts", "times a worker was started again after it died",
                                       labels=["worker"])
        for handle in master.supervisor.handles:
            restarts.add_metric([str(handle.index)], handle.restarts)
        return render_stats(total, [(h.index, a) for h, a in zip(handles, answers)], [workers, restarts])

    return asked.addCallback(page)
