"""One adjustment to Autobahn, measured and kept small.

Autobahn's ``WebSocketProtocol._connectionMade`` builds a ``pprint.pformat``
of every protocol option for a debug log line, on every connection, whether
or not debug logging is on.  With ``bench/ws_handshake.py`` that formatting
was about 40 % of the CPU of a whole handshake — for sipws and for bare
Autobahn alike — which matters most when someone floods the port with
handshakes.

``install()`` gives Autobahn's protocol module a ``pformat`` that returns a
lazy stand-in for lists (the option log is a list): the same text if the
debug line is ever written, nothing spent otherwise.  Every other use
(``Timings.__str__`` formats a dict and must return a real ``str``) still
gets ``pprint.pformat``.  Importing this module installs it once.
"""

from __future__ import annotations

import pprint
from typing import Any

import autobahn.websocket.protocol as _protocol


class LazyPformat:
    """Formats its value with ``pprint.pformat`` only when it is turned into text."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def lazy_pformat(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, list) and not args and not kwargs:
        return LazyPformat(value)
    return pprint.pformat(value, *args, **kwargs)


def install() -> None:
    if _protocol.pformat is not lazy_pformat:
        _protocol.pformat = lazy_pformat


install()
