"""TLS settings for wss (server and client role) and TLS facts for tracing.

Everything wrong with the files (unreadable, not PEM, key not matching the
certificate, a directory with no usable pair) is a ConfigError naming the key,
found at start-up rather than at the first handshake.

SNI: ``[wss] certificate`` may name a directory of PEM files, each holding a
certificate (chain) and its key.  The server picks the one whose names match
the client's server_name (exact, then ``*.`` wildcard), else the first file in
name order.  Implemented with pyOpenSSL's servername callback rather than
Twisted's PEM-directory endpoint, which loops at start-up on a self-signed
root in the directory.

ALPN: every browser offers ``http/1.1`` when it opens wss://.  Twisted 26
installs an ALPN selection callback on every server context it builds, and
that callback answers "no overlap" in a way pyOpenSSL 26 treats as "abort the
handshake": the browser gets alert 80 (internal error).  Every server context
sipws hands out gets its own callback instead (``_install_alpn``): it picks
``http/1.1`` on wss listeners when offered and otherwise goes on without ALPN
(RFC 7301 §3.2 allows a server to ignore protocols it does not support).

Reload: ``ReloadableServerTls`` is the object the listeners hold; it hands
out the current context for each new connection, so ``reload()`` swaps the
certificate for new handshakes while open connections keep theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.ssl import TLSVersion
from zope.interface import implementer

from sipws.config import ConfigError, WssConfig

_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
_PEM_SUFFIXES = (".pem", ".crt")

#: ALPN protocols a wss listener selects (WebSocket runs over HTTP/1.1, RFC 6455).
WSS_ALPN: tuple[bytes, ...] = (b"http/1.1",)
#: ALPN protocols the SIP-side TLS listener selects: none (RFC 5630 defines no token).
SIP_TLS_ALPN: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class _Identity:
    names: tuple[str, ...]
    options: ssl.CertificateOptions


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path!r}: {exc.strerror}") from None


def _load_pair(cert_key: str, cert_pem: bytes, key_key: str, key_pem: bytes) -> tuple[Any, Any, list[Any]]:
    """(certificate, key, chain) as pyOpenSSL objects, checked to belong together."""
    try:
        chain = [
            crypto.load_certificate(crypto.FILETYPE_PEM, block)
            for block in _pem_blocks(cert_pem, b"CERTIFICATE")
        ]
    except crypto.Error:
        raise ConfigError(cert_key, "not a valid PEM certificate") from None
    if not chain:
        raise ConfigError(cert_key, "no PEM certificate found")
    try:
        private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ConfigError(key_key, "not a valid PEM private key") from None
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(chain[0].to_cryptography())
        context.use_privatekey(private_key.to_cryptography_key())
        context.check_privatekey()
    except SSL.Error:
        raise ConfigError(key_key, f"does not match {cert_key.split(' (')[0]}") from None
    return chain[0], private_key, chain[1:]


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks = []
    start = data.find(begin)
    while start >= 0:
        stop = data.find(end, start)
        if stop < 0:
            break
        blocks.append(data[start : stop + len(end)] + b"\n")
        start = data.find(begin, stop)
    return blocks


def _names(certificate: Any) -> tuple[str, ...]:
    """DNS names and IP addresses of a certificate: subjectAltName, else the CN."""
    cert = certificate.to_cryptography()
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in alt.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [a.value.lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return tuple(names)


def _ca_certificates(key: str, path: str) -> list[Any]:
    blocks = _pem_blocks(_read(key, path), b"CERTIFICATE")
    if not blocks:
        raise ConfigError(key, f"no PEM certificate in {path!r}")
    try:
        return [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise ConfigError(key, f"{path!r} is not a valid PEM CA bundle") from None


def _alpn_selector(acceptable: tuple[bytes, ...]) -> Any:
    """An ALPN select callback that never aborts a handshake."""

    def select(connection: Any, offered: list[bytes]) -> Any:
        for protocol in acceptable:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _install_alpn(options: Any, acceptable: tuple[bytes, ...]) -> Any:
    """Replace Twisted's ALPN callback on the options' (cached) context; returns options."""
    options.getContext().set_alpn_select_callback(_alpn_selector(acceptable))
    return options


def _options(wss: WssConfig, certificate: Any, private_key: Any, chain: list[Any],
             alpn: tuple[bytes, ...]) -> ssl.CertificateOptions:
    kwargs: dict[str, Any] = {}
    if wss.ca_list:
        kwargs["caCerts"] = [c.original for c in _ca_certificates("[wss] ca_list", wss.ca_list)]
        kwargs["verify"] = True
        kwargs["requireCertificate"] = wss.require_client_cert
    options = ssl.CertificateOptions(
        privateKey=private_key,
        certificate=certificate,
        extraCertChain=chain,
        raiseMinimumTo=_VERSIONS[wss.min_tls_version],
        enableSessions=False,
        **kwargs,
    )
    return _install_alpn(options, alpn)


def _directory_identities(wss: WssConfig, alpn: tuple[bytes, ...]) -> list[_Identity]:
    key = "[wss] certificate"
    files = sorted(
        name for name in os.listdir(wss.certificate) if name.lower().endswith(_PEM_SUFFIXES)
    )
    identities = []
    for name in files:
        path = os.path.join(wss.certificate, name)
        pem = _read(key, path)
        if b"PRIVATE KEY-----" not in pem:
            continue  # a CA or chain file: not an identity of its own
        cert, private_key, chain = _load_pair(f"{key} ({name})", pem, f"{key} ({name})", pem)
        identities.append(_Identity(_names(cert), _options(wss, cert, private_key, chain, alpn)))
    if not identities:
        raise ConfigError(key, f"no PEM file with a certificate and its key in {wss.certificate!r}")
    return identities


def _matches(server_name: str, names: tuple[str, ...]) -> bool:
    if server_name in names:
        return True
    head, _, rest = server_name.partition(".")
    return bool(rest) and f"*.{rest}" in names


@implementer(IOpenSSLContextFactory)
class _SniOptions:
    """A context factory choosing the identity by the client's server_name."""

    def __init__(self, identities: list[_Identity]) -> None:
        self.identities = identities
        self._default = identities[0].options.getContext()
        self._default.set_tlsext_servername_callback(self._pick)

    def _pick(self, connection: Any) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        server_name = raw.decode("ascii", "replace").lower()
        for identity in self.identities:
            if _matches(server_name, identity.names):
                connection.set_context(identity.options.getContext())
                return

    def getContext(self) -> Any:
        return self._default


def server_tls_options(wss: WssConfig, alpn: tuple[bytes, ...] = WSS_ALPN) -> Any:
    """A context factory for TLS listeners, built from the files and checked now."""
    if os.path.isdir(wss.certificate):
        return _SniOptions(_directory_identities(wss, alpn))
    cert, private_key, chain = _load_pair(
        "[wss] certificate", _read("[wss] certificate", wss.certificate),
        "[wss] private_key", _read("[wss] private_key", wss.private_key),
    )
    return _options(wss, cert, private_key, chain, alpn)


def certificate_summary(options: Any) -> list[dict[str, Any]]:
    """Names and expiry of the certificate(s) a server context factory serves."""
    identities = options.identities if isinstance(options, _SniOptions) else [options]
    summary = []
    for identity in identities:
        opts = identity.options if isinstance(identity, _Identity) else identity
        cert = opts.certificate.to_cryptography()
        summary.append({
            "subject": cert.subject.rfc4514_string(),
            "names": list(_names(opts.certificate)),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "serial": format(cert.serial_number, "x"),
        })
    return summary


@implementer(IOpenSSLContextFactory)
class ReloadableServerTls:
    """What a TLS listener holds: the current context, swapped by ``reload``.

    Twisted asks ``getContext()`` for every new connection, so a reload changes
    the certificate of new handshakes only; open connections keep their TLS
    session untouched.
    """

    def __init__(self, wss: WssConfig, alpn: tuple[bytes, ...]) -> None:
        self._wss = wss
        self._alpn = alpn
        self.current = server_tls_options(wss, alpn)

    def getContext(self) -> Any:
        return self.current.getContext()

    def reload(self) -> list[dict[str, Any]]:
        """Re-read the files; a ConfigError leaves the current context in place."""
        self.current = server_tls_options(self._wss, self._alpn)
        return certificate_summary(self.current)


def _client_identity(cert_path: str, key_path: str) -> Any:
    """``[client] certificate`` / ``private_key`` as a Twisted PrivateCertificate, checked."""
    key_name = "[client] private_key" if key_path else "[client] certificate"
    cert, private_key, _ = _load_pair(
        "[client] certificate", _read("[client] certificate", cert_path),
        key_name, _read(key_name, key_path or cert_path),
    )
    return ssl.PrivateCertificate.fromCertificateAndKeyPair(
        ssl.Certificate(cert), ssl.KeyPair(private_key))


def client_tls_options(
    hostname: str,
    ca_list: str = "",
    verify: bool = True,
    client_cert: str = "",
    client_key: str = "",
    min_tls_version: str = "1.2",
    alpn: tuple[bytes, ...] = (),
) -> Any:
    """Options for dialling a TLS server: certificate and host name checked, SNI sent.

    ``alpn`` is offered in the ClientHello (``WSS_ALPN`` for wss, as browsers do).
    """
    minimum = _VERSIONS[min_tls_version]
    offered = list(alpn) or None
    client_certificate = None
    if client_cert:
        client_certificate = _client_identity(client_cert, client_key)
    if not verify:
        return ssl.CertificateOptions(raiseMinimumTo=minimum, verify=False, acceptableProtocols=offered, **(
            {"privateKey": client_certificate.privateKey.original, "certificate": client_certificate.original}
            if client_certificate else {}
        ))
    trust = ssl.platformTrust()
    if ca_list:
        certificates = _ca_certificates("[wss] ca_list", ca_list)
        trust = ssl.trustRootFromCertificates(certificates)
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust, clientCertificate=client_certificate, acceptableProtocols=offered,
        extraCertificateOptions={"raiseMinimumTo": minimum},
    )


def _subject_issuer(certificate: Any) -> tuple[str | None, str | None]:
    if certificate is None:
        return None, None
    if not isinstance(certificate, x509.Certificate):
        certificate = certificate.to_cryptography()
    return certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string()


def tls_details(transport: Any) -> dict[str, Any] | None:
    """Protocol, cipher and the certificates' subjects and issuers, for HEP tracing."""
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return None
    try:
        peer_subject, peer_issuer = _subject_issuer(connection.get_peer_certificate(as_cryptography=True))
        local_subject, local_issuer = _subject_issuer(connection.get_certificate(as_cryptography=True))
        return {
            "protocol": connection.get_protocol_version_name(),
            "cipher": connection.get_cipher_name(),
            "peer_subject": peer_subject,
            "peer_issuer": peer_issuer,
            "local_subject": local_subject,
            "local_issuer": local_issuer,
        }
    except SSL.Error:
        return None
