"""Shared test data for the SIP message layer tests."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "sip"


def crlf(*lines: str, body: bytes = b"") -> bytes:
    """Header lines joined by CRLF, the blank line, then the body."""
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


def invite(*extra: str, body: bytes = b"", content_length: bool = True) -> bytes:
    lines = [
        "INVITE sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;branch=z9hG4bK6307497",
        "Max-Forwards: 70",
        "To: <sip:bob@example.com>",
        'From: "Alice" <sip:alice@example.com>;tag=p1ilo8b9k4',
        "Call-ID: 0rm0fb4uv2gq3m6ou7ek",
        "CSeq: 7264 INVITE",
        "Contact: <sip:t8f4gq1l@7d5ka3jfi1ak.invalid;transport=ws;ob>",
        *extra,
    ]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return crlf(*lines, body=body)


def response(status: str = "200 OK", *extra: str, body: bytes = b"") -> bytes:
    return crlf(
        f"SIP/2.0 {status}",
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1;received=192.0.2.10",
        "Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;branch=z9hG4bK6307497",
        "To: <sip:bob@example.com>;tag=as1",
        'From: "Alice" <sip:alice@example.com>;tag=p1ilo8b9k4',
        "Call-ID: 0rm0fb4uv2gq3m6ou7ek",
        "CSeq: 7264 INVITE",
        *extra,
        f"Content-Length: {len(body)}",
        body=body,
    )
