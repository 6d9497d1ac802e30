"""sipws: a SIP-over-WebSocket (RFC 7118) edge proxy on Twisted and Autobahn."""

__version__ = "0.1.0"
