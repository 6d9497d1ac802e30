"""Property tests: whatever a client sends, handle() answers with a Response
(never another exception) and the table stays consistent and bounded."""

from hypothesis import assume, given, settings, strategies as st

from sipws.registrar import BindingTable, Registrar
from sipws.sip import SipParseError, parse

from tests.unit.registrar.helpers import START, contact, register, setup

ALLOWED = {200, 400, 403, 404, 420, 423, 439, 500, 503}

_chars = st.sampled_from(list("abAB01;=<>\"',:@*. -%?&[]") + ["sip:", "urn:uuid:"])
junk = st.lists(_chars, max_size=12).map("".join)
contact_param = st.one_of(
    st.sampled_from(["expires=0", "expires=59", "expires=600", "expires=9999999999999",
                     "expires=x", "expires=", "expires", "q=0.5", "q=1", "q=2", "q",
                     "reg-id=1", "reg-id=2", "reg-id=0", "reg-id=x", "reg-id",
                     '+sip.instance="<urn:uuid:1>"', '+sip.instance="<urn:uuid:2>"',
                     "+sip.instance=x", '+sip.instance="<>"', "+sip.instance", "+sip.ice",
                     "transport=ws", "ob"]),
    st.sampled_from(["expires=1", "q=0.1"]), st.sampled_from(["x", "y=z"]), junk)
contact_value = st.one_of(
    st.builds(lambda user, params: f"<sip:{user}@h.invalid;transport=ws>"
              + "".join(";" + p for p in params),
              st.sampled_from(["a", "b", "A"]), st.lists(contact_param, max_size=5)),
    st.sampled_from(["*", "<mailto:a@b>", "<sip:a@h>, <sip:b@h>", "sip:a@h;expires=0"]),
    st.builds(lambda user, params: f"<sip:{user}@h.invalid>" + "".join(";" + p for p in params),
              st.sampled_from(["c", "d"]), st.lists(contact_param, max_size=3)),
    junk)
expires_value = st.sampled_from([None, "0", "1", "60", "600", "9" * 20, "x", "-1", "6 0", ""])
options = st.sampled_from([None, "path", "outbound", "path,outbound", "gruu", "path, <x", ""])


def _invariants(table: BindingTable) -> None:
    by_aor = table._by_aor
    assert table._total == sum(len(v) for v in by_aor.values())
    assert all(by_aor.values())
    assert all(len(v) <= table.max_per_aor for v in by_aor.values())
    assert table._total <= table.max_total
    flows = {}
    for aor, bindings in by_aor.items():
        for b in bindings:
            if b.flow is not None:
                flows.setdefault(b.flow, set()).add(aor)
    assert flows == table._by_flow


def _try_parse(data: bytes):
    try:
        return parse(data)
    except SipParseError:
        assume(False)


@settings(max_examples=300, deadline=None)
@given(contacts=st.lists(contact_value, max_size=3), expires=expires_value,
       to=st.sampled_from(["alice", "Bob", "%41b", "a;b", "", "x@y"]),
       require=options, supported=options, token=st.sampled_from([None, "t1", "t2"]),
       ob=st.booleans(), cseq=st.integers(1, 3))
def test_junk_headers_answered(contacts, expires, to, require, supported, token, ob, cseq):
    clock, table, reg = setup(max_per_aor=3, max_total=5)
    assert reg.handle(parse(register(contact("a"), cseq=2))).status == 200
    extra = () if require is None else (f"Require: {require}",)
    data = register(*contacts, aor=f"sip:{to}@example.com" if to else "sip:example.com",
                    expires=expires, supported=supported, token=token, ob=ob,
                    extra=extra, cseq=cseq)
    req = _try_parse(data)
    resp = reg.handle(req)
    assert resp.status in ALLOWED
    bytes(resp)  # serializable
    _invariants(table)


op = st.one_of(
    st.tuples(st.just("reg"), st.sampled_from("abcd"), st.sampled_from(["alice", "bob"]),
              st.sampled_from([None, 1, 2]), st.sampled_from([None, "<urn:uuid:1>", "<urn:uuid:2>"]),
              st.sampled_from([0, 30, 60, 600, 5000]), st.sampled_from(["t1", "t2", "t3"]),
              st.sampled_from(["c1", "c2"]), st.integers(1, 5)),
    st.tuples(st.just("star"), st.sampled_from(["alice", "bob"]), st.sampled_from(["c1", "c3"]),
              st.integers(1, 5)),
    st.tuples(st.just("advance"), st.sampled_from([1, 59, 300, 700])),
    st.tuples(st.just("close"), st.sampled_from(["t1", "t2", "t3"])),
    st.tuples(st.just("expire")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=30))
def test_random_sequences_keep_table_consistent(ops):
    clock, table, reg = setup(max_per_aor=3, max_total=5)
    for o in ops:
        if o[0] == "reg":
            _, user, aor, reg_id, inst, exp, token, call_id, cseq = o
            data = register(contact(user, reg_id=reg_id, instance=inst, expires=exp),
                            aor=f"sip:{aor}@example.com", token=token, call_id=call_id, cseq=cseq)
            resp = reg.handle(parse(data))
            assert resp.status in {200, 403, 423, 500, 503}
        elif o[0] == "star":
            _, aor, call_id, cseq = o
            resp = reg.handle(parse(register("*", aor=f"sip:{aor}@example.com", expires="0",
                                             call_id=call_id, cseq=cseq)))
            assert resp.status in {200, 500}
            if resp.status == 200:
                assert table.lookup(f"sip:{aor}@example.com") == []
        elif o[0] == "advance":
            clock.advance(o[1])
        elif o[0] == "close":
            table.remove_flow(o[1])
            assert all(b.flow != o[1] for aor in ("alice", "bob")
                       for b in table.lookup(f"sip:{aor}@example.com"))
        else:
            table.expire()
        _invariants(table)
        now = clock.seconds()
        for aor in ("sip:alice@example.com", "sip:bob@example.com"):
            live = table.lookup(aor)
            assert all(b.expires_at > now for b in live)
            assert all(b.expires_at - now <= reg.max_expires for b in live)
            qs = [b.q for b in live]
            assert qs == sorted(qs, reverse=True)
    assert clock.seconds() >= START
