"""One keep-alive sweep for every WebSocket connection.

A timer per connection would cost memory and reactor work with tens of
thousands of idle browsers, so a single LoopingCall (every
``[keepalive] interval``) walks the table, and only when something can be
due: after each pass the sweeper knows the earliest moment any connection
needs attention (idle timeout, Pong deadline, send timeout), and passes
before it cost one comparison.  Traffic only pushes deadlines later; a
connection that opens now is due no earlier than ``now + timeout``; a
transport that starts backing up calls ``wake_at``.

``record.last_used`` is the last time anything arrived from the peer, so any
traffic counts as alive.  With ``ping``, a Ping goes out after ``timeout`` idle
seconds and the connection is closed if nothing arrives within another
``timeout``: a dead peer is found within about 2 x timeout.  With ``pong``, an
unsolicited Pong goes out every ``timeout`` idle seconds and nothing is
expected back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipws.transport.connections import OPEN

log = Logger(namespace="sipws.ws.keepalive")

#: Close code and reason when a peer does not answer a keep-alive Ping.
KEEPALIVE_CLOSE = (1001, "keep-alive timeout")


class KeepaliveSweeper:
    """Walks the connection table when (and only when) something may be due."""

    def __init__(self, root: Any) -> None:
        config = root.config
        self.root = root
        self.mechanism = config.keepalive.mechanism
        self.timeout = config.keepalive.timeout
        self.interval = config.keepalive.interval
        self.payload = config.keepalive.ping_data.encode("utf-8")
        self.next_due = 0.0
        #: Number of full passes over the table (benchmarks and tests read it).
        self.passes = 0
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.root.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def wake_at(self, when: float) -> None:
        """Make sure a pass happens no later than ``when`` (plus one interval)."""
        if when < self.next_due:
            self.next_due = when

    def sweep(self) -> None:
        now = self.root.reactor.seconds()
        if now < self.next_due:
            return
        self.passes += 1
        next_due = now + self.timeout
        timeout = self.timeout
        mechanism = self.mechanism
        stats = self.root.stats
        for record in list(self.root.connections.values()):
            protocol = record.protocol
            if protocol is None:
                continue
            paused = protocol.paused_since  # set when the record entered the table
            if paused is not None:
                limit = paused + protocol.factory.send_timeout
                if now >= limit:
                    stats.incr("ws.send_timeouts")
                    log.warn(
                        "send timeout: {conn} stopped reading for {secs:.1f}s, closing",
                        conn=record.describe(),
                        secs=now - paused,
                        conn_id=record.id,
                    )
                    protocol.abort("send timeout")
                    continue
                if limit < next_due:
                    next_due = limit
            if mechanism == "none" or record.state != OPEN:
                continue
            if mechanism == "ping":
                if record.awaiting_pong:
                    deadline = protocol.keepalive_at + timeout
                    if now >= deadline:
                        stats.incr("ws.keepalive_timeouts")
                        log.info(
                            "keep-alive timeout: no answer from {conn} in {secs:.0f}s, closing",
                            conn=record.describe(),
                            secs=now - record.last_used,
                            conn_id=record.id,
                        )
                        protocol.close_connection(*KEEPALIVE_CLOSE)
                        continue
                    if deadline < next_due:
                        next_due = deadline
                    continue
                due = record.last_used + timeout
                if now >= due:
                    protocol.send_ping(self.payload)
                    record.awaiting_pong = True
                    protocol.keepalive_at = now
                    if now + timeout < next_due:
                        next_due = now + timeout
                else:
                    if due < next_due:
                        next_due = due
            else:  # pong
                due = max(record.last_used, protocol.keepalive_at) + timeout
                if now >= due:
                    protocol.send_pong(self.payload)
                    protocol.keepalive_at = now
                    if now + timeout < next_due:
                        next_due = now + timeout
                else:
                    if due < next_due:
                        next_due = due
        self.next_due = next_due
