"""REGISTER processing (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 outbound).

Pure code: a parsed REGISTER in, a Response out, the BindingTable updated
all or nothing.  Every malformed or refused REGISTER is answered with its
RFC status; ``handle`` raises only ``NotARegister`` (a caller's mistake).

Choices where the RFCs leave room (see also docs for standalone mode):

- The Request-URI is not checked: in standalone mode it names sipws by
  whatever address the client used (JsSIP writes the domain, others the
  server's IP), and there is no other registrar to forward to.
- An AOR in a domain not in ``domains`` gets 403 (Domain Not Served):
  we have no authority over it and repeating cannot help; 404 (§10.3
  step 3) would claim the user does not exist in a domain we serve.
  An AOR that is not a SIP URI or has no user part gets 404 (step 3).
- Over the per-AOR limit: 403 (Too Many Bindings).  It is policy for this
  AOR, not server overload: a 503 would make an RFC 3263 client fail over
  to another server, and a proxy on the way SHOULD NOT relay a 503 anyway
  (RFC 3261 §16.7 step 6).  Over the table-wide limit: 503 with
  Retry-After, since bindings expiring or flows closing free room.
- Contact URIs compare per RFC 3261 §19.1.4; bindings with +sip.instance
  are matched only by instance (and reg-id), RFC 5626 §6.
"""

from __future__ import annotations

import hashlib
from email.utils import formatdate
from typing import Iterable, Optional

from sipws.registrar.bindings import Binding, BindingTable, SecondsClock, aor_of
from sipws.registrar.contacts import Rejected, Update, header_expires, read_update
from sipws.registrar.errors import NotARegister, TooManyBindings
from sipws.sip import Request, Response, SipParseError, make_response
from sipws.sip.uri import normalize_host

#: Option tags this registrar implements (RFC 3261 §8.2.2.3: others in
#: Require get 420 Bad Extension).
SUPPORTED_EXTENSIONS = ("path", "outbound")
#: Retry-After of the 503 sent when the table is full.
FULL_RETRY_AFTER = 60
DEFAULT_MIN_EXPIRES = 60
DEFAULT_MAX_EXPIRES = 3600
DEFAULT_DEFAULT_EXPIRES = 600
#: Hex digits of the To-tag (derived from the request, so a retransmitted
#: REGISTER gets the same tag).
TO_TAG_HEX = 16


class Registrar:
    """Answers REGISTER requests from and into a BindingTable."""

    def __init__(self, table: BindingTable, clock: SecondsClock, domains: Iterable[str] = (),
                 min_expires: int = DEFAULT_MIN_EXPIRES, max_expires: int = DEFAULT_MAX_EXPIRES,
                 default_expires: int = DEFAULT_DEFAULT_EXPIRES) -> None:
        if not 0 < min_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= max_expires")
        self.table = table
        self.clock = clock
        self.domains = frozenset(normalize_host(d) for d in domains)
        self.min_expires = min_expires
        self.max_expires = max_expires
        # A default outside the bounds would refuse every Contact without one.
        self.default_expires = min(max(default_expires, min_expires), max_expires)

    def serves(self, host: str) -> bool:
        """Is ``host`` a domain this registrar holds bindings for?"""
        return not self.domains or normalize_host(host) in self.domains

    # ------------------------------------------------------------ public

    def handle(self, req: Request) -> Response:
        """The response to one REGISTER; the table updated when it is a 200."""
        if not isinstance(req, Request) or req.method != "REGISTER":
            raise NotARegister(f"not a REGISTER: {req!r}")
        try:
            return self._handle(req)
        except Rejected as exc:
            return self._respond(req, exc.status, exc.reason, exc.headers)
        except TooManyBindings as exc:
            if exc.scope == "aor":
                return self._respond(req, 403, "Too Many Bindings")
            return self._respond(req, 503, "Registrar Full",
                                 (("Retry-After", str(FULL_RETRY_AFTER)),))
        except SipParseError as exc:  # a header only read lazily was malformed
            return self._respond(req, 400, _safe_reason(exc.reason))

    # ----------------------------------------------------------- steps

    def _handle(self, req: Request) -> Response:
        self._check_require(req)
        aor = self._aor(req)
        try:
            paths = req.paths
        except SipParseError:
            raise Rejected(400, "Bad Path") from None
        path = tuple(req.get_all("path"))
        flow = paths[0].uri.user if paths and paths[0].uri is not None else None
        try:
            contacts = req.contacts
        except SipParseError:
            raise Rejected(400, "Bad Contact") from None
        try:
            supported = {s.lower() for s in req.supported}
        except SipParseError:
            raise Rejected(400, "Bad Supported") from None
        echo: list[tuple[str, str]] = []
        if path and "path" in supported:
            echo.append(("Path", ", ".join(path)))  # RFC 3327 §5.3
        if not contacts:  # a query (§10.2.3)
            return self._ok(req, aor, echo)
        expires_header = header_expires(req)
        stored = self.table.bindings(aor)
        call_id, cseq = req.call_id, req.cseq[0]
        if contacts[0].is_star:
            if expires_header != 0:
                raise Rejected(400, "Bad Contact: '*' needs Expires: 0")
            for b in stored:
                _check_order(b, call_id, cseq)
            self.table.replace(aor, [])
            return self._ok(req, aor, echo)
        default = self.default_expires if expires_header is None else expires_header
        outbound = "outbound" in supported
        updates = [read_update(c, default, outbound) for c in contacts]
        too_brief = [u for u in updates if 0 < u.expires < self.min_expires]
        if too_brief:
            raise Rejected(423, "Interval Too Brief",
                           (("Min-Expires", str(self.min_expires)),))
        uses_outbound = any(u.reg_id is not None for u in updates)
        if uses_outbound and not _first_hop_outbound(req, paths):
            # RFC 5626 §6: an edge proxy that did not mark its Path with
            # "ob" cannot keep the flow; the UA must learn it.
            raise Rejected(439, "First Hop Lacks Outbound Support")
        new = self._merge(stored, updates, aor, path, flow, call_id, cseq)
        self.table.replace(aor, new)
        if uses_outbound:
            echo.append(("Require", "outbound"))
        return self._ok(req, aor, echo)

    def _check_require(self, req: Request) -> None:
        try:
            unknown = [t for t in req.require if t.lower() not in SUPPORTED_EXTENSIONS]
        except SipParseError:
            raise Rejected(400, "Bad Require") from None
        if unknown:
            raise Rejected(420, "Bad Extension", (("Unsupported", ", ".join(unknown)),))

    def _aor(self, req: Request) -> str:
        try:
            uri = req.to.uri
        except SipParseError:
            raise Rejected(400, "Bad To") from None
        if uri is None or not uri.user:
            raise Rejected(404, "Not Found")
        if not self.serves(uri.host):
            raise Rejected(403, "Domain Not Served")
        return aor_of(uri)

    def _merge(self, stored: list[Binding], updates: list[Update], aor: str,
               path: tuple[str, ...], flow: Optional[str], call_id: str,
               cseq: int) -> list[Binding]:
        """The AOR's bindings after this REGISTER (§10.3 step 7): each
        Contact replaces or removes the binding it matches; a binding
        stored earlier with the same Call-ID and a CSeq not lower aborts
        the whole request (an out-of-order or retransmitted REGISTER)."""
        now = self.clock.seconds()
        result = list(stored)
        stored_ids = {id(b) for b in stored}
        for u in updates:
            for i, b in enumerate(result):
                if u.matches(b.instance, b.reg_id, b.contact):
                    if id(b) in stored_ids:
                        _check_order(b, call_id, cseq)
                    del result[i]
                    break
            if u.expires > 0:
                expires = min(u.expires, self.max_expires)
                result.append(Binding(aor, u.raw_uri, u.params, path, flow, u.instance,
                                      u.reg_id, call_id, cseq, u.q, now + expires))
        return result

    # ------------------------------------------------------- responses

    def _ok(self, req: Request, aor: str, echo: list[tuple[str, str]]) -> Response:
        now = self.clock.seconds()
        headers = [("Contact", b.contact_value(now)) for b in self.table.lookup(aor)]
        return self._respond(req, 200, None, (*headers, *echo))

    def _respond(self, req: Request, status: int, reason: Optional[str],
                 headers: Iterable[tuple[str, str]] = ()) -> Response:
        date = formatdate(self.clock.seconds(), usegmt=True)
        extra = (*headers, ("Date", date))
        return make_response(req, status, reason, to_tag=_to_tag(req), extra_headers=extra)


def _check_order(b: Binding, call_id: str, cseq: int) -> None:
    if b.call_id == call_id and cseq <= b.cseq:
        raise Rejected(500, "Out Of Order REGISTER")


def _first_hop_outbound(req: Request, paths: list) -> bool:
    """RFC 5626 §6: the UA is adjacent (one Via) or the first Path URI
    (the edge proxy's, nearest the UA: the last Path value) has ``ob``."""
    if len(req.get_all("via")) <= 1:
        return True
    return bool(paths) and paths[-1].uri is not None and "ob" in paths[-1].uri.params


def _to_tag(req: Request) -> str:
    try:
        from_tag = req.from_.tag or ""
    except SipParseError:
        from_tag = ""
    seed = f"{req.call_id}\x00{from_tag}".encode("utf-8", "replace")
    return hashlib.blake2s(seed, digest_size=TO_TAG_HEX // 2).hexdigest()


def _safe_reason(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:80] or "Bad Request"
