"""Contact aliases: ``[sip] contact_mode = "alias"``, for cores that ignore Path.

In the default mode ("path") the core stores a WebSocket client's Contact as
the client wrote it (a ``*.invalid`` host nobody can dial) and reaches it
through the Path sipws adds to the REGISTER.  A core that ignores Path
(FreeSWITCH, Asterisk without ``support_path``) would send its requests to
the ``.invalid`` host and fail.  In alias mode sipws rewrites the Contact of
the messages a client sends (REGISTER, dialog-creating and target-refresh
requests, and its 1xx/2xx answers to those) to a URI at sipws's own SIP
address, so the core needs nothing special: it routes to the stored Contact,
which is sipws (compare Kamailio's ``add_contact_alias`` /
``handle_ruri_alias`` and OverSIP's Contact mangling).

The rewritten Contact URI is::

    sip:TOKEN.BLOB@SIPWS_HOST:PORT;transport=T

- ``TOKEN`` is the client's flow token (sipws.proxy.flows): it names the
  connection, so a gone connection is answered 430 exactly as in Path mode;
- ``BLOB`` is ``base32(MAC || original URI)``, lowercase, no padding, where
  MAC = HMAC-SHA256(key, TOKEN || original URI)[:ALIAS_MAC_BYTES] and the key
  is derived from the flow-token key (``FlowTokens.subkey``);
- header parameters (``+sip.instance``, ``reg-id``, ``expires``, ``q``,
  display name...) stay on the Contact as they were.

Why carry the original URI in the alias instead of keeping a table: nothing
to lose, nothing to grow (a table keyed by flow would need bounds, eviction
and a story for several Contacts per flow), and the same client URI on the
same connection always gives the same alias, so a refresh or an
``Expires: 0`` finds its binding at the registrar.  The MAC binds the URI to
the token: a forged or garbled alias is refused like a bad flow token (403).
The cost is length: about 40 + 1.6 × (length of the client's URI)
characters of user part; URIs longer than MAX_ALIASED_URI are refused.

When a request comes back with an alias as its Request-URI (the core's
lookup result, or a dialog's remote target), sipws puts the client's URI
back before sending it on the connection; in a 2xx to REGISTER it restores
every Contact that is one of its aliases, so the client finds its own
Contact in the list (SIP.js drops a 200 OK without it).

The ``ob`` URI parameter (RFC 5626) stays inside the alias and comes back to
the client; the rewritten URI does not carry it: sipws is the edge proxy
that acts on it (it record-routes every dialog with the flow token anyway),
and to the core the alias is an ordinary URI it can send to.

Pure code: messages in, messages edited in place; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Optional

from sipws.proxy.errors import BadFlowToken, ProxyError
from sipws.proxy.flows import TOKEN_LENGTH, FlowTokens
from sipws.proxy.targets import LocalAddresses
from sipws.sip import Message, Request, SipParseError, SipUri
from sipws.sip.headers import NameAddr

#: The values of ``[sip] contact_mode``.
CONTACT_MODES = ("path", "alias")
#: Requests from a client whose Contact is rewritten: REGISTER, the
#: dialog-creating ones, and the target refreshes (their Contact replaces the
#: remote target the core keeps).
ALIASED_REQUESTS = frozenset({"REGISTER", "INVITE", "SUBSCRIBE", "REFER", "NOTIFY", "UPDATE"})
#: Responses from a client (to these methods) whose Contact is rewritten.
ALIASED_RESPONSES = ALIASED_REQUESTS - {"REGISTER"}
#: Bytes of MAC binding the original URI to the flow token (80 bits, as
#: Kamailio's flow tokens; the token itself carries 128).
ALIAS_MAC_BYTES = 10
#: Longest client Contact URI (bytes of UTF-8) that is aliased; a longer one
#: in a request is refused 400 (it would make an alias few cores store).
MAX_ALIASED_URI = 255
#: Separates the flow token from the blob (never in a token: base32 only).
SEPARATOR = "."
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
#: Longest blob: the MAC and the longest URI, in base32.
_MAX_BLOB = ((ALIAS_MAC_BYTES + MAX_ALIASED_URI) * 8 + 4) // 5


class ContactTooLong(ProxyError):
    """A client's Contact URI is too long to alias (answered 400)."""

    status = 400
    reason = "Contact URI Too Long"


@dataclass(frozen=True, slots=True)
class AliasAddress:
    """Where an alias points: sipws's address and transport on the core's leg."""

    host_port: str
    transport: str


class ContactAliases:
    """Make, rewrite and restore Contact aliases for one run of sipws."""

    def __init__(self, tokens: FlowTokens, local: LocalAddresses) -> None:
        self._key = tokens.subkey(b"contact-alias")
        self._local = local

    # ------------------------------------------------------------ one URI

    def _mac(self, token: str, uri: bytes) -> bytes:
        return hmac.new(self._key, token.lower().encode("ascii") + uri,
                        hashlib.sha256).digest()[:ALIAS_MAC_BYTES]

    def make_user(self, token: str, uri: str) -> str:
        """The alias user part for a client URI on the flow of ``token``."""
        raw = uri.encode("utf-8")
        if len(raw) > MAX_ALIASED_URI:
            raise ContactTooLong(f"Contact URI of {len(raw)} bytes (at most {MAX_ALIASED_URI})")
        blob = base64.b32encode(self._mac(token, raw) + raw).decode("ascii").rstrip("=").lower()
        return f"{token.lower()}{SEPARATOR}{blob}"

    def make_uri(self, token: str, uri: str, where: AliasAddress) -> str:
        """The rewritten Contact URI (see the module docstring for its form)."""
        return f"sip:{self.make_user(token, uri)}@{where.host_port};transport={where.transport}"

    @staticmethod
    def is_alias_user(user: Optional[str]) -> bool:
        """Shaped like an alias (a flow token, the separator, more)?  Says
        nothing about its authenticity."""
        return bool(user) and len(user) > TOKEN_LENGTH + 1 and user[TOKEN_LENGTH] == SEPARATOR

    def parse_user(self, user: str) -> tuple[str, str]:
        """(flow token, client URI) from an alias user part; BadFlowToken when
        it is not one of ours (bad shape, bad base32, MAC mismatch).  Upper
        case is accepted, as for flow tokens."""
        if not self.is_alias_user(user):
            raise BadFlowToken("not a Contact alias")
        token, blob = user[:TOKEN_LENGTH].lower(), user[TOKEN_LENGTH + 1:].lower()
        if len(blob) > _MAX_BLOB or not _ALPHABET.issuperset(blob):
            raise BadFlowToken("Contact alias is not base32")
        try:
            raw = base64.b32decode(blob.upper() + "=" * (-len(blob) % 8))
        except (binascii.Error, ValueError):
            raise BadFlowToken("Contact alias is not base32") from None
        if base64.b32encode(raw).decode("ascii").rstrip("=").lower() != blob:
            raise BadFlowToken("Contact alias is not in canonical form")
        mac, uri = raw[:ALIAS_MAC_BYTES], raw[ALIAS_MAC_BYTES:]
        if len(mac) < ALIAS_MAC_BYTES or not hmac.compare_digest(mac, self._mac(token, uri)):
            raise BadFlowToken("Contact alias does not authenticate")
        try:
            return token, uri.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFlowToken("Contact alias is not UTF-8") from None

    def alias_of(self, uri: Optional[SipUri]) -> Optional[tuple[str, str]]:
        """(token, client URI) when ``uri`` is one of our aliases, None when it
        is not alias-shaped or not at our address; BadFlowToken when it is
        alias-shaped, at our address, but does not authenticate."""
        if uri is None or not self.is_alias_user(uri.user) or not self._local.is_mine(uri):
            return None
        return self.parse_user(uri.user)

    # ------------------------------------------------------------ messages

    def rewrite_contacts(self, msg: Message, token: str, where: AliasAddress,
                         strict: bool = True) -> int:
        """Replace every sip:/sips: Contact URI of ``msg`` (from the client of
        ``token``) with its alias; ``*`` and other schemes stay.  How many were
        rewritten.  A URI too long to alias (ContactTooLong) or a garbled
        Contact (SipParseError) raises when ``strict`` (requests: answered
        400), else stays as it is (responses: better relayed as written than
        lost)."""
        if not msg.has("contact"):
            return 0
        try:
            contacts = msg.contacts
        except SipParseError:
            if strict:
                raise
            return 0  # a response with a garbled Contact: relayed as it is
        changed = 0
        for i, contact in enumerate(contacts):
            if contact.is_star or contact.uri is None:
                continue
            try:
                new_uri = self.make_uri(token, contact.raw_uri, where)
            except ContactTooLong:
                if strict:
                    raise
                continue
            contacts[i] = NameAddr(new_uri, contact.display, contact.params)
            changed += 1
        if changed:
            msg.set_header("Contact", ", ".join(str(c) for c in contacts))
        return changed

    def restore_contacts(self, msg: Message) -> int:
        """Put the client URIs back in every Contact of ``msg`` that is one of
        our aliases (a 2xx to REGISTER listing the bindings); Contacts that
        are not, or do not authenticate (another start's), stay.  How many
        were restored."""
        if not msg.has("contact"):
            return 0
        try:
            contacts = msg.contacts
        except SipParseError:
            return 0  # the registrar's garbled Contact: relayed as it is
        changed = 0
        for i, contact in enumerate(contacts):
            if contact.is_star:
                continue
            try:
                alias = self.alias_of(contact.uri)
            except BadFlowToken:
                continue
            if alias is None:
                continue
            contacts[i] = NameAddr(alias[1], contact.display, contact.params)
            changed += 1
        if changed:
            msg.set_header("Contact", ", ".join(str(c) for c in contacts))
        return changed

    def restore_request_uri(self, req: Request) -> Optional[str]:
        """When the Request-URI is one of our aliases: put the client's URI
        back and return the flow token it carries; None when it is not an
        alias; BadFlowToken when it is a forged or garbled one."""
        try:
            ruri = req.request_uri
        except SipParseError:
            return None  # tel: and the like: never an alias
        alias = self.alias_of(ruri)
        if alias is None:
            return None
        token, uri = alias
        req.set_request_uri(uri)
        return token


__all__ = ["ALIASED_REQUESTS", "ALIASED_RESPONSES", "AliasAddress", "CONTACT_MODES",
           "ContactAliases", "ContactTooLong", "MAX_ALIASED_URI"]
