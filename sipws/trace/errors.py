"""Exceptions of the tracing layer.

``TraceError`` is the root; ``HepError`` is the one failure the HEPv3 codec
raises (a ``ValueError`` too, so generic input-validation code can catch it);
``TraceNotConfigured`` is what ``set_enabled(True)`` raises when no
``[trace] destination`` is configured (the admin ``trace on`` turns it into an
error answer).
"""

from __future__ import annotations

from sipws.errors import SipwsError


class TraceError(SipwsError):
    """Root of the tracing layer's own exceptions."""


class HepError(TraceError, ValueError):
    """A HEPv3 packet that cannot be encoded or decoded (truncated, inconsistent)."""


class TraceNotConfigured(TraceError):
    """Tracing was asked for but ``[trace] destination`` is not set."""
