"""[auth] at the handshake: the credential checks and the hook, wired for the server.

The decisions are pure (``sipws.edge.credentials``, ``sipws.edge.hook``);
this adapter builds the hook's ``Handshake``, calls the hook (synchronous,
Deferred or coroutine), turns its exceptions into 500 with the traceback in
the log, and maps every outcome to an identity or a ``Refusal`` that the
server answers through its one refusal path.

Order: credentials first; the hook only for handshakes that presented none.
A valid credential is enough (the hook is not asked); an invalid one is
refused 403 whether or not ``required`` is set (a client that sends a
credential means it to count, and silently dropping to anonymous would hide
an expired or forged one); no credential -> the hook, or 401 when required.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipws.config import resolve_callable
from sipws.edge import Denied
from sipws.edge.credentials import (
    Authenticated, CredentialChecker, KeyFileError, challenges, cookies_of, presented, query_of, redact,
)
from sipws.errors import StartupError
from sipws.edge.hook import Handshake, HookError, interpret
from sipws.transport.handshake import HandshakeRequest, Refusal

log = Logger(namespace="sipws.auth")

Outcome = Authenticated | Denied | None


class HandshakeAuth:
    """One per server factory; None of it is per connection."""

    def __init__(self, auth: Any, clock: Callable[[], float], stats: Any) -> None:
        self.required = auth.required
        self.stats = stats
        try:
            self.checker = CredentialChecker(auth, clock)
        except KeyFileError as exc:  # checked at config time; changed since
            raise StartupError(f"[auth]: {exc}") from None
        self.hook = resolve_callable("[auth] hook", auth.hook) if auth.hook else None
        self.hook_name = auth.hook
        self.challenges = challenges(auth.methods)

    # -- deciding

    def decide(self, request: HandshakeRequest, peer: tuple[str, int], transport: str,
               conn: str) -> Outcome | defer.Deferred:
        """The outcome now, or a Deferred firing with it (never failing)."""
        query = query_of(request.target)
        cookies = cookies_of(request.headers.get("cookie", ()))
        outcome = self.checker.check(presented(query, cookies))
        if outcome is not None or self.hook is None:
            return outcome
        handshake = Handshake(
            path=request.path,
            query={name: values[0] for name, values in query.items()},
            headers={name: ", ".join(values) for name, values in request.headers.items()},
            cookies=cookies,
            peer=(peer[0], peer[1]),
            transport=transport,
        )
        try:
            answer = self.hook(handshake)
            if inspect.iscoroutine(answer):
                answer = defer.ensureDeferred(answer)
        except Denied as denied:
            return denied
        except Exception:  # noqa: BLE001 - the operator's code: 500, never our crash
            return self._hook_failed(Failure(), conn)
        if isinstance(answer, defer.Deferred):
            return answer.addCallbacks(self._interpret, self._hook_failed,
                                       callbackArgs=(conn,), errbackArgs=(conn,))
        return self._interpret(answer, conn)

    def _interpret(self, answer: Any, conn: str) -> Outcome:
        try:
            return interpret(answer)
        except HookError as exc:
            self.stats.incr("auth.hook_errors")
            log.error("[auth] hook {hook} for {conn}: {problem}", hook=self.hook_name, conn=conn,
                      problem=str(exc))
            return Denied(500, f"[auth] hook: {exc}")

    def _hook_failed(self, failure: Any, conn: str) -> Outcome:
        """An exception from the hook (raised, or a failed Deferred)."""
        if failure.check(Denied):
            return failure.value
        if failure.check(defer.CancelledError):  # the connection went away meanwhile
            return Denied(500, "[auth] hook cancelled")
        self.stats.incr("auth.hook_errors")
        log.failure("[auth] hook {hook} raised for {conn}", failure=failure, hook=self.hook_name, conn=conn)
        return Denied(500, f"[auth] hook raised {type(failure.value).__name__}")

    # -- answering

    def verdict(self, outcome: Outcome) -> str | Refusal:
        """The identity ("" = anonymous), or the refusal to answer; counted."""
        if isinstance(outcome, Authenticated):
            self.stats.incr("auth.accepted")
            return outcome.identity
        if outcome is None:
            if not self.required:
                self.stats.incr("auth.anonymous")
                return ""
            outcome = Denied(401, "no credentials" if self.hook is None else "no credentials, hook gave no identity")
        self.stats.incr(f"auth.refused_{outcome.status}")
        headers = self.challenges if outcome.status == 401 else ()
        return Refusal(outcome.status, f"auth: {outcome.reason}", headers)

    @staticmethod
    def redact(head: bytes) -> bytes:
        return redact(head)
