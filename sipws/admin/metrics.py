"""``GET /metrics``: the ``stats`` figures in Prometheus text format.

A custom collector reads the counters and the connection table at scrape
time, so nothing is kept in step by hand and the hot paths pay nothing.
Counter names map mechanically: ``ws.handshakes_ok`` becomes
``sipws_ws_handshakes_ok_total``; a trailing transport part becomes a label,
``sip.messages_in.udp`` → ``sipws_sip_messages_in_total{transport="udp"}``.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sipws.admin import methods

PREFIX = "sipws"
#: Trailing counter-name parts that are transports (label ``transport``).
TRANSPORT_SUFFIXES = frozenset(("udp", "tcp", "tls", "ws", "wss"))
CONTENT_TYPE = CONTENT_TYPE_LATEST

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str, prefix: str = PREFIX) -> str:
    """A valid Prometheus name from dotted or free-form parts."""
    return _INVALID.sub("_", "_".join((prefix,) + parts))


def split_counter(name: str, prefix: str = PREFIX) -> tuple[str, str | None]:
    """``sip.messages_in.udp`` → (``sipws_sip_messages_in``, ``udp``)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] in TRANSPORT_SUFFIXES:
        return metric_name(*parts[:-1], prefix=prefix), parts[-1]
    return metric_name(*parts, prefix=prefix), None


class SipwsCollector:
    """Reads ``root`` on every scrape."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def describe(self) -> list[Metric]:
        # Families vary with what has been counted: let the registry not pre-check names.
        return []

    def collect(self) -> Iterator[Metric]:
        return families(methods.stats(self.root))


class StatsCollector:
    """Families built from ``stats`` answers already in hand (a master's merged workers)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def families(stats: dict[str, Any], prefix: str = PREFIX, labels: tuple[tuple[str, str], ...] = ()) -> Iterator[Metric]:
    """The metric families of one ``stats`` answer.

    ``prefix`` and ``labels`` let a master show each worker's figures beside
    the instance's totals (``sipws_worker_...{worker="1"}``).
    """
    names = [name for name, _ in labels]
    values = [value for _, value in labels]

    def name(*parts: str) -> str:
        return metric_name(*parts, prefix=prefix)

    def gauge(metric: str, text: str, value: Any) -> Metric:
        family = GaugeMetricFamily(metric, text, labels=names)
        family.add_metric(values, value)
        return family

    connections = stats.get("connections", {})
    open_gauge = GaugeMetricFamily(name("connections_open"), "WebSocket connections in the table",
                                   labels=["transport", "role"] + names)
    for key, count in sorted(connections.items()):
        transport, _, role = key.partition("_")
        if transport in ("ws", "wss") and role:
            open_gauge.add_metric([transport, role] + values, count)
    yield open_gauge
    yield gauge(name("connections_max"), "Most WebSocket connections open at once since start",
                connections.get("max", 0))
    yield gauge(name("accepting"), "1 while new WebSocket handshakes are accepted (ws.enable)",
                int(bool(stats.get("accepting"))))
    trace = stats.get("trace", {})
    yield gauge(name("trace_enabled"), "1 while HEP tracing is on", int(bool(trace.get("enabled"))))
    for key in ("queue_length", "queue_bytes"):
        if isinstance(trace.get(key), (int, float)) and not isinstance(trace.get(key), bool):
            yield gauge(name("trace", key), f"HEP tracer {key.replace('_', ' ')}", trace[key])
    limits = stats.get("limits")
    if isinstance(limits, dict) and isinstance(limits.get("bans"), int):
        yield gauge(name("limits_bans"), "active bans (ws.ban)", limits["bans"])
    yield from _counters(stats.get("counters", {}), prefix, names, values)
    sip = stats.get("sip")
    if sip:
        for key, value in sorted(_flatten(sip).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield gauge(name("relay", key), f"SIP relay {key}", value)
    msrp = stats.get("msrp")
    if isinstance(msrp, dict):
        for key, value in sorted(msrp.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                short = key[len("msrp."):] if key.startswith("msrp.") else key
                yield gauge(name("msrp", short), f"MSRP relay {short}", value)
    registrar = stats.get("registrar")
    if registrar is not None:
        yield gauge(name("registrar_aors"), "addresses of record with a live binding (standalone mode)",
                    registrar.get("aors", 0))
        yield gauge(name("registrar_bindings"), "live registrar bindings (standalone mode)",
                    registrar.get("bindings", 0))


def _counters(counters: dict[str, int], prefix: str, names: list[str], values: list[str]) -> Iterator[Metric]:
    found: dict[str, tuple[CounterMetricFamily, bool]] = {}
    for counter, value in counters.items():
        family_name, transport = split_counter(counter, prefix)
        labelled = transport is not None
        entry = found.get(family_name)
        if entry is None:
            help_name = counter.rsplit(".", 1)[0] if labelled else counter
            family = CounterMetricFamily(family_name, f"sipws counter {help_name}",
                                         labels=(["transport"] if labelled else []) + names)
            entry = found[family_name] = (family, labelled)
        family, family_labelled = entry
        if family_labelled != labelled:
            continue  # a name clashing with a family of the other shape: keep the first
        family.add_metric(([transport] if labelled else []) + values, value)
    for family, _ in found.values():
        yield family


def merge_families(groups: list[list[Metric]]) -> list[Metric]:
    """Families of the same names from several sources as one family each (samples appended)."""
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
    return list(merged.values())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def make_registry(root: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SipwsCollector(root))
    return registry


def render_stats(total: dict[str, Any], per_worker: list[tuple[int, dict[str, Any]]],
                 extra: list[Metric] = ()) -> bytes:
    """A master's page: the instance's totals under the usual names, and each
    worker's own figures as ``sipws_worker_*{worker="N"}`` (never summed twice)."""
    metrics = list(families(total))
    metrics.extend(merge_families([list(families(stats, f"{PREFIX}_worker", (("worker", str(index)),)))
                                   for index, stats in per_worker]))
    metrics.extend(extra)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(metrics))
    return generate_latest(registry)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
