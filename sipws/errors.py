"""The root of every exception sipws raises on purpose.

Each package has its own root below this one (ConfigError, SipError, HepError,
...), so callers can catch a whole layer's failures without catching bugs.
"""


class SipwsError(Exception):
    """Base class of every sipws-specific error."""


class StartupError(SipwsError):
    """Something the configuration asked for cannot be set up (port in use...).

    Raised by a layer's privilegedStartService; under twistd it becomes one
    line on stderr and exit status 2 (sipws.tap).
    """
