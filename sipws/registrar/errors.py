"""Exceptions of the standalone registrar (one root, below SipwsError).

A client's bad REGISTER is never an exception that leaves the package:
``Registrar.handle`` answers it with the RFC status.  What escapes is a
caller's mistake (``NotARegister``) or, from ``BindingTable.replace``, a
limit the caller asked to be enforced (``TooManyBindings``).
"""

from __future__ import annotations

from sipws.errors import SipwsError


class RegistrarError(SipwsError):
    """Root of everything the registrar raises on purpose."""


class NotARegister(RegistrarError):
    """``Registrar.handle`` was given something other than a REGISTER request."""


class TooManyBindings(RegistrarError):
    """Committing the bindings would exceed a limit; nothing was changed.

    ``scope`` is ``"aor"`` (the per-address-of-record limit) or ``"total"``
    (the table-wide one): the two are answered differently (403 and 503).
    """

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"more than {limit} bindings ({scope})")
        self.scope = scope
        self.limit = limit
