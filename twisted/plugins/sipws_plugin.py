"""twistd plugin: makes `twistd -n sipws --config sipws.toml` work.

This directory must not have an __init__.py: twisted.plugins is a namespace
that Twisted extends with every twisted/plugins directory on sys.path.
"""

from twisted.application.service import ServiceMaker

sipws = ServiceMaker(
    "sipws",
    "sipws.tap",
    "SIP over WebSocket (RFC 7118) edge proxy",
    "sipws",
)
