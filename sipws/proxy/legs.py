"""Where the edge proxy's messages come from and go: flows, inbound legs,
the per-request context and the senders of transactions (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from twisted.logger import Logger

from sipws.proxy.targets import NoRoute, Target
from sipws.proxy.transaction import ClientTransaction, ServerTransaction, TransactionTable
from sipws.sip import Request, Response

if TYPE_CHECKING:
    from sipws.proxy.contact_alias import AliasAddress
    from sipws.proxy.core import EdgeProxy

log = Logger(namespace="sipws.proxy.core")

#: Via parameter carrying the flow token of the client a request came from, so
#: that responses forwarded statelessly (2xx retransmissions) find the flow.
FLOW_VIA_PARAM = "flow"
#: Requests that may create a dialog and get our Record-Routes.
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: States of a context's CANCEL.
CANCEL_NONE, CANCEL_PENDING, CANCEL_SENT = "none", "pending", "sent"


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
    #: The identity the connection is bound to ([auth] bind_identity); "" = none.
    identity: str = ""


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

    __slots__ = ("proxy", "conn_id", "where")

    def __init__(self, proxy: "EdgeProxy", conn_id: int) -> None:
        self.proxy = proxy
        self.conn_id = conn_id
        #: The same destination as plain data (a lingering transaction keeps this).
        self.where = ("flow", conn_id)

    def __call__(self, data: bytes) -> None:
        if not self.proxy.output.send_to_flow(self.conn_id, data):
            self.proxy.counters["response_to_gone_flow"] += 1


class _ToTarget:
    """A server transaction's sender toward a SIP-side address (RFC 3261 §18.2.2)."""

    __slots__ = ("output", "target", "where")

    def __init__(self, output: ProxyOutput, target: Target) -> None:
        self.output = output
        self.target = target
        #: The same destination as plain data (a lingering transaction keeps this).
        self.where = ("sip", target.host, target.port, target.transport)

    def __call__(self, data: bytes) -> None:
        self.output.send_to_target(self.target, data, None)


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
