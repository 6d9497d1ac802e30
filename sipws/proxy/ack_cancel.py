"""CANCEL (RFC 3261 §16.10, answered here, sent on when the callee is reached)
and the stateless relay of ACKs for 2xx (§16.11)."""

from __future__ import annotations

from twisted.logger import Logger

from sipws.proxy.legs import (
    CANCEL_PENDING, CANCEL_SENT, Inbound, _CANCEL_USER, _Context, _make_client,
)
from sipws.proxy.rejects import _Reject
from sipws.proxy.targets import NoRoute
from sipws.proxy.transaction import CALLING, ServerTransaction, build_cancel
from sipws.sip import Request, make_response

log = Logger(namespace="sipws.proxy.core")


class AckCancelMixin:
    """EdgeProxy's CANCEL and ACK handling."""

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
