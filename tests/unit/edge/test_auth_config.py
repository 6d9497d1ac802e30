"""[auth] configuration: keys are read at start-up, one line naming the key."""

import pytest

from sipws.config import ConfigError, config_from_dict
from tests.unit.edge.keys import ED_KEY, RSA_KEY, private_pem, write_jwks, write_pem


def error_of(data):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_jwt_secret_length():
    assert "[auth] jwt_secret: must be at least 32 bytes" in error_of({"auth": {"jwt_secret": "short"}})
    assert config_from_dict({"auth": {"jwt_secret": "x" * 32}}).auth.methods == ("jwt",)


def test_public_key_must_be_rsa_or_ec_public(tmp_path):
    assert config_from_dict({"auth": {"jwt_public_key": write_pem(tmp_path, "r.pem", RSA_KEY)}}).auth.jwt_public_key
    text = error_of({"auth": {"jwt_public_key": write_pem(tmp_path, "ed.pem", ED_KEY)}})
    assert text.startswith("config: [auth] jwt_public_key:") and "not an RSA or EC" in text
    private = tmp_path / "p.pem"
    private.write_bytes(private_pem(RSA_KEY))
    assert "not a PEM public key" in error_of({"auth": {"jwt_public_key": str(private)}})
    assert "does not exist" in error_of({"auth": {"jwt_public_key": str(tmp_path / "none.pem")}})


def test_jwks_read_at_start(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert error_of({"auth": {"jwt_jwks": str(bad)}}).startswith("config: [auth] jwt_jwks:")
    from tests.unit.edge.keys import jwk
    assert config_from_dict({"auth": {"jwt_jwks": write_jwks(tmp_path, [jwk(RSA_KEY, "k")])}}).auth.jwt_jwks


def test_required_needs_a_method():
    assert "[auth] required: needs" in error_of({"auth": {"required": True}})
