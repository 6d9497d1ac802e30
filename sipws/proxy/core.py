"""The edge proxy's decisions (issue 4): pure, in memory, clock-driven.

``EdgeProxy`` sits between WebSocket flows (browser connections, each with a
positive connection id) and the SIP core.  Its inputs are messages received
from a flow or from a SIP-side socket, and flow closures; its outputs are
calls on a ``ProxyOutput``: send these bytes on that WebSocket connection, or
to that SIP Target (which the I/O layer resolves per RFC 3263).

It is transaction-stateful for every request except ACK (RFC 3261 §16):
a server transaction on the leg a request came from, a client transaction on
the leg it goes to.  Retransmissions happen only on UDP legs; WebSocket,
TCP and TLS legs are reliable.  See docs/relay.md for the behaviour in the
RFCs' terms and what the SIP core must support.

This module holds the entry points, dispatch and what every direction
shares; each job has its own module: toward_core.py (flow → core),
toward_flow.py (core → flow or ws:// server), ack_cancel.py, responses.py,
branches.py (our branches and tags), legs.py (flows, inbound legs, the
per-request context and senders), rejects.py (error answers).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

from twisted.logger import Logger

from sipws.proxy.ack_cancel import AckCancelMixin
from sipws.proxy.branches import OUR_BRANCH, BranchesMixin
from sipws.proxy.contact_alias import AliasAddress, ContactAliases
from sipws.proxy.errors import ProxyError
from sipws.proxy.flows import FlowTokens
from sipws.proxy.hop_failures import HopReportLimiter, sent_request_key, silent_hop_line
from sipws.proxy.legs import (
    DIALOG_METHODS, FLOW_VIA_PARAM, Flow, Inbound, ProxyOutput, _Context, _make_client, _ToFlow,
    _ToTarget,
)
from sipws.proxy.rejects import _error_response_from_raw, _reason_of, _Reject, _status_of
from sipws.proxy.responses import ResponsesMixin
from sipws.proxy.targets import (
    Address, LocalAddresses, NoRoute, Target, target_for_upstream,
)
from sipws.proxy.toward_core import TowardCoreMixin
from sipws.proxy.toward_flow import TowardFlowMixin
from sipws.proxy.transaction import (
    ClientTransaction, Clock, ServerTransaction, Timers, TransactionTable, client_key,
)
from sipws.sip import (
    Limits, Request, SipError, SipParseError, is_keepalive, make_response, parse,
)
from sipws.sip.headers import Via

log = Logger(namespace="sipws.proxy.core")

#: Open transactions beyond which new requests are refused 503 (a flood of
#: distinct requests must not grow memory without bound).
MAX_TRANSACTIONS = 200_000
#: Log one line per this many requests refused for overload.
OVERLOAD_LOG_EVERY = 1000
#: Distinct SIP-side sources whose Inbound is kept (the core is a few addresses).
INBOUND_CACHE_SIZE = 1024


class EdgeProxy(TowardCoreMixin, TowardFlowMixin, AckCancelMixin, ResponsesMixin,
                BranchesMixin):
    """RFC 7118 / RFC 5626 edge proxy decisions; see the module docstring."""

    def __init__(self, sip_config, clock: Clock, tokens: FlowTokens, output: ProxyOutput,
                 local: Optional[LocalAddresses] = None,
                 limits: Optional[Limits] = None) -> None:
        self.config = sip_config
        self.clock = clock
        self.tokens = tokens
        self.output = output
        self.local = local if local is not None else LocalAddresses.from_config(sip_config)
        self.limits = limits if limits is not None else Limits.from_config(sip_config)
        self.upstream = target_for_upstream(sip_config.upstream)
        self.upstream_uri = sip_config.upstream
        self.table = TransactionTable(clock, Timers.from_config(sip_config))
        self.table.resend = self._resend
        self.max_transactions = MAX_TRANSACTIONS
        self.flows: dict[int, Flow] = {}
        #: "next hop does not answer" lines, at most one per next hop per minute.
        self.silent_hops = HopReportLimiter()
        #: Live client transactions per flow they were sent to.
        self._toward_flow: dict[int, set[ClientTransaction]] = {}
        #: Event counters (for stats and tests): "relayed_requests", "430" ...
        self.counters: Counter[str] = Counter()
        # Keyed hashes for branches and tags: not guessable from outside.
        self._hash_key = tokens.subkey(b"branch")
        #: Contact aliases (docs/relay.md, "Cores that ignore Path"); restoring
        #: an aliased Request-URI works in either mode, rewriting only in alias mode.
        self.aliases = ContactAliases(tokens, self.local)
        self.alias_mode = getattr(sip_config, "contact_mode", "path") == "alias"
        self._last_loop: Optional[tuple[Request, str]] = None
        #: Route value -> (ours, its user part if ours, next hop or the NoRoute args).
        self._routes: dict[str, tuple] = {}
        #: (transport, source) -> Inbound, for the SIP side.
        self._inbound: dict[tuple[str, tuple[str, int]], Inbound] = {}
        #: SIP-side response address -> the sender its server transactions share.
        self._responders: dict[Target, _ToTarget] = {}

    # ================================================================ inputs

    def receive_from_flow(self, conn_id: int, data: bytes, source: tuple[str, int],
                          transport: str = "ws", identity: str = "") -> None:
        """One WebSocket message from connection ``conn_id`` (a SIP client); ``identity``
        is the one the connection is bound to ([auth] bind_identity), "" for none."""
        flow = self.flows.get(conn_id)
        if flow is None or flow.source != source or flow.transport != transport:
            flow = self.flows[conn_id] = Flow(conn_id, transport, source, self.tokens.make(conn_id),
                                             Inbound(conn_id, transport, source), identity=identity)
        self._receive(data, flow.inbound)

    def receive_from_sip(self, data: bytes, source: tuple[str, int], transport: str) -> None:
        """One SIP message from the core side (a UDP datagram, a framed TCP/TLS
        message, or a message on a WebSocket connection sipws dialled to a
        ws:// upstream, with transport ws/wss)."""
        key = (transport, source)
        inbound = self._inbound.get(key)
        if inbound is None:
            if len(self._inbound) >= INBOUND_CACHE_SIZE:
                self._inbound.clear()
            inbound = self._inbound[key] = Inbound(None, transport.lower(), source)
        self._receive(data, inbound)

    def unreachable(self, quoted: bytes, reason: str) -> bool:
        """An ICMP error quoting the head of a request we sent: fail that transaction now.

        The client gets 503 at once (RFC 3261 §18.4 treats ICMP errors as
        transport errors) instead of 408 after timer B/F.  False when the
        quote names no live client transaction (a response, an ACK, a
        retransmission of something already answered).
        """
        key = sent_request_key(quoted)
        if key is None:
            return False
        txn = self.table.clients.get(client_key(*key))
        if txn is None or txn.terminated:
            return False
        self.counters["icmp_failed"] += 1
        txn.transport_error(reason)
        return True

    def _next_hop_silent(self, ctx: "_Context") -> None:
        """Timer B/F fired toward a SIP-side next hop: say so, at a bounded rate."""
        if ctx.next_hop is None:
            return
        held_back = self.silent_hops.due(ctx.next_hop, self.clock.seconds())
        if held_back is not None:
            log.warn("{line}", line=silent_hop_line(ctx.next_hop, held_back, self.silent_hops.interval))

    def flow_closed(self, conn_id: int) -> None:
        """Connection ``conn_id`` is gone: forget it, fail what waits on it (430)."""
        self.flows.pop(conn_id, None)
        for txn in list(self._toward_flow.get(conn_id, ())):
            ctx = txn.context
            if ctx is None:
                # Ended (and released) while an earlier one in this loop failed: its 430
                # went out through that one, or it had already finished.
                continue
            ctx.error_status = 430
            txn.transport_error("connection closed")

    def _track(self, txn: ClientTransaction, conn_id: int) -> None:
        """Index client transactions by the flow they go to (for flow_closed)."""
        self._toward_flow.setdefault(conn_id, set()).add(txn)
        txn.on_terminated = self._untrack

    def _untrack(self, done: ClientTransaction) -> None:
        ctx = done.context
        conn_id = ctx.out_flow if ctx is not None else None
        waiting = self._toward_flow.get(conn_id) if conn_id is not None else None
        if waiting is None:  # context already dropped: look the transaction up
            for conn_id, waiting in self._toward_flow.items():
                if done in waiting:
                    break
            else:
                return
        waiting.discard(done)
        if not waiting:
            del self._toward_flow[conn_id]

    # ============================================================ dispatching

    def _receive(self, data: bytes, inbound: Inbound) -> None:
        if is_keepalive(data):
            return
        try:
            msg = parse(data, self.limits)
        except SipParseError as exc:
            self._malformed(data, exc, inbound)
            return
        try:
            if isinstance(msg, Request):
                self._on_request(msg, inbound)
            else:
                self._on_response(msg, inbound)
        except (SipError, ProxyError, ValueError) as exc:
            # A value the parser let through that a later step refused.
            self.counters["bad_input"] += 1
            log.warn("bad SIP message from {src}: {err}", src=inbound.describe(), err=exc)
            if isinstance(msg, Request) and msg.method != "ACK":
                self._respond_stateless(msg, inbound, _status_of(exc), _reason_of(exc))

    def _malformed(self, data: bytes, exc: SipParseError, inbound: Inbound) -> None:
        """400 (or the parser's status) to a malformed request; drop the rest."""
        self.counters["malformed"] += 1
        log.warn("malformed SIP message from {src}: {reason}", src=inbound.describe(),
                 reason=exc.reason)
        response = _error_response_from_raw(data, exc.status, _reason_of(exc))
        if response is not None:
            self._send_back_raw(response, inbound)

    # ============================================================== requests

    def _on_request(self, req: Request, inbound: Inbound) -> None:
        server = self.table.find_server(req)
        if server is not None:
            server.receive_request(req)  # retransmission, or ACK of a non-2xx
            self.counters["absorbed"] += 1
            return
        if req.method == "ACK":
            self._forward_ack(req, inbound)
            return
        if len(self.table) >= self.max_transactions:
            self.counters["overload"] += 1
            if self.counters["overload"] % OVERLOAD_LOG_EVERY == 1:
                log.warn("{count} open transactions: refusing new requests with 503 "
                         "({refused} so far; latest from {src})", count=len(self.table),
                         refused=self.counters["overload"], src=inbound.describe())
            self._respond_stateless(req, inbound, 503, "Overloaded")
            return
        server = self.table.server(req, self._response_sender(req, inbound), inbound.reliable)
        self.counters["requests"] += 1
        try:
            if req.method == "CANCEL":
                self._on_cancel(req, server, inbound)
                return
            self._check_hops_and_loops(req)
            if req.method == "INVITE":
                server.respond(make_response(req, 100))
            if inbound.conn_id is not None:
                self._forward_from_flow(req, server, inbound)
            else:
                self._forward_from_core(req, server, inbound)
        except _Reject as reject:
            self._reject(server, reject.status, reject.reason, inbound)
        except NoRoute as exc:
            self._reject(server, exc.status, exc.reason, inbound)
        except (SipError, ProxyError, ValueError) as exc:
            # A value the parser let through that a later step refused (a tel:
            # Request-URI where a flow token was expected ...): answer through the
            # server transaction, which then ends like any other.
            self.counters["bad_input"] += 1
            log.warn("{method} from {src} refused: {err}", method=req.method,
                     src=inbound.describe(), err=exc)
            self._reject(server, _status_of(exc), _reason_of(exc), inbound)

    def _check_hops_and_loops(self, req: Request) -> None:
        """Max-Forwards (RFC 3261 §16.3 step 3) and loop detection (step 4)."""
        if req.max_forwards == 0:
            if req.method == "OPTIONS" and self._is_for_me(req):
                raise _Reject(200)
            raise _Reject(483)
        if req.via_count >= self.limits.max_vias:
            # With our Via it would carry max_vias + 1: the answer (every Via comes back
            # in it) would be refused by our own parser, and the sender left to time out.
            raise _Reject(483)
        if not req.header_contains("via", OUR_BRANCH):
            return  # none of our branches: no loop, and no Via needs parsing
        loop = self._loop_part(req)
        for via in req.vias:
            branch = via.branch or ""
            if (branch.startswith(OUR_BRANCH) and branch.endswith("." + loop)
                    and self.local.is_my_sent_by(via.host, via.port, via.transport)):
                raise _Reject(482)

    def _is_for_me(self, req: Request) -> bool:
        try:
            uri = req.request_uri
        except SipParseError:
            return False
        return uri.user is None and self.local.is_mine(uri) and not req.has("route")

    def _reject(self, server: ServerTransaction, status: int, reason: Optional[str],
                inbound: Inbound) -> None:
        self.counters[str(status)] += 1
        if status >= 300:
            log.warn("{method} from {src} answered {status} {reason}",
                     method=server.request.method, src=inbound.describe(), status=status,
                     reason=reason or "")
        server.respond(make_response(server.request, status, reason,
                                     to_tag=self._to_tag(server.request)))

    # -- shared

    def _set_received(self, out: Request, inbound: Inbound) -> None:
        """received / rport on the sender's Via (RFC 3261 §18.2.1, RFC 3581)."""
        via = out.top_via
        host, port = inbound.source
        received = host if via.host != host.lower() else None
        rport = port if via.rport is not None else None
        if received is not None or rport is not None:
            out.set_top_via_received(received, rport)

    def _via(self, req: Request, transport: str, addr: Address, inbound: Inbound,
             token: Optional[str]) -> Via:
        """Our Via, as an object: pushed, it is the message's parsed top Via
        (the client transaction reads its branch without parsing it back)."""
        params: dict[str, Optional[str]] = {"branch": self._branch(req, inbound)}
        if token:
            params[FLOW_VIA_PARAM] = token
        return Via(transport, addr.host, addr.port, params)

    def _start_client(self, server: ServerTransaction, out: Request, target: Optional[Target],
                      inbound: Inbound, out_flow: Optional[int],
                      alias_to: Optional[AliasAddress] = None,
                      restore_contacts: bool = False) -> None:
        ctx = _Context(self, server)
        server.context = ctx
        ctx.out_flow = out_flow
        ctx.alias_to = alias_to
        ctx.restore_contacts = restore_contacts
        if out_flow is not None:
            ctx.error_status = 430
            reliable = True
        else:
            assert target is not None
            ctx.target = target
            ctx.next_hop = f"upstream {self.upstream_uri}" if target is self.upstream else str(target)
            reliable = target.reliable
        self.counters["relayed_requests"] += 1
        ctx.client = self._new_client(ctx, out, reliable)
        if out_flow is not None and not ctx.client.terminated:
            self._track(ctx.client, out_flow)

    def _new_client(self, ctx: _Context, out: Request, reliable: bool) -> ClientTransaction:
        return _make_client(self.table, out, reliable, ctx, ctx)

    def _response_sender(self, req: Request, inbound: Inbound) -> Callable[[bytes], None]:
        """Where the server transaction's responses go (RFC 3261 §18.2.2); one
        sender per flow and per SIP-side address, shared by its transactions."""
        if inbound.conn_id is not None:
            flow = self.flows.get(inbound.conn_id)
            if flow is None:
                return _ToFlow(self, inbound.conn_id)
            if flow.responder is None:
                flow.responder = _ToFlow(self, inbound.conn_id)
            return flow.responder
        target = self._response_target(req, inbound)
        sender = self._responders.get(target)
        if sender is None:
            if len(self._responders) >= INBOUND_CACHE_SIZE:
                self._responders.clear()
            sender = self._responders[target] = _ToTarget(self.output, target)
        return sender

    def _resend(self, where: tuple, data: bytes) -> None:
        """A lingering server transaction's response again (see _ToFlow.where)."""
        if where[0] == "flow":
            self.output.send_to_flow(where[1], data)
        else:
            _, host, port, transport = where
            self.output.send_to_target(Target("sip", host, port, transport), data, None)

    def _response_target(self, req: Request, inbound: Inbound) -> Target:
        via = req.top_via
        host, port = inbound.source
        if inbound.reliable or via.rport is not None:
            return Target("sip", host, port, inbound.transport)
        return Target("sip", host, via.port, inbound.transport)

    def _respond_stateless(self, req: Request, inbound: Inbound, status: int,
                           reason: Optional[str]) -> None:
        try:
            response = make_response(req, status, reason, to_tag=self._to_tag(req))
        except (SipError, ValueError):
            return
        self._response_sender(req, inbound)(bytes(response))

    def _send_back_raw(self, data: bytes, inbound: Inbound) -> None:
        if inbound.conn_id is not None:
            self.output.send_to_flow(inbound.conn_id, data)
        else:
            host, port = inbound.source
            self.output.send_to_target(Target("sip", host, port, inbound.transport), data, None)

__all__ = ["EdgeProxy", "Flow", "Inbound", "ProxyOutput", "DIALOG_METHODS", "FLOW_VIA_PARAM"]


__all__ = ["EdgeProxy", "Flow", "Inbound", "ProxyOutput", "DIALOG_METHODS", "FLOW_VIA_PARAM"]
