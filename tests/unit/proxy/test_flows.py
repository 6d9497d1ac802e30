"""Flow tokens: round trip, refusal of anything not made by this start and key."""

import string

import pytest
from hypothesis import given, settings, strategies as st

from sipws.proxy.errors import BadFlowToken, ProxyError
from sipws.proxy.flows import TOKEN_LENGTH, FlowTokens
from sipws.sip import parse_uri


def test_round_trip_and_uri_safe():
    tokens = FlowTokens(b"secret", b"nonce")
    for conn_id in (1, 2, 77, 2**31, 2**64 - 1):
        token = tokens.make(conn_id)
        assert len(token) == TOKEN_LENGTH
        assert set(token) <= set(string.ascii_lowercase + "234567")
        assert tokens.check(token) == conn_id
        # usable as a URI user part without escaping
        assert parse_uri(f"sip:{token}@127.0.0.1:5062;lr").user == token


def test_distinct_ids_distinct_tokens():
    tokens = FlowTokens("k")
    assert len({tokens.make(i) for i in range(1, 500)}) == 499


def test_case_insensitive():
    tokens = FlowTokens("k")
    assert tokens.check(tokens.make(42).upper()) == 42


def test_other_start_other_key_refused():
    token = FlowTokens(b"key", b"n1").make(5)
    with pytest.raises(BadFlowToken):
        FlowTokens(b"key", b"n2").check(token)
    with pytest.raises(BadFlowToken):
        FlowTokens(b"other", b"n1").check(token)
    # random key and nonce per start by default
    with pytest.raises(BadFlowToken):
        FlowTokens().check(FlowTokens().make(5))


def test_tampered_refused():
    tokens = FlowTokens(b"key", b"n")
    token = tokens.make(5)
    for i in range(len(token)):
        flipped = token[:i] + ("a" if token[i] != "a" else "b") + token[i + 1:]
        with pytest.raises(BadFlowToken):
            tokens.check(flipped)
    # swapping the id part of one token onto the MAC of another
    other = tokens.make(5 + 2**40)
    assert other[:12] != token[:12]
    with pytest.raises(BadFlowToken):
        tokens.check(other[:12] + token[12:])


@pytest.mark.parametrize("bad", ["", "abc", "a" * 39, "1" * 39, "a" * 38 + "=",
                                 "aaaaaaaaaaaalfuxv6bkms4pwgsqaduyaj5me6z", None, 5, "é" * 39])
def test_malformed_refused(bad):
    with pytest.raises(BadFlowToken):
        FlowTokens(b"key", b"n").check(bad)


def test_bad_error_is_proxy_error():
    assert issubclass(BadFlowToken, ProxyError)


@pytest.mark.parametrize("conn_id", [0, -1, 2**64, "1"])
def test_make_refuses_bad_ids(conn_id):
    with pytest.raises(ValueError):
        FlowTokens("k").make(conn_id)


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_random_text_only_bad_flow_token(text):
    tokens = FlowTokens(b"key", b"n")
    with pytest.raises(BadFlowToken):
        tokens.check(text)


@settings(max_examples=300)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=TOKEN_LENGTH,
               max_size=TOKEN_LENGTH))
def test_random_well_formed_tokens_refused(text):
    with pytest.raises(BadFlowToken):
        FlowTokens(b"key", b"n").check(text)


@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_round_trip_any_id(conn_id):
    tokens = FlowTokens(b"key", b"n")
    assert tokens.check(tokens.make(conn_id)) == conn_id


def test_subkeys_differ_per_label_start_and_key():
    a = FlowTokens(b"key", b"n")
    assert a.subkey(b"branch") == FlowTokens(b"key", b"n").subkey(b"branch")
    assert a.subkey(b"branch") != a.subkey(b"tag")
    assert a.subkey(b"branch") != FlowTokens(b"key", b"m").subkey(b"branch")
    assert a.subkey(b"branch") != FlowTokens(b"other", b"n").subkey(b"branch")


def test_checked_tokens_are_remembered_and_bad_ones_never():
    tokens = FlowTokens(b"secret", b"nonce")
    good = tokens.make(42)
    assert tokens.check(good) == 42
    assert tokens.check(good) == 42  # remembered
    bad = good[:-1] + ("a" if good[-1] != "a" else "b")
    for _ in range(2):
        with pytest.raises(BadFlowToken):
            tokens.check(bad)
