"""The standalone registrar: bindings in memory and REGISTER handling.

Pure code (no I/O, injected clock), used by standalone mode (``[sip]
upstream`` empty): the edge proxy relays REGISTER with its Path and flow
token to the built-in core, which answers it with ``Registrar.handle`` and
routes requests to an address of record with ``BindingTable.lookup``.
"""

from sipws.registrar.bindings import (
    MAX_BINDINGS, MAX_BINDINGS_PER_AOR, Binding, BindingTable, aor_of,
)
from sipws.registrar.errors import NotARegister, RegistrarError, TooManyBindings
from sipws.registrar.register import (
    DEFAULT_DEFAULT_EXPIRES, DEFAULT_MAX_EXPIRES, DEFAULT_MIN_EXPIRES, FULL_RETRY_AFTER,
    SUPPORTED_EXTENSIONS, Registrar,
)

__all__ = [
    "DEFAULT_DEFAULT_EXPIRES", "DEFAULT_MAX_EXPIRES", "DEFAULT_MIN_EXPIRES", "FULL_RETRY_AFTER",
    "MAX_BINDINGS", "MAX_BINDINGS_PER_AOR", "SUPPORTED_EXTENSIONS", "Binding", "BindingTable",
    "NotARegister", "Registrar", "RegistrarError", "TooManyBindings", "aor_of",
]
