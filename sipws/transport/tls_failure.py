"""Say what really went wrong in a TLS failure, and which side caused it.

OpenSSL reports every failure as a list of ``(library, function, reason)``
tuples.  Autobahn logs the first one as ``SSL error: <reason>`` and the
connection looks "lost during handshake" from the remote side, whoever
failed.  An operator needs the opposite: an alert the peer *sent* us (it did
not like our certificate, our TLS version...) is the peer's decision; a
reason OpenSSL raised while processing the peer's bytes (no shared cipher,
plain HTTP to the TLS port, a certificate that failed our check) is ours.

Pure code: no reactor, no sockets; ``describe_tls_failure`` takes the
exception object.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipws.transport.connections import LOCAL, REMOTE

#: Prefixes OpenSSL puts on a reason when the *peer* sent the alert.
_RECEIVED_ALERT_PREFIXES = ("sslv3 alert ", "tlsv1 alert ", "tls13 alert ", "tls alert ")

#: Reasons that mean the peer went away or spoke something else: the peer's doing.
_PEER_REASONS = {
    "unexpected eof while reading": "the peer closed the connection in the middle of the TLS handshake",
    "http request": "the peer sent a plain HTTP request to the TLS port (ws:// to a wss:// listener?)",
    "wrong version number": "the peer did not start a TLS handshake (plain text to the TLS port?)",
}

#: Reasons OpenSSL raises on our side, with what they mean for an operator.
_LOCAL_REASONS = {
    "no shared cipher": "no cipher suite in common with the peer",
    "unsupported protocol": "the peer offered only TLS versions below [wss] min_tls_version",
    "no protocols available": "no TLS version in common with the peer",
    "certificate verify failed": "the peer's certificate failed verification",
    "peer did not return a certificate": "the peer sent no client certificate ([wss] require_client_cert)",
    "no application protocol": "no ALPN protocol in common with the peer",
    "version too low": "the peer's TLS version is below [wss] min_tls_version",
}


@dataclass(frozen=True)
class TlsFailure:
    """A TLS failure as one log phrase: ``text`` (no secrets) and ``side``."""

    text: str
    side: str


def _reasons(error: BaseException) -> list[str]:
    """The OpenSSL reason strings carried by an ``OpenSSL.SSL.Error``."""
    args = getattr(error, "args", ())
    entries = args[0] if args and isinstance(args[0], list) else []
    reasons = []
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) >= 3 and entry[2]:
            reasons.append(str(entry[2]))
    if not reasons and args and not isinstance(args[0], list):
        reasons.append(str(args[0]))
    return reasons


def describe_tls_failure(error: BaseException) -> TlsFailure:
    """``TlsFailure`` for an ``OpenSSL.SSL.Error`` (or anything with the same args)."""
    reasons = _reasons(error)
    if not reasons:
        return TlsFailure("TLS error (no details from OpenSSL)", LOCAL)
    for reason in reasons:
        lowered = reason.lower()
        for prefix in _RECEIVED_ALERT_PREFIXES:
            if lowered.startswith(prefix):
                alert = lowered[len(prefix):]
                return TlsFailure(f"TLS: the peer sent alert '{alert}'", REMOTE)
        if lowered in _PEER_REASONS:
            return TlsFailure(f"TLS: {_PEER_REASONS[lowered]}", REMOTE)
    first = reasons[0]
    meaning = _LOCAL_REASONS.get(first.lower())
    if meaning is not None:
        return TlsFailure(f"TLS: refused here: {meaning} ({first})", LOCAL)
    return TlsFailure(f"TLS: failed here: {first}", LOCAL)
