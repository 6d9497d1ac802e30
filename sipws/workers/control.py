"""The control channel between the master and one worker: JSON calls over a socketpair.

Each message is one JSON object in a 32-bit length-prefixed frame:

- a call: ``{"id": N, "call": NAME, "args": {...}}``, answered by
  ``{"id": N, "result": ...}`` or ``{"id": N, "error": {"code": C, "message": M}}``;
- a notification: ``{"call": NAME, "args": {...}}`` (no id, no answer).

Either side may call the other.  This is deliberately not AMP: an AMP value
is limited to 65,535 bytes, and a ``ws.dump`` with a large limit or a stats
answer of a busy worker is bigger than that; here the bound is
``MAX_CONTROL_MESSAGE``.  SIP never travels on this channel: it carries admin
calls, id leases and flow closures only.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from sipws.errors import SipwsError

log = Logger(namespace="sipws.workers")

#: Largest control message (a ws.dump of every connection of a big worker fits).
MAX_CONTROL_MESSAGE = 256 * 1024 * 1024
#: Seconds a call may wait for its answer.
CALL_TIMEOUT = 10.0
#: JSON-RPC code used for a call the other side could not run (mirrors -32603).
INTERNAL_ERROR = -32603


class ControlError(SipwsError):
    """A control call failed; ``code`` is the JSON-RPC code the other side gave."""

    def __init__(self, message: str, code: int = INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


Handler = Callable[..., Any]


class ControlProtocol(Int32StringReceiver):
    """One end of the channel; ``handlers`` answer the other end's calls."""

    MAX_LENGTH = MAX_CONTROL_MESSAGE

    def __init__(self, handlers: dict[str, Handler], reactor: Any, on_lost: Optional[Callable[[Any], None]] = None) -> None:
        self.handlers = handlers
        self.reactor = reactor
        self.on_lost = on_lost
        self._next_id = 1
        self._waiting: dict[int, defer.Deferred] = {}
        self.connected_ok = False

    # -- outgoing ---------------------------------------------------------------------

    def call(self, name: str, timeout: float = CALL_TIMEOUT, **args: Any) -> defer.Deferred:
        """Call ``name`` on the other side; fires with its result or fails with ControlError."""
        if self.transport is None or not self.connected_ok:
            return defer.fail(ControlError("control channel closed"))
        call_id = self._next_id
        self._next_id += 1
        waiting = defer.Deferred()
        self._waiting[call_id] = waiting
        self._send({"id": call_id, "call": name, "args": args})

        def expired(failure: Failure) -> Failure:
            self._waiting.pop(call_id, None)
            if failure.check(defer.TimeoutError, defer.CancelledError):
                return Failure(ControlError(f"{name}: no answer within {timeout:g} s"))
            return failure

        return waiting.addTimeout(timeout, self.reactor).addErrback(expired)

    def notify(self, name: str, **args: Any) -> None:
        if self.transport is not None and self.connected_ok:
            self._send({"call": name, "args": args})

    def _send(self, message: dict[str, Any]) -> None:
        self.sendString(json.dumps(message, separators=(",", ":"), default=str).encode("utf-8"))

    # -- incoming ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ok = True

    def stringReceived(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            log.error("control channel: a message that is not JSON ({size} bytes); closing", size=len(data))
            self.transport.loseConnection()
            return
        if not isinstance(message, dict):
            log.error("control channel: a message that is not an object; closing")
            self.transport.loseConnection()
            return
        if "call" in message:
            self._answer(message)
        else:
            self._resolve(message)

    def lengthLimitExceeded(self, length: int) -> None:
        log.error("control channel: a {length}-byte message is over the limit; closing", length=length)
        self.transport.loseConnection()

    def _answer(self, message: dict[str, Any]) -> None:
        name = message.get("call")
        args = message.get("args") or {}
        call_id = message.get("id")
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None or not isinstance(args, dict):
            result: defer.Deferred = defer.fail(ControlError(f"no such control call: {name!r}"))
        else:
            result = defer.maybeDeferred(handler, **args)
        if call_id is None:
            result.addErrback(lambda f: log.failure("control notification {name} failed", f, name=name))
            return

        def done(value: Any) -> None:
            self._send({"id": call_id, "result": value})

        def failed(failure: Failure) -> None:
            value = failure.value
            code = getattr(value, "code", None)
            text = getattr(value, "message", None)
            if not isinstance(code, int) or not isinstance(text, str):
                log.failure("control call {name} failed", failure, name=name)
                code, text = INTERNAL_ERROR, "internal error (see the worker's log)"
            self._send({"id": call_id, "error": {"code": code, "message": text}})

        result.addCallbacks(done, failed)
        result.addErrback(lambda f: log.failure("control answer to {name} not sent", f, name=name))

    def _resolve(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
        if waiting is None:
            return  # answered after its timeout
        error = message.get("error")
        if isinstance(error, dict):
            waiting.errback(ControlError(str(error.get("message", "failed")), int(error.get("code", INTERNAL_ERROR))))
        else:
            waiting.callback(message.get("result"))

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_ok = False
        waiting, self._waiting = self._waiting, {}
        for deferred in waiting.values():
            deferred.errback(ControlError("control channel closed"))
        if self.on_lost is not None:
            self.on_lost(reason)


class HandOver:
    """A factory stand-in for ``adoptStreamConnection``: hands over one ready protocol."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def buildProtocol(self, address: Any) -> Any:
        return self.protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass
