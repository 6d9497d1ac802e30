"""Property tests (hypothesis): bad input only ever raises MsrpParseError, the
relay never raises, and what parses re-serializes to the same bytes."""

from datetime import timedelta

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.task import Clock

from sipws.msrp import (
    MessageSplitter, MsrpParseError, MsrpRelay, PeerKey, RelaySettings, parse, parse_uri,
)

from .helpers import request, response, send

RELAY = "msrps://relay.example.net:2855"
CORPUS = [
    send(), send(flag="+", rng="1-23/*"), send(body=b"", rng="1-0/0"), response(),
    response(status=481, comment=""),
    request("AUTH", "auth0001", f"{RELAY};ws", "msrps://a.invalid/a1;ws", ["Expires: 900"]),
    request("REPORT", "r0000001", f"{RELAY}/sessA;tcp msrps://a.invalid/a1;ws",
            "msrp://b.example:1/b;tcp", ["Message-ID: 1", "Byte-Range: 1-1/1",
                                         "Status: 000 200 OK"]),
    send(to=f"{RELAY}/sessA;tcp {RELAY}/sessB;tcp msrps://b.invalid/b1;ws",
         frm="msrps://a.invalid/a1;ws"),
    send(to=f"{RELAY}/sessA;tcp msrp://biloxi.example.com:12763/k;tcp",
         frm="msrps://a.invalid/a1;ws"),
]
SETTINGS = settings(max_examples=300, deadline=timedelta(seconds=1),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INTERESTING = b" :;/@-$+#\r\n\t0129aZ\x00\x7f\xff\xc3MSRP"


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0:
            data[pos:pos] = bytes([draw(st.sampled_from(INTERESTING))])
        elif op == 1:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == 2 and pos < len(data):
            data[pos] = draw(st.sampled_from(INTERESTING))
        else:
            data[pos:pos] = draw(st.binary(max_size=20))
    return bytes(data)


def _exercise(m):
    m.to_path, m.from_path, m.use_path, m.message_id, m.byte_range, m.success_report
    m.failure_report, m.content_type, m.expires, m.status_header, m.headers
    assert parse(bytes(m)).tid == m.tid


@SETTINGS
@given(st.one_of(st.binary(max_size=600), mutated()))
def test_parse_only_raises_parse_error(data):
    try:
        m = parse(data)
    except MsrpParseError as e:
        assert e.reason and e.status in (400, 413)
        return
    _exercise(m)
    core = data if data.endswith(b"\r\n") else data + b"\r\n"
    assert bytes(m) == core


@SETTINGS
@given(st.text(max_size=120))
def test_uri_only_raises_parse_error(text):
    try:
        u = parse_uri(text)
    except MsrpParseError:
        return
    assert parse_uri(str(u)) == u


@SETTINGS
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=5), st.data())
def test_splitter_any_chunking(messages, data):
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    s, out, prev = MessageSplitter(), [], 0
    for c in cuts + [len(stream)]:
        out += s.feed(stream[prev:c])
        prev = c
    assert out == messages and s.buffered == 0


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_splitter_garbage(data):
    s = MessageSplitter()
    try:
        for m in s.feed(data):
            try:
                parse(m)
            except MsrpParseError:
                pass
    except MsrpParseError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.one_of(mutated(), st.sampled_from(CORPUS),
                                                                 st.binary(max_size=100))),
                max_size=12),
       st.lists(st.sampled_from(["tick", "close2", "unreachable", "backlog"]), max_size=3))
def test_relay_never_raises(feed, events):
    clock = Clock()
    names = iter(["sessA", "sessB"] + [f"s{i:04d}" for i in range(100)])
    relay = MsrpRelay(clock, RelaySettings(host="relay.example.net"), token=lambda: next(names))
    relay.connection_opened(1, "ws", identity="a")
    relay.connection_opened(2, "ws")
    relay.connection_opened(3, "peer", peer=PeerKey("biloxi.example.com", 12763, False))
    relay.received(1, CORPUS[5])  # sessA for connection 1
    relay.received(2, CORPUS[5])  # sessB for connection 2
    for conn, data in feed:
        for action in relay.received(conn, data):
            if hasattr(action, "data"):
                parse(action.data)  # everything the relay writes parses
    for ev in events:
        clock.advance(40)
        if ev == "tick":
            relay.tick()
        elif ev == "close2":
            relay.connection_closed(2)
        elif ev == "unreachable":
            relay.peer_unreachable(PeerKey("biloxi.example.com", 12763, False), "gone")
        else:
            relay.buffered(3, 10)
    relay.dump()
    assert all(v >= 0 for v in relay.counters.values())


def test_bounded_work_on_adversarial_bodies():
    """Bodies full of false end-lines, 1 MiB of them, frame and parse in linear time."""
    import time

    from sipws.msrp import Limits
    body = b"\r\n-------a786hjs2 " * (1 << 16)
    data = send(body=body, rng=f"1-{len(body)}/{len(body)}")
    limits = Limits(max_message_size=len(data) + 1)
    t0 = time.monotonic()
    s = MessageSplitter(limits)
    out = []
    for i in range(0, len(data), 1000):
        out += s.feed(data[i:i + 1000])
    assert out == [data] and parse(data, limits).body == body
    assert time.monotonic() - t0 < 2.0
