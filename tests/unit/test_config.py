"""Configuration loading: defaults, parsing, and one-line errors naming the key."""

import os
import stat

import pytest

from sipws.config import (
    Config,
    ConfigError,
    HostPort,
    SipListen,
    config_from_dict,
    load_config,
    parse_host_port,
)


def error_of(data):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


def test_defaults_match_design():
    config = load_config(None)
    assert config.ws.listen == (HostPort("127.0.0.1", 8080),)
    assert config.ws.port == 80 and config.wss.port == 443
    assert config.ws.resource == "/"
    assert config.ws.max_msg_chunks == 16 and config.ws.max_message_size == 65535
    assert config.wss.listen == ()
    assert config.wss.min_tls_version == "1.2"
    assert config.http.require_origin is True and config.http.cors_mode == 0
    assert config.keepalive.mechanism == "ping" and config.keepalive.timeout == 180.0
    assert config.sip.listen == (SipListen("udp", "127.0.0.1", 5062), SipListen("tcp", "127.0.0.1", 5062))
    assert config.sip.upstream == ""  # standalone mode
    assert config.registrar.domains == () and config.registrar.min_expires == 60
    assert (config.registrar.max_expires, config.registrar.default_expires) == (3600, 600)
    assert config.admin.listen == "tcp:8088:interface=127.0.0.1"
    assert config.log.format == "text"


def test_empty_file_is_defaults(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(str(path)) == Config()


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"ws": {"max_msg_chunks": 0}}, "config: [ws] max_msg_chunks: must be >= 1, got 0"),
        ({"ws": {"bogus": 1}}, "config: [ws] bogus: unknown key"),
        ({"nope": {}}, "config: [nope]: unknown section"),
        ({"ws": {"port": "80"}}, "config: [ws] port: must be an integer, got '80'"),
        ({"ws": {"port": True}}, "config: [ws] port: must be an integer, got True"),
        ({"ws": {"port": 70000}}, "config: [ws] port: must be <= 65535, got 70000"),
        ({"ws": {"handshake_timeout": 0}}, "config: [ws] handshake_timeout: must be > 0, got 0.0"),
        ({"ws": {"resource": "sip"}}, "config: [ws] resource: must be a path starting with '/', got 'sip'"),
        ({"http": {"cors_mode": 3}}, "config: [http] cors_mode: must be <= 2, got 3"),
        ({"keepalive": {"mechanism": "both"}}, "config: [keepalive] mechanism: must be one of none, ping, pong, got 'both'"),
        ({"keepalive": {"ping_data": "x" * 126}}, "config: [keepalive] ping_data: must be at most 125 bytes, got 126"),
        ({"wss": {"min_tls_version": "1.0"}}, "config: [wss] min_tls_version: must be one of 1.2, 1.3, got '1.0'"),
        ({"sip": {"listen": ["sctp:127.0.0.1:5060"]}}, "config: [sip] listen: entries are udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT, got 'sctp:127.0.0.1:5060'"),
        ({"sip": {"upstream": "http://x"}}, "config: [sip] upstream: must be a sip:/sips: URI or a ws:// / wss:// URL, got 'http://x'"),
        ({"trace": {"destination": "udp:host"}}, "config: [trace] destination: missing port in 'host'"),
        ({"events": {"on_closed": "nomodule_xyz:f"}}, "config: [events] on_closed: cannot import 'nomodule_xyz': No module named 'nomodule_xyz'"),
        ({"events": {"on_closed": "os.path"}}, "config: [events] on_closed: must be package.module:callable, got 'os.path'"),
        ({"events": {"on_closed": "os:not_there"}}, "config: [events] on_closed: 'os' has no attribute 'not_there'"),
        ({"admin": {"listen": "8088"}}, "config: [admin] listen: must be a Twisted endpoint like tcp:8088 or unix:/path, got '8088'"),
        ({"ws": []}, "config: [ws]: must be a table, got []"),
        ({"http": {"allowed_origins": ["example.com"]}}, "config: [http] allowed_origins: entries are origins like https://example.com or 'null', got 'example.com'"),
        ({"wss": {"listen": ["127.0.0.1:8443"]}}, "config: [wss] certificate: required when [wss] listen is set"),
        ({"wss": {"require_client_cert": True}}, "config: [wss] ca_list: required when require_client_cert is true"),
    ],
)
def test_errors_are_one_line_naming_the_key(data, expected):
    message = error_of(data)
    assert message == expected
    assert "\n" not in message


def test_missing_and_unreadable_certificate(tmp_path):
    missing = str(tmp_path / "nope.pem")
    assert error_of({"wss": {"certificate": missing}}) == (
        f"config: [wss] certificate: file {missing!r} does not exist"
    )
    unreadable = tmp_path / "key.pem"
    unreadable.write_text("x")
    os.chmod(unreadable, 0)
    if os.geteuid() == 0:
        # root reads anything; a directory given as a key file is still refused
        assert error_of({"wss": {"private_key": str(tmp_path)}}) == (
            f"config: [wss] private_key: {str(tmp_path)!r} is not a file"
        )
    else:
        assert "cannot read" in error_of({"wss": {"private_key": str(unreadable)}})
    os.chmod(unreadable, stat.S_IRUSR)


def test_listen_parsing_and_default_port():
    config = config_from_dict({"ws": {"port": 9000, "listen": ["127.0.0.1", "[::1]:9001", "localhost:0"]}})
    assert config.ws.listen == (
        HostPort("127.0.0.1", 9000),
        HostPort("::1", 9001),
        HostPort("localhost", 0),
    )
    # `port` alone moves the default listener
    assert config_from_dict({"ws": {"port": 9100}}).ws.listen == (HostPort("127.0.0.1", 9100),)


@pytest.mark.parametrize("text", ["[::1", "::1:80", "[127.0.0.1]:80", "host:port", "bad host:80", ":80"])
def test_bad_addresses(text):
    with pytest.raises(ConfigError) as info:
        parse_host_port("[ws] listen", text, 80)
    assert str(info.value).startswith("config: [ws] listen: ")


def test_sip_listen_entries(tmp_path):
    pem = tmp_path / "both.pem"
    pem.write_text("not checked here")
    config = config_from_dict({"sip": {"listen": ["udp:[::1]:5070", "tls:127.0.0.1", "tcp:0.0.0.0:5060"]},
                               "wss": {"certificate": str(pem), "private_key": str(pem)}})
    assert config.sip.listen == (
        SipListen("udp", "::1", 5070),
        SipListen("tls", "127.0.0.1", 5061),
        SipListen("tcp", "0.0.0.0", 5060),
    )


def test_sip_tls_listener_needs_a_certificate():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sip": {"listen": ["tls:127.0.0.1:5061"]}})
    assert str(info.value) == "config: [sip] listen: tls: entries need [wss] certificate and private_key"


def test_origins_are_normalised():
    config = config_from_dict({"http": {"allowed_origins": ["HTTPS://Example.COM", "null", "https://*.example.org"]}})
    assert config.http.allowed_origins == ("https://example.com", "null", "https://*.example.org")


def test_callable_reference_resolves():
    config = config_from_dict({"events": {"on_closed": "os.path:join"}, "trace": {"filter": "os.path:isabs"}})
    assert config.events.on_closed == "os.path:join"


def test_bad_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[ws\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"config: --config: {path}: not valid TOML")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "none.toml"))
    assert "does not exist" in str(info.value)


def test_upstream_forms():
    for value in (
        "sip:10.0.0.1:5060;transport=udp",
        "sips:core.example.com",
        "sip:proxy@core.example.com:5080;transport=tcp",
        "ws://[::1]:8080/ws",
        "wss://ws.example.com",
    ):
        assert config_from_dict({"sip": {"upstream": value}}).sip.upstream == value
    assert "unsupported transport" in error_of({"sip": {"upstream": "sip:h;transport=sctp"}})


def test_client_section():
    config = config_from_dict({"client": {"origin": "https://sipws.example.com", "headers": {"X-Tenant": "blue"},
                                          "max_queued_messages": 8}})
    assert config.client.origin == "https://sipws.example.com"
    assert config.client.headers == (("X-Tenant", "blue"),)
    assert config.client.max_queued_messages == 8
    assert error_of({"client": {"headers": {"Sec-WebSocket-Key": "x"}}}) == (
        "config: [client] headers: bad or reserved header name 'Sec-WebSocket-Key'"
    )
    assert error_of({"client": {"headers": {"X-A": "a\r\nB: c"}}}) == (
        "config: [client] headers: header 'X-A' needs a one-line string value"
    )
    assert error_of({"client": {"origin": "sipws.example.com"}}) == (
        "config: [client] origin: must be an origin like https://sipws.example.com, got 'sipws.example.com'"
    )


def test_sip_udp_buffer_size():
    assert load_config(None).sip.udp_buffer_size == 4 * 1024 * 1024
    assert config_from_dict({"sip": {"udp_buffer_size": 0}}).sip.udp_buffer_size == 0
    assert error_of({"sip": {"udp_buffer_size": -1}}) == "config: [sip] udp_buffer_size: must be >= 0, got -1"
    assert "must be <=" in error_of({"sip": {"udp_buffer_size": 1 << 31}})
