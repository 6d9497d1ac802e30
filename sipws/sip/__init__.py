"""SIP message layer: strict, lazy parsing and byte-preserving editing.

Pure code (no I/O).  See docs/sip.md for limits and behaviour.
"""

from sipws.sip.errors import SipError, SipParseError
from sipws.sip.framer import StreamFramer
from sipws.sip.headers import COMPACT_FORMS, NameAddr, Via, parse_name_addr, parse_via
from sipws.sip.limits import DEFAULT_LIMITS, Limits
from sipws.sip.message import (
    Message, Request, Response, is_keepalive, make_response, parse,
)
from sipws.sip.uri import SipUri, parse_uri

__all__ = [
    "COMPACT_FORMS", "DEFAULT_LIMITS", "Limits", "Message", "NameAddr", "Request",
    "Response", "SipError", "SipParseError", "SipUri", "StreamFramer", "Via",
    "is_keepalive", "make_response", "parse", "parse_name_addr", "parse_uri", "parse_via",
]
