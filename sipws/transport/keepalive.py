"""One keep-alive sweep for every WebSocket connection.

A timer per connection would cost memory and reactor work with tens of
thousands of idle browsers, so a single LoopingCall (every
``[keepalive] interval``) does the work, and only for connections that can be
due: a timing wheel maps each interval-long slot to the ids of the connections
to look at then.  Every connection is booked once, at the earliest moment it
may need attention (idle timeout, Pong deadline, send timeout); when its slot
comes it is checked, acted on if due, and booked again at its next deadline.
Traffic only pushes deadlines later, so a connection looked at early is simply
booked again; a connection that opens now is due no earlier than ``now +
timeout``; a transport that starts backing up calls ``wake_at`` for its
connection.  So each idle connection costs about one look per ``timeout``,
not one per interval (with 100,000 connections, a full walk every second was
about 2 % of a core on its own: bench/idle_connections.py, docs/benchmarks.md).

``record.last_used`` is the last time anything arrived from the peer, so any
traffic counts as alive.  With ``ping``, a Ping goes out after ``timeout`` idle
seconds and the connection is closed if nothing arrives within another
``timeout``: a dead peer is found within about 2 x timeout.  With ``pong``, an
unsolicited Pong goes out every ``timeout`` idle seconds and nothing is
expected back.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipws.transport.connections import OPEN, ConnectionRecord

log = Logger(namespace="sipws.ws.keepalive")

#: Close code and reason when a peer does not answer a keep-alive Ping.
KEEPALIVE_CLOSE = (1001, "keep-alive timeout")


class KeepaliveSweeper:
    """Looks at each connection when (and only when) it may be due."""

    def __init__(self, root: Any) -> None:
        config = root.config
        self.root = root
        self.mechanism = config.keepalive.mechanism
        self.timeout = config.keepalive.timeout
        self.interval = config.keepalive.interval
        self.payload = config.keepalive.ping_data.encode("utf-8")
        #: When a walk over the whole table is due (``wake_at`` without a connection).
        self.next_due = math.inf
        #: Number of full passes over the table (benchmarks and tests read it).
        self.passes = 0
        #: Connections looked at since start (benchmarks and tests read it).
        self.visits = 0
        #: Slot number -> ids of the connections booked for it.
        self._wheel: dict[int, list[int]] = {}
        #: The first slot not handled yet.
        self._cursor = 0
        self._loop: LoopingCall | None = None
        root.connections.on_added(self._added)

    def start(self) -> None:
        now = self.root.reactor.seconds()
        self._cursor = math.floor(now / self.interval) + 1
        for record in list(self.root.connections.values()):
            self._added(record)
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.root.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _added(self, record: ConnectionRecord) -> None:
        if record.protocol is not None:
            self._book(record, self.root.reactor.seconds() + self.timeout)

    def _book(self, record: ConnectionRecord, when: float) -> None:
        """Make sure the connection is looked at in the first slot at or after ``when``."""
        protocol = record.protocol
        slot = math.ceil(when / self.interval)
        if slot < self._cursor:
            slot = self._cursor
        booked = protocol.keepalive_slot
        if self._cursor <= booked <= slot:
            return  # already booked no later than that
        protocol.keepalive_slot = slot
        ids = self._wheel.get(slot)
        if ids is None:
            self._wheel[slot] = [record.id]
        else:
            ids.append(record.id)

    def wake_at(self, when: float, record: ConnectionRecord | None = None) -> None:
        """Make sure ``record`` (or, with none, every connection) is looked at no later than
        ``when`` plus one interval."""
        if record is None:
            if when < self.next_due:
                self.next_due = when
        elif record.protocol is not None:
            self._book(record, when)

    def sweep(self) -> None:
        now = self.root.reactor.seconds()
        if now >= self.next_due:
            self.next_due = math.inf
            self.passes += 1
            for record in list(self.root.connections.values()):
                self._visit(record, now)
        last = math.floor(now / self.interval)
        first = self._cursor
        if last < first:
            return
        wheel = self._wheel
        # Bookings made while visiting go to later slots.
        self._cursor = last + 1
        if last - first > len(wheel):  # the clock jumped (or stalled): only the booked slots
            slots: Any = sorted(slot for slot in wheel if slot <= last)
        else:
            slots = range(first, last + 1)
        table = self.root.connections
        for slot in slots:
            ids = wheel.pop(slot, None)
            if ids is None:
                continue
            for conn_id in ids:
                record = table.get(conn_id)
                if record is not None and record.protocol is not None \
                        and record.protocol.keepalive_slot == slot:
                    self._visit(record, now)

    def _visit(self, record: ConnectionRecord, now: float) -> None:
        """Act on one connection if something is due; book it for its next deadline."""
        protocol = record.protocol
        if protocol is None:
            return
        self.visits += 1
        timeout = self.timeout
        next_due = math.inf
        paused = protocol.paused_since  # set when the record entered the table
        if paused is not None:
            limit = paused + protocol.factory.send_timeout
            if now >= limit:
                self.root.stats.incr("ws.send_timeouts")
                log.warn(
                    "send timeout: {conn} stopped reading for {secs:.1f}s, closing",
                    conn=record.describe(),
                    secs=now - paused,
                    conn_id=record.id,
                )
                protocol.abort("send timeout")
                return
            next_due = limit
        mechanism = self.mechanism
        if mechanism == "none":
            if next_due != math.inf:
                self._book(record, next_due)
            return
        if record.state != OPEN:
            due = now + timeout  # not open yet, or closing: look again later
        elif mechanism == "ping":
            if record.awaiting_pong:
                due = protocol.keepalive_at + timeout
                if now >= due:
                    self.root.stats.incr("ws.keepalive_timeouts")
                    log.info(
                        "keep-alive timeout: no answer from {conn} in {secs:.0f}s, closing",
                        conn=record.describe(),
                        secs=now - record.last_used,
                        conn_id=record.id,
                    )
                    protocol.close_connection(*KEEPALIVE_CLOSE)
                    return
            else:
                due = record.last_used + timeout
                if now >= due:
                    protocol.send_ping(self.payload)
                    record.awaiting_pong = True
                    protocol.keepalive_at = now
                    due = now + timeout
        else:  # pong
            due = max(record.last_used, protocol.keepalive_at) + timeout
            if now >= due:
                protocol.send_pong(self.payload)
                protocol.keepalive_at = now
                due = now + timeout
        self._book(record, min(due, next_due))
