"""Exceptions of the MSRP layer.

``MsrpError`` is the root of everything this package raises on purpose;
``MsrpParseError`` is the one failure callers must expect from untrusted
input.  It carries a short ``reason`` (safe to log) and the MSRP status a
receiver would answer with (400 unless a more precise one fits: 413 too
large).
"""

from __future__ import annotations

from sipws.errors import SipwsError


class MsrpError(SipwsError):
    """Root of the MSRP layer's own exceptions."""


class MsrpParseError(MsrpError, ValueError):
    """Malformed or over-limit MSRP input."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __reduce__(self):  # pickling/copying with both arguments
        return (type(self), (self.reason, self.status))
