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
"""

from __future__ import annotations

from hashlib import blake2b
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from twisted.logger import Logger

from sipws.proxy.contact_alias import (
    ALIASED_REQUESTS, ALIASED_RESPONSES, AliasAddress, ContactAliases,
)
from sipws.proxy.errors import BadFlowToken, ProxyError
from sipws.proxy.flows import FlowTokens
from sipws.proxy.hop_failures import HopReportLimiter, sent_request_key, silent_hop_line
from sipws.proxy.targets import (
    WS_TRANSPORTS, Address, LocalAddresses, NoRoute, Target, is_invalid_host,
    target_for_upstream, target_for_uri,
)
from sipws.proxy.transaction import (
    CALLING, MAGIC_COOKIE, ClientTransaction, Clock, ServerTransaction,
    Timers, TransactionTable, build_cancel, client_key,
)
from sipws.sip import (
    Limits, Request, Response, SipError, SipParseError, is_keepalive, make_response,
    parse,
)
from sipws.sip.headers import Via, parse_name_addr

log = Logger(namespace="sipws.proxy.core")

#: Marks branches we generate (after the magic cookie), for responses and loops.
BRANCH_MARK = "sw"
#: Hex digits of the transaction part and of the loop-detection part of a branch.
BRANCH_TX_HEX = 20
BRANCH_LOOP_HEX = 10
#: Hex digits of the To-tags we put on responses we generate.
TO_TAG_HEX = 12
#: Bytes of each keyed digest (branches and tags use a prefix of its hex form).
DIGEST_BYTES = 16
#: Via parameter carrying the flow token of the client a request came from, so
#: that responses forwarded statelessly (2xx retransmissions) find the flow.
FLOW_VIA_PARAM = "flow"
#: Requests that may create a dialog and get our Record-Routes.
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: States of a context's CANCEL.
CANCEL_NONE, CANCEL_PENDING, CANCEL_SENT = "none", "pending", "sent"
#: Longest reason phrase we copy from a parse error into a 400.
MAX_REASON = 100
#: Open transactions beyond which new requests are refused 503 (a flood of
#: distinct requests must not grow memory without bound).
MAX_TRANSACTIONS = 200_000
#: Log one line per this many requests refused for overload.
OVERLOAD_LOG_EVERY = 1000
#: Distinct Route values whose meaning (ours? which flow token? which next hop?)
#: is remembered: a dialog's route set repeats on every in-dialog request.
ROUTE_CACHE_SIZE = 4096
#: Distinct SIP-side sources whose Inbound is kept (the core is a few addresses).
INBOUND_CACHE_SIZE = 1024
#: Marks one of our branches in a Via (loop detection looks only at those).
OUR_BRANCH = "z9hG4bK" + BRANCH_MARK
#: Header fields copied from a malformed request into our error response.
_ERROR_COPY = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
               "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}


class ProxyOutput(Protocol):
    """What the I/O layer does for the core."""

    def send_to_flow(self, conn_id: int, data: bytes) -> bool:
        """Send one SIP message on WebSocket connection ``conn_id``; False if it is gone."""

    def send_to_target(self, target: Target, data: bytes,
                       on_error: Optional[Callable[[str], None]]) -> None:
        """Resolve ``target`` (RFC 3263) and send; ``on_error(reason)`` on failure
        (DNS, ICMP unreachable, connection refused, TLS), possibly later."""


@dataclass
class Flow:
    """A WebSocket connection the proxy has heard from."""

    conn_id: int
    transport: str  # ws or wss
    source: tuple[str, int]
    token: str  # its flow token, computed once
    inbound: Optional["Inbound"] = None  # where its messages come from, built once
    responder: Optional["_ToFlow"] = None  # its server transactions' sender, built once


@dataclass(frozen=True)
class Inbound:
    """Where a request came from; responses go back the same way."""

    conn_id: Optional[int]  # a flow, or None for the SIP side
    transport: str  # ws, wss, udp, tcp, tls
    source: tuple[str, int]

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def describe(self) -> str:
        host, port = self.source
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"conn {self.conn_id} ({where})" if self.conn_id else f"{self.transport}:{where}"


class _Context:
    """One proxied request: its server transaction and its client transaction.

    Also the client transaction's sender (``ctx(data)`` sends toward the flow
    or the SIP-side target) and its user (``on_response`` ...): one object
    per relayed request instead of a closure, a late-binding shim and a user.
    """

    __slots__ = ("proxy", "server", "client", "cancel", "out_flow", "target", "error_status",
                 "next_hop", "alias_to", "restore_contacts")

    def __init__(self, proxy: "EdgeProxy", server: ServerTransaction) -> None:
        self.proxy = proxy
        self.server = server
        self.client: Optional[ClientTransaction] = None
        #: CANCEL toward the callee: none, pending (no provisional yet), sent.
        self.cancel = CANCEL_NONE
        self.out_flow: Optional[int] = None
        #: The SIP-side Target (None toward a flow).
        self.target: Optional[Target] = None
        self.error_status = 503
        #: The SIP-side next hop, for the "does not answer" warning (None toward a flow).
        self.next_hop: Optional[str] = None
        #: Alias mode: where the Contacts of the flow's responses are aliased to.
        self.alias_to: Optional[AliasAddress] = None
        #: Alias mode: a client's REGISTER, whose 2xx gets its Contacts back.
        self.restore_contacts = False

    def __call__(self, data: bytes) -> None:
        """Send for the client transaction (its ``send``)."""
        proxy = self.proxy
        conn_id = self.out_flow
        if conn_id is not None:
            if conn_id not in proxy.flows or not proxy.output.send_to_flow(conn_id, data):
                proxy.flows.pop(conn_id, None)
                assert self.client is not None
                self.client.transport_error("connection gone")
        else:
            assert self.client is not None and self.target is not None
            proxy.output.send_to_target(self.target, data, self.client.transport_error)

    # -- the client transaction's results (ClientUser) → the server transaction

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        self.proxy._relay_response(self, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.proxy._next_hop_silent(self)
        self.proxy._client_failed(self, 408, "timeout")

    def on_transport_error(self, txn: ClientTransaction, reason: str) -> None:
        self.proxy._client_failed(self, self.error_status, f"transport error: {reason}")


class _ToFlow:
    """A server transaction's sender toward the flow its request came from."""

    __slots__ = ("proxy", "conn_id")

    def __init__(self, proxy: "EdgeProxy", conn_id: int) -> None:
        self.proxy = proxy
        self.conn_id = conn_id

    def __call__(self, data: bytes) -> None:
        if not self.proxy.output.send_to_flow(self.conn_id, data):
            self.proxy.counters["response_to_gone_flow"] += 1


class _ToTarget:
    """A server transaction's sender toward a SIP-side address (RFC 3261 §18.2.2)."""

    __slots__ = ("output", "target")

    def __init__(self, output: ProxyOutput, target: Target) -> None:
        self.output = output
        self.target = target

    def __call__(self, data: bytes) -> None:
        self.output.send_to_target(self.target, data, None)

class _Reject(ProxyError):
    """Answer the request with this status (internal control flow)."""

    def __init__(self, status: int, reason: Optional[str] = None) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.status = status
        self.reason = reason


class EdgeProxy:
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
                          transport: str = "ws") -> None:
        """One WebSocket message from connection ``conn_id`` (a SIP client)."""
        flow = self.flows.get(conn_id)
        if flow is None or flow.source != source or flow.transport != transport:
            flow = self.flows[conn_id] = Flow(conn_id, transport, source, self.tokens.make(conn_id),
                                             Inbound(conn_id, transport, source))
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
            txn.context.error_status = 430
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
            if (branch.startswith(MAGIC_COOKIE + BRANCH_MARK) and branch.endswith("." + loop)
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

    # -- from a WebSocket client toward the core

    def _forward_from_flow(self, req: Request, server: ServerTransaction,
                           inbound: Inbound) -> None:
        out = req.copy()
        other = self._hairpin_token(self._pop_my_routes(out), inbound.conn_id)
        if other is not None:
            if req.to.tag is None:
                # Only a dialog's route set may lead straight to another client;
                # an initial request must meet the core (its policy, its auth).
                raise _Reject(403, "Flow Route Outside A Dialog")
            self._forward_to_flow(req, out, other, server, inbound)
            return
        target = self._next_hop_from_flow(out)
        token = self.flows[inbound.conn_id].token
        addr = self.local.address_for(target.transport)
        host, port = inbound.source
        out.set_top_via_received(host, port)
        out.decrement_max_forwards()
        out.push_via(self._via(req, addr.transport, addr, inbound, token))
        core_transport = "ws" if target.is_ws else target.transport
        if req.method in DIALOG_METHODS:
            # RFC 7118 §8.2: the ws-side entry below, the core-facing one on top.
            out.push_record_route(f"<sip:{token}@{addr.host_port};transport=ws;lr>")
            out.push_record_route(f"<sip:{addr.host_port};transport={core_transport};lr>")
        elif req.method == "REGISTER":
            # Also in alias mode: harmless to a core that ignores it, and one
            # that honours it routes through us either way.
            ob = ";ob" if _uses_outbound(req) else ""
            out.push_path(f"<sip:{token}@{addr.host_port};transport={core_transport};lr{ob}>")
            if "path" not in [s.lower() for s in req.supported]:
                out.add_header("Supported", "path")
        restore = False
        if self.alias_mode and req.method in ALIASED_REQUESTS:
            self.aliases.rewrite_contacts(out, token, AliasAddress(addr.host_port, core_transport))
            restore = req.method == "REGISTER"
        self._start_client(server, out, target, inbound, out_flow=None, restore_contacts=restore)

    def _route(self, value: str) -> tuple:
        """What a Route value means to us, parsed once per distinct value:
        (ours, user part when ours, Target or None, NoRoute args or None)."""
        facts = self._routes.get(value)
        if facts is None:
            uri = parse_name_addr(value, self.limits).uri
            if uri is None:
                facts = (False, None, None, ("Route is not a SIP URI", 416))
            else:
                mine = self.local.is_mine(uri)
                try:
                    target, problem = target_for_uri(uri), None
                except NoRoute as exc:
                    target, problem = None, (exc.reason, exc.status)
                facts = (mine, uri.user if mine else None, target, problem)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[value] = facts
        return facts

    def _next_hop_from_flow(self, out: Request) -> Target:
        first = out.get("route")
        if first is not None:
            _, _, target, problem = self._route(first)
            if target is None:
                raise NoRoute(*problem)
        else:
            target = self.upstream
        if not target.dialable:
            raise NoRoute("next hop is a WebSocket client's .invalid address", 404)
        return target

    # -- from the core toward a WebSocket client

    def _forward_from_core(self, req: Request, server: ServerTransaction,
                           inbound: Inbound) -> None:
        out = req.copy()
        users = self._pop_my_routes(out)
        # No Route of ours: the Request-URI may be a Contact alias (a core that
        # ignores Path sends to the Contact it stored).
        token = users[0] if users else self._restore_alias(out, inbound)
        if token is None:
            uri = out.request_uri
            mine = self.local.is_mine(uri)
            if mine and uri.user:
                token = uri.user
            elif mine and req.method == "OPTIONS" and not out.has("route"):
                raise _Reject(200)  # a keep-alive probe addressed to us
            else:
                target = self._ws_next_hop_from_core(out, inbound, mine)
                if target is None:
                    raise _Reject(404, "No Flow Token")
                self._forward_to_ws_server(req, out, target, server, inbound)
                return
        self._forward_to_flow(req, out, token, server, inbound)

    def _ws_next_hop_from_core(self, out: Request, inbound: Inbound, ruri_mine: bool
                               ) -> Optional[Target]:
        """The client role (issue 5): a SIP-side request without flow token whose
        next hop is a ``transport=ws`` URI (Route, else Request-URI), or, when
        ``[sip] upstream`` is a ws:// URL, any such request from a non-ws leg."""
        first = out.get("route")
        routes = first is not None
        if routes:
            _, _, target, problem = self._route(first)
            if problem is not None and problem[1] != 416:
                raise NoRoute(*problem)
        elif not ruri_mine:
            target = target_for_uri(out.request_uri)
        else:
            target = None
        if target is not None and target.is_ws and target.dialable:
            return target
        if not routes and self.upstream.is_ws and inbound.transport not in WS_TRANSPORTS:
            return self.upstream
        return None

    def _forward_to_ws_server(self, req: Request, out: Request, target: Target,
                              server: ServerTransaction, inbound: Inbound) -> None:
        """From the SIP side to a WebSocket server sipws dials (never to a flow)."""
        self._set_received(out, inbound)
        out.decrement_max_forwards()
        addr = self.local.address_for("ws")
        out.push_via(self._via(req, target.transport, addr, inbound, None))
        if req.method in DIALOG_METHODS:
            # Double Record-Route: the core-facing entry below, the ws-facing one on top.
            out.push_record_route(f"<sip:{addr.host_port};transport={inbound.transport};lr>")
            out.push_record_route(f"<sip:{addr.host_port};transport=ws;lr>")
        self._start_client(server, out, target, inbound, out_flow=None)

    def _restore_alias(self, out: Request, inbound: Inbound) -> Optional[str]:
        """A Request-URI that is one of our Contact aliases gets the client's URI
        back; its flow token, or None.  A forged alias: 403, as a bad token."""
        try:
            return self.aliases.restore_request_uri(out)
        except BadFlowToken as exc:
            log.warn("bad flow token from {src}: {err}", src=inbound.describe(), err=exc)
            raise _Reject(403, "Bad Flow Token") from None

    def _flow_for_token(self, token: str, inbound: Inbound) -> Flow:
        """The open flow a token names; 403 for a bad token, 430 for a gone flow."""
        try:
            conn_id = self.tokens.check(token)
        except BadFlowToken as exc:
            log.warn("bad flow token from {src}: {err}", src=inbound.describe(), err=exc)
            raise _Reject(403, "Bad Flow Token") from None
        flow = self.flows.get(conn_id)
        if flow is None:
            raise _Reject(430)
        return flow

    def _forward_to_flow(self, req: Request, out: Request, token: str,
                         server: ServerTransaction, inbound: Inbound) -> None:
        """Toward the WebSocket client of ``token`` (from the core, or hairpinned
        from another client); ``out`` has our routes removed already."""
        self._restore_alias(out, inbound)  # the client's own URI as Request-URI
        flow = self._flow_for_token(token, inbound)
        if inbound.conn_id is not None:
            host, port = inbound.source
            out.set_top_via_received(host, port)
            leg_transport = "ws"
        else:
            self._set_received(out, inbound)
            leg_transport = inbound.transport
        out.decrement_max_forwards()
        addr = self.local.address_for(leg_transport if leg_transport not in WS_TRANSPORTS
                                      else "ws")
        out.push_via(self._via(req, flow.transport, addr, inbound, None))
        if req.method in DIALOG_METHODS:
            out.push_record_route(f"<sip:{addr.host_port};transport={leg_transport};lr>")
            out.push_record_route(f"<sip:{token}@{addr.host_port};transport=ws;lr>")
        alias_to = None
        if self.alias_mode and req.method in ALIASED_RESPONSES:
            alias_to = AliasAddress(addr.host_port, leg_transport)
            if inbound.conn_id is not None:
                # Hairpinned between two clients: the sender's Contact too.
                self.aliases.rewrite_contacts(out, self.flows[inbound.conn_id].token, alias_to)
        self._start_client(server, out, None, inbound, out_flow=flow.conn_id, alias_to=alias_to)

    # -- shared

    def _pop_my_routes(self, out: Request) -> list[str]:
        """Remove the leading Route entries that are ours (RFC 3261 §16.4);
        the user parts (flow tokens) found in them, in order."""
        users: list[str] = []
        while True:
            first = out.get("route")
            if first is None:
                return users
            mine, user, _, _ = self._route(first)
            if not mine:
                return users
            if user:
                users.append(user)
            out.pop_route()

    def _hairpin_token(self, users: list[str], conn_id: int) -> Optional[str]:
        """A flow token of *another* flow among our popped routes: the route set
        leads from one of our clients to another without leaving us."""
        flow = self.flows.get(conn_id)
        own = flow.token if flow is not None else self.tokens.make(conn_id)
        for user in users:
            if user.lower() != own:
                return user
        return None

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

    # ---------------------------------------------------------------- CANCEL

    def _on_cancel(self, req: Request, server: ServerTransaction, inbound: Inbound) -> None:
        """RFC 3261 §16.10: answer 200, cancel the matching client transaction."""
        invite = self.table.find_invite_server(req)
        if invite is not None and invite.final_status is not None:
            # Already answered (a 2xx keeps its transaction for timer L without
            # its context): the CANCEL has nothing left to do (RFC 3261 §9.2).
            server.respond(make_response(req, 200, to_tag=self._to_tag(req)))
            return
        if invite is None or not isinstance(invite.context, _Context):
            self._reject(server, 481, None, inbound)
            return
        server.respond(make_response(req, 200, to_tag=self._to_tag(req)))
        ctx: _Context = invite.context
        client = ctx.client
        if client is None or client.terminated or client.final_status is not None:
            return
        if client.state == CALLING:
            ctx.cancel = CANCEL_PENDING  # RFC 3261 §9.1: wait for a provisional
        else:
            self._send_cancel(ctx)

    def _send_cancel(self, ctx: _Context) -> None:
        client = ctx.client
        assert client is not None
        if ctx.cancel == CANCEL_SENT:
            return
        ctx.cancel = CANCEL_SENT
        cancel = build_cancel(client.request)
        cancel_ctx = _Context(self, ctx.server)
        cancel_ctx.target = ctx.target
        cancel_ctx.out_flow = ctx.out_flow  # its answer must come from there
        _make_client(self.table, cancel, client.reliable, cancel_ctx, _CANCEL_USER)
        self.counters["cancels_sent"] += 1

    # ------------------------------------------------------------------ ACK

    def _forward_ack(self, req: Request, inbound: Inbound) -> None:
        """ACK for a 2xx: stateless, along the route set (RFC 3261 §16.11)."""
        if req.max_forwards == 0:
            return
        out = req.copy()
        try:
            users = self._pop_my_routes(out)
            token = None
            if inbound.conn_id is not None:
                token = self._hairpin_token(users, inbound.conn_id)
                if token is not None and req.to.tag is None:
                    raise _Reject(403)
                if token is None:
                    target = self._next_hop_from_flow(out)
                    own = self.flows[inbound.conn_id].token
                    addr = self.local.address_for(target.transport)
                    host, port = inbound.source
                    out.set_top_via_received(host, port)
                    out.decrement_max_forwards()
                    out.push_via(self._via(req, addr.transport, addr, inbound, own))
                    self.output.send_to_target(target, bytes(out), None)
            else:
                token = users[0] if users else self._restore_alias(out, inbound)
                if token is None:
                    uri = out.request_uri
                    token = uri.user if self.local.is_mine(uri) else None
                if token is None:
                    raise _Reject(404)
            if token is not None:
                self._restore_alias(out, inbound)
                flow = self._flow_for_token(token, inbound)
                if inbound.conn_id is not None:
                    out.set_top_via_received(*inbound.source)
                else:
                    self._set_received(out, inbound)
                out.decrement_max_forwards()
                addr = self.local.address_for("ws")
                out.push_via(self._via(req, flow.transport, addr, inbound, None))
                self.output.send_to_flow(flow.conn_id, bytes(out))
            self.counters["acks_relayed"] += 1
        except (_Reject, NoRoute) as exc:
            self.counters["acks_dropped"] += 1
            log.warn("ACK from {src} dropped: {err}", src=inbound.describe(), err=exc)

    # ============================================================ responses

    def _on_response(self, resp: Response, inbound: Inbound) -> None:
        via = resp.top_via
        branch = via.branch or ""
        if not (branch.startswith(MAGIC_COOKIE + BRANCH_MARK)
                and self.local.is_my_sent_by(via.host, via.port, via.transport)):
            self.counters["responses_dropped"] += 1
            log.warn("response {status} from {src} dropped: top Via is not ours",
                     status=resp.status, src=inbound.describe())
            return
        txn = self.table.find_client(resp)
        if txn is not None:
            ctx = txn.context
            if ctx is not None and ctx.out_flow != inbound.conn_id:
                # Answered from another leg than the request went to (a client
                # replaying a Via it saw): not ours to believe.
                self.counters["responses_dropped"] += 1
                log.warn("response {status} from {src} dropped: wrong leg",
                         status=resp.status, src=inbound.describe())
                return
            txn.receive_response(resp)
            return
        self._forward_response_stateless(resp, inbound)

    def _forward_response_stateless(self, resp: Response, inbound: Inbound) -> None:
        """A 2xx to INVITE with no transaction (a retransmission after ours ended,
        RFC 3261 §17.1.1.2): along the Via path (§16.7, §18.2.2)."""
        if not (200 <= resp.status < 300 and resp.method == "INVITE"):
            # Its transaction is over (a late or duplicate answer): nobody waits for it.
            self.counters["late_responses"] += 1
            return
        ours = resp.vias[0]
        resp.pop_via()
        rest = resp.vias
        if not rest:
            self.counters["responses_dropped"] += 1
            return
        token = ours.params.get(FLOW_VIA_PARAM)
        if token and inbound.conn_id is not None:
            # Our Vias toward clients never carry a flow: a client made this up.
            self.counters["responses_dropped"] += 1
            log.warn("response from {src} dropped: forged Via", src=inbound.describe())
            return
        if token:
            try:
                conn_id = self.tokens.check(token)
            except BadFlowToken:
                self.counters["responses_dropped"] += 1
                log.warn("response from {src} dropped: bad flow in Via", src=inbound.describe())
                return
            if conn_id not in self.flows or not self.output.send_to_flow(conn_id, bytes(resp)):
                self.counters["responses_dropped"] += 1
            else:
                self.counters["responses_stateless"] += 1
            return
        via = rest[0]
        host = via.received or via.host
        if is_invalid_host(host) or via.transport.lower() in WS_TRANSPORTS:
            self.counters["responses_dropped"] += 1
            return
        rport = via.rport
        port = rport if isinstance(rport, int) and rport is not True else via.port
        target = Target("sip", host, port, via.transport.lower())
        self.output.send_to_target(target, bytes(resp), None)
        self.counters["responses_stateless"] += 1

    # -------------------------------------------- client transaction results

    def _relay_response(self, ctx: _Context, resp: Response) -> None:
        if resp.status == 100:
            return  # hop by hop (RFC 3261 §16.7 step 3); we sent our own
        if resp.status < 200 and ctx.cancel == CANCEL_PENDING:
            self._send_cancel(ctx)
        resp.pop_via()
        if resp.status < 300:
            if ctx.alias_to is not None and ctx.out_flow is not None:
                token = self.flows[ctx.out_flow].token if ctx.out_flow in self.flows \
                    else self.tokens.make(ctx.out_flow)
                self.aliases.rewrite_contacts(resp, token, ctx.alias_to, strict=False)
            elif ctx.restore_contacts and resp.status >= 200:
                self.aliases.restore_contacts(resp)
        ctx.server.respond(resp)
        self.counters["responses_relayed"] += 1

    def _client_failed(self, ctx: _Context, status: int, why: str) -> None:
        server = ctx.server
        client = ctx.client
        if client is not None and client.is_invite and client.provisional_seen \
                and why == "timeout" and client.final_status is None:
            self._send_cancel(ctx)  # timer C: give up on the callee
        if server.final_status is None and not server.terminated:
            self.counters[str(status)] += 1
            log.info("{method} {why}: answering {status}", method=server.request.method,
                     why=why, status=status)
            server.respond(make_response(server.request, status,
                                         to_tag=self._to_tag(server.request)))

    # ================================================================ hashes

    def _digest(self, *parts: object) -> str:
        """Keyed BLAKE2b (a MAC by design): a third of HMAC-SHA256's cost here."""
        text = "\x00".join([str(p) for p in parts]).encode("utf-8", "surrogatepass")
        return blake2b(text, key=self._hash_key, digest_size=DIGEST_BYTES).hexdigest()

    def _loop_part(self, req: Request) -> str:
        # RFC 3261 §16.6 step 8: what a spiral changes (Request-URI, Route) is in.
        # From, To and CSeq as written: proxies relay them unchanged, and the
        # raw text spares parsing them (computed twice per request: memoised).
        last = self._last_loop
        if last is not None and last[0] is req:
            return last[1]
        value = self._digest("loop", req.uri, req.get_all("route"), req.call_id,
                             req.get("from"), req.get("to"), req.get("cseq"))[:BRANCH_LOOP_HEX]
        self._last_loop = (req, value)
        return value

    def _branch(self, req: Request, inbound: Inbound) -> str:
        """Deterministic: a retransmission or a CANCEL maps to the same branch."""
        via = req.top_via
        leg = inbound.conn_id if inbound.conn_id is not None else (
            inbound.transport, *inbound.source)
        tx = self._digest("tx", via.branch, via.sent_by.lower(), leg,
                          "" if (via.branch or "").startswith(MAGIC_COOKIE) else
                          (req.call_id, req.from_.tag, req.cseq[0]),
                          "ACK" if req.method == "ACK" else "")[:BRANCH_TX_HEX]
        return f"{MAGIC_COOKIE}{BRANCH_MARK}{tx}.{self._loop_part(req)}"

    def _to_tag(self, req: Request) -> str:
        return self._digest("tag", req.top_via.branch, req.call_id)[:TO_TAG_HEX]


# ------------------------------------------------------------- helpers


def _make_client(table: TransactionTable, out: Request, reliable: bool, ctx: _Context,
                 user) -> ClientTransaction:
    """Create and start the client transaction of ``ctx`` (which sends for it)."""
    table._release_ended()
    txn = ClientTransaction(table, out, ctx, reliable, user)
    txn.context = ctx
    ctx.client = txn
    if txn.key in table.clients:
        raise NoRoute("duplicate branch", 500)
    table.clients[txn.key] = txn
    txn._start()
    return txn


class _CancelUser:
    """Our own CANCEL's outcome matters to nobody: the INVITE's response does."""

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction) -> None:
        log.info("CANCEL timed out")

    def on_transport_error(self, txn: ClientTransaction, reason: str) -> None:
        log.info("CANCEL not sent: {reason}", reason=reason)


_CANCEL_USER = _CancelUser()


def _uses_outbound(req: Request) -> bool:
    """RFC 5626: a Contact with reg-id and +sip.instance."""
    try:
        return any("reg-id" in c.params and "+sip.instance" in c.params for c in req.contacts)
    except SipParseError:
        return False


def _status_of(exc: Exception) -> int:
    """The error status an exception carries (SipParseError, NoRoute), else 400."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and 300 <= status <= 699 else 400


def _reason_of(exc: Exception) -> str:
    text = getattr(exc, "reason", None) or str(exc) or "Bad Request"
    text = "".join(ch for ch in str(text) if ch.isprintable())[:MAX_REASON]
    return text[:1].upper() + text[1:] if text else "Bad Request"


def _error_response_from_raw(data: bytes, status: int, reason: str) -> Optional[bytes]:
    """An error response to a request the parser refused, when it can be built.

    Copies Via, From, To, Call-ID and CSeq as written (they identify the
    transaction to the client).  Nothing for responses, ACKs, or input too
    broken to find those fields.
    """
    text = bytes(data).lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = text.split("\r\n")
    start = lines[0]
    if not start or start[:4].upper() == "SIP/" or start.split(" ", 1)[0] == "ACK":
        return None
    copied: list[str] = []
    seen: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canonical = _ERROR_COPY.get(name.strip().lower())
        if not colon or canonical is None or "\n" in line or "\r" in line or "\x00" in line:
            continue
        if canonical != "Via" and canonical in seen:
            continue
        seen.add(canonical)
        copied.append(f"{canonical}: {value.strip()}")
    if not {"Via", "From", "To", "Call-ID", "CSeq"} <= seen:
        return None
    head = [f"SIP/2.0 {status} {reason}", *copied, "Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8")


__all__ = ["EdgeProxy", "Flow", "Inbound", "ProxyOutput", "DIALOG_METHODS", "FLOW_VIA_PARAM"]
