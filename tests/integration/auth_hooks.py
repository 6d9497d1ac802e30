"""[auth] hook callables the integration tests name in their configuration."""

from __future__ import annotations

from twisted.internet import defer, reactor

from sipws.edge import Denied

#: Every Handshake a hook of this module was called with (tests read and clear it).
SEEN: list = []
#: Seconds the deferred hooks wait before answering.
DELAY = 0.3


def from_query(handshake):
    """The identity the page names in ?user=, only for clients on loopback; none otherwise."""
    SEEN.append(handshake)
    if handshake.peer[0] != "127.0.0.1":
        raise Denied(403, f"not from loopback: {handshake.peer[0]}")
    return handshake.query.get("user")


def later(handshake):
    """The same answer, from a Deferred that fires after DELAY seconds."""
    SEEN.append(handshake)
    d = defer.Deferred()
    user = handshake.query.get("user")
    reactor.callLater(DELAY, d.callback, Denied(403, "user deny") if user == "deny" else user)
    return d


async def coroutine(handshake):
    SEEN.append(handshake)
    return handshake.headers.get("x-user")


def deny(handshake):
    SEEN.append(handshake)
    return Denied(429, "slow down")


def deny_later(handshake):
    SEEN.append(handshake)
    d = defer.Deferred()
    reactor.callLater(0.05, d.errback, Denied(403, "not today"))
    return d


def raising(handshake):
    SEEN.append(handshake)
    raise RuntimeError("auth service exploded")


def wrong_type(handshake):
    SEEN.append(handshake)
    return 42


def never(handshake):
    SEEN.append(handshake)
    return defer.Deferred()
