"""Exceptions of the SIP message layer.

``SipError`` is the root of everything this package raises on purpose;
``SipParseError`` is the one parse/edit failure callers must expect from
untrusted input.  It carries a short ``reason`` (safe to log) and the SIP
``status`` a server would answer with (400 unless a more precise one fits:
413 too large, 414 URI too long, 505 version, 513 message too large ...).
"""

from __future__ import annotations

from sipws.errors import SipwsError


class SipError(SipwsError):
    """Root of the SIP layer's own exceptions."""


class SipParseError(SipError, ValueError):
    """Malformed or over-limit SIP input."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __reduce__(self):  # keep pickling/copying working with two args
        return (type(self), (self.reason, self.status))
