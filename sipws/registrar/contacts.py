"""Reading a REGISTER's Contact values and expiry into checked updates.

Pure helpers for ``register.py``: every malformed value becomes a
``Rejected`` naming the header, answered 400 by the registrar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from sipws.registrar.errors import RegistrarError
from sipws.sip import NameAddr, Request, SipParseError, SipUri, parse_uri

#: Digits read from an Expires value; longer values are over any maximum
#: (RFC 3261 §20.19 caps delta-seconds at 2**32-1 anyway).
MAX_EXPIRES_DIGITS = 10
#: Largest reg-id (RFC 5626 §4.2: 1 to 2**31-1).
MAX_REG_ID = 2**31 - 1
#: q of a Contact that has none (RFC 3261 leaves it open; 1.0 is usual).
DEFAULT_Q = 1.0

# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )   (RFC 3261 §25.1)
_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_REG_ID_RE = re.compile(r"[1-9][0-9]{0,9}")


class Rejected(RegistrarError):
    """A REGISTER answered with an error status (internal to the package)."""

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Update:
    """One Contact of a REGISTER, checked: what it asks of its binding."""

    uri: SipUri
    raw_uri: str
    params: tuple[tuple[str, Optional[str]], ...]
    expires: int
    q: float
    instance: Optional[str]
    reg_id: Optional[int]  # set only when RFC 5626 outbound applies

    def matches(self, instance: Optional[str], reg_id: Optional[int], contact: str) -> bool:
        """Is a stored binding (its instance, reg-id, Contact URI) the one
        this Contact replaces?  RFC 5626 §6: instance + reg-id when outbound
        applies, else instance alone; without an instance, the Contact URI
        compared per RFC 3261 §19.1.4 (bindings with an instance are left
        to their instance)."""
        if self.instance is not None:
            return instance == self.instance and reg_id == self.reg_id
        if instance is not None:
            return False
        try:
            return self.uri == parse_uri(contact)
        except SipParseError:  # pragma: no cover - stored URIs were parsed once
            return False


def parse_delta(value: str, header: str) -> int:
    """delta-seconds (RFC 3261 §25.1), capped at 2**32-1."""
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise Rejected(400, f"Bad {header}")
    if len(value) > MAX_EXPIRES_DIGITS:
        return 2**32 - 1
    return min(int(value), 2**32 - 1)


def header_expires(req: Request) -> Optional[int]:
    """The Expires header's delta-seconds, or None when absent."""
    if not req.has("expires"):
        return None
    return parse_delta(req.get("expires") or "", "Expires")


def normalize_instance(value: Optional[str]) -> str:
    """'"<urn:uuid:ABC>"' -> 'urn:uuid:abc' (RFC 5626 §4.1: instance-ids
    compare as URNs; a UUID's hex digits are case-insensitive, RFC 4122)."""
    if value is None or len(value) < 4 or not (value.startswith('"<') and value.endswith('>"')):
        raise Rejected(400, "Bad Contact: +sip.instance")
    inner = value[2:-2]
    if not inner or any(c in inner for c in '"<>\\'):
        raise Rejected(400, "Bad Contact: +sip.instance")
    scheme, _, rest = inner.partition(":")
    nid, _, nss = rest.partition(":")
    if scheme.lower() == "urn" and nid.lower() == "uuid":
        return inner.lower()
    if scheme.lower() == "urn" and nss:
        return f"urn:{nid.lower()}:{nss}"
    return inner


def read_update(contact: NameAddr, default_expires: int, outbound: bool) -> Update:
    """Check one Contact value; ``default_expires`` is what applies without
    an ``expires`` parameter; ``outbound`` says whether the REGISTER
    supports RFC 5626 (else a reg-id is ignored, §6)."""
    uri = contact.uri
    if uri is None:
        raise Rejected(400, "Bad Contact: not a SIP URI")
    params = contact.params
    if "expires" in params:
        raw = params["expires"]
        expires = parse_delta(raw or "", "Contact: expires")
    else:
        expires = default_expires
    q = DEFAULT_Q
    if "q" in params:
        raw_q = params["q"]
        if raw_q is None or not _QVALUE_RE.fullmatch(raw_q):
            raise Rejected(400, "Bad Contact: q")
        q = float(raw_q)
    instance = None
    if "+sip.instance" in params:
        instance = normalize_instance(params["+sip.instance"])
    reg_id = None
    if "reg-id" in params:
        raw_id = params["reg-id"]
        if raw_id is None or not _REG_ID_RE.fullmatch(raw_id) or int(raw_id) > MAX_REG_ID:
            raise Rejected(400, "Bad Contact: reg-id")
        if outbound and instance is not None:
            reg_id = int(raw_id)
    echo = tuple((k, v) for k, v in params.items() if k != "expires")
    return Update(uri, contact.raw_uri, echo, expires, q, instance, reg_id)
