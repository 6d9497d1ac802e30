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


def metric_name(*parts: str) -> str:
    """A valid Prometheus name from dotted or free-form parts."""
    return _INVALID.sub("_", "_".join((PREFIX,) + parts))


def split_counter(name: str) -> tuple[str, str | None]:
    """``sip.messages_in.udp`` → (``sipws_sip_messages_in``, ``udp``)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] in TRANSPORT_SUFFIXES:
        return metric_name(*parts[:-1]), parts[-1]
    return metric_name(*parts), None


class SipwsCollector:
    """Reads ``root`` on every scrape."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def describe(self) -> list[Metric]:
        # Families vary with what has been counted: let the registry not pre-check names.
        return []

    def collect(self) -> Iterator[Metric]:
        root = self.root
        open_gauge = GaugeMetricFamily(
            metric_name("connections_open"), "WebSocket connections in the table", labels=["transport", "role"]
        )
        for (transport, role), count in sorted(methods.open_connections(root).items()):
            open_gauge.add_metric([transport, role], count)
        yield open_gauge
        yield GaugeMetricFamily(
            metric_name("connections_max"),
            "Most WebSocket connections open at once since start",
            value=root.connections.max_concurrent,
        )
        yield GaugeMetricFamily(
            metric_name("accepting"), "1 while new WebSocket handshakes are accepted (ws.enable)", value=int(bool(root.accepting))
        )
        trace = methods.tracer_stats(root)
        yield GaugeMetricFamily(metric_name("trace_enabled"), "1 while HEP tracing is on", value=int(bool(trace.get("enabled"))))
        for key in ("queue_length", "queue_bytes"):
            if isinstance(trace.get(key), (int, float)) and not isinstance(trace.get(key), bool):
                yield GaugeMetricFamily(metric_name("trace", key), f"HEP tracer {key.replace('_', ' ')}", value=trace[key])
        yield from self._counters()
        sip = methods.relay_stats(root)
        if sip:
            yield from self._relay(sip)
        registrar = methods.registrar_counts(root)
        if registrar is not None:
            yield GaugeMetricFamily(metric_name("registrar_aors"), "addresses of record with a live binding "
                                    "(standalone mode)", value=registrar["aors"])
            yield GaugeMetricFamily(metric_name("registrar_bindings"), "live registrar bindings (standalone mode)",
                                    value=registrar["bindings"])

    def _counters(self) -> Iterator[Metric]:
        families: dict[str, tuple[CounterMetricFamily, bool]] = {}
        for name, value in methods.counters(self.root).items():
            family_name, transport = split_counter(name)
            labelled = transport is not None
            entry = families.get(family_name)
            if entry is None:
                help_name = name.rsplit(".", 1)[0] if labelled else name
                family = CounterMetricFamily(
                    family_name, f"sipws counter {help_name}", labels=["transport"] if labelled else []
                )
                entry = families[family_name] = (family, labelled)
            family, family_labelled = entry
            if family_labelled != labelled:
                continue  # a name clashing with a family of the other shape: keep the first
            family.add_metric([transport] if labelled else [], value)
        for family, _ in families.values():
            yield family

    def _relay(self, sip: dict[str, Any]) -> Iterator[Metric]:
        """The relay's figures as gauges (they may go down: open transactions)."""
        for key, value in sorted(_flatten(sip).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(metric_name("relay", key), f"SIP relay {key}", value=value)


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


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
