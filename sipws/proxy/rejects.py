"""Refusals: the internal "answer this status" signal, and error answers
built from what an exception or a malformed request carries."""

from __future__ import annotations

from typing import Optional

from sipws.proxy.errors import ProxyError

#: Longest reason phrase we copy from a parse error into a 400.
MAX_REASON = 100
#: Header fields copied from a malformed request into our error response.
_ERROR_COPY = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
               "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}


class _Reject(ProxyError):
    """Answer the request with this status (internal control flow)."""

    def __init__(self, status: int, reason: Optional[str] = None) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.status = status
        self.reason = reason


def _status_of(exc: Exception) -> int:
    """The error status an exception carries (SipParseError, NoRoute), else 400."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and 300 <= status <= 699 else 400


def _reason_of(exc: Exception) -> str:
    text = getattr(exc, "reason", None) or str(exc) or "Bad Request"
    text = "".join(ch for ch in str(text) if ch.isprintable())[:MAX_REASON]
    return text[:1].upper() + text[1:] if text else "Bad Request"


def _error_response_from_raw(data: bytes, status: int, reason: str) -> Optional[bytes]:
    """An error response to a request the parser refused, when it can be built.

    Copies Via, From, To, Call-ID and CSeq as written (they identify the
    transaction to the client).  Nothing for responses, ACKs, or input too
    broken to find those fields.
    """
    text = bytes(data).lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = text.split("\r\n")
    start = lines[0]
    if not start or start[:4].upper() == "SIP/" or start.split(" ", 1)[0] == "ACK":
        return None
    copied: list[str] = []
    seen: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canonical = _ERROR_COPY.get(name.strip().lower())
        if not colon or canonical is None or "\n" in line or "\r" in line or "\x00" in line:
            continue
        if canonical != "Via" and canonical in seen:
            continue
        seen.add(canonical)
        copied.append(f"{canonical}: {value.strip()}")
    if not {"Via", "From", "To", "Call-ID", "CSeq"} <= seen:
        return None
    head = [f"SIP/2.0 {status} {reason}", *copied, "Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8")
