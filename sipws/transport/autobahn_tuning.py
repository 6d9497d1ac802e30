"""Two adjustments to Autobahn, measured and kept small.

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
gets ``pprint.pformat``.

The second is the same idea per frame: Autobahn's ``dataReceived`` (Twisted)
and ``sendData`` pass ``hltype(method)`` and ``hlval(value)`` to a debug log
call on every read and every write, and both build coloured strings (module
and qualified name through ``inspect``, ``click.style``) before the logger
drops the event.  With 100,000 idle connections answering keep-alive Pings
that was a large share of each Ping/Pong's cost (bench/idle_connections.py).
``install()`` gives both modules stand-ins that keep the call and format it
only when the text is wanted.  Every use in those modules is a log argument.

Importing this module installs both once.
"""

from __future__ import annotations

import pprint
from typing import Any

import autobahn.twisted.websocket as _twisted_websocket
import autobahn.websocket.protocol as _protocol
from autobahn.util import hltype as _hltype
from autobahn.util import hlval as _hlval


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


class LazyText:
    """``function(*args)`` as text, computed only when the text is wanted (a log line written)."""

    __slots__ = ("function", "args")

    def __init__(self, function: Any, args: tuple) -> None:
        self.function = function
        self.args = args

    def __str__(self) -> str:
        return str(self.function(*self.args))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def lazy_hltype(obj: Any) -> LazyText:
    return LazyText(_hltype, (obj,))


def lazy_hlval(*args: Any, **kwargs: Any) -> Any:
    if kwargs:
        return _hlval(*args, **kwargs)
    return LazyText(_hlval, args)


def install() -> None:
    if _protocol.pformat is not lazy_pformat:
        _protocol.pformat = lazy_pformat
    for module in (_protocol, _twisted_websocket):
        if module.hltype is not lazy_hltype:
            module.hltype = lazy_hltype
            module.hlval = lazy_hlval


install()
