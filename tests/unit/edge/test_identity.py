"""[auth] bind_identity: which requests claim which identity (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipws.edge.identity import binding_violation, identity_matches
from sipws.sip import SipParseError, parse
from sipws.sip.uri import parse_uri


def request(method: str, from_: str, to: str) -> bytes:
    return (f"{method} sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK1\r\n"
            f"From: {from_}\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("identity, uri, ok", [
    ("alice", "sip:alice@example.com", True),
    ("alice", "sip:alice@other.org", True),
    ("alice", "sip:Alice@example.com", False),  # user part: case-sensitive (RFC 3261 §19.1.4)
    ("alice", "sip:%61lice@example.com", True),  # compared unescaped
    ("alice@example.com", "sip:alice@EXAMPLE.com", True),  # host: case-insensitive
    ("alice@Example.COM", "sip:alice@example.com", True),
    ("alice@example.com", "sip:alice@other.org", False),
    ("alice@example.com", "sips:alice@example.com;transport=ws", True),
    ("alice", "sip:example.com", False),
    ("alice", "sip:alicex@example.com", False),
])
def test_identity_matches(identity, uri, ok):
    assert identity_matches(identity, parse_uri(uri)) is ok


def test_register_checks_to_not_from():
    third_party = parse(request("REGISTER", "<sip:admin@example.com>;tag=1", "<sip:alice@example.com>"))
    assert binding_violation(third_party, "alice") is None
    other = parse(request("REGISTER", "<sip:alice@example.com>;tag=1", "<sip:bob@example.com>"))
    assert binding_violation(other, "alice") == "To sip:bob@example.com"


def test_initial_request_checks_from():
    invite = parse(request("INVITE", "\"Bob\" <sip:bob@example.com>;tag=1", "<sip:carol@example.com>"))
    assert binding_violation(invite, "alice") == "From sip:bob@example.com"
    assert binding_violation(invite, "bob") is None
    assert binding_violation(invite, "bob@example.com") is None
    assert binding_violation(invite, "bob@example.org") is not None


def test_in_dialog_requests_are_not_checked():
    bye = parse(request("BYE", "<sip:carol@example.com>;tag=2", "<sip:alice@example.com>;tag=1"))
    assert binding_violation(bye, "alice") is None
    assert binding_violation(bye, "zed") is None


def test_no_identity_binds_nothing_and_tel_uris_do_not_match():
    invite = parse(request("MESSAGE", "<tel:+15551234>;tag=1", "<sip:carol@example.com>"))
    assert binding_violation(invite, "") is None
    assert binding_violation(invite, "alice") == "From tel:+15551234"


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["REGISTER", "INVITE", "MESSAGE", "BYE"]), from_=st.text(max_size=60),
       to=st.text(max_size=60), identity=st.text(min_size=1, max_size=20))
def test_garbage_headers_never_raise(method, from_, to, identity):
    try:
        req = parse(request(method, from_.replace("\r", "").replace("\n", ""),
                            to.replace("\r", "").replace("\n", "")))
    except (SipParseError, UnicodeEncodeError):
        return
    result = binding_violation(req, identity)
    assert result is None or isinstance(result, str)
