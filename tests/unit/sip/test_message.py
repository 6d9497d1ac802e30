"""parse(), structured access, limits, editing, serializing, make_response."""

import pytest

from sipws.sip import (
    DEFAULT_LIMITS, Limits, Request, Response, SipError, SipParseError, make_response, parse,
)
from sipws.errors import SipwsError

from .helpers import crlf, invite, response


# ------------------------------------------------------------------ parsing

def test_request_fields():
    msg = parse(invite("Route: <sip:192.0.2.10:8080;transport=ws;lr>, <sip:core.example.com;lr>",
                       "Supported: path, gruu", "Supported: outbound", body=b"v=0\r\n"))
    assert isinstance(msg, Request) and msg.is_request
    assert msg.method == "INVITE" and msg.uri == "sip:bob@example.com"
    assert msg.request_uri.user == "bob"
    assert msg.call_id == "0rm0fb4uv2gq3m6ou7ek"
    assert msg.cseq == (7264, "INVITE")
    assert msg.max_forwards == 70
    assert msg.from_.display == "Alice" and msg.from_.tag == "p1ilo8b9k4"
    assert msg.to.tag is None and msg.to.uri.host == "example.com"
    assert msg.top_via.transport == "WSS" and msg.top_via.branch == "z9hG4bK6307497"
    assert [str(r.uri) for r in msg.routes] == [
        "sip:192.0.2.10:8080;transport=ws;lr", "sip:core.example.com;lr"]
    assert msg.contacts[0].uri.params == {"transport": "ws", "ob": None}
    assert msg.get_all("Supported") == ["path", "gruu", "outbound"]
    assert msg.supported == ["path", "gruu", "outbound"]
    assert msg.get("supported") == "path"
    assert msg.has("k") and not msg.has("Require")
    assert msg.get("Require") is None and msg.get_all("Require") == []
    assert msg.content_length == 5 and msg.body == b"v=0\r\n"


def test_response_fields_and_method_from_cseq():
    msg = parse(response("486 Busy Here"))
    assert isinstance(msg, Response) and not msg.is_request
    assert (msg.status, msg.reason, msg.method) == (486, "Busy Here", "INVITE")
    assert len(msg.vias) == 2 and msg.top_via.received == "192.0.2.10"
    assert msg.to.tag == "as1"


def test_compact_forms_and_case_insensitive_names():
    data = crlf(
        "OPTIONS sip:ping@example.com SIP/2.0",
        "v: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK77",
        "f: <sip:ka@example.com>;tag=1", "t: <sip:ping@example.com>",
        "i: 77@192.0.2.1", "CSEQ: 1 OPTIONS", "m: <sip:ka@192.0.2.1>", "k: path",
        "c: text/plain", "e: gzip", "s: hello", "o: presence", "u: presence",
        "r: <sip:x@y.com>", "b: <sip:z@y.com>", "x: 1800", "y: abc", "l: 0")
    msg = parse(data)
    assert msg.call_id == "77@192.0.2.1"
    assert msg.get("Content-Type") == "text/plain" and msg.get("CONTENT-ENCODING") == "gzip"
    for full, value in (("Subject", "hello"), ("Event", "presence"),
                        ("Allow-Events", "presence"), ("Refer-To", "<sip:x@y.com>"),
                        ("Referred-By", "<sip:z@y.com>"), ("Session-Expires", "1800"),
                        ("Identity", "abc"), ("Supported", "path"),
                        ("Contact", "<sip:ka@192.0.2.1>")):
        assert msg.get(full) == value and msg.has(full.lower())
    assert bytes(msg) == data


def test_folding_and_utf8():
    data = crlf(
        "SIP/2.0 200 Très bien ✓",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1,",
        "\tSIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2",
        "To: <sip:b@example.com>;tag=2", 'From: "Zoë" <sip:a@example.com>;tag=1',
        "Call-ID: x@y", "CSeq: 1 INVITE", "Subject: a long", "  subject line",
        "Content-Length: 0")
    msg = parse(data)
    assert msg.reason == "Très bien ✓"
    assert msg.from_.display == "Zoë"
    assert [v.host for v in msg.vias] == ["192.0.2.1", "192.0.2.2"]
    assert msg.get("Subject") == "a long subject line"
    assert bytes(msg) == data


def test_quoted_commas_and_angle_commas_in_contact_list():
    msg = parse(invite(
        'Record-Route: <sip:a,b@p1.example.com;lr>;x="1,2", "Proxy, Two" <sip:p2.example.com;lr>'))
    rrs = msg.record_routes
    assert [rr.uri.host for rr in rrs] == ["p1.example.com", "p2.example.com"]
    assert rrs[1].display == "Proxy, Two"


def test_lazily_read_lists_raise_only_sip_parse_error():
    """parse() does not check Supported, Require or Proxy-Require (a proxy relays them
    untouched); reading a malformed one raises SipParseError, which the registrar turns
    into 400 (test_register.py)."""
    msg = parse(invite("Proxy-Require:< noProxies, norThese", "Require: a,,b"))
    with pytest.raises(SipParseError):
        msg.get_all("proxy-require")
    with pytest.raises(SipParseError):
        msg.proxy_require
    assert msg.require == ["a", "b"]
    assert bytes(parse(bytes(msg))) == bytes(msg)  # relayed as it came


def test_cseq_parsed_once_and_forgotten_when_edited():
    msg = parse(invite())
    first = msg.cseq
    assert msg.cseq is first  # remembered
    copy = msg.copy()
    assert copy.cseq == first
    copy.set_header("CSeq", "7 INVITE")
    assert copy.cseq == (7, "INVITE") and msg.cseq == first
    copy.remove_header("CSeq")
    copy.add_header("CSeq", "8 INVITE")
    assert copy.cseq == (8, "INVITE")
    copy.pop_via()  # other edits leave it alone, and it stays right
    assert copy.cseq == (8, "INVITE")
    resp = make_response(msg, 200)
    assert resp.cseq == first and resp.method == "INVITE"


@pytest.mark.parametrize("line, status, reason", [
    ("SIP/2.0 200 OK", 200, "OK"), ("SIP/2.0 200", 200, ""), ("SIP/2.0 200 ", 200, ""),
    ("SIP/2.0 180 Ringing here", 180, "Ringing here"), ("SIP/2.0 200  OK", 200, " OK"),
    ("sip/2.0 486 Busy Here", 486, "Busy Here"),
])
def test_status_lines(line, status, reason):
    data = crlf(line, "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "To: <sip:b@x>;tag=2",
                "From: <sip:a@x>;tag=1", "Call-ID: c", "CSeq: 1 INVITE", "Content-Length: 0")
    resp = parse(data)
    assert (resp.status, resp.reason) == (status, reason)


@pytest.mark.parametrize("line", ["SIP/2.0 20", "SIP/2.0 2000 OK", "SIP/2.0  200 OK",
                                  "SIP/2.0 ²00 OK", "SIP/2.0 700 x", "SIP/2.0 099 x",
                                  "SIP/3.0 200 OK", "SIP/2.0"])
def test_bad_status_lines(line):
    data = crlf(line, "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "To: <sip:b@x>;tag=2",
                "From: <sip:a@x>;tag=1", "Call-ID: c", "CSeq: 1 INVITE", "Content-Length: 0")
    with pytest.raises(SipParseError):
        parse(data)


def test_star_contact():
    data = crlf("REGISTER sip:example.com SIP/2.0", "Via: SIP/2.0/WS h.invalid;branch=z9hG4bK1",
                "To: <sip:a@example.com>", "From: <sip:a@example.com>;tag=1", "Call-ID: c1",
                "CSeq: 2 REGISTER", "Contact: *", "Expires: 0", "Content-Length: 0")
    assert parse(data).contacts[0].is_star
    with pytest.raises(SipParseError):
        parse(data.replace(b"Contact: *", b"Contact: *, <sip:a@h.invalid>"))


def test_other_scheme_request_uri_is_kept_raw():
    msg = parse(invite().replace(b"INVITE sip:bob@example.com", b"INVITE tel:+15551234"))
    assert msg.uri == "tel:+15551234"
    with pytest.raises(SipParseError) as info:
        msg.request_uri
    assert info.value.status == 416


def test_leading_crlf_is_ignored():
    assert bytes(parse(b"\r\n\r\n" + invite())) == invite()


# ------------------------------------------------------------ body framing

def test_content_length_absent_takes_the_rest():
    msg = parse(invite(body=b"abc", content_length=False))
    assert msg.body == b"abc" and msg.content_length is None


def test_content_length_shorter_discards_extra_bytes():
    data = invite(body=b"abc") + b"garbage"
    msg = parse(data)
    assert msg.body == b"abc"
    assert bytes(msg) == data[:-len(b"garbage")]


@pytest.mark.parametrize("value", ["10", "-1", "abc", "1 2", "", "99999999999", "٣"])
def test_bad_or_too_large_content_length(value):
    data = invite(body=b"abc", content_length=False).replace(
        b"\r\n\r\n", f"\r\nContent-Length: {value}\r\n\r\n".encode(), 1)
    with pytest.raises(SipParseError):
        parse(data)


def test_repeated_equal_content_length_is_accepted_conflicting_is_not():
    data = invite(body=b"abc", content_length=False).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 3\r\nl: 3\r\n\r\n", 1)
    assert parse(data).body == b"abc"
    with pytest.raises(SipParseError):
        parse(data.replace(b"l: 3", b"l: 2"))


# ------------------------------------------------------------- rejections

@pytest.mark.parametrize("data,status", [
    (b"", 400),
    (b"\r\n\r\n", 400),
    (b"INVITE sip:a@b.com SIP/2.0\r\n", 400),
    (invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
    (invite().replace(b"INVITE sip:bob@example.com SIP/2.0", b"HTTP/1.1 200 OK"), 400),
    (invite().replace(b"INVITE sip:bob", b"INV ITE sip:bob"), 400),
    (invite().replace(b"INVITE sip:bob", b"INVITE  sip:bob"), 400),
    (invite().replace(b"sip:bob@example.com SIP", b"bob@example.com SIP"), 400),
    (invite().replace(b"Call-ID: 0rm0fb4uv2gq3m6ou7ek\r\n", b""), 400),
    (invite().replace(b"Call-ID: 0rm0fb4uv2gq3m6ou7ek", b"Call-ID: a b"), 400),
    (invite().replace(b"CSeq: 7264 INVITE", b"CSeq: 7264 BYE"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: x"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nMax-Forwards: 70"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards 70"), 400),
    (invite().replace(b"Max-Forwards: 70", b": 70"), 400),
    (invite().replace(b"Max-Forwards: 70", b" folded-first: 70", 1).replace(
        b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 70\nX: y"), 400),
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 70\rX: y"), 400),
    (invite().replace(b"Max-Forwards: 70", b"X-Nul: a\x00b"), 400),
    (invite().replace(b"Max-Forwards: 70", b"X-Bad: \xff\xfe"), 400),
    (invite().replace(b"Via: SIP/2.0/WSS", b"Via: SIP/2.0/WSS;"), 400),
    (invite().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com"), 400),
    (response("99 Odd"), 400),
    (response("700 Odd"), 400),
    (response("2000 OK"), 400),
])
def test_malformed_messages_raise_sip_parse_error(data, status):
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.status == status
    assert info.value.reason
    assert isinstance(info.value, ValueError) and isinstance(info.value, SipwsError)


def test_error_hierarchy():
    assert issubclass(SipParseError, SipError) and issubclass(SipError, SipwsError)


def test_limits_message_size():
    data = invite(body=b"x" * 70000)
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.status == 513
    assert parse(data, Limits(max_message_size=80000)).body == b"x" * 70000


def test_limits_header_count():
    extra = [f"X-H{i}: {i}" for i in range(260)]
    with pytest.raises(SipParseError, match="too many header"):
        parse(invite(*extra))
    assert len(parse(invite(*extra), Limits(max_headers=300)).get_all("X-H1")) == 1


def test_limits_header_line():
    data = invite("X-Long: " + "a" * 9000)
    with pytest.raises(SipParseError, match="too long"):
        parse(data)
    assert parse(data, Limits(max_header_line=10000)).get("x-long") == "a" * 9000


def test_limits_uri_length():
    long_user = "u" * 2100
    data = invite().replace(b"INVITE sip:bob@", f"INVITE sip:{long_user}@".encode())
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.status == 414
    data = invite(f"Route: <sip:{long_user}@example.com;lr>")
    with pytest.raises(SipParseError):
        parse(data)
    assert parse(data, Limits(max_uri_length=4096)).routes[0].uri.user == long_user


def test_limits_vias():
    vias = [f"Via: SIP/2.0/UDP h{i}.example.com;branch=z9hG4bK{i}" for i in range(70)]
    with pytest.raises(SipParseError, match="Via"):
        parse(invite(*vias))
    listed = "Via: " + ", ".join(f"SIP/2.0/UDP h{i}.example.com" for i in range(69))
    assert len(parse(invite(listed)).vias) == 70
    with pytest.raises(SipParseError, match="Via"):
        parse(invite(listed + ", SIP/2.0/UDP one.more.example.com"))
    assert len(parse(invite(*vias), Limits(max_vias=100)).vias) == 71


def test_limits_from_config_names():
    from sipws.config import SipConfig
    cfg = SipConfig()
    assert Limits.from_config(cfg) == DEFAULT_LIMITS
    assert DEFAULT_LIMITS == Limits(65535, 256, 8192, 2048, 70)


def test_accessors_never_fail_after_parse_on_odd_but_valid_values():
    msg = parse(invite('Contact: "Q, \\"x\\"" <sip:a@b.com;lr>;q=0.5, sip:c@d.com;expires=5',
                       "Path: <sip:p@[2001:db8::1]:5070;lr;ob>"))
    assert [c.uri.host for c in msg.contacts] == ["7d5ka3jfi1ak.invalid", "b.com", "d.com"]
    assert msg.paths[0].uri.host == "2001:db8::1"


# ----------------------------------------------------------------- editing

def test_untouched_roundtrip_is_exact():
    data = invite(body=b"v=0\r\n")
    assert bytes(parse(data)) is not None and bytes(parse(data)) == data


def test_relay_edits():
    msg = parse(invite(body=b"v=0\r\n"))
    msg.set_top_via_received("198.51.100.7", 61234)
    msg.push_via("SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1;rport")
    msg.push_record_route("<sip:192.0.2.10:5062;transport=udp;lr>")
    msg.push_record_route("<sip:192.0.2.10:8080;transport=ws;lr>")
    assert msg.decrement_max_forwards() == 69
    out = bytes(msg)
    again = parse(out)
    assert [v.host for v in again.vias] == ["192.0.2.10", "7d5ka3jfi1ak.invalid"]
    client = again.vias[1]
    assert (client.received, client.rport, client.branch) == (
        "198.51.100.7", 61234, "z9hG4bK6307497")
    assert [str(rr.uri) for rr in again.record_routes] == [
        "sip:192.0.2.10:8080;transport=ws;lr", "sip:192.0.2.10:5062;transport=udp;lr"]
    assert again.max_forwards == 69 and again.body == b"v=0\r\n"
    assert again.content_length == 5
    # every other line is byte for byte what it was
    untouched = [line for line in invite(body=b"v=0\r\n").split(b"\r\n")
                 if not line.startswith((b"Via", b"Max-Forwards"))]
    for line in untouched:
        assert line in out.split(b"\r\n")


def test_set_received_replaces_in_place_and_keeps_other_params():
    msg = parse(invite().replace(b";branch=z9hG4bK6307497",
                                 b";rport;branch=z9hG4bK6307497;received=1.1.1.1;x=y"))
    msg.set_top_via_received("192.0.2.99", 5555)
    assert b"Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;rport=5555;branch=z9hG4bK6307497;" \
           b"received=192.0.2.99;x=y\r\n" in bytes(msg)
    msg.set_top_via_received(None, None)
    assert msg.top_via.received == "192.0.2.99"
    with pytest.raises(SipParseError):
        msg.set_top_via_received("1.2.3.4;evil", None)


def test_set_received_on_first_of_a_via_list():
    msg = parse(invite().replace(
        b"Via: SIP/2.0/WSS 7d5ka3jfi1ak.invalid;branch=z9hG4bK6307497",
        b'Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1;x="q", SIP/2.0/UDP b.example.com'))
    msg.set_top_via_received("192.0.2.1", None)
    vias = parse(bytes(msg)).vias
    assert vias[0].received == "192.0.2.1" and vias[0].params["x"] == '"q"'
    assert vias[1].host == "b.example.com" and vias[1].received is None


def test_pop_via_from_list_and_single():
    msg = parse(response())
    assert msg.pop_via() == "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1;received=192.0.2.10"
    assert [v.transport for v in msg.vias] == ["WSS"]
    listed = parse(response().replace(
        b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1;received=192.0.2.10\r\n"
        b"Via: SIP/2.0/WSS", b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1 ,"
        b" SIP/2.0/WSS"))
    assert listed.pop_via() == "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws1"
    assert parse(bytes(listed)).top_via.transport == "WSS"
    listed.pop_via()
    assert listed.top_via is None and listed.vias == []
    with pytest.raises(SipError):
        listed.pop_via()


def test_pop_route():
    msg = parse(invite("Route: <sip:192.0.2.10;lr>, <sip:core.example.com;lr>",
                       "Route: <sip:last.example.com;lr>"))
    assert msg.pop_route() == "<sip:192.0.2.10;lr>"
    assert [r.uri.host for r in parse(bytes(msg)).routes] == [
        "core.example.com", "last.example.com"]
    msg.pop_route(), msg.pop_route()
    assert msg.routes == [] and not msg.has("Route")
    with pytest.raises(SipError):
        msg.pop_route()


def test_push_path_goes_first():
    msg = parse(invite("Path: <sip:edge1.example.com;lr>"))
    msg.push_path("<sip:edge0.example.com;lr;ob>")
    assert [p.uri.host for p in parse(bytes(msg)).paths] == ["edge0.example.com",
                                                           "edge1.example.com"]


def test_max_forwards_absent_and_zero():
    msg = parse(invite().replace(b"Max-Forwards: 70\r\n", b""))
    assert msg.max_forwards is None
    assert msg.decrement_max_forwards() == 69
    assert parse(bytes(msg)).max_forwards == 69
    msg.set_max_forwards(0)
    assert parse(bytes(msg)).get_all("Max-Forwards") == ["0"]
    with pytest.raises(SipError):
        msg.decrement_max_forwards()
    with pytest.raises(SipParseError):
        msg.set_max_forwards(300)


def test_add_push_remove_header():
    msg = parse(invite())
    msg.add_header("X-Trace", "one")
    msg.push_header("X-Trace", "zero")
    msg.push_header("P-Asserted-Identity", "<sip:alice@example.com>")
    assert msg.get_all("x-trace") == ["zero", "one"]
    out = bytes(msg)
    assert out.index(b"X-Trace: zero") < out.index(b"X-Trace: one")
    assert out.split(b"\r\n")[1] == b"P-Asserted-Identity: <sip:alice@example.com>"
    assert msg.remove_header("x-trace") == 2 and msg.remove_header("x-trace") == 0
    assert not parse(bytes(msg)).has("X-Trace")
    for name, value in (("X-Bad", "a\r\nInjected: yes"), ("X-Bad", "a\nb"), ("Bad Name", "v")):
        with pytest.raises(SipParseError):
            msg.add_header(name, value)


def test_remove_by_compact_name():
    msg = parse(invite("k: path", "Supported: gruu"))
    assert msg.remove_header("Supported") == 2 and msg.get_all("k") == []


def test_set_body_updates_content_length_and_type():
    msg = parse(invite(body=b"v=0\r\n"))
    msg.set_body(b"hello world", "text/plain")
    again = parse(bytes(msg))
    assert again.body == b"hello world" and again.content_length == 11
    assert again.get("Content-Type") == "text/plain"
    msg.set_body(b"")
    again = parse(bytes(msg))
    assert again.body == b"" and again.content_length == 0 and not again.has("c")


def test_serialize_adds_content_length_when_edited_without_one():
    msg = parse(invite(body=b"abc", content_length=False))
    assert bytes(msg).endswith(b"\r\n\r\nabc")  # untouched: exactly the input
    msg.push_via("SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx")
    assert parse(bytes(msg)).content_length == 3


def test_copy_is_independent():
    msg = parse(invite())
    dup = msg.copy()
    dup.push_via("SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx")
    assert len(msg.vias) == 1 and len(dup.vias) == 2
    assert dup.method == "INVITE"


def test_set_request_uri():
    msg = parse(invite())
    msg.set_request_uri("sip:bob@192.0.2.50:5080;transport=tcp")
    again = parse(bytes(msg))
    assert again.request_uri.port == 5080 and again.uri == "sip:bob@192.0.2.50:5080;transport=tcp"
    with pytest.raises(SipParseError):
        msg.set_request_uri("sip:bob@example.com SIP/2.0\r\nX: y")


def test_equality_is_semantic():
    a = parse(invite())
    b = parse(invite().replace(b"Call-ID: 0rm0fb4uv2gq3m6ou7ek",
                               b"i:    0rm0fb4uv2gq3m6ou7ek"))
    assert a == b
    c = parse(invite().replace(b"tag=p1ilo8b9k4", b"tag=other"))
    assert a != c
    assert a != parse(response())


# ----------------------------------------------------------- make_response

def test_make_response_copies_and_tags():
    req = parse(invite("Record-Route: <sip:p.example.com;lr>").replace(
        b"Via: SIP/2.0/WSS", b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0\r\nVia: SIP/2.0/WSS"))
    resp = make_response(req, 486, to_tag="srv7", extra_headers=[("Retry-After", "30")])
    again = parse(bytes(resp))
    assert (again.status, again.reason) == (486, "Busy Here")
    assert [v.host for v in again.vias] == ["192.0.2.1", "7d5ka3jfi1ak.invalid"]
    assert again.from_ == req.from_ and again.call_id == req.call_id
    assert again.cseq == (7264, "INVITE")
    assert again.to.tag == "srv7"
    assert again.get("Retry-After") == "30"
    assert again.content_length == 0 and again.body == b""
    assert not again.has("Record-Route") and not again.has("Contact")


def test_make_response_100_has_no_tag_and_existing_tag_kept():
    req = parse(invite())
    assert make_response(req, 100, to_tag="x").to.tag is None
    tagged = parse(invite().replace(b"To: <sip:bob@example.com>",
                                    b"To: <sip:bob@example.com>;tag=old"))
    assert make_response(tagged, 503, "Overloaded", to_tag="new").to.tag == "old"
    assert make_response(tagged, 503, "Overloaded").reason == "Overloaded"
    with pytest.raises(SipError):
        make_response(req, 99)
    with pytest.raises(SipParseError):
        make_response(req, 400, "bad\r\nX: y")


def test_set_received_on_a_folded_via():
    data = invite().replace(b";branch=z9hG4bK6307497", b";branch=z9hG4bK6307497;\r\n rport")
    msg = parse(data)
    msg.set_top_via_received("192.0.2.5", 1234)
    via = parse(bytes(msg)).top_via
    assert via.rport == 1234 and via.received == "192.0.2.5"
    assert bytes(msg).count(b"rport") == 1


def test_input_types():
    data = invite()
    assert bytes(parse(bytearray(data))) == data
    assert bytes(parse(memoryview(data))) == data
    with pytest.raises(TypeError):
        parse(data.decode())


def test_limits_are_frozen_and_errors_pickle():
    import dataclasses
    import pickle
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_vias = 1
    err = pickle.loads(pickle.dumps(SipParseError("bad thing", 414)))
    assert (err.reason, err.status) == ("bad thing", 414)


def test_small_uri_limit_applies_to_fast_path_values():
    limits = Limits(max_uri_length=30)
    data = invite().replace(b"To: <sip:bob@example.com>",
                            b"To: <sip:bob-with-a-long-name@example.com>")
    with pytest.raises(SipParseError) as info:
        parse(data, limits)
    assert info.value.status == 414


def test_remembered_values_are_checked_per_kind_and_keep_every_rule():
    """Values seen valid are not checked again (a dialog repeats them), but only for
    the same kind of header; the per-message rules still apply on a cache hit."""
    from sipws.sip import SipParseError, parse

    def msg(via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcache1", call_id="cache-1@x",
            cseq="1 OPTIONS", method="OPTIONS", extra=""):
        return (f"{method} sip:a@example.com SIP/2.0\r\nVia: {via}\r\nFrom: <sip:b@example.com>;tag=1\r\n"
                f"To: <sip:a@example.com>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{extra}"
                "Content-Length: 0\r\n\r\n").encode()

    first = parse(msg())
    again = parse(msg())
    assert again == first and again.vias[0].branch == "z9hG4bKcache1"
    # A Call-ID seen valid is no free pass as a Via.
    parse(msg(call_id="token-only"))
    with pytest.raises(SipParseError):
        parse(msg(via="token-only"))
    # CSeq remembered for OPTIONS: the method must still match the request's.
    with pytest.raises(SipParseError):
        parse(msg(method="INFO"))
    # Content-Length remembered: a second, different one is still a conflict.
    with pytest.raises(SipParseError):
        parse(msg(extra="Content-Length: 5\r\n"))
