"""Messages captured from JsSIP, SIP.js, sipp and Kamailio (tests/data/sip/captures)."""

import pytest

from sipws.sip import StreamFramer, make_response, parse

from .helpers import DATA

CAPTURES = sorted((DATA / "captures").glob("*/*.sip"))


def test_every_source_is_present():
    assert {p.parent.name for p in CAPTURES} == {"jssip", "sipjs", "sipp", "kamailio"}


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parse_roundtrip_and_relay_edits(path):
    data = path.read_bytes()
    msg = parse(data)
    assert bytes(msg) == data
    assert msg.vias and msg.call_id and msg.cseq[0] >= 0
    msg.from_, msg.to, msg.contacts, msg.routes, msg.record_routes
    if msg.is_request:
        msg.set_top_via_received("198.51.100.7", 40000)
        msg.push_via("SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsipws;rport")
        msg.push_record_route("<sip:192.0.2.10:5062;lr>")
        msg.decrement_max_forwards()
        again = parse(bytes(msg))
        assert again.vias[1].received == "198.51.100.7" and again.vias[1].rport == 40000
        assert again.body == msg.body
    else:
        top = msg.pop_via()
        assert top
        if msg.vias:
            assert parse(bytes(msg)).vias == msg.vias
    assert StreamFramer().feed(data) == [data]


def test_jssip_register_outbound_fields():
    msg = parse((DATA / "captures" / "jssip" / "jssip_01_REGISTER.sip").read_bytes())
    via = msg.top_via
    assert via.transport == "WS" and via.host.endswith(".invalid")
    assert via.branch.startswith("z9hG4bK")
    contact = msg.contacts[0]
    assert contact.uri.transport == "ws"
    assert contact.params["reg-id"] == "1"
    assert contact.params["+sip.instance"].startswith('"<urn:uuid:')
    assert contact.params["expires"] == "600"
    assert msg.supported == ["path", "gruu", "outbound"]
    assert msg.from_.display == "Alice Ñandú"
    assert msg.get("User-Agent").startswith("JsSIP")


def test_jssip_invite_and_answer():
    msg = parse((DATA / "captures" / "jssip" / "jssip_04_INVITE.sip").read_bytes())
    assert msg.contacts[0].uri.params == {"transport": "ws", "ob": None}
    assert msg.get("Content-Type") == "application/sdp" and msg.body.startswith(b"v=0")
    ringing = parse(bytes(make_response(msg, 180, to_tag="t1")))
    assert ringing.to.tag == "t1" and ringing.top_via == msg.top_via


def test_sipjs_register():
    msg = parse((DATA / "captures" / "sipjs" / "sipjs_01_REGISTER.sip").read_bytes())
    assert msg.supported == ["outbound", "path", "gruu"]
    assert msg.contacts[0].params["expires"] == "600"
    assert msg.get("User-Agent").startswith("SIP.js")


def test_kamailio_relayed_invite():
    msg = parse((DATA / "captures" / "kamailio" / "via_kamailio_uas_01_received_INVITE.sip")
                .read_bytes())
    assert msg.record_routes[0].uri.params == {"lr": None}
    assert len(msg.vias) == 2 and msg.vias[1].rport == int(msg.vias[1].params["rport"])
    assert msg.max_forwards == 69
