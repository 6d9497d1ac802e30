"""BindingTable: expiry over time, flow removal, limits, dump; and the
registrar's answers at the limits."""

import pytest
from twisted.internet.task import Clock

from sipws.registrar import (
    MAX_BINDINGS, MAX_BINDINGS_PER_AOR, Binding, BindingTable, TooManyBindings, aor_of,
)
from sipws.registrar import bindings as bindings_mod
from sipws.sip import parse_uri

from tests.unit.registrar.helpers import START, TOKEN, contact, register, send, setup

ALICE = "sip:alice@example.com"


def binding(clock, user="a", aor=ALICE, flow="f1", ttl=600.0, q=1.0) -> Binding:
    return Binding(aor, f"sip:{user}@h.invalid;transport=ws", (), ("<sip:x@127.0.0.1;lr>",),
                   flow, None, None, "cid", 1, q, clock.seconds() + ttl)


def test_defaults_are_named_constants():
    table = BindingTable(Clock())
    assert (table.max_per_aor, table.max_total) == (MAX_BINDINGS_PER_AOR, MAX_BINDINGS)
    with pytest.raises(ValueError):
        BindingTable(Clock(), max_per_aor=0)


def test_aor_of():
    assert aor_of(parse_uri("sips:Al%69ce@EXAMPLE.com.:5061;transport=ws?x=y")) == \
        "sip:Alice@example.com"
    assert aor_of(parse_uri("sip:bob@[2001:DB8::0001]")) == "sip:bob@[2001:db8::1]"


def test_expiry_over_time_through_the_registrar():
    clock, table, reg = setup()
    send(reg, register(contact("a", reg_id=None, instance=None, expires=100),
                       contact("b", reg_id=None, instance=None, expires=300)))
    assert table.counts() == (1, 2)
    clock.advance(99.5)
    assert len(table.lookup(ALICE)) == 2
    clock.advance(0.5)  # a binding is dead at expires_at, even before expire() runs
    assert [b.contact[4] for b in table.lookup(ALICE)] == ["b"]
    assert len(table._by_aor[ALICE]) == 2
    assert table.expire() == 1 and table.counts() == (1, 1)
    resp = send(reg, register(call_id="q"))
    assert resp.get_all("contact")[0].endswith(";expires=200")
    clock.advance(200)
    assert table.counts() == (0, 0) and table.dump() == []
    assert ALICE not in table


def test_expire_cheap_when_nothing_due_and_heap_bounded():
    clock = Clock()
    table = BindingTable(clock)
    b = binding(clock)
    table.replace(ALICE, [b])
    heap_before = list(table._heap)
    assert table.expire() == 0 and table._heap == heap_before
    assert table.next_expiry() == b.expires_at
    # many refreshes leave stale heap entries; the heap is rebuilt, not unbounded
    for i in range(5000):
        clock.advance(0.01)
        table.replace(ALICE, [binding(clock)])
    assert len(table._heap) <= 2 * bindings_mod.HEAP_STALE_FACTOR + bindings_mod.HEAP_SLACK + 2
    clock.advance(600)
    assert table.expire() == 1 and table.counts() == (0, 0)


def test_remove_flow():
    clock, table, reg = setup()
    send(reg, register(contact("a")))
    send(reg, register(contact("b", instance="<urn:uuid:1>"), token="tok2", call_id="2"))
    send(reg, register(contact("c"), aor="sip:bob@example.com", call_id="3"))
    assert table.counts() == (2, 3)
    assert table.remove_flow(TOKEN) == 2
    assert [b.flow for b in table.lookup(ALICE)] == ["tok2"]
    assert table.lookup("sip:bob@example.com") == []
    assert table.counts() == (1, 1)
    assert table.remove_flow(TOKEN) == 0 and table.remove_flow("nope") == 0
    assert table.remove_flow("tok2") == 1 and table.counts() == (0, 0)
    assert table._by_flow == {}


def test_replaced_binding_leaves_old_flow_index():
    clock, table, reg = setup()
    send(reg, register(contact()))
    send(reg, register(contact(), token="tok2", call_id="new"))  # same instance + reg-id
    assert table.remove_flow(TOKEN) == 0
    assert [b.flow for b in table.lookup(ALICE)] == ["tok2"]


def test_dump_fields():
    clock, table, reg = setup()
    send(reg, register(contact(extra=";q=0.5")))
    clock.advance(10.2)
    [entry] = table.dump()
    assert entry == {
        "aor": ALICE, "contact": "sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws",
        "flow": TOKEN, "instance": "urn:uuid:7d90c86b-e588-4ee1-8871-e9d2f6dc3c34",
        "reg_id": 1, "expires": 590, "q": 0.5,
        "path": [f"<sip:{TOKEN}@127.0.0.1:5062;transport=tcp;lr;ob>"],
    }


def test_table_limits_all_or_nothing():
    clock = Clock()
    table = BindingTable(clock, max_per_aor=2, max_total=3)
    a, b, c = binding(clock, "a"), binding(clock, "b"), binding(clock, "c")
    table.replace(ALICE, [a, b])
    with pytest.raises(TooManyBindings) as info:
        table.replace(ALICE, [a, b, c])
    assert info.value.scope == "aor" and table.counts() == (1, 2)
    table.replace("sip:bob@x", [binding(clock, "d", "sip:bob@x")])
    with pytest.raises(TooManyBindings) as info:
        table.replace("sip:carol@x", [binding(clock, "e", "sip:carol@x")])
    assert info.value.scope == "total" and table.counts() == (2, 3)
    # expired bindings do not hold room
    clock.advance(601)
    table.replace("sip:carol@x", [binding(clock, "e", "sip:carol@x")])
    assert table.counts() == (1, 1)


def test_registrar_per_aor_limit_403_refresh_still_ok():
    _, table, reg = setup(max_per_aor=2)
    plain = dict(reg_id=None, instance=None)
    assert send(reg, register(contact("a", **plain), contact("b", **plain))).status == 200
    resp = send(reg, register(contact("c", **plain), call_id="2"))
    assert (resp.status, resp.reason) == (403, "Too Many Bindings")
    assert len(table.lookup(ALICE)) == 2
    # refreshing, or replacing one while removing another, stays allowed
    assert send(reg, register(contact("a", **plain), cseq=2)).status == 200
    resp = send(reg, register(contact("a", **plain, expires=0), contact("c", **plain), cseq=3))
    assert resp.status == 200
    assert sorted(b.contact[4] for b in table.lookup(ALICE)) == ["b", "c"]


def test_registrar_total_limit_503_retry_after():
    _, table, reg = setup(max_total=1)
    assert send(reg, register(contact())).status == 200
    resp = send(reg, register(contact(), aor="sip:bob@example.com", call_id="b"))
    assert resp.status == 503 and resp.get("retry-after").isdigit()
    assert table.counts() == (1, 1)
