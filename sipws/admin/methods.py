"""The admin methods: what ``ws.dump``, ``ws.close``, ``trace``... do.

Each method is a plain function ``(root, **params) -> result`` registered in
``METHODS`` with the parameters it takes, so the JSON-RPC layer (``rpc.py``)
only binds positional or named params, checks their types and maps
exceptions to error objects.  Results are JSON-able dicts; ``ws.connect``
returns a Deferred firing with one.

Errors a caller can cause raise ``AdminError`` subclasses carrying their
JSON-RPC error code; anything else is a bug and becomes -32603 without
details on the wire (the traceback goes to the log).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sipws import __version__
from sipws.admin import params
from sipws.admin.params import (
    CONNECT_FAILED, METHOD_NOT_FOUND, NOT_AVAILABLE, NOT_OPEN, RELOAD_FAILED, AdminError, InvalidParams, Method,
    NoSuchConnection, Param, bind,
)
# The error codes rpc.py and workers/admin.py read as methods.X:
from sipws.admin.params import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, NO_SUCH_CONNECTION, PARSE_ERROR

__all__ = ["METHODS", "call", "AdminError", "InvalidParams", "NoSuchConnection", "Method", "Param", "bind",
           "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
           "NO_SUCH_CONNECTION", "NOT_OPEN", "NOT_AVAILABLE", "CONNECT_FAILED", "RELOAD_FAILED"]
from sipws.trace.errors import TraceNotConfigured
from sipws.transport.connections import ConnectionRecord
from sipws.transport.edge_limits import COUNTERS as LIMIT_COUNTERS

log = Logger(namespace="sipws.admin")

# -- limits and defaults ------------------------------------------------------------

#: Connections ws.dump lists when no limit is given.
DEFAULT_DUMP_LIMIT = 50
DUMP_ORDERS = ("id_hash", "used_desc", "used_asc")
DEFAULT_CLOSE_CODE = 1000
DEFAULT_CLOSE_REASON = "Normal closure"

#: Counters every ``stats`` answer and ``/metrics`` page carries, 0 until counted,
#: so dashboards and alerts see the series from the first scrape.
KNOWN_COUNTERS = (
    "ws.handshakes_ok",
    "ws.handshakes_failed",
    "ws.handshake_timeouts",
    "ws.closed_local",
    "ws.closed_remote",
    "ws.frames_in",
    "ws.frames_out",
    "ws.messages_in",
    "ws.messages_out",
    "ws.bytes_in",
    "ws.bytes_out",
    "ws.keepalive_timeouts",
    "ws.send_timeouts",
    "ws.crlf_keepalives",
    "ws.proxy_header_failed",
    "ws.proxy_header_local",
    "ws.forwarded_ignored",
    "trace.packets_sent",
    "trace.packets_dropped",
)
# [limits] and bans (docs/limits.md)
KNOWN_COUNTERS += LIMIT_COUNTERS


# -- helpers ------------------------------------------------------------------------


def _record(root: Any, conn_id: int) -> ConnectionRecord:
    record = root.connections.get(conn_id)
    if record is None or record.protocol is None:
        raise NoSuchConnection(conn_id)
    return record


def _now(root: Any) -> float:
    return root.reactor.seconds()


def counters(root: Any) -> dict[str, int]:
    """Every counter so far, with the known ones present even while 0."""
    values = {name: 0 for name in KNOWN_COUNTERS}
    values.update(root.stats.snapshot())
    return dict(sorted(values.items()))


def open_connections(root: Any) -> dict[tuple[str, str], int]:
    """Open connections by (transport, role), every combination present."""
    from sipws.transport.connections import CLIENT, SERVER

    counts = {(transport, role): 0 for transport in ("ws", "wss") for role in (SERVER, CLIENT)}
    for record in root.connections.values():
        key = (record.transport, record.role)
        counts[key] = counts.get(key, 0) + 1
    return counts


def relay_stats(root: Any) -> dict[str, Any] | None:
    """The SIP relay's own figures, when a relay with ``stats()`` is installed."""
    relay = getattr(root, "relay", None)
    stats = getattr(relay, "stats", None)
    if not callable(stats):
        return None
    result = stats()
    return result if isinstance(result, dict) else None


def registrar_counts(root: Any) -> dict[str, int] | None:
    """Standalone mode's binding counts, or None when standalone mode is off."""
    standalone = getattr(root, "standalone", None)
    if standalone is None or not standalone.enabled:
        return None
    aors, bindings = standalone.bindings.counts()
    home = getattr(standalone, "home", None)
    transactions = len(home.table) if home is not None else 0
    return {"aors": aors, "bindings": bindings, "transactions": transactions}


def tracer_stats(root: Any) -> dict[str, Any]:
    stats = getattr(root.tracer, "stats", None)
    result = stats() if callable(stats) else None
    if not isinstance(result, dict):
        return {"enabled": bool(getattr(root.tracer, "enabled", False)), "state": "unconfigured"}
    return result


# -- the methods ----------------------------------------------------------------------


def ws_dump(root: Any, order: str = "id_hash", limit: int = DEFAULT_DUMP_LIMIT) -> dict[str, Any]:
    """Connections in id order, most recently used first, or least recently used first."""
    records = list(root.connections.values())
    if order == "used_desc":
        records.sort(key=lambda r: (-r.last_used, r.id))
    elif order == "used_asc":
        records.sort(key=lambda r: (r.last_used, r.id))
    now = _now(root)
    entries = [record.as_dict(now) for record in records[:limit]]
    msrp = getattr(root, "msrp", None)
    if msrp is not None and getattr(msrp, "relay", None) is not None:
        sessions = msrp.sessions_by_connection()
        for entry in entries:
            if entry["subprotocol"] == "msrp":
                entry["msrp_sessions"] = sessions.get(entry["id"], [])
    return {
        "connections": entries,
        "total": len(records),
        "truncated": len(records) > limit,
    }


def ws_close(root: Any, id: int, code: int = DEFAULT_CLOSE_CODE, reason: str = DEFAULT_CLOSE_REASON) -> dict[str, Any]:
    """Start the close handshake (a connection still in its handshake is dropped)."""
    record = _record(root, id)
    record.protocol.close_connection(code, reason)
    return {"id": id, "code": code, "reason": reason, "state": record.state}


def ws_ping(root: Any, id: int) -> dict[str, Any]:
    """One Ping frame carrying ``[keepalive] ping_data``."""
    record = _record(root, id)
    payload = root.config.keepalive.ping_data
    if not record.protocol.send_ping(payload.encode("utf-8")):
        raise AdminError(f"connection {id} is not open (state {record.state})", NOT_OPEN)
    return {"id": id, "sent": "ping", "payload": payload}


def ws_pong(root: Any, id: int) -> dict[str, Any]:
    """One unsolicited Pong frame carrying ``[keepalive] ping_data`` (RFC 6455 §5.5.3)."""
    record = _record(root, id)
    payload = root.config.keepalive.ping_data
    if not record.protocol.send_pong(payload.encode("utf-8")):
        raise AdminError(f"connection {id} is not open (state {record.state})", NOT_OPEN)
    return {"id": id, "sent": "pong", "payload": payload}


def ws_disable(root: Any) -> dict[str, Any]:
    root.set_accepting(False)
    return {"accepting": False}


def ws_enable(root: Any) -> dict[str, Any]:
    root.set_accepting(True)
    return {"accepting": True}


def ws_connect(root: Any, url: str) -> defer.Deferred:
    """Open (or reuse) a client-role connection; fires with its record."""
    client = getattr(root, "ws_client", None)
    if client is None:
        raise AdminError("the WebSocket client role is not available", NOT_AVAILABLE)
    try:
        dialled = client.connect(url)
    except ValueError as exc:
        raise InvalidParams(f"url: {exc}") from None

    def opened(record: ConnectionRecord) -> dict[str, Any]:
        return record.as_dict(_now(root))

    def failed(failure: Any) -> None:
        if failure.check(defer.CancelledError, defer.TimeoutError):
            raise AdminError(f"cannot connect to {url}: timed out", CONNECT_FAILED)
        raise AdminError(f"cannot connect to {url}: {failure.getErrorMessage()}", CONNECT_FAILED)

    return dialled.addCallbacks(opened, failed)


def trace(root: Any, state: bool | None = None) -> dict[str, Any]:
    """Switch HEP tracing on or off; with no argument, report it."""
    tracer = root.tracer
    if state is not None:
        try:
            tracer.set_enabled(state)
        except TraceNotConfigured as exc:
            raise AdminError(str(exc), NOT_AVAILABLE) from None
    return {"trace": "on" if tracer.enabled else "off"}


def stats(root: Any) -> dict[str, Any]:
    """Counters, connection gauges, server state, tracing, and the relay's figures."""
    by_kind = open_connections(root)
    result: dict[str, Any] = {
        "connections": {
            "current": len(root.connections),
            "max": root.connections.max_concurrent,
            **{f"{transport}_{role}": count for (transport, role), count in sorted(by_kind.items())},
        },
        "accepting": bool(root.accepting),
        "counters": counters(root),
        "trace": tracer_stats(root),
    }
    limits = getattr(root, "limits", None)
    if limits is not None:
        result["limits"] = limits.stats()
    sip = relay_stats(root)
    if sip is not None:
        result["sip"] = sip
    registrar = registrar_counts(root)
    if registrar is not None:
        result["registrar"] = registrar
    msrp = getattr(root, "msrp", None)
    if msrp is not None and getattr(msrp, "relay", None) is not None:
        result["msrp"] = msrp.stats_snapshot()
    return result


def ws_ban(root: Any, network: Any, duration: float = 0.0, reason: str = "") -> dict[str, Any]:
    """Ban an address or network: new connections dropped at accept, open ones closed (1008)."""
    from sipws.edge.limits import BadBan, ban_until

    try:
        return root.limits.ban(network, ban_until(duration, _now(root)), reason)
    except BadBan as exc:
        raise AdminError(str(exc), NOT_AVAILABLE) from None


def ws_unban(root: Any, network: Any) -> dict[str, Any]:
    return root.limits.unban(network)


def ws_bans(root: Any) -> dict[str, Any]:
    """Active bans with their remaining time and how many connections each dropped."""
    bans = root.limits.listing()
    return {"bans": bans, "count": len(bans)}


def version(root: Any) -> dict[str, Any]:
    return {"name": "sipws", "version": __version__}


def registrar_dump(root: Any) -> dict[str, Any]:
    """Standalone mode's bindings: address of record, contact, connection, expiry."""
    standalone = getattr(root, "standalone", None)
    if standalone is None or not standalone.enabled:
        raise AdminError("standalone mode is off ([sip] upstream is set): the core keeps the bindings",
                         NOT_AVAILABLE)
    return registrar_listing(standalone, flow_ids(root))


def registrar_listing(standalone: Any, flows: dict[str, int]) -> dict[str, Any]:
    """The bindings, each with the id of the connection its flow token names (``flows``)."""
    bindings = []
    for entry in standalone.bindings.dump():
        entry = dict(entry)
        entry["conn_id"] = flows.get(entry.get("flow"))
        bindings.append(entry)
    aors, count = standalone.bindings.counts()
    return {"aors": aors, "count": count, "bindings": bindings}


def workers(root: Any) -> dict[str, Any]:
    """The worker processes; a single process is its own only worker (a master answers in
    sipws.workers.admin)."""
    return {"master_pid": None, "workers": [{
        "index": 0, "pid": os.getpid(), "state": "ready", "uptime": None, "restarts": 0,
        "connections": len(root.connections)}]}


def flow_ids(root: Any) -> dict[str, int]:
    """Flow token -> connection id of every open server connection (for registrar.dump)."""
    relay = getattr(root, "relay", None)
    if relay is None:
        return {}
    return {relay.tokens.make(record.id): record.id for record in root.connections if record.role == "server"}


def tls_reload(root: Any) -> dict[str, Any]:
    """Re-read the certificate files (as SIGHUP does); a bad file keeps the old ones."""
    from sipws.config import ConfigError

    store = getattr(root, "tls", None)
    if store is None:
        raise AdminError("TLS is not set up in this instance", NOT_AVAILABLE)
    try:
        return store.reload()
    except ConfigError as exc:  # the admin layer logs the refusal: one line naming the key
        raise AdminError(f"reload failed, current certificates kept: {exc}", RELOAD_FAILED) from None


_ID = Param("id", params.integer(minimum=1))

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ws.dump",
            ws_dump,
            (Param("order", params.choice(*DUMP_ORDERS), "id_hash"), Param("limit", params.integer(minimum=1), DEFAULT_DUMP_LIMIT)),
        ),
        Method(
            "ws.close",
            ws_close,
            (_ID, Param("code", params.close_code, DEFAULT_CLOSE_CODE), Param("reason", params.close_reason, DEFAULT_CLOSE_REASON)),
            mutating=True,
        ),
        Method("ws.ping", ws_ping, (_ID,), mutating=True),
        Method("ws.pong", ws_pong, (_ID,), mutating=True),
        Method("ws.disable", ws_disable, mutating=True),
        Method("ws.enable", ws_enable, mutating=True),
        Method("ws.connect", ws_connect, (Param("url", params.text),), mutating=True),
        Method("trace", trace, (Param("state", params.on_off, None),), mutating=True),
        Method("ws.ban", ws_ban, (Param("network", params.ban_network), Param("duration", params.duration, 0.0),
                                  Param("reason", params.ban_reason, "")), mutating=True),
        Method("ws.unban", ws_unban, (Param("network", params.ban_network),), mutating=True),
        Method("ws.bans", ws_bans),
        Method("stats", stats),
        Method("version", version),
        Method("tls.reload", tls_reload, mutating=True),
        Method("registrar.dump", registrar_dump),
        Method("workers", workers),
    )
}


def call(root: Any, name: str, params: Any) -> Any:
    """Bind and run one method; raises AdminError (with a code) for the caller's mistakes."""
    method = METHODS.get(name)
    if method is None:
        raise AdminError(f"method not found: {name}", METHOD_NOT_FOUND)
    return method.function(root, **bind(method, params))
