"""The standalone core: a registrar and a forking proxy behind the edge proxy.

With ``[sip] upstream`` empty, sipws serves its WebSocket clients by itself.
The edge proxy (sipws.proxy.core) does not change: it relays every client
request, with its Path, Record-Route and flow tokens, to this core exactly as
it would to Kamailio, over a loopback TCP connection.  This core is what
Kamailio's registrar + ``lookup()`` + ``t_relay()`` would be:

- REGISTER → the registrar (sipws.registrar.register), answered here;
- OPTIONS without a user part for a served domain or our own address → 200;
- a request for an address of record → each live binding, in parallel
  (RFC 3261 §16.6), with the binding's Path as the route set, so the
  edge proxy receives it like any core request and finds the connection by
  its flow token; the first 2xx wins and the other branches get CANCEL; when
  every branch failed, the best response goes back (§16.7 step 6); unknown
  address of record → 404, known but nobody registered now → 480;
- a 430 (Flow Failed) from a branch removes that binding (RFC 5626 §5.3).

It never Record-Routes: in-dialog requests go edge → edge by the flow tokens
the edge put in Record-Route and never come here (a stray one gets 481).

Why a separate core on a socket rather than lookups inside the edge proxy:
the edge stays one code path for both modes, and with several worker
processes every worker can relay to the one standalone core (a client on one
worker calling a client on another works the way it works with Kamailio).

Pure: messages in, ``HomeOutput.send`` calls out, time from the injected clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Optional, Protocol

from twisted.logger import Logger

from sipws.proxy.transaction import (
    MAGIC_COOKIE, ClientTransaction, Clock, ServerTransaction, Timers, TransactionTable,
    build_cancel,
)
from sipws.registrar.bindings import Binding, BindingTable, aor_of
from sipws.registrar.register import Registrar
from sipws.sip import Request, Response, SipError, SipParseError, make_response, parse, parse_name_addr

log = Logger(namespace="sipws.registrar")

#: Addresses of record remembered as "known" after a REGISTER, to tell 480 from 404.
MAX_KNOWN_AORS = 100_000
#: Our branches: the magic cookie, a mark, a hash of the incoming key and the branch index.
BRANCH_MARK = "hp"
#: Methods this core answers with an Allow header (what it can route).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE, PRACK"
#: Response classes ranked for the best-response choice when every branch failed
#: (RFC 3261 §16.7 step 6: 6xx first, then the lowest class: 3xx, 4xx, 5xx).
_CLASS_RANK = {6: 0, 3: 1, 4: 2, 5: 3}

Address = tuple[str, int]
OnError = Optional[Callable[[str], None]]


class HomeOutput(Protocol):
    def send(self, address: Address, data: bytes, on_error: OnError) -> None:
        """Send to ``address`` on the hop's transport (a TCP connection to it is reused)."""


class _Branch:
    __slots__ = ("fork", "binding", "txn", "final", "response", "cancel_pending")

    def __init__(self, fork: "_Fork", binding: Binding) -> None:
        self.fork = fork
        self.binding = binding
        self.txn: Optional[ClientTransaction] = None
        self.final: Optional[int] = None
        self.response: Optional[Response] = None
        self.cancel_pending = False


class _Fork:
    """One proxied request: its server transaction and its branches."""

    __slots__ = ("server", "branches", "answered", "cancelled")

    def __init__(self, server: ServerTransaction) -> None:
        self.server = server
        self.branches: list[_Branch] = []
        self.answered = False  # a 2xx went back
        self.cancelled = False


class _BranchUser:
    __slots__ = ("proxy", "branch")

    def __init__(self, proxy: "HomeProxy", branch: _Branch) -> None:
        self.proxy = proxy
        self.branch = branch

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        self.proxy._branch_response(self.branch, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        if txn.is_invite and txn.provisional_seen:
            # Timer C: the callee may still be ringing; RFC 3261 §16.8 says CANCEL it.
            self.proxy._send_cancel(self.branch, timer_c=True)
        self.proxy._branch_failed(self.branch, 408)

    def on_transport_error(self, txn: ClientTransaction, reason: str) -> None:
        log.info("branch to {aor} failed: {reason}", aor=self.branch.binding.aor, reason=reason)
        self.proxy._branch_failed(self.branch, 503)


class _Ignore:
    """The user of our CANCELs: the INVITE's own response is what matters."""

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction) -> None:
        pass

    def on_transport_error(self, txn: ClientTransaction, reason: str) -> None:
        pass


_IGNORE = _Ignore()


class HomeProxy:
    """Registrar and forking proxy for standalone mode; see the module docstring."""

    def __init__(self, clock: Clock, output: HomeOutput, registrar: Registrar, own: Address,
                 own_hosts: frozenset[str] = frozenset(), timers: Timers = Timers(),
                 transport: str = "tcp") -> None:
        self.clock = clock
        self.output = output
        self.registrar = registrar
        self.bindings: BindingTable = registrar.table
        self.own = own
        self.own_sent_by = f"{own[0]}:{own[1]}"
        #: The loopback hop to the edge proxy: TCP (reliable) or UDP (retransmitted here).
        self.transport = transport.upper()
        self.reliable = transport.lower() != "udp"
        #: Hosts that name this instance (listen addresses, advertise): OPTIONS to them → 200.
        self.own_hosts = frozenset(h.lower() for h in own_hosts) | {own[0]}
        self.table = TransactionTable(clock, timers)
        self._known: OrderedDict[str, None] = OrderedDict()
        self.counters: dict[str, int] = {}

    # -- inputs ---------------------------------------------------------------------

    def receive(self, data: bytes, peer: Address) -> None:
        """One framed message from a stream connection whose far end is ``peer``."""
        try:
            msg = parse(data)
        except SipParseError as exc:
            log.warn("standalone core: malformed message from {host}:{port} dropped: {error}",
                     host=peer[0], port=peer[1], error=exc)
            self._count("malformed")
            return
        try:
            if isinstance(msg, Response):
                self._on_response(msg)
            else:
                self._on_request(msg, peer)
        except (SipError, ValueError) as exc:
            log.warn("standalone core: message from {host}:{port} dropped: {error}",
                     host=peer[0], port=peer[1], error=exc)
            self._count("dropped")

    def flow_closed(self, flow: str) -> int:
        """The WebSocket connection of ``flow`` is gone: its bindings go with it."""
        return self.bindings.remove_flow(flow)

    # -- requests ---------------------------------------------------------------------

    def _on_request(self, req: Request, peer: Address) -> None:
        existing = self.table.find_server(req)
        if existing is not None:
            existing.receive_request(req)  # retransmission, or ACK of our non-2xx
            return
        if req.method == "ACK":
            self._count("stray_ack")
            return
        server = self.table.server(req, self._sender(peer), self.reliable)
        if req.method == "CANCEL":
            self._on_cancel(req, server)
            return
        try:
            status = self._route(req, server)
        except (SipError, ValueError) as exc:
            # A value the parser let through that routing refused (a tel: Request-URI):
            # answer through the server transaction, so it ends like any other.
            log.warn("standalone core: {method} from {host}:{port} refused: {error}",
                     method=req.method, host=peer[0], port=peer[1], error=exc)
            self._count("refused")
            status = _status_of(exc)
        if status is not None:
            server.respond(self._answer(req, status))

    def _route(self, req: Request, server: ServerTransaction) -> Optional[int]:
        """Handle a new request; the status to answer with, or None when handled."""
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            return 483
        if req.method == "REGISTER":
            response = self.registrar.handle(req)
            if response.status == 200:
                self._remember(aor_of(req.to.uri))
            server.respond(response)
            return None
        if req.to.tag is not None:
            return 481  # in-dialog requests travel edge to edge; none is ours
        uri = req.request_uri
        if not uri.user:
            if req.method == "OPTIONS" and self._serves(uri.host):
                server.respond(self._answer(req, 200, (("Allow", ALLOW), ("Accept", "application/sdp"))))
                return None
            return 404  # no user part and not for us: nobody to deliver it to
        if not self._serves(uri.host):
            return 404
        aor = aor_of(uri)
        bindings = self.bindings.lookup(aor)
        if not bindings:
            return 480 if aor in self._known else 404
        if req.method == "INVITE":
            server.respond(self._answer(req, 100))
        self._fork(req, server, bindings)
        return None

    def _serves(self, host: str) -> bool:
        host = host.lower()
        return self.registrar.serves(host) or host in self.own_hosts

    def _remember(self, aor: str) -> None:
        known = self._known
        known[aor] = None
        known.move_to_end(aor)
        while len(known) > MAX_KNOWN_AORS:
            known.popitem(last=False)

    def _fork(self, req: Request, server: ServerTransaction, bindings: list[Binding]) -> None:
        fork = _Fork(server)
        server.context = fork
        # Every method forks in parallel (RFC 3261 §16.6 allows it; Kamailio's
        # lookup() + t_relay() does the same): a MESSAGE shows in every tab of
        # the user, and one tab whose connection died (430) does not lose it.
        self._count("forwarded")
        for binding in bindings:
            fork.branches.append(_Branch(fork, binding))
        for index, branch in enumerate(list(fork.branches)):
            if fork.answered or fork.cancelled:
                break
            self._start_branch(req, branch, index)

    def _start_branch(self, req: Request, branch: _Branch, index: int) -> None:
        binding = branch.binding
        out = req.copy()
        out.set_request_uri(binding.contact)
        if binding.path:
            out.push_header("Route", ", ".join(binding.path))
        out.decrement_max_forwards()
        out.push_via(f"SIP/2.0/{self.transport} {self.own_sent_by};branch={self._branch_id(req, index)}")
        try:
            next_hop = _first_hop(binding)
        except (SipParseError, ValueError) as exc:
            log.warn("binding of {aor} has an unusable Path ({error}); removed", aor=binding.aor, error=exc)
            if binding.flow:
                self.bindings.remove_flow(binding.flow)
            self._branch_failed(branch, 480)
            return
        def failed(reason: str) -> None:
            if branch.txn is not None:
                branch.txn.transport_error(reason)
            else:  # failed inside the first send, before the transaction was returned
                self._branch_failed(branch, 503)

        try:
            txn = self.table.client(out, lambda data: self.output.send(next_hop, data, failed),
                                    self.reliable, _BranchUser(self, branch))
        except SipError:
            self._branch_failed(branch, 500)
            return
        branch.txn = txn
        if branch.final is not None:
            txn.transport_error("send failed")  # end it now; the branch is already counted

    def _branch_id(self, req: Request, index: int) -> str:
        via = req.vias[0]
        seed = f"{via.branch}\x00{via.sent_by}\x00{req.call_id}\x00{req.cseq[0]}\x00{index}"
        return f"{MAGIC_COOKIE}{BRANCH_MARK}{hashlib.sha256(seed.encode('utf-8', 'surrogatepass')).hexdigest()[:20]}"

    def _sender(self, peer: Address) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            self.output.send(peer, data, None)
        return send

    def _answer(self, req: Request, status: int, extra: tuple[tuple[str, str], ...] = ()) -> Response:
        tag = hashlib.sha256(f"{req.call_id}\x00{req.from_.tag}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return make_response(req, status, to_tag=tag if status > 100 else None, extra_headers=extra)

    # -- CANCEL -------------------------------------------------------------------------

    def _on_cancel(self, req: Request, server: ServerTransaction) -> None:
        invite = self.table.find_invite_server(req)
        if invite is None:
            server.respond(self._answer(req, 481))
            return
        # RFC 3261 §16.10: a matching response context gets 200 at once; after
        # the INVITE's final response the CANCEL just has no effect (§9.2).
        server.respond(self._answer(req, 200))
        if invite.final_status is not None:
            return
        fork = invite.context
        if fork is None:
            invite.respond(self._answer(invite.request, 487))
            return
        fork.cancelled = True
        self._cancel_branches(fork, None)
        if all(branch.txn is None or branch.final is not None for branch in fork.branches):
            self._finish(fork)

    def _cancel_branches(self, fork: _Fork, keep: Optional[_Branch]) -> None:
        for branch in fork.branches:
            if branch is keep or branch.final is not None or branch.txn is None:
                continue
            if branch.txn.provisional_seen:
                self._send_cancel(branch)
            else:
                branch.cancel_pending = True  # RFC 3261 §9.1: wait for a provisional

    def _send_cancel(self, branch: _Branch, timer_c: bool = False) -> None:
        txn = branch.txn
        if txn is None or txn.request is None or (txn.terminated and not timer_c):
            return
        branch.cancel_pending = False
        cancel = build_cancel(txn.request)
        next_hop = _first_hop(branch.binding)
        try:
            self.table.client(cancel, lambda data: self.output.send(next_hop, data, None), self.reliable,
                              _IGNORE)
        except SipError:
            pass  # a CANCEL for this branch is already on its way

    # -- responses ----------------------------------------------------------------------

    def _on_response(self, resp: Response) -> None:
        txn = self.table.find_client(resp)
        if txn is None:
            self._count("late_responses")
            return
        txn.receive_response(resp)

    def _branch_response(self, branch: _Branch, resp: Response) -> None:
        fork = branch.fork
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if branch.cancel_pending or fork.cancelled:
                self._send_cancel(branch)
                return
            if not fork.answered:
                resp.pop_via()
                fork.server.respond(resp)
            return
        branch.final = status
        if status < 300:
            resp.pop_via()
            fork.answered = True
            fork.server.respond(resp)  # every 2xx goes back (RFC 3261 §16.7 step 5)
            if fork.server.is_invite:
                self._cancel_branches(fork, branch)
            return
        if status == 430 and branch.binding.flow:
            # RFC 5626 §5.3: the flow behind this binding is gone.
            self.bindings.remove_flow(branch.binding.flow)
        resp.pop_via()
        branch.response = resp
        if status >= 600 and fork.server.is_invite:
            self._cancel_branches(fork, branch)
        self._maybe_finish(fork)

    def _branch_failed(self, branch: _Branch, status: int) -> None:
        if branch.final is not None:
            return
        branch.final = status
        self._maybe_finish(branch.fork)

    def _maybe_finish(self, fork: _Fork) -> None:
        if fork.answered or any(b.final is None for b in fork.branches):
            return
        self._finish(fork)

    def _finish(self, fork: _Fork) -> None:
        server = fork.server
        if server.final_status is not None or server.terminated:
            return
        if fork.cancelled and not any(b.response is not None for b in fork.branches):
            server.respond(self._answer(server.request, 487))
            return
        best = min(fork.branches, key=_rank)
        status = best.final or 500
        if best.response is not None and status not in (430, 503):
            server.respond(best.response)
            return
        # 430 means the callee's connection is gone: temporarily unavailable to the
        # caller; a 503 from a branch must not travel upstream as 503 (§16.7 step 6).
        status = {430: 480, 503: 500, 408: 408}.get(status, status)
        server.respond(self._answer(server.request, status))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _status_of(exc: Exception) -> int:
    """The error status an exception carries (SipParseError: 416 for a non-SIP URI), else 400."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and 400 <= status <= 699 else 400


def _rank(branch: _Branch) -> tuple[int, int]:
    status = branch.final or 500
    return _CLASS_RANK.get(status // 100, 9), status


def _first_hop(binding: Binding) -> Address:
    """Where a request for ``binding`` goes first: its first Path entry, else its Contact."""
    text = binding.path[0] if binding.path else f"<{binding.contact}>"
    uri = parse_name_addr(text).uri
    if uri is None:
        raise ValueError("no SIP URI")
    return uri.host, uri.port or 5060
