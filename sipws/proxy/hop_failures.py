"""What the relay learns when a next hop fails: ICMP errors and silent next hops.

Pure code: bytes and times in, decisions out.

- ``sent_request_key``: an ICMP error quotes the first bytes of the datagram
  that caused it.  For a request sipws sent, those bytes hold the request line
  and, first among the Vias, sipws's own, whose branch names the client
  transaction (RFC 3261 §17.1.3: branch + method).  That is enough to fail
  exactly that transaction with 503 at once, instead of all traffic to the
  address or none.
- ``HopReportLimiter``: when a next hop stays silent, every request to it
  ends in timer B/F (408 after 32 s); when it is down, every request draws an
  ICMP error.  One line per next hop per interval says so, with the number of
  events since the last line, instead of one line per request (a core that is
  down under load would otherwise flood the log).
"""

from __future__ import annotations

import re
from typing import Optional

#: A request line's method: a token followed by a space and a URI, not "SIP/2.0 ...".
_REQUEST_LINE = re.compile(rb"([A-Za-z0-9!%*_+`'~.\-]+) (?!SIP/)\S+ SIP/2\.0\r?\n")
#: The branch parameter of the first Via header field (long or compact name).
_FIRST_VIA_BRANCH = re.compile(
    rb"\r?\n(?:[Vv][Ii][Aa]|[Vv])[ \t]*:[^\r\n]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)", re.IGNORECASE)
#: Seconds between two lines about the same next hop.
HOP_REPORT_INTERVAL = 60.0
#: Next hops remembered for rate limiting (next hops can come from clients' Routes).
MAX_SILENT_HOPS = 1024


def sent_request_key(quoted: bytes) -> Optional[tuple[str, str]]:
    """(branch, method) of the request whose first bytes an ICMP error quotes, or None.

    None for a response, an unreadable quote, or a quote too short to reach
    the first Via's branch.
    """
    line = _REQUEST_LINE.match(quoted)
    if line is None:
        return None
    via = _FIRST_VIA_BRANCH.search(quoted, line.end() - 2)
    if via is None:
        return None
    try:
        return via.group(1).decode("ascii"), line.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None


class HopReportLimiter:
    """At most one log line per next hop per interval; counts what it held back."""

    def __init__(self, interval: float = HOP_REPORT_INTERVAL, max_hops: int = MAX_SILENT_HOPS) -> None:
        self.interval = interval
        self.max_hops = max_hops
        #: next hop -> (time of its last line, events held back since then)
        self._hops: dict[str, tuple[float, int]] = {}

    def due(self, next_hop: str, now: float) -> Optional[int]:
        """Note one event for ``next_hop``: None to stay quiet, else the count held back since the last line."""
        last = self._hops.get(next_hop)
        if last is not None and now - last[0] < self.interval:
            self._hops[next_hop] = (last[0], last[1] + 1)
            return None
        self._hops.pop(next_hop, None)
        self._hops[next_hop] = (now, 0)
        self._bound(now)
        return last[1] if last is not None else 0

    def _bound(self, now: float) -> None:
        hops = self._hops
        if len(hops) <= self.max_hops:
            return
        for hop in [h for h, (when, _) in hops.items() if now - when >= self.interval]:
            del hops[hop]
        while len(hops) > self.max_hops:  # all recent: forget the oldest
            del hops[next(iter(hops))]


def silent_hop_line(next_hop: str, held_back: int, interval: float) -> str:
    """The warning for a next hop whose requests time out."""
    more = f"; {held_back} more timed out since the last report" if held_back else ""
    return (f"next hop {next_hop} does not answer: request timed out (408 to the client){more}; "
            f"reported at most once per {interval:g} s")
