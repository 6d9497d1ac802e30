"""Key material and token minting for the [auth] tests (unit and integration)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_pem(tmp: Path, name: str, key) -> str:
    path = tmp / name
    path.write_bytes(public_pem(key))
    return str(path)


def jwk(key, kid: str, alg: str | None = None) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    entry = json.loads(algorithm.to_jwk(key.public_key()))
    entry["kid"] = kid
    if alg:
        entry["alg"] = alg
    return entry


def write_jwks(tmp: Path, entries: list[dict], name: str = "jwks.json") -> str:
    path = tmp / name
    path.write_text(json.dumps({"keys": entries}))
    return str(path)


def hmac_credential(secret: str, username: str, algorithm: str = "sha256") -> str:
    digest = hmac.new(secret.encode(), username.encode(), getattr(hashlib, algorithm)).digest()
    return base64.b64encode(digest).decode()


def token(key, alg: str, headers: dict | None = None, **claims) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers)
