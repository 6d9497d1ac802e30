"""Run-time counters, shared by every layer and read by the admin interface.

Counters are plain integers in one dict keyed by dotted names, so that a hot
path pays one dict update.  Names with a per-transport part carry it last:
``sip.messages_in.udp``.  The admin ``stats`` method and ``/metrics`` read
``snapshot()``; gauges (open connections) are computed from the connection
table when asked, never kept in step by hand.

Known names (others may be added by the layer that counts them):

ws.handshakes_ok, ws.handshakes_failed, ws.closed_local, ws.closed_remote,
ws.closed_error, ws.frames_in, ws.frames_out, ws.messages_in, ws.messages_out,
ws.bytes_in, ws.bytes_out, ws.keepalive_timeouts, ws.send_timeouts,
ws.crlf_keepalives, sip.messages_in.<transport>, sip.messages_out.<transport>,
trace.packets_sent, trace.packets_dropped; with the MSRP relay (sipws.transport.msrp_ws):
msrp.ws_connections, msrp.ws_messages_in, msrp.ws_messages_out, msrp.ws_bytes_in,
msrp.ws_bytes_out, msrp.peer_messages_in, msrp.peer_messages_out, msrp.peer_bytes_in,
msrp.peer_bytes_out, msrp.peer_connect_failures, msrp.peer_framing_errors,
msrp.peer_queue_full, msrp.peer_backlog_aborts, msrp.peer_tls_timeouts, msrp.send_to_gone
(the relay core's own counters are in ``stats`` under "msrp").
"""

from __future__ import annotations

from collections import defaultdict


class Stats:
    """A bag of monotonic counters."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: defaultdict[str, int] = defaultdict(int)

    def incr(self, name: str, amount: int = 1) -> None:
        self.values[name] += amount

    def get(self, name: str) -> int:
        return self.values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.values.items()))
