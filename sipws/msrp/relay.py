"""MSRP relay decisions (RFC 4976) for WebSocket clients (RFC 7977).

A state machine fed with connection events; each call returns the actions
the adapters carry out.  The rules, statuses and limits are described in
docs/msrp-relay-rules.md; the public API in ``sipws.msrp``.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from sipws.msrp.digest import DigestAuth, parse_authorization
from sipws.msrp.errors import MsrpError, MsrpParseError
from sipws.msrp.limits import MAX_CHUNK_SIZE, MAX_NON_SEND_BODY, Limits
from sipws.msrp.message import COMMENTS, MsrpRequest, MsrpResponse, build, make_response, parse
from sipws.msrp.uri import MsrpUri, PeerKey, format_path, parse_uri

#: Sessions one WebSocket connection may hold; an AUTH beyond it replaces
#: the connection's oldest session (a client refreshing its Use-Path).
MAX_SESSIONS_PER_CONNECTION = 8
#: Transactions awaited at once (relay-wide); the oldest is forgotten beyond.
MAX_PENDING = 10000
#: Backlog figures remembered (one per connection or peer).
MAX_BACKLOG_ENTRIES = 4096
#: Malformed messages a connection may send before it is closed.
MAX_MALFORMED_PER_CONNECTION = 10
#: Failed Digest attempts (wrong response, forged nonce, unreadable
#: Authorization) a connection may make; beyond them its AUTHs get 403.
MAX_AUTH_FAILURES = 3
#: Nonces per connection whose last nonce count is remembered (replay check).
MAX_TRACKED_NONCES = 4
#: WebSocket close code used when a connection is closed for bad MSRP.
CLOSE_PROTOCOL_ERROR = 1002
#: Bytes of a malformed message looked at to answer it with a 400.
_SALVAGE_BYTES = 4096
_SALVAGE_START_RE = re.compile(rb"MSRP ([A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31}) ([A-Z]{1,32})\r\n")
_SALVAGE_PATH_RE = {
    "to": re.compile(rb"\r\nTo-Path:[ \t]*([^ \t\r\n]{1,1024})", re.IGNORECASE),
    "from": re.compile(rb"\r\nFrom-Path:[ \t]*([^ \t\r\n]{1,1024})", re.IGNORECASE),
}

Target = Union[int, PeerKey]


@dataclass(frozen=True)
class SendToConnection:
    """Write one MSRP message on connection ``conn_id``."""

    conn_id: int
    data: bytes


@dataclass(frozen=True)
class SendToPeer:
    """Write one MSRP message toward a TCP/TLS peer (reuse or open a connection)."""

    peer: PeerKey
    data: bytes


@dataclass(frozen=True)
class CloseConnection:
    """Close ``conn_id``; ``code`` is a WebSocket close code (ignored on TCP)."""

    conn_id: int
    code: int
    reason: str


@dataclass(frozen=True)
class Log:
    level: str
    text: str


Action = Union[SendToConnection, SendToPeer, CloseConnection, Log]


@dataclass(frozen=True)
class RelaySettings:
    """What the relay needs from ``[msrp]``; ``host:port`` is the MSRP address
    sipws advertises in Use-Path (where TCP/TLS peers reach it)."""

    host: str
    port: int = 2855
    tls: bool = True
    require_auth: bool = False
    max_chunk_size: int = MAX_CHUNK_SIZE
    default_expires: int = 1800
    min_expires: int = 60
    max_expires: int = 3600
    transaction_timeout: float = 30.0
    max_backlog: int = 1 << 20
    max_sessions: int = 10000
    #: ``[auth] hmac_secrets`` / ``hmac_algorithm``: with ``require_auth``, a
    #: connection without a handshake identity is challenged with Digest
    #: (RFC 4976 §5.1) whose passwords are the TURN-REST credentials.
    hmac_secrets: tuple = ()
    hmac_algorithm: str = "sha256"

    @property
    def limits(self) -> Limits:
        return Limits.for_chunk_size(max(self.max_chunk_size, MAX_NON_SEND_BODY))


@dataclass
class _Conn:
    kind: str
    identity: Optional[str]
    peer: Optional[PeerKey]
    sessions: list = field(default_factory=list)
    malformed: int = 0
    auth_failures: int = 0
    digest_nc: dict = field(default_factory=dict)  # nonce -> highest nc accepted


@dataclass
class _Session:
    sid: str
    uri: MsrpUri
    conn_id: int
    identity: Optional[str]
    client_uri: str
    expires_at: float
    bytes_relayed: int = 0
    chunks_relayed: int = 0


@dataclass
class _Pending:
    tid: str
    dest: Target
    prev_conn: int
    deadline: float
    # SEND: failure reported with a REPORT toward the sender; others: response relayed.
    report: bool
    back_path: tuple          # From-Path of the request as received (previous hop first)
    our_uri: MsrpUri          # the relay URI the previous hop addressed
    message_id: Optional[str] = None
    byte_range: Optional[str] = None
    # Failure-Report: partial: the next hop answers only errors, so silence is no failure.
    silent_ok: bool = False


class MsrpRelay:
    """The relay: see the ``sipws.msrp`` docstring for the calls and actions."""

    def __init__(self, clock, settings: RelaySettings,
                 token: Callable[[], str] = lambda: secrets.token_urlsafe(16),
                 nonce_key: Optional[bytes] = None) -> None:
        self._clock = clock
        self._digest = DigestAuth(clock, settings.hmac_secrets, settings.hmac_algorithm,
                                  key=nonce_key)
        self._settings = settings
        self._limits = settings.limits
        self._token = token
        self._conns: dict[int, _Conn] = {}
        self._sessions: dict[str, _Session] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._backlog: dict[Target, int] = {}
        host = settings.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self._host = host
        self.counters: dict[str, int] = {name: 0 for name in (
            "msrp.auth_ok", "msrp.auth_refused", "msrp.sends_relayed", "msrp.reports_relayed",
            "msrp.requests_relayed", "msrp.responses_relayed", "msrp.reports_generated",
            "msrp.bytes_relayed", "msrp.malformed", "msrp.errors_4xx", "msrp.timeouts",
            "msrp.backlog_refused", "msrp.responses_unmatched", "msrp.pending_evicted",
            "msrp.sessions", "msrp.pending")}

    # -- events ------------------------------------------------------------
    def connection_opened(self, conn_id: int, kind: str, identity: Optional[str] = None,
                          peer: Optional[PeerKey] = None) -> list[Action]:
        if kind not in ("ws", "peer"):
            raise ValueError(f"connection kind must be 'ws' or 'peer', got {kind!r}")
        self._conns[conn_id] = _Conn(kind, identity, peer)
        return []

    def connection_closed(self, conn_id: int) -> list[Action]:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        for sid in conn.sessions:
            self._sessions.pop(sid, None)
        self._backlog.pop(conn_id, None)
        out: list[Action] = []
        for tid, p in list(self._pending.items()):
            if p.prev_conn == conn_id:
                del self._pending[tid]  # nobody left to tell
            elif p.dest == conn_id or (conn.peer is not None and p.dest == conn.peer):
                del self._pending[tid]
                out += self._fail_pending(p, 481, "next hop connection closed")
        self._count_state()
        return out

    def peer_unreachable(self, peer: PeerKey, reason: str) -> list[Action]:
        out: list[Action] = [Log("warning", f"msrp: peer {peer} unreachable: {reason}")]
        self._backlog.pop(peer, None)
        for tid, p in list(self._pending.items()):
            if p.dest == peer:
                del self._pending[tid]
                out += self._fail_pending(p, 481, f"next hop unreachable: {reason}")
        self._count_state()
        return out

    def buffered(self, target: Target, nbytes: int) -> list[Action]:
        if nbytes <= 0:
            self._backlog.pop(target, None)
        elif target in self._backlog or len(self._backlog) < MAX_BACKLOG_ENTRIES:
            self._backlog[target] = nbytes
        return []

    def tick(self) -> list[Action]:
        now = self._clock.seconds()
        out: list[Action] = []
        for tid, p in list(self._pending.items()):
            if p.deadline <= now:
                del self._pending[tid]
                if p.silent_ok:
                    continue
                self.counters["msrp.timeouts"] += 1
                out += self._fail_pending(p, 408, "no response from the next hop")
        for sid, s in list(self._sessions.items()):
            if s.expires_at <= now:
                self._drop_session(sid)
        self._count_state()
        return out

    def received(self, conn_id: int, data: bytes) -> list[Action]:
        conn = self._conns.get(conn_id)
        if conn is None:
            return [Log("warning", f"msrp: message on unknown connection {conn_id} ignored")]
        try:
            msg = parse(data, self._limits)
        except MsrpParseError as e:
            return self._malformed(conn_id, conn, data, e)
        if isinstance(msg, MsrpResponse):
            out = self._on_response(conn_id, conn, msg)
        elif msg.method == "AUTH":
            out = self._on_auth(conn_id, conn, msg)
        else:
            out = self._on_request(conn_id, conn, msg)
        self._count_state()
        return out

    # -- reading -----------------------------------------------------------
    def sessions_of(self, conn_id: int) -> list[str]:
        conn = self._conns.get(conn_id)
        return list(conn.sessions) if conn else []

    def dump(self) -> list[dict]:
        now = self._clock.seconds()
        return [{"session": s.sid, "uri": str(s.uri), "conn_id": s.conn_id,
                 "identity": s.identity, "client_uri": s.client_uri,
                 "expires_in": max(0, int(s.expires_at - now)),
                 "bytes_relayed": s.bytes_relayed, "chunks_relayed": s.chunks_relayed}
                for s in self._sessions.values()]

    # -- AUTH (RFC 4976 §5, §6.3) --------------------------------------------
    def _on_auth(self, conn_id: int, conn: _Conn, req: MsrpRequest) -> list[Action]:
        s = self._settings
        if conn.kind != "ws":
            return self._refuse(conn_id, req, 403, "AUTH is for WebSocket clients")
        if len(req.to_path) != 1:
            return self._refuse(conn_id, req, 403, "AUTH through this relay is not forwarded")
        identity = conn.identity
        auth_info = None
        if identity is None and s.require_auth:
            if not self._digest.enabled:
                self.counters["msrp.auth_refused"] += 1
                return self._refuse(conn_id, req, 403, "connect with credentials to use this relay")
            verdict = self._check_digest(conn_id, conn, req)
            if not isinstance(verdict, tuple):
                return verdict
            identity, auth_info = verdict
        expires = req.expires if req.expires is not None else s.default_expires
        if expires < s.min_expires:
            return self._refuse(conn_id, req, 423, None, [("Min-Expires", str(s.min_expires))])
        expires = min(expires, s.max_expires)
        if len(conn.sessions) >= MAX_SESSIONS_PER_CONNECTION:
            self._drop_session(conn.sessions[0])
        if len(self._sessions) >= s.max_sessions:
            self.counters["msrp.auth_refused"] += 1
            return self._refuse(conn_id, req, 403, "relay full")
        sid = self._token()
        while sid in self._sessions:
            sid = self._token()
        uri = MsrpUri("msrps" if s.tls else "msrp", self._host, s.port, sid, "tcp")
        self._sessions[sid] = _Session(sid, uri, conn_id, identity, str(req.from_path[0]),
                                       self._clock.seconds() + expires)
        conn.sessions.append(sid)
        self.counters["msrp.auth_ok"] += 1
        extra = [("Use-Path", str(uri)), ("Expires", str(expires))]
        if auth_info is not None:
            extra.append(("Authentication-Info", auth_info))
        data = make_response(req, 200, None, extra)
        return [SendToConnection(conn_id, data),
                Log("info", f"msrp: connection {conn_id} ({identity or 'anonymous'}) "
                            f"got session {uri} for {expires}s")]

    def _check_digest(self, conn_id: int, conn: _Conn, req: MsrpRequest):
        """RFC 4976 §5.1/§6.3: challenge an AUTH without credentials (401),
        verify one with ``Authorization``.  Returns ``(identity,
        Authentication-Info value)`` on success, else the actions.  Every AUTH
        of such a connection (a refresh too) carries credentials: the identity
        is the session's, not the connection's."""
        binding = str(conn_id).encode("ascii")
        if conn.auth_failures >= MAX_AUTH_FAILURES:
            self.counters["msrp.auth_refused"] += 1
            return self._refuse(conn_id, req, 403, "too many failed Digest attempts")
        value = req.header("Authorization")
        if value is None:
            return self._refuse(conn_id, req, 401, "Digest challenge",
                                self._digest.challenge(binding))
        verdict = self._digest.verify(value, binding, req.to_path[0])
        if verdict.status == 200:
            nonce_nc = _nonce_nc(value)
            if nonce_nc is not None:
                nonce, nc = nonce_nc
                if nc <= conn.digest_nc.get(nonce, 0):
                    verdict = type(verdict)(401, "nonce count replayed")
                else:
                    if nonce not in conn.digest_nc and len(conn.digest_nc) >= MAX_TRACKED_NONCES:
                        conn.digest_nc.pop(next(iter(conn.digest_nc)))
                    conn.digest_nc[nonce] = nc
        if verdict.status == 200:
            conn.auth_failures = 0
            return verdict.identity, verdict.auth_info
        if verdict.status == 403:
            self.counters["msrp.auth_refused"] += 1
            return self._refuse(conn_id, req, 403, verdict.reason)
        if verdict.counts:
            conn.auth_failures += 1
            if conn.auth_failures >= MAX_AUTH_FAILURES:
                self.counters["msrp.auth_refused"] += 1
                return self._refuse(conn_id, req, 403, f"{verdict.reason}; too many failed "
                                                       f"Digest attempts")
        return self._refuse(conn_id, req, 401, verdict.reason,
                            self._digest.challenge(binding, stale=verdict.stale))

    # -- SEND, REPORT and other requests (RFC 4976 §6.4) ----------------------
    def _on_request(self, conn_id: int, conn: _Conn, req: MsrpRequest) -> list[Action]:
        limit = self._settings.max_chunk_size if req.method == "SEND" else MAX_NON_SEND_BODY
        if len(req.body) > limit:
            return self._refuse(conn_id, req, 413, f"chunk of {len(req.body)} bytes over {limit}")
        first = req.to_path[0]
        sess = self._session_for(first)
        if sess is None:
            return self._refuse(conn_id, req, 481, f"no session {first}")
        to_path, from_path = req.to_path[1:], (first,) + req.from_path
        dest: Target
        if conn_id == sess.conn_id and to_path:
            # The session's client sends out: to the next URI, which may be
            # another session of this relay (two clients of this instance).
            nxt = to_path[0]
            if self._is_ours(nxt):
                other = self._session_for(nxt)
                if other is None:
                    return self._refuse(conn_id, req, 481, f"no session {nxt}")
                to_path, from_path = to_path[1:], (nxt,) + from_path
                dest, target_sess = other.conn_id, other
            elif nxt.transport.lower() == "ws":
                return self._refuse(conn_id, req, 481, f"{nxt} is not a client of this relay")
            else:
                dest, target_sess = nxt.peer, None
        else:
            # Toward the session's client (from a peer or another client).
            dest, target_sess = sess.conn_id, sess
        if not to_path:
            return self._refuse(conn_id, req, 403, "To-Path ends at this relay")
        if req.method == "SEND" and self._backlog.get(dest, 0) > self._settings.max_backlog:
            self.counters["msrp.backlog_refused"] += 1
            return self._refuse(conn_id, req, 413, f"next hop {dest} backed up")
        data = bytes(req.with_paths(to_path, from_path))
        out: list[Action] = [SendToConnection(dest, data) if isinstance(dest, int)
                             else SendToPeer(dest, data)]
        for s in (sess, target_sess):
            if s is not None:
                s.bytes_relayed += len(req.body)
                s.chunks_relayed += 1
        self.counters["msrp.bytes_relayed"] += len(req.body)
        if req.method == "REPORT":
            self.counters["msrp.reports_relayed"] += 1
            return out
        if req.method == "SEND":
            self.counters["msrp.sends_relayed"] += 1
            fr = req.failure_report
            if fr == "yes":
                out.append(SendToConnection(conn_id, make_response(req, 200)))
            if fr != "no" and req.message_id is not None:
                self._await(_Pending(req.tid, dest, conn_id, self._deadline(), True, req.from_path,
                                     first, req.message_id, req.header("Byte-Range"),
                                     silent_ok=fr == "partial"))
            return out
        self.counters["msrp.requests_relayed"] += 1
        self._await(_Pending(req.tid, dest, conn_id, self._deadline(), False, req.from_path, first))
        return out

    # -- responses from the next hop (RFC 4976 §6.4.3) ------------------------
    def _on_response(self, conn_id: int, conn: _Conn, resp: MsrpResponse) -> list[Action]:
        p = self._pending.get(resp.tid)
        if p is None or not (p.dest == conn_id or p.dest == conn.peer or (
                conn.kind == "peer" and conn.peer is None and isinstance(p.dest, PeerKey))):
            self.counters["msrp.responses_unmatched"] += 1
            return [Log("debug", f"msrp: response {resp.tid} {resp.status} on connection "
                                 f"{conn_id} matches no transaction")]
        del self._pending[resp.tid]
        if p.report:
            if resp.status == 200:
                return []
            return self._fail_pending(p, resp.status, resp.comment)
        # Responses to non-SEND requests travel back along the reverse path:
        # this relay drops out of To-Path and joins From-Path, like requests.
        self.counters["msrp.responses_relayed"] += 1
        if p.prev_conn not in self._conns:
            return []
        back = resp.with_paths(p.back_path, (p.our_uri,) + resp.from_path)
        return [SendToConnection(p.prev_conn, bytes(back))]

    # -- helpers -------------------------------------------------------------
    def _fail_pending(self, p: _Pending, status: int, comment: str) -> list[Action]:
        """The next hop failed a transaction: tell the previous hop."""
        if p.prev_conn not in self._conns:
            return []
        if status >= 400:
            self.counters["msrp.errors_4xx"] += 1
        if not p.report:
            return [SendToConnection(p.prev_conn, self._response(
                p.tid, p.back_path, p.our_uri, status, comment))]
        # RFC 4976 §6.4.1: the failure goes back as a REPORT to the sender.
        tid = self._new_tid()
        comment = comment or COMMENTS.get(status, "")
        headers = [("To-Path", format_path(p.back_path)), ("From-Path", str(p.our_uri)),
                   ("Message-ID", p.message_id)]
        if p.byte_range is not None:
            headers.append(("Byte-Range", p.byte_range))
        headers.append(("Status", f"000 {status}" + (f" {_clean(comment)}" if comment else "")))
        self.counters["msrp.reports_generated"] += 1
        return [SendToConnection(p.prev_conn, build(f"MSRP {tid} REPORT", tid, headers))]

    def _response(self, tid: str, to: tuple, frm: MsrpUri, status: int, comment: str) -> bytes:
        comment = _clean(comment) if comment else COMMENTS.get(status, "")
        start = f"MSRP {tid} {status}" + (f" {comment}" if comment else "")
        return build(start, tid, [("To-Path", format_path(to)), ("From-Path", str(frm))])

    def _refuse(self, conn_id: int, req: MsrpRequest, status: int, why: Optional[str],
                extra=()) -> list[Action]:
        """Answer ``req`` with an error of this relay's own (when it takes one)."""
        self.counters["msrp.errors_4xx"] += 1
        out: list[Action] = [Log("info", f"msrp: {req.method} {req.tid} on connection "
                                         f"{conn_id}: {status} {why or ''}".rstrip())]
        if req.method == "REPORT" or (req.method == "SEND" and req.failure_report == "no"):
            return out
        out.append(SendToConnection(conn_id, make_response(req, status, None, extra)))
        return out

    def _malformed(self, conn_id: int, conn: _Conn, data, e: MsrpParseError) -> list[Action]:
        self.counters["msrp.malformed"] += 1
        conn.malformed += 1
        out: list[Action] = [Log("warning", f"msrp: malformed message on connection "
                                            f"{conn_id}: {e.reason}")]
        reply = _salvage_reply(bytes(data[:_SALVAGE_BYTES]) if isinstance(
            data, (bytes, bytearray, memoryview)) else b"", e.status)
        if reply is not None:
            self.counters["msrp.errors_4xx"] += 1
            out.append(SendToConnection(conn_id, reply))
        if conn.malformed > MAX_MALFORMED_PER_CONNECTION:
            out.append(CloseConnection(conn_id, CLOSE_PROTOCOL_ERROR,
                                       "too many malformed MSRP messages"))
        return out

    def _session_for(self, uri: MsrpUri) -> Optional[_Session]:
        sess = self._sessions.get(uri.session_id) if uri.session_id else None
        if sess is None or sess.uri != uri:
            return None
        if sess.expires_at <= self._clock.seconds():
            self._drop_session(sess.sid)
            return None
        return sess

    def _is_ours(self, uri: MsrpUri) -> bool:
        s = self._settings
        return (uri.scheme.lower() == ("msrps" if s.tls else "msrp")
                and uri.host.lower() == self._host.lower() and uri.port == s.port)

    def _drop_session(self, sid: str) -> None:
        sess = self._sessions.pop(sid, None)
        if sess is not None:
            conn = self._conns.get(sess.conn_id)
            if conn is not None and sid in conn.sessions:
                conn.sessions.remove(sid)

    def _await(self, p: _Pending) -> None:
        tid = p.tid
        self._pending.pop(tid, None)
        if len(self._pending) >= MAX_PENDING:
            self._pending.popitem(last=False)
            self.counters["msrp.pending_evicted"] += 1
        self._pending[tid] = p

    def _deadline(self) -> float:
        return self._clock.seconds() + self._settings.transaction_timeout

    def _new_tid(self) -> str:
        return secrets.token_hex(8)

    def _count_state(self) -> None:
        self.counters["msrp.sessions"] = len(self._sessions)
        self.counters["msrp.pending"] = len(self._pending)


def _nonce_nc(value: str) -> Optional[tuple[str, int]]:
    """(nonce, nc) of an Authorization value already verified."""
    try:
        p = parse_authorization(value)
        return p["nonce"], int(p["nc"], 16)
    except (MsrpError, KeyError, ValueError):
        return None


def _clean(text: str) -> str:
    """A comment or reason safe to write on one line."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)[:128]


def _salvage_reply(data: bytes, status: int) -> Optional[bytes]:
    """A 400 (or 413) for a malformed request whose start line and paths can
    still be read; None when they cannot (or it is a REPORT or a response)."""
    m = _SALVAGE_START_RE.match(data)
    if m is None or m.group(2) == b"REPORT":
        return None
    paths = {}
    for key, rx in _SALVAGE_PATH_RE.items():
        pm = rx.search(data)
        if pm is None:
            return None
        try:
            paths[key] = parse_uri(pm.group(1).decode("ascii"))
        except (MsrpParseError, UnicodeDecodeError):
            return None
    tid = m.group(1).decode("ascii")
    comment = COMMENTS.get(status, "")
    return build(f"MSRP {tid} {status} {comment}".rstrip(), tid,
                 [("To-Path", str(paths["from"])), ("From-Path", str(paths["to"]))])
