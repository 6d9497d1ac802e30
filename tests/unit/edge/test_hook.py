"""The [auth] hook's answers (pure part)."""

import pytest

from sipws.edge import Denied
from sipws.edge.credentials import Authenticated
from sipws.edge.hook import HookError, interpret


def test_answers():
    assert interpret("alice") == Authenticated("alice", "hook")
    assert interpret(None) is None
    denied = Denied(429, "too many")
    assert interpret(denied) is denied


@pytest.mark.parametrize("answer", [42, b"alice", "", "a b", "x" * 300, ["alice"], True])
def test_wrong_answers(answer):
    with pytest.raises(HookError):
        interpret(answer)


@pytest.mark.parametrize("status", [200, 101, 600, "403", True])
def test_denied_status_must_be_an_error(status):
    with pytest.raises(ValueError):
        Denied(status, "x")
