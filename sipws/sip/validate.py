"""Eager validation of the header values a proxy relies on.

``parse()`` checks every Via, From, To, Contact, Route, Record-Route and Path
value up front, so that a parsed message's structured accessors never fail
later.  To keep that cheap, each value is first matched against a *fast*
regular expression describing the common, simple shapes (a strict subset of
the RFC 3261 grammar, with bounded repetitions so matching stays linear);
only values outside that subset go through the full parsers in headers.py /
uri.py, which are the authority.
"""

from __future__ import annotations

import re

from sipws.sip.errors import SipParseError
from sipws.sip.headers import parse_name_addr, parse_via, split_comma
from sipws.sip.limits import Limits

#: Values longer than this skip the fast path (keeps its cost bounded).
FAST_PATH_MAX = 512

# Possessive quantifiers and atomic groups (Python >= 3.11) keep these
# patterns from ever backtracking: each position is tried once.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]++"
_ALNUM = r"[A-Za-z0-9]"
_LABEL = rf"{_ALNUM}++(?:-++{_ALNUM}++)*+"
_TOPLABEL = rf"[A-Za-z]{_ALNUM}*+(?:-++{_ALNUM}++)*+"
_OCTET = r"(?>25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}(?![A-Za-z0-9.\-])"
_HOST = rf"(?>{_IPV4}|(?:{_LABEL}\.)*+{_TOPLABEL})"
_PORT = (r"(?>6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
         r"|[0-9]{1,4}(?![0-9]))")
_USER = r"[A-Za-z0-9\-_.!~*'()&=+$,]++(?::[A-Za-z0-9\-_.!~*'()&=+$,]*+)?+@"
_PCHAR = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]"
_URI_PARAMS = rf"(?:;{_PCHAR}++(?:={_PCHAR}++)?+)*+"
_SIP_URI = rf"[Ss][Ii][Pp][Ss]?:(?:{_USER})?+{_HOST}(?::{_PORT})?+"
# An addr-spec (no <>) may not contain "," (RFC 3261 §20.10): no comma in user.
_USER_NO_COMMA = r"[A-Za-z0-9\-_.!~*'()&=+$]"
_ADDR_SPEC = (rf"[Ss][Ii][Pp][Ss]?:(?:{_USER_NO_COMMA}++(?::{_USER_NO_COMMA}*+)?+@)?+"
              rf"{_HOST}(?::{_PORT})?+")
_QUOTED = r'"[^"\\\x00-\x1f\x7f]*+"'
_HDR_PARAMS = rf"(?:[ \t]*+;[ \t]*+{_TOKEN}(?:[ \t]*+=[ \t]*+(?:{_TOKEN}|{_QUOTED}))?+)*+"
_DISPLAY = rf"(?:{_QUOTED}[ \t]*+|{_TOKEN}(?:[ \t]++{_TOKEN})*+[ \t]*+)?+"

#: Request-URI: a sip/sips URI without headers.
FAST_RURI = re.compile(_SIP_URI + _URI_PARAMS)
#: name-addr (<URI> with display name) or addr-spec, with header params.
FAST_NAME_ADDR = re.compile(
    rf"(?:<{_SIP_URI}{_URI_PARAMS}>|{_DISPLAY}<{_SIP_URI}{_URI_PARAMS}>|{_ADDR_SPEC})"
    rf"{_HDR_PARAMS}")
_RPORT = r"[Rr][Pp][Oo][Rr][Tt]"
#: One Via value with token/IPv4 parameter values; an ``rport=`` value must be
#: a port number (0-65535), anything else goes to the full parser.
FAST_VIA = re.compile(
    rf"SIP/2\.0/[A-Za-z]{{2,4}} {_HOST}(?::{_PORT})?+"
    rf"(?:;(?:{_RPORT}={_PORT}(?=;|$)|(?!{_RPORT}=){_TOKEN}(?:={_TOKEN})?+))*+")


def check_vias(value: str) -> int:
    """Validate a Via field value; return how many Via values it holds."""
    if "," in value:
        parts = split_comma(value)
        if not parts:
            raise SipParseError("empty Via")
        for part in parts:
            _check_via(part)
        return len(parts)
    _check_via(value)
    return 1


def _check_via(value: str) -> None:
    if len(value) <= FAST_PATH_MAX and FAST_VIA.fullmatch(value) is not None:
        return
    parse_via(value)


def check_name_addrs(value: str, limits: Limits, allow_star: bool = False) -> int:
    """Validate a list of name-addr values (Contact, Route ...); the count."""
    if "," in value:
        parts = split_comma(value)
        if not parts:
            raise SipParseError("empty header value")
        if allow_star and len(parts) > 1 and "*" in parts:
            raise SipParseError("'*' Contact mixed with others")
        for part in parts:
            check_name_addr(part, limits, allow_star)
        return len(parts)
    check_name_addr(value, limits, allow_star)
    return 1


def check_name_addr(value: str, limits: Limits, allow_star: bool = False) -> None:
    if (len(value) <= min(FAST_PATH_MAX, limits.max_uri_length)
            and FAST_NAME_ADDR.fullmatch(value) is not None):
        return
    parse_name_addr(value, limits, allow_star)
