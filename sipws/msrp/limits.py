"""Named bounds of the MSRP parser and splitter."""

from __future__ import annotations

from dataclasses import dataclass

#: Default body bytes in one chunk (the ``[msrp] max_chunk_size`` default).
#: RFC 4975 §7.1.1 asks senders to chunk anything over 2048 bytes when a
#: relay may be in the path; common clients send 1-64 KiB chunks.
MAX_CHUNK_SIZE = 65536
#: Bytes of the start line plus header fields of one message.
MAX_HEADER_BYTES = 16384
#: Header fields in one message.
MAX_HEADERS = 64
#: URIs in one To-Path, From-Path or Use-Path.
MAX_PATH_URIS = 16
#: Characters in one MSRP URI.
MAX_URI_LENGTH = 1024
#: Body bytes of a request other than SEND (RFC 4975 §7.1: 10240).
MAX_NON_SEND_BODY = 10240


@dataclass(frozen=True)
class Limits:
    """Hard bounds applied before any work is spent on a message.

    ``max_message_size`` bounds a whole message (headers, body, end-line):
    the WebSocket message limit of msrp connections and the splitter's
    buffer.  It defaults to the chunk limit plus the header allowance.
    """

    max_message_size: int = MAX_CHUNK_SIZE + MAX_HEADER_BYTES + 256
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    max_path_uris: int = MAX_PATH_URIS
    max_uri_length: int = MAX_URI_LENGTH

    @classmethod
    def for_chunk_size(cls, max_chunk_size: int) -> "Limits":
        """Limits whose message size fits one chunk of ``max_chunk_size`` bytes."""
        return cls(max_message_size=max_chunk_size + MAX_HEADER_BYTES + 256)


DEFAULT_LIMITS = Limits()
