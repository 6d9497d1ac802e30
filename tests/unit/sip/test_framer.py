"""StreamFramer: Content-Length framing on TCP/TLS streams."""

import pytest

from sipws.sip import Limits, SipParseError, StreamFramer, parse

from .helpers import invite, response

A = invite(body=b"v=0\r\n")
B = response()


def test_whole_messages_and_keepalives():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + A + b"\r\n" + B + b"\r\n\r\n") == [A, B]
    assert framer.buffered == 0


def test_byte_by_byte():
    framer = StreamFramer()
    out = []
    for i in range(len(A + B)):
        out.extend(framer.feed((A + B)[i:i + 1]))
    assert out == [A, B]
    assert [parse(m).is_request for m in out] == [True, False]


def test_partial_body_waits():
    framer = StreamFramer()
    assert framer.feed(A[:-2]) == []
    assert framer.buffered == len(A) - 2
    assert framer.feed(A[-2:] + A[:10]) == [A]
    assert framer.buffered == 10


def test_compact_and_folded_content_length():
    msg = A.replace(b"Content-Length: 5", b"l:\r\n 5")
    assert StreamFramer().feed(msg + B) == [msg, B]


def test_missing_content_length_is_an_error_and_framer_stays_failed():
    framer = StreamFramer()
    no_cl = invite(body=b"", content_length=False)
    with pytest.raises(SipParseError, match="Content-Length"):
        framer.feed(no_cl)
    with pytest.raises(SipParseError):
        framer.feed(A)


@pytest.mark.parametrize("value", [b"-1", b"x", b"99999999999", b"1 2"])
def test_bad_content_length(value):
    with pytest.raises(SipParseError):
        StreamFramer().feed(A.replace(b"Content-Length: 5", b"Content-Length: " + value))


def test_conflicting_content_length():
    with pytest.raises(SipParseError, match="conflicting"):
        StreamFramer().feed(A.replace(b"Content-Length: 5", b"Content-Length: 5\r\nl: 6"))


def test_over_limit_without_end_of_headers():
    framer = StreamFramer(Limits(max_message_size=1000))
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 900)
    with pytest.raises(SipParseError) as info:
        framer.feed(b"a" * 200)
    assert info.value.status == 513


def test_over_limit_by_content_length():
    big = A.replace(b"Content-Length: 5", b"Content-Length: 70000")
    with pytest.raises(SipParseError, match="too large"):
        StreamFramer().feed(big)


def test_pings_are_counted_for_pongs():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [] and framer.pings == 1
    assert framer.feed(b"\r\n") == [] and framer.pings == 0
    assert framer.feed(b"\r\n" + A + b"\r\n\r\n\r\n\r\n") == [A] and framer.pings == 3
    assert framer.feed(A[:5]) == [] and framer.pings == 0
    assert framer.feed(A[5:]) == [A] and framer.pings == 0



@pytest.mark.parametrize("cut", range(1, 8))
def test_pings_split_across_feeds_count_as_in_one_feed(cut):
    """Two pings (8 CRLF bytes) count two whatever the cut (found by bench/fuzz.py, framer
    target, seed 20240613 input 70: "\r\n\r\n\r\n\r" then "\n" + a message counted one)."""
    stream = b"\r\n\r\n\r\n\r\n" + A
    framer = StreamFramer()
    pings = 0
    out = []
    for chunk in (stream[:cut], stream[cut:]):
        out += framer.feed(chunk)
        pings += framer.pings
    assert out == [A] and pings == 2

def test_is_keepalive():
    from sipws.sip import is_keepalive
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(b"") and not is_keepalive(A) and not is_keepalive(b"\r\nx")
