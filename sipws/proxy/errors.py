"""Exceptions of the proxy core (one root, below SipwsError)."""

from __future__ import annotations

from sipws.errors import SipwsError


class ProxyError(SipwsError):
    """Root of everything the proxy core raises on purpose."""


class BadFlowToken(ProxyError):
    """A flow token that is malformed, tampered with, or from another start/key."""
