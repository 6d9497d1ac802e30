"""Responses: matched to our client transactions and relayed, or forwarded
statelessly along the Via path (2xx retransmissions, RFC 3261 §17.1.1.2)."""

from __future__ import annotations

from twisted.logger import Logger

from sipws.proxy.errors import BadFlowToken
from sipws.proxy.legs import CANCEL_PENDING, FLOW_VIA_PARAM, Inbound, _Context
from sipws.proxy.branches import BRANCH_MARK
from sipws.proxy.targets import WS_TRANSPORTS, Target, is_invalid_host
from sipws.proxy.transaction import MAGIC_COOKIE, client_key
from sipws.sip import Response, make_response

log = Logger(namespace="sipws.proxy.core")


class ResponsesMixin:
    """EdgeProxy's response handling."""

    def _on_response(self, resp: Response, inbound: Inbound) -> None:
        self._reuse_our_via(resp)
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

    def _reuse_our_via(self, resp: Response) -> None:
        """Our Via, back on top of a response to a request we sent: the client
        transaction's request holds it parsed already (same text: same Via)."""
        text = resp.top_via_text()
        if not text:
            return
        start = text.find(";branch=")
        if start < 0:
            return
        start += len(";branch=")
        end = text.find(";", start)
        branch = text[start:end] if end >= 0 else text[start:]
        txn = self.table.clients.get(client_key(branch, resp.cseq[1]))
        request = txn.request if txn is not None else None
        ours = request.top_via if request is not None else None
        if ours is not None and str(ours) == text:
            resp.use_top_via(ours)

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
