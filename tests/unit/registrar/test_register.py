"""Registrar.handle: RFC 3261 §10.3, RFC 3327 and RFC 5626 §6 rules."""

import pytest

from sipws.registrar import NotARegister, RegistrarError
from sipws.sip import parse

from tests.unit.registrar.helpers import (
    INSTANCE, START, TOKEN, contact, contacts_of, register, send, setup,
)

JSSIP_CONTACT = ('<sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws>;+sip.ice;reg-id=1;'
                 '+sip.instance="<urn:uuid:7d90c86b-e588-4ee1-8871-e9d2f6dc3c34>";expires=600')


def test_jssip_register_200_lists_binding_echoes_path_and_requires_outbound():
    clock, table, reg = setup()
    resp = send(reg, register(contact()))
    assert resp.status == 200
    assert contacts_of(resp) == [JSSIP_CONTACT]
    assert resp.get_all("path") == [f"<sip:{TOKEN}@127.0.0.1:5062;transport=tcp;lr;ob>"]
    assert resp.require == ["outbound"]
    assert resp.to.tag and resp.get("date").endswith("GMT")
    assert resp.call_id == "h0b636t6hfh82" and resp.cseq == (1, "REGISTER")
    [b] = table.lookup("sip:alice@example.com")
    assert (b.flow, b.reg_id, b.instance) == (TOKEN, 1, INSTANCE[1:-1])
    assert b.contact == "sip:7l5foh4m@9t7ivgcfqmuh.invalid;transport=ws"
    assert b.path == (f"<sip:{TOKEN}@127.0.0.1:5062;transport=tcp;lr;ob>",)
    assert ("expires", "600") not in b.params and ("reg-id", "1") in b.params
    assert b.expires_at == START + 600 and b.call_id == "h0b636t6hfh82" and b.cseq == 1


def test_same_request_same_to_tag():
    _, _, reg = setup()
    data = register(contact(), expires="0")
    assert send(reg, data).to.tag == send(reg, data).to.tag


def test_path_not_echoed_without_supported_path():
    _, _, reg = setup()
    resp = send(reg, register(contact(), supported="outbound"))
    assert resp.status == 200 and not resp.has("path")


def test_no_outbound_without_supported_outbound_reg_id_ignored():
    _, table, reg = setup()
    resp = send(reg, register(contact(), supported="path"))
    assert resp.status == 200 and not resp.has("require")
    [b] = table.lookup("sip:alice@example.com")
    assert b.reg_id is None and b.instance is not None
    # keyed on the instance alone: a new Contact URI replaces it
    resp = send(reg, register(contact(user="other"), supported="path", cseq=2))
    assert [b.contact for b in table.lookup("sip:alice@example.com")] == [
        "sip:other@9t7ivgcfqmuh.invalid;transport=ws"]


def test_439_when_edge_path_lacks_ob():
    _, table, reg = setup()
    resp = send(reg, register(contact(), ob=False))
    assert resp.status == 439 and table.counts() == (0, 0)
    resp = send(reg, register(contact(), token=None))  # one Via: the UA is adjacent
    assert resp.status == 200 and resp.require == ["outbound"]


def test_query_lists_without_change():
    clock, table, reg = setup()
    send(reg, register(contact()))
    clock.advance(100)
    resp = send(reg, register(call_id="other", cseq=1))
    assert resp.status == 200
    assert contacts_of(resp) == [JSSIP_CONTACT.replace("expires=600", "expires=500")]
    empty = send(reg, register(aor="sip:bob@example.com"))
    assert empty.status == 200 and not empty.has("contact")


def test_expiry_precedence_param_header_default():
    _, table, reg = setup(default_expires=300)
    send(reg, register(contact("a", expires=120), contact("b", expires=None, reg_id=None,
                                                          instance=None), expires="900"))
    got = {b.contact.split("@")[0]: b.expires_at - START for b in table.lookup("sip:alice@example.com")}
    assert got == {"sip:a": 120, "sip:b": 900}
    send(reg, register(contact("c", expires=None, reg_id=None, instance=None),
                       aor="sip:carol@example.com", expires=None))
    [b] = table.lookup("sip:carol@example.com")
    assert b.expires_at - START == 300


def test_max_expires_caps_and_min_expires_423():
    _, table, reg = setup(min_expires=60, max_expires=3600)
    resp = send(reg, register(contact(expires=99999)))
    assert resp.status == 200 and contacts_of(resp)[0].endswith(";expires=3600")
    resp = send(reg, register(contact(expires=59), cseq=2))
    assert resp.status == 423 and resp.get("min-expires") == "60"
    # nothing committed: the 3600 s binding stands
    assert table.lookup("sip:alice@example.com")[0].expires_at == START + 3600
    # one brief Contact among good ones refuses the whole REGISTER
    resp = send(reg, register(contact("x", reg_id=None, instance=None, expires=600),
                              contact("y", reg_id=None, instance=None, expires=1), cseq=3))
    assert resp.status == 423 and len(table.lookup("sip:alice@example.com")) == 1
    # a huge Expires header is capped too
    resp = send(reg, register(contact(expires=None), expires="9" * 30, cseq=4))
    assert resp.status == 200 and contacts_of(resp)[0].endswith(";expires=3600")


def test_expires_zero_removes_one_binding():
    _, table, reg = setup()
    send(reg, register(contact("a", reg_id=None, instance=None),
                       contact("b", reg_id=None, instance=None)))
    assert len(table.lookup("sip:alice@example.com")) == 2
    resp = send(reg, register(contact("a", reg_id=None, instance=None, expires=0), cseq=2))
    assert resp.status == 200 and len(contacts_of(resp)) == 1
    assert contacts_of(resp)[0].startswith("<sip:b@")
    # Expires: 0 header without a param removes as well
    resp = send(reg, register(contact("b", reg_id=None, instance=None, expires=None),
                              expires="0", cseq=3))
    assert resp.status == 200 and not resp.has("contact") and table.counts() == (0, 0)


def test_star_removes_all_only_with_expires_zero():
    _, table, reg = setup()
    send(reg, register(contact("a", reg_id=None, instance=None), contact()))
    assert send(reg, register("*", cseq=2)).status == 400  # Expires: 600
    assert send(reg, register("*", expires=None, cseq=2)).status == 400
    assert send(reg, register("*", contact(), expires="0", cseq=2)).status == 400
    assert len(table.lookup("sip:alice@example.com")) == 2
    resp = send(reg, register("*", expires="0", cseq=2))
    assert resp.status == 200 and not resp.has("contact") and table.counts() == (0, 0)


def test_star_respects_call_id_cseq():
    _, table, reg = setup()
    send(reg, register(contact(), cseq=5))
    assert send(reg, register("*", expires="0", cseq=5)).status == 500
    assert send(reg, register("*", expires="0", cseq=4)).status == 500
    assert table.counts() == (1, 1)
    # another Call-ID may remove it whatever its CSeq
    assert send(reg, register("*", expires="0", call_id="x", cseq=1)).status == 200
    assert table.counts() == (0, 0)


def test_out_of_order_same_call_id_500_and_refresh_ok():
    clock, table, reg = setup()
    send(reg, register(contact(), cseq=2))
    assert send(reg, register(contact(), cseq=2)).status == 500  # retransmission
    assert send(reg, register(contact(), cseq=1)).status == 500
    clock.advance(300)
    resp = send(reg, register(contact(), cseq=3))
    assert resp.status == 200 and contacts_of(resp)[0].endswith("expires=600")
    assert table.lookup("sip:alice@example.com")[0].cseq == 3
    # a different Call-ID with a lower CSeq replaces it (another registration)
    assert send(reg, register(contact(), call_id="new", cseq=1)).status == 200


def test_instance_reg_id_replacement_whatever_the_uri():
    _, table, reg = setup()
    send(reg, register(contact("a", reg_id=1), contact("b", reg_id=2)))
    assert len(table.lookup("sip:alice@example.com")) == 2
    # the same instance + reg-id from a new connection (new flow, new URI)
    resp = send(reg, register(contact("c", reg_id=1), token="tok2", call_id="n", cseq=1))
    assert resp.status == 200
    got = {(b.contact[4], b.reg_id, b.flow) for b in table.lookup("sip:alice@example.com")}
    assert got == {("b", 2, TOKEN), ("c", 1, "tok2")}
    # another instance adds, never replaces
    send(reg, register(contact("d", instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"),
                       call_id="m"))
    assert len(table.lookup("sip:alice@example.com")) == 3


def test_instance_compared_case_insensitively_for_uuid():
    _, table, reg = setup()
    send(reg, register(contact("a")))
    send(reg, register(contact("b", instance=INSTANCE.upper().replace("URN:UUID", "urn:uuid")),
                       call_id="z"))
    [b] = table.lookup("sip:alice@example.com")
    assert b.contact.startswith("sip:b@")


def test_instance_without_reg_id_replaces_same_instance():
    _, table, reg = setup()
    send(reg, register(contact("a", reg_id=None)))
    send(reg, register(contact("b", reg_id=None), call_id="n"))
    [b] = table.lookup("sip:alice@example.com")
    assert b.contact.startswith("sip:b@") and b.reg_id is None


def test_uri_match_per_rfc3261_comparison():
    _, table, reg = setup()
    send(reg, register("<sip:Bob@HOST.example;transport=ws>;expires=600"))
    # host case and parameter order/case do not matter; user case does
    send(reg, register("<sip:Bob@host.example;TRANSPORT=WS;x=1>;expires=300", cseq=2))
    assert len(table.lookup("sip:alice@example.com")) == 1
    send(reg, register("<sip:bob@host.example;transport=ws>;expires=300", cseq=3))
    assert len(table.lookup("sip:alice@example.com")) == 2


def test_duplicate_contact_in_one_register_last_wins():
    _, table, reg = setup()
    resp = send(reg, register(contact("a", reg_id=None, instance=None, expires=100),
                              contact("a", reg_id=None, instance=None, expires=200)))
    assert resp.status == 200 and contacts_of(resp) == [
        "<sip:a@9t7ivgcfqmuh.invalid;transport=ws>;+sip.ice;expires=200"]


def test_multiple_contacts_sorted_by_q_then_recency():
    clock, table, reg = setup()
    send(reg, register(contact("low", reg_id=None, instance=None, extra=";q=0.1")))
    clock.advance(1)
    send(reg, register(contact("old", reg_id=None, instance=None), call_id="2"))
    clock.advance(1)
    send(reg, register(contact("new", reg_id=None, instance=None), call_id="3"))
    resp = send(reg, register(call_id="q"))
    order = [c.split("@")[0][5:] for c in contacts_of(resp)]
    assert order == ["new", "old", "low"]
    assert [b.q for b in table.lookup("sip:alice@example.com")] == [1.0, 1.0, 0.1]


def test_aor_normalized_and_domains():
    _, table, reg = setup(domains=["Example.COM"])
    assert send(reg, register(contact(), aor="sips:Alice@EXAMPLE.com.")).status == 200
    assert table.lookup("sip:Alice@example.com") and not table.lookup("sip:alice@example.com")
    resp = send(reg, register(contact(), aor="sip:alice@evil.example", call_id="e"))
    assert resp.status == 403 and resp.reason == "Domain Not Served"
    assert send(reg, register(contact(), aor="sip:example.com", call_id="n")).status == 404
    assert send(reg, register(contact(), aor="tel:+15551234", call_id="t")).status == 404


def test_any_domain_by_default():
    _, table, reg = setup()
    assert send(reg, register(contact(), aor="sip:x@203.0.113.9")).status == 200
    assert table.lookup("sip:x@203.0.113.9")


def test_require_unknown_extension_420():
    _, _, reg = setup()
    resp = send(reg, register(contact(), extra=("Require: gruu, outbound",)))
    assert resp.status == 420 and resp.get("unsupported") == "gruu"
    assert send(reg, register(contact(), extra=("Require: path",))).status == 200


@pytest.mark.parametrize("bad, reason", [
    (dict(expires="soon"), "Bad Expires"),
    (dict(expires="-1"), "Bad Expires"),
    (dict(contacts=(contact(expires=None, extra=";expires=ten"),)), "Bad Contact: expires"),
    (dict(contacts=(contact(extra=";q=1.5"),)), "Bad Contact: q"),
    (dict(contacts=(contact(reg_id=None, extra=";reg-id=0"),)), "Bad Contact: reg-id"),
    (dict(contacts=(contact(reg_id=None, extra=";reg-id=99999999999"),)), "Bad Contact: reg-id"),
    (dict(contacts=(contact(instance=None, extra=";+sip.instance=abc"),)),
     "Bad Contact: +sip.instance"),
    (dict(contacts=("<mailto:alice@example.com>",)), "Bad Contact: not a SIP URI"),
])
def test_malformed_400_names_header(bad, reason):
    _, table, reg = setup()
    contacts = bad.pop("contacts", (contact(),))
    resp = send(reg, register(*contacts, **bad))
    assert (resp.status, resp.reason) == (400, reason)
    assert table.counts() == (0, 0)


def test_malformed_lazily_read_headers_400():
    _, _, reg = setup()
    resp = send(reg, register(contact(), extra=("Require: path, <oops",)))
    assert (resp.status, resp.reason) == (400, "Bad Require")
    resp = send(reg, register(contact(), supported="path, <oops"))
    assert (resp.status, resp.reason) == (400, "Bad Supported")


def test_not_a_register_is_a_caller_error():
    _, _, reg = setup()
    req = parse(register(contact()).replace(b"REGISTER", b"OPTIONS"))
    with pytest.raises(NotARegister) as info:
        reg.handle(req)
    assert isinstance(info.value, RegistrarError)


def test_bad_bounds_refused():
    with pytest.raises(ValueError):
        setup(min_expires=100, max_expires=10)
