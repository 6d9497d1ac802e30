"""MSRP (RFC 4975) relay core for WebSocket clients (RFC 4976, RFC 7977).

Pure code: bytes and events in, actions out.  No reactor, no sockets; time
comes from an injected clock (anything with ``seconds()``, e.g.
``twisted.internet.task.Clock`` or the reactor).  The adapters in
``sipws/transport/`` own every connection and carry out the actions.

Public API (stable; a change is announced here and in the commit message)
=========================================================================

Errors (``sipws.msrp.errors``)
    ``MsrpError(SipwsError)``: root of the package.
    ``MsrpParseError(MsrpError, ValueError)``: ``.reason`` (short, loggable),
    ``.status`` (400, or 413 for over-limit input).  The only exception
    ``parse``, ``parse_uri`` and ``MessageSplitter.feed`` raise on bad input.

Limits (``sipws.msrp.limits``)
    ``Limits(max_message_size, max_header_bytes, max_headers, max_path_uris,
    max_uri_length)`` frozen; ``Limits.for_chunk_size(n)`` gives a
    ``max_message_size`` of ``n`` + header allowance (use it for the
    WebSocket message limit of msrp connections); ``DEFAULT_LIMITS``.
    Constants: ``MAX_CHUNK_SIZE`` (64 KiB default chunk body),
    ``MAX_HEADER_BYTES``, ``MAX_HEADERS``, ``MAX_PATH_URIS``,
    ``MAX_URI_LENGTH``, ``MAX_NON_SEND_BODY`` (10240, RFC 4975 §7.1).

URIs (``sipws.msrp.uri``)
    ``parse_uri(text: str) -> MsrpUri``; ``MsrpUri(scheme, user, host, port,
    session_id, transport, params)`` frozen; ``str(uri)`` formats it back;
    ``==``/``hash`` follow RFC 4975 §6.1 (scheme, host and transport
    case-insensitive; port as given; session-id case-sensitive; userinfo and
    parameters ignored).  ``uri.peer -> PeerKey(host, port, tls)``: where a
    TCP/TLS next hop named by this URI is reached (port 2855 when absent,
    ``tls`` for msrps).  ``PeerKey`` is frozen and hashable.

Messages (``sipws.msrp.message``)
    ``parse(data: bytes, limits=DEFAULT_LIMITS) -> MsrpRequest | MsrpResponse``
    for exactly one complete message (one WebSocket message = one chunk,
    RFC 7977 §5).  Both classes share: ``tid``, ``headers`` (ordered list of
    ``(name, value)`` as written), ``header(name)`` (case-insensitive, first
    value or None), ``to_path``/``from_path`` (tuples of ``MsrpUri``),
    ``message_id``, ``byte_range`` (``(start, end|None, total|None)``, end
    and total None for ``*``) , ``success_report``/``failure_report``
    (lower-case, RFC defaults "no"/"yes" when absent), ``content_type``,
    ``expires`` (int or None), ``use_path`` (tuple or None),
    ``status_header`` (a REPORT's Status: ``(namespace, code, text)`` or
    None), ``body`` (bytes), ``flag`` (``"$"``, ``"+"``
    or ``"#"``), ``is_request``.  ``MsrpRequest.method``;
    ``MsrpResponse.status`` (int) and ``.comment`` (str, may be "").
    ``bytes(msg)`` serializes; an unedited message gives back its input
    bytes exactly.  ``msg.with_paths(to_path, from_path)`` returns a copy
    whose To-Path/From-Path lines are replaced, every other byte kept.
    ``make_response(request, status, comment=None, extra=())`` builds the
    hop's response (To-Path = first From-Path URI of the request, From-Path =
    first To-Path URI, RFC 4975 §7.2); ``extra`` is ``(name, value)`` pairs.
    ``MessageSplitter(limits).feed(data: bytes) -> list[bytes]``: complete
    messages from a TCP/TLS byte stream (each still to be ``parse``\\ d, or
    given to the relay as bytes); ``.buffered``; raises ``MsrpParseError``
    when the stream cannot be framed (over ``max_message_size``, bad start
    line): the adapter then closes the connection, the position is lost.

The relay (``sipws.msrp.relay``)
    ``RelaySettings(host, port=2855, tls=True, require_auth=False,
    max_chunk_size=MAX_CHUNK_SIZE, default_expires=1800, min_expires=60,
    max_expires=3600, transaction_timeout=30.0, max_backlog=1 MiB,
    max_sessions=10000, hmac_secrets=(), hmac_algorithm="sha256")`` frozen
    (``hmac_secrets``: with ``require_auth``, AUTH from a connection without
    a handshake identity is challenged with Digest, see ``sipws.msrp.digest``); ``settings.limits`` is the parser
    ``Limits`` the relay applies (give the same to ``MessageSplitter`` and
    use its ``max_message_size`` as the WebSocket message limit); ``host:port`` is the MSRP address sipws
    advertises in the ``Use-Path`` it gives (``msrps://HOST:PORT/SESSION;tcp``,
    or ``msrp://`` when ``tls`` is false), i.e. where TCP/TLS peers reach it.

    ``MsrpRelay(clock, settings, token=secrets.token_urlsafe, nonce_key=None)``
    (``nonce_key``: the Digest nonce HMAC key, random when None); every method
    below returns a ``list`` of actions, to be carried out in order:

    - ``connection_opened(conn_id, kind, identity=None, peer=None)``: ``kind``
      is ``"ws"`` (a WebSocket client that negotiated "msrp") or ``"peer"``
      (a TCP/TLS MSRP connection, inbound or outbound).  ``identity``: the
      authenticated handshake identity of a ws client, or None.  ``peer``:
      for an outbound peer connection, the ``PeerKey`` it was opened for
      (the adapter then sends there every ``SendToPeer`` for that key).
    - ``received(conn_id, data: bytes)``: one complete MSRP message (a WS
      message, or one item from ``MessageSplitter.feed``).  The relay parses
      it; malformed input never raises.
    - ``connection_closed(conn_id)``: the connection is gone (either side).
    - ``peer_unreachable(peer: PeerKey, reason: str)``: connecting or
      sending to ``peer`` failed; what was waiting for it fails (481).
    - ``buffered(target: int | PeerKey, nbytes: int)``: the adapter's
      current output backlog toward a connection id or peer (optional; call
      it when it changes notably and when it drains to 0).  A SEND toward a
      target whose backlog exceeds ``max_backlog`` is refused with 413.
    - ``tick()``: call about once a second; expires transactions (408) and
      sessions.
    - ``counters``: ``dict[str, int]`` (``msrp.auth_ok``, ``msrp.auth_refused``,
      ``msrp.sends_relayed``, ``msrp.reports_relayed``, ``msrp.requests_relayed``,
      ``msrp.responses_relayed``, ``msrp.reports_generated``,
      ``msrp.bytes_relayed``, ``msrp.malformed``, ``msrp.errors_4xx``,
      ``msrp.timeouts``, ``msrp.backlog_refused``, ``msrp.sessions``,
      ``msrp.pending``), ``dump() -> list[dict]`` (one dict per session:
      ``session``, ``uri``, ``conn_id``, ``identity``, ``expires_in``,
      ``bytes_relayed``, ``chunks_relayed``), ``sessions_of(conn_id)``.

    Actions (frozen dataclasses, ``sipws.msrp.relay``):

    - ``SendToConnection(conn_id: int, data: bytes)``: write one MSRP message
      on that connection (one WebSocket message on a ws connection).
    - ``SendToPeer(peer: PeerKey, data: bytes)``: write it toward a TCP/TLS
      peer: reuse the open connection for ``peer`` or open one (TLS verified
      when ``peer.tls``); report failure with ``peer_unreachable``.
    - ``CloseConnection(conn_id: int, code: int, reason: str)``: close it;
      ``code`` is a WebSocket close code (ignored on TCP).
    - ``Log(level: str, text: str)``: ``level`` in debug/info/warning.

    Relay rules and statuses: docs/msrp-relay-rules.md.

Digest on AUTH (``sipws.msrp.digest``, RFC 4976 §5.1)
    ``DigestAuth(clock, hmac_secrets, hmac_algorithm="sha256", realm="sipws",
    key=None)``: ``.challenge(binding, stale=False)`` → WWW-Authenticate
    ``(name, value)`` pairs (MD5, SHA-256); ``.verify(value, binding,
    relay_uri, method="AUTH")`` → ``Verdict(status 200|401|403, reason,
    identity, stale, auth_info, counts)``, never raises.
    ``parse_authorization(value)`` raises ``DigestError(MsrpError)``.
    Constants ``REALM``, ``NONCE_LIFETIME`` (300 s), ``ALGORITHMS``.
"""

from sipws.msrp.errors import MsrpError, MsrpParseError
from sipws.msrp.limits import (
    DEFAULT_LIMITS, MAX_CHUNK_SIZE, MAX_HEADER_BYTES, MAX_HEADERS, MAX_NON_SEND_BODY,
    MAX_PATH_URIS, MAX_URI_LENGTH, Limits,
)
from sipws.msrp.message import (
    MessageSplitter, MsrpMessage, MsrpRequest, MsrpResponse, make_response, parse,
)
from sipws.msrp.relay import (
    CloseConnection, Log, MsrpRelay, RelaySettings, SendToConnection, SendToPeer,
)
from sipws.msrp.uri import MsrpUri, PeerKey, parse_uri

__all__ = [
    "CloseConnection", "DEFAULT_LIMITS", "Limits", "Log", "MAX_CHUNK_SIZE",
    "MAX_HEADERS", "MAX_HEADER_BYTES", "MAX_NON_SEND_BODY", "MAX_PATH_URIS",
    "MAX_URI_LENGTH", "MessageSplitter", "MsrpError", "MsrpMessage", "MsrpParseError",
    "MsrpRelay", "MsrpRequest", "MsrpResponse", "MsrpUri", "PeerKey", "RelaySettings",
    "SendToConnection", "SendToPeer", "make_response", "parse", "parse_uri",
]
