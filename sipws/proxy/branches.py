"""Our branches and To-tags: keyed digests, deterministic per transaction
(a retransmission or a CANCEL maps to the same branch), with a loop-detection
part (RFC 3261 §16.6 step 8) that only a spiral changes."""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING

from sipws.proxy.transaction import MAGIC_COOKIE
from sipws.sip import Request

if TYPE_CHECKING:
    from sipws.proxy.legs import Inbound

#: Marks branches we generate (after the magic cookie), for responses and loops.
BRANCH_MARK = "sw"
#: Marks one of our branches in a Via (loop detection looks only at those).
OUR_BRANCH = MAGIC_COOKIE + BRANCH_MARK
#: Hex digits of the transaction part and of the loop-detection part of a branch.
BRANCH_TX_HEX = 20
BRANCH_LOOP_HEX = 10
#: Hex digits of the To-tags we put on responses we generate.
TO_TAG_HEX = 12
#: Bytes of each keyed digest (branches and tags use a prefix of its hex form).
DIGEST_BYTES = 16
#: Header fields in the loop-detection part of our branches (with the Request-URI).
LOOP_FIELDS = frozenset({"route", "call-id", "from", "to", "cseq"})


class BranchesMixin:
    """EdgeProxy's digests (needs ``_hash_key`` and ``_last_loop``)."""

    _hash_key: bytes
    _last_loop: object

    def _digest(self, *parts: object) -> str:
        """Keyed BLAKE2b (a MAC by design): a third of HMAC-SHA256's cost here."""
        text = "\x00".join([str(p) for p in parts]).encode("utf-8", "surrogatepass")
        return blake2b(text, key=self._hash_key, digest_size=DIGEST_BYTES).hexdigest()

    def _loop_part(self, req: Request) -> str:
        # RFC 3261 §16.6 step 8: what a spiral changes (Request-URI, Route) is in.
        # Route, Call-ID, From, To and CSeq fields as written: proxies relay them
        # unchanged, and the raw text spares reading values (memoised: asked
        # twice per request).
        last = self._last_loop
        if last is not None and last[0] is req:
            return last[1]
        value = self._digest("loop", req.uri, *req.raw_fields(LOOP_FIELDS))[:BRANCH_LOOP_HEX]
        self._last_loop = (req, value)
        return value

    def _branch(self, req: Request, inbound: Inbound) -> str:
        """Deterministic: a retransmission or a CANCEL maps to the same branch."""
        via = req.top_via
        leg = inbound.conn_id if inbound.conn_id is not None else (
            inbound.transport, *inbound.source)
        tx = self._digest("tx", via.branch, via.sent_by.lower(), leg,
                          "" if (via.branch or "").startswith(MAGIC_COOKIE) else
                          (req.call_id, req.from_.tag, req.cseq[0]),
                          "ACK" if req.method == "ACK" else "")[:BRANCH_TX_HEX]
        return f"{MAGIC_COOKIE}{BRANCH_MARK}{tx}.{self._loop_part(req)}"

    def _to_tag(self, req: Request) -> str:
        return self._digest("tag", req.top_via.branch, req.call_id)[:TO_TAG_HEX]
