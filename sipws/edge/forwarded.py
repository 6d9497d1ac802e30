"""The client address from ``X-Forwarded-For`` / ``Forwarded`` (RFC 7239) of a trusted proxy.

A reverse proxy that terminates HTTP (nginx, HAProxy in HTTP mode, a cloud
load balancer) opens its own connection to sipws, so the socket peer is the
proxy.  It names the client in a header instead.  Those headers are plain
request text that any client can write, so they are believed only:

- when the socket peer (or the PROXY header's source) is in ``[http]
  trusted_proxies``: an untrusted sender's headers are ignored entirely;
- for the entries the trusted proxies themselves appended: the list is walked
  from the right (the entry the nearest proxy wrote) to the left, skipping
  entries that are themselves trusted proxies; the first entry that is not is
  the client.  Everything left of it was written by the client and may be
  forged, so it is never looked at.

Which header: ``X-Forwarded-For`` when the request has one, ``Forwarded``
only otherwise.  nginx (``$proxy_add_x_forwarded_for``), HAProxy ``option
forwardfor`` and the cloud balancers append ``X-Forwarded-For`` and pass a
client's ``Forwarded`` through untouched; preferring ``Forwarded`` would let
any client behind them choose its address.  A proxy that writes only
``Forwarded`` must delete a client's ``X-Forwarded-For`` (docs/client-addresses.md).

Entries without a port (``X-Forwarded-For`` never has one) give port 0,
"unknown": the proxy's own port would look like the client's.

Anything malformed, and identifiers that hide the address (``unknown``,
``_obfuscated``), keep the socket peer; ``ClientAddress.problem`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from sipws.edge.networks import NetworkSet, parse_address

#: Entries looked at, right to left, before giving up (a head is at most a few KiB anyway).
MAX_HOPS = 32
#: Characters of a header entry a problem message may quote.
MAX_QUOTED = 40
#: Port given when the header names none.
NO_PORT = 0
MAX_PORT = 65535

XFF = "x-forwarded-for"
FORWARDED = "forwarded"


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The address to use, the header it came from (None: the socket peer), and any problem."""

    address: tuple[str, int]
    header: str | None = None
    problem: str | None = None


class _Unusable(Exception):
    """An entry that names no usable address (internal: becomes ClientAddress.problem)."""


def _quote(text: str) -> str:
    return repr(text[:MAX_QUOTED]) + ("..." if len(text) > MAX_QUOTED else "")


def client_address(peer: tuple[str, int], trusted: NetworkSet,
                   headers: Mapping[str, Sequence[str]]) -> ClientAddress:
    """Where the request came from; ``headers`` maps lowercase names to values in arrival order."""
    if peer[0] not in trusted:
        return ClientAddress(peer)
    if headers.get(XFF):
        name, lines = XFF, headers[XFF]
    elif headers.get(FORWARDED):
        name, lines = FORWARDED, headers[FORWARDED]
    else:
        return ClientAddress(peer)
    try:
        entries = _split_list(lines) if name == XFF else [_forwarded_for(e) for e in _split_list(lines)]
        if not entries:
            raise _Unusable("no entries")
        walked = 0
        for entry in reversed(entries):
            walked += 1
            if walked > MAX_HOPS:
                raise _Unusable(f"more than {MAX_HOPS} trusted hops")
            host, port = _node(entry)
            if host not in trusted:
                return ClientAddress((host, port), name)
        # Every hop is a trusted proxy: the left-most is where the request began.
        return ClientAddress((host, port), name)
    except _Unusable as exc:
        return ClientAddress(peer, None, f"{name}: {exc}")


def _split_list(lines: Sequence[str]) -> list[str]:
    """The comma-separated elements of every line in order, quotes respected, empty ones dropped."""
    elements: list[str] = []
    for line in lines:
        current: list[str] = []
        quoted = escaped = False
        for char in line:
            if escaped:
                escaped = False
            elif quoted and char == "\\":
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                elements.append("".join(current).strip())
                current = []
                continue
            current.append(char)
        if quoted:
            raise _Unusable("unterminated quoted string")
        elements.append("".join(current).strip())
    return [e for e in elements if e]


def _forwarded_for(element: str) -> str:
    """The ``for=`` value of one Forwarded element (``for=x;proto=https;by=y``), unquoted."""
    found: str | None = None
    for pair in _split_pairs(element):
        name, sep, value = pair.partition("=")
        if not sep:
            raise _Unusable(f"malformed parameter {_quote(pair)}")
        if name.strip().lower() != "for":
            continue
        if found is not None:
            raise _Unusable("two for= in one element")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        found = value
    if found is None:
        raise _Unusable(f"element without for= {_quote(element)}")
    return found


def _split_pairs(element: str) -> list[str]:
    pairs, current, quoted = [], [], False
    for char in element:
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            pairs.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    pairs.append("".join(current).strip())
    return [p for p in pairs if p]


def _node(text: str) -> tuple[str, int]:
    """``192.0.2.7``, ``192.0.2.7:4711``, ``[2001:db8::1]:4711``, ``2001:db8::1`` → (host, port)."""
    if text.lower() == "unknown" or text.startswith("_"):
        raise _Unusable(f"hop hides its address ({_quote(text)})")
    port_text = ""
    if text.startswith("["):
        host_text, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Unusable(f"malformed address {_quote(text)}")
        port_text = rest[1:]
        if ":" not in host_text:
            raise _Unusable(f"brackets around a non-IPv6 address {_quote(text)}")
    elif text.count(":") == 1:
        host_text, _, port_text = text.partition(":")
    else:
        host_text = text  # IPv4, or a bare IPv6 address (X-Forwarded-For)
    address = parse_address(host_text) if host_text and host_text.strip() == host_text else None
    if address is None:
        raise _Unusable(f"not an address {_quote(text)}")
    return str(address), _port(port_text, text)


def _port(text: str, entry: str) -> int:
    if not text or text.startswith("_"):  # none, or obfuscated (RFC 7239 §6.3)
        return NO_PORT
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > MAX_PORT:
        raise _Unusable(f"bad port in {_quote(entry)}")
    return int(text)
