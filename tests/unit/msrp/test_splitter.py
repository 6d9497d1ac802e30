import pytest

from sipws.msrp import Limits, MessageSplitter, MsrpParseError, parse

from .helpers import request, response, send

STREAM = [send(), response(), send(body=b"x\r\n-------a786hjs2 not the end\r\n", flag="+"),
          request("REPORT", tid="r0000001", headers=["Message-ID: 1", "Byte-Range: 1-1/1",
                                                      "Status: 000 200 OK"]),
          send(body=b"", rng="1-0/0")]
DATA = b"".join(STREAM)


def test_whole_stream():
    assert MessageSplitter().feed(DATA) == STREAM


@pytest.mark.parametrize("cut", range(1, len(DATA)))
def test_every_split_point(cut):
    s = MessageSplitter()
    out = s.feed(DATA[:cut]) + s.feed(DATA[cut:])
    assert out == STREAM and s.buffered == 0


def test_byte_by_byte_and_parse():
    s = MessageSplitter()
    out = []
    for i in range(len(DATA)):
        out += s.feed(DATA[i:i + 1])
    assert out == STREAM
    assert [bytes(parse(m)) for m in out] == STREAM


def test_crlf_between_messages_skipped():
    assert MessageSplitter().feed(b"\r\n" + send() + b"\r\n\r\n" + send()) == [send(), send()]


def test_too_big_fails_and_stays_failed():
    s = MessageSplitter(Limits(max_message_size=500))
    with pytest.raises(MsrpParseError) as info:
        s.feed(send(body=b"y" * 1000)[:800])
    assert info.value.status == 413 and s.buffered == 0
    with pytest.raises(MsrpParseError):
        s.feed(send())


def test_garbage_start_line():
    with pytest.raises(MsrpParseError):
        MessageSplitter().feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(MsrpParseError):
        MessageSplitter().feed(b"XYZ")
    s = MessageSplitter()
    assert s.feed(b"MSR") == []  # a prefix of MSRP is only incomplete


def test_start_line_too_long():
    with pytest.raises(MsrpParseError):
        MessageSplitter(Limits(max_header_bytes=100)).feed(b"MSRP " + b"a" * 200)
