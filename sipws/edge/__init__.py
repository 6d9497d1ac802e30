"""The edge's pure rules: who may connect, as whom, how often, from which address.

Nothing here does I/O.  Credential checks, PROXY protocol headers, Forwarded
headers, rate limits and bans are decided from bytes, strings and an injected
clock; ``sipws.transport`` carries the decisions out.
"""

from sipws.errors import SipwsError


class EdgeError(SipwsError):
    """Root of the edge rules' errors (a header that cannot be read, a credential refused...)."""


#: Statuses a denial may carry: HTTP client and server errors only (a "denial" with
#: 200 or 101 would be an accept in disguise).
DENIAL_STATUSES = range(400, 600)


class Denied(EdgeError):
    """A handshake refused by an [auth] check or hook, with its HTTP status.

    A hook (``[auth] hook``) may raise it or return it (or fire a Deferred with
    it).  ``reason`` goes to the log line and the HEP event, never to the client,
    so it may name the user but must not hold a credential.
    """

    def __init__(self, status: int = 403, reason: str = "denied") -> None:
        super().__init__(f"{status} {reason}")
        if isinstance(status, bool) or not isinstance(status, int) or status not in DENIAL_STATUSES:
            raise ValueError(f"a denial's status must be 400..599, got {status!r}")
        self.status = status
        self.reason = str(reason)

    def __repr__(self) -> str:
        return f"Denied({self.status}, {self.reason!r})"
