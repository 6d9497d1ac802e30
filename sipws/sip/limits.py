"""Named parser limits (the ``[sip]`` config keys of the same names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Default bytes in one SIP message (WebSocket message or datagram).
MAX_MESSAGE_SIZE = 65535
#: Default header fields (lines, after unfolding) in one message.
MAX_HEADERS = 256
#: Default bytes in one header field, folded continuation lines included.
MAX_HEADER_LINE = 8192
#: Default characters in one URI (Request-URI, Route, Contact ...).
MAX_URI_LENGTH = 2048
#: Default Via values in one message (RFC 3261 suggests 70 as Max-Forwards).
MAX_VIAS = 70


@dataclass(frozen=True)
class Limits:
    """Hard bounds applied before any work is spent on a message."""

    max_message_size: int = MAX_MESSAGE_SIZE
    max_headers: int = MAX_HEADERS
    max_header_line: int = MAX_HEADER_LINE
    max_uri_length: int = MAX_URI_LENGTH
    max_vias: int = MAX_VIAS

    @classmethod
    def from_config(cls, sip_config: Any) -> "Limits":
        """Build limits from a ``sipws.config.SipConfig`` (same field names)."""
        return cls(
            max_message_size=sip_config.max_message_size,
            max_headers=sip_config.max_headers,
            max_header_line=sip_config.max_header_line,
            max_uri_length=sip_config.max_uri_length,
            max_vias=sip_config.max_vias,
        )


DEFAULT_LIMITS = Limits()
