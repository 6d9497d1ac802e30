"""Identity binding ([auth] bind_identity): may this connection speak as that user? Pure.

reSIProcate's repro binds the identity proven at the handshake to every later
SIP request on the connection; sipws does the same for the requests that claim
an identity toward the core:

- a REGISTER names the address-of-record it binds in To;
- an initial request (no To tag: outside a dialog) names its sender in From.

In-dialog requests are left alone (their From/To are the dialog's, fixed at
its start, and the other side's tag proves the dialog exists), and so is
everything sent *toward* the connection.

An identity ``user`` must equal the URI's user part; ``user@domain`` must
equal user part and host.  Following RFC 3261 §19.1.4 the user part compares
case-sensitively (after unescaping, which the URI parser does) and the host
case-insensitively.
"""

from __future__ import annotations

from typing import Optional

from sipws.sip import Request, SipError
from sipws.sip.headers import NameAddr
from sipws.sip.uri import SipUri

#: Characters of a claimed URI quoted in the log line.
MAX_CLAIM_SHOWN = 100


def identity_matches(identity: str, uri: Optional[SipUri]) -> bool:
    """Whether a sip:/sips: URI names ``identity`` (``user`` or ``user@domain``)."""
    if uri is None or uri.user is None:
        return False
    user, at, domain = identity.rpartition("@")
    if not at:
        return uri.user == identity
    return uri.user == user and uri.host == domain.lower()


def claimed_identity(req: Request) -> Optional[tuple[str, NameAddr]]:
    """(which header, its address) a request claims an identity with, or None when it
    claims none (an in-dialog request)."""
    if req.method == "REGISTER":
        return "To", req.to
    to = req.to
    if to.tag is not None:
        return None
    return "From", req.from_


def binding_violation(req: Request, identity: str) -> Optional[str]:
    """None when ``req`` may go from a connection bound to ``identity``; otherwise what it
    claims instead, for the log (``From sip:bob@example.com``).  "" binds nothing."""
    if not identity:
        return None
    try:
        claim = claimed_identity(req)
        if claim is None:
            return None
        name, address = claim
        if identity_matches(identity, address.uri):
            return None
    except (SipError, ValueError):
        return "an unreadable From/To"
    return f"{name} {address.raw_uri[:MAX_CLAIM_SHOWN]}"
