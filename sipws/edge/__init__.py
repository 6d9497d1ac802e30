"""The edge's pure rules: who may connect, as whom, how often, from which address.

Nothing here does I/O.  Credential checks, PROXY protocol headers, Forwarded
headers, rate limits and bans are decided from bytes, strings and an injected
clock; ``sipws.transport`` carries the decisions out.
"""

from sipws.errors import SipwsError


class EdgeError(SipwsError):
    """Root of the edge rules' errors (a header that cannot be read, a credential refused...)."""
