"""What a TLS failure is called in the log, and whose doing it was."""

from __future__ import annotations

from OpenSSL import SSL

from sipws.transport.tls_failure import describe_tls_failure


def ssl_error(*reasons: str) -> SSL.Error:
    return SSL.Error([("SSL routines", "", reason) for reason in reasons])


def test_alert_sent_by_the_peer_is_the_peers_doing():
    failure = describe_tls_failure(ssl_error("tlsv1 alert unknown ca"))
    assert failure.side == "remote"
    assert failure.text == "TLS: the peer sent alert 'unknown ca'"


def test_alert_chromium_sends_for_an_untrusted_certificate_is_the_peers():
    """Seen with Chromium 156 and a certificate it does not trust (OpenSSL 3's wording)."""
    failure = describe_tls_failure(ssl_error("tls alert certificate unknown"))
    assert failure == type(failure)("TLS: the peer sent alert 'certificate unknown'", "remote")


def test_sslv3_and_tls13_alert_prefixes_are_recognised():
    assert describe_tls_failure(ssl_error("sslv3 alert bad certificate")).text.endswith("'bad certificate'")
    assert describe_tls_failure(ssl_error("tls13 alert certificate required")).side == "remote"


def test_local_refusal_names_the_cause_and_the_key():
    failure = describe_tls_failure(ssl_error("unsupported protocol"))
    assert failure.side == "local"
    assert "[wss] min_tls_version" in failure.text
    assert "(unsupported protocol)" in failure.text


def test_plain_http_to_tls_port_is_the_peers_doing():
    failure = describe_tls_failure(ssl_error("http request"))
    assert failure.side == "remote"
    assert "plain HTTP" in failure.text


def test_unknown_reason_is_reported_verbatim_as_local():
    failure = describe_tls_failure(ssl_error("some new openssl reason"))
    assert failure == type(failure)("TLS: failed here: some new openssl reason", "local")


def test_alert_anywhere_in_the_stack_wins_over_a_generic_first_entry():
    failure = describe_tls_failure(ssl_error("ssl3_read_bytes", "tlsv1 alert internal error"))
    assert failure.side == "remote"
    assert "internal error" in failure.text


def test_empty_error_has_a_text():
    assert describe_tls_failure(SSL.Error([])).text == "TLS error (no details from OpenSSL)"
    assert describe_tls_failure(SSL.Error()).side == "local"
