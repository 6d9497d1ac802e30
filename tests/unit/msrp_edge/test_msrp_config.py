"""[ws]/[wss] subprotocols and the [msrp] section: defaults, one-line errors, workers."""

import pytest

from sipws.config import ConfigError, SipListen, config_from_dict, load_config
from sipws.transport import handshake
from sipws.workers.plan import highest_port, worker_config


def error_of(data):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


def test_defaults_speak_only_sip_and_bound_msrp_chunks():
    config = load_config(None)
    assert config.ws.subprotocols == ("sip",) and config.wss.subprotocols == ("sip",)
    msrp = config.msrp
    assert msrp.max_chunk_size == 65536 and not msrp.allow_insecure and not msrp.require_auth
    assert msrp.listen == () and msrp.advertise == "" and msrp.expires == 1800 and msrp.verify_peers


def test_msrp_on_plain_ws_is_refused_in_one_line_unless_allowed():
    line = error_of({"ws": {"subprotocols": ["sip", "msrp"]}})
    assert line.startswith("config: [ws] subprotocols: msrp only on [wss]") and "\n" not in line
    assert "allow_insecure" in line
    config = config_from_dict({"ws": {"subprotocols": ["msrp", "sip"]}, "msrp": {"allow_insecure": True}})
    assert config.ws.subprotocols == ("msrp", "sip")


@pytest.mark.parametrize("value, problem", [
    ([], "must name at least one of sip, msrp"),
    (["sip", "xmpp"], "must be among sip, msrp, got 'xmpp'"),
    (["sip", "sip"], "names a subprotocol twice"),
    ("sip", "must be a list"),
])
def test_bad_subprotocol_lists_name_the_key(value, problem):
    assert error_of({"wss": {"subprotocols": value}}).startswith(f"config: [wss] subprotocols: {problem}")


@pytest.mark.parametrize("data, key", [
    ({"msrp": {"max_chunk_size": 100}}, "[msrp] max_chunk_size: must be >= 2048"),
    ({"msrp": {"max_chunk_size": 2 * 1024 * 1024}}, "[msrp] max_chunk_size: must be <= 1048576"),
    ({"msrp": {"listen": ["udp:127.0.0.1:2855"]}}, "[msrp] listen: entries must look like tcp:HOST:PORT"),
    ({"msrp": {"listen": ["tls:127.0.0.1:2855"]}}, "[msrp] listen: tls: entries need [wss] certificate"),
    ({"msrp": {"advertise": "a b"}}, "[msrp] advertise"),
    ({"msrp": {"expires": 0}}, "[msrp] expires: must be >= 1"),
    ({"msrp": {"colour": 1}}, "[msrp] colour: unknown key"),
])
def test_bad_msrp_values_name_the_key(data, key):
    assert error_of(data).startswith(f"config: {key}")


def test_msrp_listen_defaults_to_port_2855():
    config = config_from_dict({"msrp": {"listen": ["tcp:127.0.0.1", "tcp:[::1]:3000"]}})
    assert config.msrp.listen == (SipListen("tcp", "127.0.0.1", 2855), SipListen("tcp", "::1", 3000))


def test_each_worker_shifts_its_msrp_ports_and_use_path_port():
    config = config_from_dict({"server": {"workers": 3},
                               "msrp": {"listen": ["tcp:127.0.0.1:2855"], "advertise": "relay.example.com:2855"}})
    second = worker_config(config, 2)
    assert second.msrp.listen == (SipListen("tcp", "127.0.0.1", 2857),)
    assert second.msrp.advertise == "relay.example.com:2857"
    high = config_from_dict({"msrp": {"listen": ["tcp:127.0.0.1:65535"]}})
    assert highest_port(high, 2) == ("tcp:127.0.0.1:65535", 65536)


def request(protocols: str | None):
    headers = {"host": ["h"], "upgrade": ["websocket"], "connection": ["Upgrade"],
               "sec-websocket-version": ["13"], "sec-websocket-key": ["dGhlIHNhbXBsZSBub25jZQ=="],
               "origin": ["https://a.example"]}
    if protocols is not None:
        headers["sec-websocket-protocol"] = [protocols]
    return handshake.HandshakeRequest("GET", "/", "HTTP/1.1", headers)


@pytest.mark.parametrize("offered, enabled, chosen", [
    ("sip", ("sip",), "sip"),
    ("msrp, sip", ("sip", "msrp"), "msrp"),     # the client's order decides
    ("sip, msrp", ("msrp", "sip"), "sip"),
    ("foo,msrp", ("sip", "msrp"), "msrp"),
    ("msrps, xmsrp", ("sip", "msrp"), None),    # tokens, not substrings
    ("msrp", ("sip",), None),
    (None, ("sip", "msrp"), None),
])
def test_the_first_offered_enabled_subprotocol_is_chosen(offered, enabled, chosen):
    req = request(offered)
    policy = handshake.HandshakePolicy(subprotocols=enabled)
    assert handshake.choose_subprotocol(handshake.offered_subprotocols(req), enabled) == chosen
    refusal = handshake.check_request(req, policy, True)
    if chosen is None:
        assert refusal.status == 400
        assert refusal.headers == (("Sec-WebSocket-Protocol", ", ".join(enabled)),)
        assert "no enabled subprotocol offered" in refusal.reason
    else:
        assert refusal is None
