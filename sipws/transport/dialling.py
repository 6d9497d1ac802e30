"""Outgoing stream connections being opened: what SIP's and MSRP's connection pools share.

A pool (``sip_stream.StreamPool``, ``msrp_stream.PeerPool``) keeps one ``Dial`` per
key while its connection opens, with the messages waiting for it, and a deadline
covering TCP and TLS.  ``DialingPool`` is the part that does not depend on what
the pool carries: the Deferred's outcomes, the deadline, and forgetting a dial.
Each pool says what a failed dial means for its waiting messages (``_fail_dial``).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

from twisted.internet import defer, error
from twisted.internet.endpoints import wrapClientTLS


class Dial:
    """A connection being opened toward ``key`` and the messages waiting for it."""

    __slots__ = ("key", "queue", "queued_bytes", "timeout", "protocol", "connecting")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.queue: list[Any] = []
        self.queued_bytes = 0
        self.timeout: Any = None
        self.protocol: Any = None
        self.connecting: Optional[defer.Deferred] = None


class DialingPool:
    """Mixin for pools with ``self.dials: dict[key, Dial]``, ``self.clock``,
    ``self.tls_client_options(server_name)``, ``self.tls_timeout`` and a
    ``_fail_dial(dial, reason)``."""

    dials: dict[Any, Dial]
    clock: Any
    tls_client_options: Callable[[str], Any]
    tls_timeout: float

    def _fail_dial(self, dial: Dial, reason: str) -> None:
        raise NotImplementedError

    def _start_dial(self, dial: Dial, endpoint: Any, factory: Any, connect_timeout: float,
                    tls_server_name: Optional[str] = None) -> bool:
        """Connect ``endpoint`` (wrapped in TLS toward ``tls_server_name`` when given) for
        ``dial``, under one deadline covering TCP and TLS. False when TLS could not even be
        set up (a bad CA file ...): the dial then fails on the next reactor turn, not inside
        the caller's loop."""
        budget = connect_timeout
        if tls_server_name is not None:
            try:
                endpoint = wrapClientTLS(self.tls_client_options(tls_server_name), endpoint)
            except Exception as exc:  # noqa: BLE001 - fail the waiting messages, log once
                self.clock.callLater(0, self._fail_dial, dial, f"TLS set-up failed: {exc}")
                return False
            budget += self.tls_timeout
        dial.timeout = self.clock.callLater(budget, self._dial_timed_out, dial)
        dial.connecting = endpoint.connect(factory)
        dial.connecting.addCallbacks(self._dial_connected, self._dial_failed,
                                     callbackArgs=(dial,), errbackArgs=(dial,))
        return True

    def _dial_lost(self, key: Any, protocol: Any) -> None:
        """``protocol`` lost its connection: if it was still completing ``key``'s dial
        (TLS handshake), that dial fails with the protocol's reason."""
        dial = self.dials.get(key)
        if dial is not None and dial.protocol is protocol:
            self._fail_dial(dial, protocol.failure or "connection lost")

    def _abandon_dials(self) -> None:
        """Shutting down: stop every connection attempt and fail what waits on it."""
        for dial in list(self.dials.values()):
            if dial.connecting is not None:
                dial.connecting.cancel()
            self._fail_dial(dial, "shutting down")

    def _dial_connected(self, protocol: Any, dial: Dial) -> None:
        dial.connecting = None
        dial.protocol = protocol

    def _dial_failed(self, failure: Any, dial: Dial) -> None:
        dial.connecting = None
        if failure.check(defer.CancelledError):
            return  # cancelled by _dial_timed_out, which reports the failure itself
        reason = failure.getErrorMessage()
        if failure.check(error.ConnectionRefusedError):
            reason = "connection refused"
        self._fail_dial(dial, reason)

    def _dial_timed_out(self, dial: Dial) -> None:
        dial.timeout = None
        if self.dials.get(dial.key) is not dial:
            return
        if dial.connecting is not None:
            dial.connecting.cancel()
        if dial.protocol is not None and dial.protocol.transport is not None:
            dial.protocol.transport.abortConnection()
        self._fail_dial(dial, "connection timed out")

    def _forget_dial(self, dial: Dial) -> None:
        """Drop ``dial`` from the table (if it is still the one there) and its deadline."""
        if self.dials.get(dial.key) is dial:
            del self.dials[dial.key]
        if dial.timeout is not None and dial.timeout.active():
            dial.timeout.cancel()
