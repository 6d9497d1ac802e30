"""The [auth] hook's contract: what it is given, what its answers mean (pure).

``hook = "package.module:callable"`` is called once per handshake that the
credential checks did not decide (no credential presented; see
docs/authentication.md for the order) with a ``Handshake``.  It answers

- an identity string: accepted, the connection carries that identity;
- None: no identity (401 when ``[auth] required``, else anonymous);
- a ``sipws.edge.Denied(status, reason)``, returned or raised: refused so;
- a Deferred firing with any of these (an HTTP call to an auth service).

Anything else (another type, an exception, an unusable identity) is the
hook's bug: the client gets 500 and the log the traceback or the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipws.edge import Denied, EdgeError
from sipws.edge.credentials import Authenticated, usable_identity


class HookError(EdgeError):
    """The hook answered something that is not an identity, None or a Denied."""


@dataclass(frozen=True)
class Handshake:
    """One WebSocket opening handshake as the hook sees it.

    ``query`` maps each parameter to its first value, ``headers`` each
    lowercase header name to its values joined with ", ", ``cookies`` each
    cookie to its value; ``peer`` is the client's (host, port) - the real
    client address when a PROXY header or a trusted proxy gave one;
    ``transport`` is "ws" or "wss".
    """

    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    peer: tuple[str, int] = ("", 0)
    transport: str = "ws"


def interpret(answer: Any) -> Authenticated | Denied | None:
    """The hook's answer as an outcome; HookError when it is not one the contract allows."""
    if answer is None or isinstance(answer, Denied):
        return answer
    if isinstance(answer, str):
        if not usable_identity(answer):
            raise HookError(f"identity {answer[:40]!r} is not usable (1..256 printable characters, no blanks)")
        return Authenticated(answer, "hook")
    raise HookError(f"answered a {type(answer).__name__}, not an identity string, None or Denied")
