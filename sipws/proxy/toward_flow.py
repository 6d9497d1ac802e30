"""From the core toward a WebSocket client (by flow token, Route or Contact
alias), or to a WebSocket server sipws dials (the client role)."""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from sipws.proxy.contact_alias import ALIASED_RESPONSES, AliasAddress
from sipws.proxy.errors import BadFlowToken
from sipws.proxy.legs import DIALOG_METHODS, Flow, Inbound
from sipws.proxy.rejects import _Reject
from sipws.proxy.targets import WS_TRANSPORTS, NoRoute, Target, target_for_uri
from sipws.proxy.transaction import ServerTransaction
from sipws.sip import Request

log = Logger(namespace="sipws.proxy.core")


class TowardFlowMixin:
    """EdgeProxy's requests from the SIP side to a flow or a ws:// server."""

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
