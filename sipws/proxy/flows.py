"""Flow tokens: a WebSocket connection id, authenticated, in a SIP URI user part.

Every WebSocket connection is a flow (RFC 5626).  Its token goes into the
user part of our Path and Record-Route entries; when the core sends a request
back through us, the token selects the connection.  A token is

    base32( conn_id as 8 bytes || HMAC-SHA256(key, nonce || conn_id)[:MAC_BYTES] )

lowercase and without padding: letters a-z and digits 2-7 only, which need no
escaping in a URI user part and survive an element that lowercases URIs.  The
nonce is random per start, so tokens issued before a restart are refused even
with a configured key (their connections are gone anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Optional, Union

from sipws.proxy.errors import BadFlowToken

#: Bytes of HMAC kept in a token (128 bits: forging one is out of reach).
MAC_BYTES = 16
#: Bytes of connection id in a token.
ID_BYTES = 8
#: Bytes of random key used when [sip] flow_token_secret is empty.
RANDOM_KEY_BYTES = 32
#: Bytes of the per-start nonce.
NONCE_BYTES = 16
#: Flow tokens remembered as checked (cleared when full).
CHECKED_TOKENS = 65536
_RAW_BYTES = ID_BYTES + MAC_BYTES
#: Characters in every token (base32 without padding).
TOKEN_LENGTH = (_RAW_BYTES * 8 + 4) // 5
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_MAX_ID = (1 << (8 * ID_BYTES)) - 1


class FlowTokens:
    """Make and check flow tokens for one run of sipws."""

    def __init__(self, secret: Union[bytes, str, None] = None,
                 nonce: Optional[bytes] = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._key = secret if secret else os.urandom(RANDOM_KEY_BYTES)
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        #: Tokens already checked -> their connection id.
        self._good: dict[str, int] = {}

    def subkey(self, label: bytes) -> bytes:
        """A key for another keyed hash of this start (branches, tags), derived
        from the flow key so nothing else needs a secret of its own."""
        return hmac.new(self._key, b"sipws-subkey:" + label + b":" + self._nonce,
                        hashlib.sha256).digest()

    def _mac(self, raw_id: bytes) -> bytes:
        return hmac.new(self._key, self._nonce + raw_id, hashlib.sha256).digest()[:MAC_BYTES]

    def make(self, conn_id: int) -> str:
        """The token of connection ``conn_id`` (a positive integer)."""
        if not isinstance(conn_id, int) or not 0 < conn_id <= _MAX_ID:
            raise ValueError(f"connection id out of range: {conn_id!r}")
        raw_id = conn_id.to_bytes(ID_BYTES, "big")
        text = base64.b32encode(raw_id + self._mac(raw_id)).decode("ascii")
        return text.rstrip("=").lower()

    def check(self, token: str) -> int:
        """The connection id in ``token``; BadFlowToken if it is not one of ours.

        Upper case is accepted (some elements rewrite URIs).  The MAC is
        compared in constant time.  Tokens that passed are remembered (every
        in-dialog request carries the same one); a bad one is checked in full
        every time.
        """
        conn_id = self._good.get(token)
        if conn_id is not None:
            return conn_id
        conn_id = self._check(token)
        if len(self._good) >= CHECKED_TOKENS:
            self._good.clear()
        self._good[token] = conn_id
        return conn_id

    def _check(self, token: str) -> int:
        if not isinstance(token, str) or len(token) != TOKEN_LENGTH:
            raise BadFlowToken("flow token has the wrong length")
        lowered = token.lower()
        if not _ALPHABET.issuperset(lowered):
            raise BadFlowToken("flow token has characters outside base32")
        padded = lowered.upper() + "=" * (-len(lowered) % 8)
        try:
            raw = base64.b32decode(padded)
        except (binascii.Error, ValueError):
            raise BadFlowToken("flow token is not base32") from None
        raw_id, mac = raw[:ID_BYTES], raw[ID_BYTES:]
        # Unused trailing bits must be zero: one token, one spelling.
        if base64.b32encode(raw).decode("ascii").rstrip("=").lower() != lowered:
            raise BadFlowToken("flow token is not in canonical form")
        if not hmac.compare_digest(mac, self._mac(raw_id)):
            raise BadFlowToken("flow token does not authenticate")
        conn_id = int.from_bytes(raw_id, "big")
        if conn_id == 0:
            raise BadFlowToken("flow token names connection 0")
        return conn_id
