"""From a WebSocket client toward the core: our Routes popped, the next hop,
our Via, Record-Route (RFC 7118 §8.2) and Path."""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from sipws.edge.identity import binding_violation
from sipws.proxy.contact_alias import ALIASED_REQUESTS, AliasAddress
from sipws.proxy.legs import DIALOG_METHODS, Inbound
from sipws.proxy.rejects import _Reject
from sipws.proxy.targets import NoRoute, Target, target_for_uri
from sipws.proxy.transaction import ServerTransaction
from sipws.sip import Request, SipParseError
from sipws.sip.headers import parse_name_addr

log = Logger(namespace="sipws.proxy.core")

#: Distinct Route values whose meaning (ours? which flow token? which next hop?)
#: is remembered: a dialog's route set repeats on every in-dialog request.
ROUTE_CACHE_SIZE = 4096
#: Reason phrase of the 403 to a request claiming another identity than the connection's.
IDENTITY_MISMATCH_REASON = "Identity Not Bound To This Connection"


class TowardCoreMixin:
    """EdgeProxy's requests from a flow to the SIP side."""

    def _forward_from_flow(self, req: Request, server: ServerTransaction,
                           inbound: Inbound) -> None:
        flow = self.flows[inbound.conn_id]
        if flow.identity:
            self._check_binding(req, flow.identity, inbound)
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

    def _check_binding(self, req: Request, identity: str, inbound: Inbound) -> None:
        """[auth] bind_identity: a REGISTER's To / an initial request's From must name
        the connection's identity (sipws.edge.identity); 403 otherwise, never relayed."""
        claimed = binding_violation(req, identity)
        if claimed is None:
            return
        self.counters["identity_mismatch"] += 1
        log.warn("identity binding: {method} from {src} claims {claimed}, connection is bound to "
                 "{identity}: refused 403", method=req.method, src=inbound.describe(),
                 claimed=claimed, identity=identity, conn_id=inbound.conn_id)
        raise _Reject(403, IDENTITY_MISMATCH_REASON)

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


def _uses_outbound(req: Request) -> bool:
    """RFC 5626: a Contact with reg-id and +sip.instance."""
    try:
        return any("reg-id" in c.params and "+sip.instance" in c.params for c in req.contacts)
    except SipParseError:
        return False
