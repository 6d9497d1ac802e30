import pytest

from sipws.msrp import (
    Limits, MsrpParseError, MsrpRequest, MsrpResponse, make_response, parse, parse_uri,
)

from .helpers import ALICE, BOB, request, response, send


def test_send_example():
    data = send()
    m = parse(data)
    assert isinstance(m, MsrpRequest) and m.is_request
    assert (m.method, m.tid, m.flag) == ("SEND", "a786hjs2", "$")
    assert m.to_path == (parse_uri(BOB),) and m.from_path == (parse_uri(ALICE),)
    assert m.message_id == "87652491"
    assert m.byte_range == (1, 23, 23)
    assert m.content_type == "text/plain"
    assert m.body == b"Hey Bob, are you there?"
    assert m.failure_report == "yes" and m.success_report == "no"  # RFC defaults
    assert bytes(m) == data


def test_response_example():
    data = response()
    m = parse(data)
    assert isinstance(m, MsrpResponse) and not m.is_request
    assert (m.tid, m.status, m.comment) == ("a786hjs2", 200, "OK")
    assert bytes(m) == data
    m = parse(response(status=481, comment=""))
    assert (m.status, m.comment) == (481, "")


@pytest.mark.parametrize("flag", "$+#")
def test_continuation_flags(flag):
    m = parse(send(flag=flag, rng="1-23/*"))
    assert m.flag == flag and m.byte_range == (1, 23, None)
    assert bytes(m) == send(flag=flag, rng="1-23/*")


def test_every_header_kind():
    headers = [
        "Message-ID: 12339sdqwer", "Success-Report: YES", "Failure-Report: partial",
        "Byte-Range: 1-*/*", "Status: 000 200 OK", "Expires: 900", "Min-Expires: 60",
        "Max-Expires: 3600", f"Use-Path: {BOB} {ALICE}", "WWW-Authenticate: Digest realm=\"x\"",
        "Authorization: Digest username=\"a\"", "Authentication-Info: nextnonce=\"n\"",
        "X-Extension: anything at all",
    ]
    data = request("REPORT", headers=headers)
    m = parse(data)
    assert m.success_report == "yes" and m.failure_report == "partial"
    assert m.byte_range == (1, None, None)
    assert m.status_header == (0, 200, "OK")
    assert m.expires == 900
    assert m.use_path == (parse_uri(BOB), parse_uri(ALICE))
    assert m.header("www-authenticate") == 'Digest realm="x"'
    assert m.header("x-extension") == "anything at all"
    assert m.header("absent") is None
    assert [n for n, _ in m.headers][:3] == ["To-Path", "From-Path", "Message-ID"]
    assert bytes(m) == data


def test_multi_uri_paths_and_with_paths():
    relay = "msrps://relay.example.net:2855/s1;tcp"
    data = send(to=f"{relay} {BOB}")
    m = parse(data)
    assert len(m.to_path) == 2
    e = m.with_paths(m.to_path[1:], (m.to_path[0],) + m.from_path)
    out = bytes(e)
    assert out == data.replace(f"To-Path: {relay} {BOB}".encode(), f"To-Path: {BOB}".encode()
                               ).replace(f"From-Path: {ALICE}".encode(),
                                         f"From-Path: {relay} {ALICE}".encode())
    assert bytes(m) == data  # the original is untouched
    assert parse(out).body == m.body


def test_empty_body_and_binary_body():
    data = send(body=b"", rng="1-0/0")
    m = parse(data)
    assert m.body == b"" and bytes(m) == data
    blob = bytes(range(256)) * 4 + b"\r\n-------other$\r\n"
    m = parse(send(body=blob))
    assert m.body == blob


def test_make_response():
    req = parse(send(to=f"msrps://relay.example.net:2855/s1;tcp {BOB}"))
    out = make_response(req, 200)
    assert out == (b"MSRP a786hjs2 200 OK\r\nTo-Path: " + ALICE.encode() +
                   b"\r\nFrom-Path: msrps://relay.example.net:2855/s1;tcp\r\n-------a786hjs2$\r\n")
    # Responses to other methods go back along the whole From-Path.
    other = parse(request("NICKNAME", frm=f"msrps://r.example:2855/x;tcp {ALICE}"))
    assert parse(make_response(other, 200)).to_path == other.from_path
    r = parse(make_response(req, 423, None, [("Min-Expires", "60")]))
    assert r.status == 423 and r.header("Min-Expires") == "60"


def test_missing_final_crlf_is_accepted():
    data = send()
    assert bytes(parse(data[:-2])) == data


BAD = [
    b"", b"MSRP", b"HTTP/1.1 200 OK\r\n\r\n",
    send().replace(b"MSRP a786hjs2 SEND", b"MSRP a7 SEND"),           # tid too short
    send().replace(b"MSRP a786hjs2 SEND", b"MSRP a786hjs2 send"),     # lower-case method
    send().replace(b"-------a786hjs2$", b"-------a786hjs3$"),         # end-line of another tid
    send().replace(b"-------a786hjs2$", b"-------a786hjs2!"),         # bad flag
    send().replace(b"To-Path: ", b"To-Path: x"),                      # bad URI
    send().replace(b"To-Path", b"X-Path"),                            # no To-Path
    send().replace(b"Message-ID: 87652491\r\n", b"Message-ID: 8765\r\nMessage-ID: 9\r\n"),
    send().replace(b"Byte-Range: 1-23/23", b"Byte-Range: 0-23/23"),
    send().replace(b"Byte-Range: 1-23/23", b"Byte-Range: 5-2/23"),
    send().replace(b"Byte-Range: 1-23/23", b"Byte-Range: 1-23/20"),
    send().replace(b"Byte-Range: 1-23/23", b"Byte-Range: abc"),
    send(fr="maybe"), send(sr="partial"),
    send().replace(b"Content-Type: text/plain", b"X-Type: text/plain"),  # body without type
    send().replace(b"Content-Type: text/plain", b"Content-Type: plain"),
    response() .replace(b"\r\n-------", b"\r\nContent-Type: a/b\r\n\r\nbody\r\n-------"),
    response(status=99), response(comment="bad\x01"),
    send().replace(b"Message-ID", b"Message ID"),
    send().replace(b"Message-ID: 87652491", b"Message-ID: 8765\x00"),
    send().replace(b"\r\n\r\nHey", b"\r\n\nHey"),
    request("SEND", headers=["Expires: -1"]), request("SEND", headers=["Expires: 99999999999"]),
    request("SEND", headers=["Status: 200"]),
    send().replace(b"Message-ID: 87652491", "Message-ID: caf\u00e9".encode("latin-1")),
]


@pytest.mark.parametrize("data", BAD)
def test_malformed(data):
    with pytest.raises(MsrpParseError) as info:
        parse(data)
    assert info.value.status in (400, 413) and info.value.reason


def test_limits():
    with pytest.raises(MsrpParseError) as info:
        parse(send(body=b"x" * 2000), Limits(max_message_size=1000))
    assert info.value.status == 413
    many = [f"X-H{i}: v" for i in range(70)]
    with pytest.raises(MsrpParseError):
        parse(request("SEND", headers=many))
    long_path = " ".join([BOB] * 20)
    with pytest.raises(MsrpParseError):
        parse(send(to=long_path))
    with pytest.raises(MsrpParseError):
        parse(request("SEND", headers=["X-Big: " + "a" * 20000]))
    with pytest.raises(MsrpParseError):
        parse("not bytes")  # type: ignore[arg-type]
