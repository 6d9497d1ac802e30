"""ICMP quotes mapped to client transactions; silent next hops reported at a bounded rate."""

from __future__ import annotations

from sipws.proxy.hop_failures import HopReportLimiter, sent_request_key, silent_hop_line

INVITE = (b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsipws.abc123;rport\r\n"
          b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKclient;rport=50000\r\n"
          b"Max-Forwards: 69\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n")


def test_branch_and_method_of_our_request():
    assert sent_request_key(INVITE) == ("z9hG4bKsipws.abc123", "INVITE")


def test_quote_cut_inside_the_body_still_reads_the_head():
    assert sent_request_key(INVITE[:120]) == ("z9hG4bKsipws.abc123", "INVITE")


def test_compact_via_and_headers_before_it():
    quoted = (b"MESSAGE sip:a@b SIP/2.0\r\nRoute: <sip:core;lr>\r\n"
              b"v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK77 ;received=1.2.3.4\r\n")
    assert sent_request_key(quoted) == ("z9hG4bK77", "MESSAGE")


def test_first_via_wins():
    quoted = (b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKfirst\r\n"
              b"Via: SIP/2.0/UDP k;branch=z9hG4bKsecond\r\n")
    assert sent_request_key(quoted) == ("z9hG4bKfirst", "BYE")


def test_responses_and_garbage_give_nothing():
    assert sent_request_key(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n") is None
    assert sent_request_key(b"") is None
    assert sent_request_key(b"\x00\xff" * 40) is None
    assert sent_request_key(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n") is None  # cut before the branch
    assert sent_request_key(b"INVITE sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=\xff\xfe\r\n") is None


def test_a_next_hop_is_reported_once_per_interval_with_the_count_held_back():
    limiter = HopReportLimiter(interval=60.0)
    assert limiter.due("sip:127.0.0.1:5060;transport=udp", 100.0) == 0
    assert all(limiter.due("sip:127.0.0.1:5060;transport=udp", 100.0 + i) is None for i in range(1, 50))
    assert limiter.due("sip:127.0.0.1:5060;transport=udp", 160.0) == 49


def test_silent_hop_line_names_the_hop_and_the_count():
    line = silent_hop_line("sip:127.0.0.1:5060;transport=udp", 49, 60.0)
    assert "next hop sip:127.0.0.1:5060;transport=udp does not answer" in line
    assert "49 more timed out" in line and "once per 60 s" in line
    assert "more" not in silent_hop_line("x", 0, 60.0)


def test_each_next_hop_has_its_own_rate():
    limiter = HopReportLimiter(interval=60.0)
    assert limiter.due("a", 0.0) == 0
    assert limiter.due("b", 1.0) == 0
    assert limiter.due("a", 2.0) is None


def test_remembered_next_hops_are_bounded():
    limiter = HopReportLimiter(interval=60.0, max_hops=10)
    for i in range(1000):
        assert limiter.due(f"hop{i}", float(i) * 0.001) == 0
    assert len(limiter._hops) <= 10
