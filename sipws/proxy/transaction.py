"""SIP transactions (RFC 3261 §17), pure and driven by an injected clock.

The clock is the ``IReactorTime`` subset ``seconds()`` / ``callLater()``
(``twisted.internet.task.Clock`` in tests, the reactor in production).  A
transaction never does I/O: it is given a ``send(data)`` callable bound to
its destination, and (client side) a user whose ``on_response``,
``on_timeout`` and ``on_transport_error`` it calls.  Every transaction is in
a ``TransactionTable`` from its creation until the end of its lifetime and
is removed exactly then (``terminated`` callbacks tell the owner).

Reliable transports (WebSocket, TCP, TLS) get no retransmissions and zero
waiting times for timers D, I, J, K, as §17 says; timers B, F, H and the
proxy's timer C apply to every transport.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from twisted.logger import Logger

from sipws.proxy.timers import TimerQueue
from sipws.sip import Request, Response, SipError, parse

log = Logger(namespace="sipws.proxy.transaction")

#: RFC 3261 magic cookie starting every RFC 3261 branch.
MAGIC_COOKIE = "z9hG4bK"
#: Proxy INVITE timer C (RFC 3261 §16.6 step 11: more than 3 minutes).
TIMER_C = 181.0
#: Timer D on unreliable transports (RFC 3261 §17.1.1.2: at least 32 s).
TIMER_D = 32.0
#: Max-Forwards written into requests we generate (ACK, CANCEL).
GENERATED_MAX_FORWARDS = 70

# States (RFC 3261 §17).
CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
ACCEPTED = "accepted"  # RFC 6026: INVITE server transaction after a 2xx
CONFIRMED = "confirmed"
TERMINATED = "terminated"

Send = Callable[[bytes], None]
#: What a lingering server transaction keeps (see TransactionTable.lingering):
#: the response to repeat (b"" = absorb silently) and where to (a sender's
#: ``where``: a tuple of strings and numbers, or None).
Lingering = tuple[bytes, Optional[tuple]]


@dataclass(frozen=True)
class Timers:
    """T1, T2, T4 (RFC 3261 §17.1.1.1, Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @classmethod
    def from_config(cls, sip_config: Any) -> "Timers":
        return cls(sip_config.t1, sip_config.t2, sip_config.t4)

    @property
    def b(self) -> float:
        return 64 * self.t1

    f = h = j = b


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any) -> Any: ...


class ClientUser(Protocol):
    """What a client transaction reports to (the proxy core)."""

    def on_response(self, txn: "ClientTransaction", response: Response) -> None: ...

    def on_timeout(self, txn: "ClientTransaction") -> None: ...

    def on_transport_error(self, txn: "ClientTransaction", reason: str) -> None: ...


class _NoUser:
    """The user of an ended, released client transaction: reports go nowhere."""

    def on_response(self, txn: "ClientTransaction", response: Response) -> None:
        pass

    def on_timeout(self, txn: "ClientTransaction") -> None:
        pass

    def on_transport_error(self, txn: "ClientTransaction", reason: str) -> None:
        pass


_NO_USER = _NoUser()


def _discard(data: bytes) -> None:
    """The sender of an ended, released transaction."""


# ------------------------------------------------------------------ keys


def _rfc2543_key(msg, method: str) -> tuple:
    """Matching for requests without a magic-cookie branch (RFC 3261 §17.2.3 end)."""
    via = msg.top_via
    return ("2543", msg.call_id, msg.from_.tag, msg.cseq[0], via.sent_by.lower(),
            via.branch or "", method)


def server_key(request: Request, method: Optional[str] = None) -> tuple:
    """§17.2.3: branch + sent-by + method (ACK counts as INVITE)."""
    via = request.top_via  # the only Via parsed (cached on the message)
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if not branch.startswith(MAGIC_COOKIE):
        return _rfc2543_key(request, method)
    return (branch, via.sent_by.lower(), method)


def client_key(branch: str, method: str) -> tuple:
    """§17.1.3: our branch + the CSeq method."""
    return (branch, method)


# ------------------------------------------------------------ generated


def build_ack(request: Request, response: Response) -> Request:
    """The hop-by-hop ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    return _build_like(request, "ACK", to=response.get("to"))


def build_cancel(request: Request) -> Request:
    """A CANCEL for a request we sent (RFC 3261 §9.1): same branch and route."""
    return _build_like(request, "CANCEL", to=request.get("to"))


def _build_like(request: Request, method: str, to: Optional[str]) -> Request:
    lines = [f"{method} {request.uri} SIP/2.0", f"Via: {request.get('via')}"]
    lines += [f"Route: {value}" for value in request.get_all("route")]
    lines += [
        f"Max-Forwards: {GENERATED_MAX_FORWARDS}",
        f"From: {request.get('from')}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.cseq[0]} {method}",
        "Content-Length: 0",
    ]
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    assert isinstance(msg, Request)
    return msg


# --------------------------------------------------------------- table


class TransactionTable:
    """Every live transaction, client and server, by its matching key."""

    def __init__(self, clock: Clock, timers: Timers = Timers()) -> None:
        self.clock = clock
        self.timers = timers
        self.clients: dict[tuple, ClientTransaction] = {}
        self.servers: dict[tuple, ServerTransaction] = {}
        #: Every transaction timer, on one clock call (see sipws.proxy.timers).
        self.queue = TimerQueue(clock)
        #: Ended transactions whose links to their owner are cut at the next
        #: table operation (not at once: the owner's callbacks may still be
        #: running on the call stack).  Cutting them breaks the reference
        #: cycles transaction ↔ owner context, so ended transactions are freed
        #: by reference counting instead of piling up for the cyclic garbage
        #: collector, whose full passes stall the reactor under load.
        self._ended: list[_Transaction] = []
        #: Server transactions that only linger (RFC 6026 timer L after a 2xx,
        #: timer J after a non-INVITE final on UDP) kept as plain data, key ->
        #: (response to repeat, where to): tens of thousands of them linger at a
        #: few hundred calls per second, and as objects each full pass of the
        #: cyclic collector would walk them all; tuples of bytes and strings it
        #: does not track.  Their lifetime is the same 64*T1 for both kinds, so
        #: one FIFO of (expiry, key) ends them in order.
        self.lingering: dict[tuple, Lingering] = {}
        self._lingering_until: deque[tuple[float, tuple]] = deque()
        #: Repeats a lingering response: ``resend(where, data)``; set by the owner
        #: (None: server transactions linger as objects).
        self.resend: Optional[Callable[[tuple, bytes], None]] = None
        #: Non-INVITE client transactions that only absorb retransmitted final
        #: responses (timer K, T4 on UDP): their keys, ended in order from a FIFO.
        self.absorbing: set[tuple] = set()
        self._absorbing_until: deque[tuple[float, tuple]] = deque()
        self._timers: dict[str, int] = {}  # this table's own timers (TimerQueue owner)

    def absorb(self, txn: "ClientTransaction") -> None:
        """End a completed non-INVITE client transaction now; keep its key for T4
        so that retransmissions of its final response are absorbed."""
        key = txn.key
        txn._cancel_all()
        txn.state = TERMINATED
        if self.clients.get(key) is txn:
            del self.clients[key]
        self._ended.append(txn)
        self.absorbing.add(key)
        until = self._absorbing_until
        if not until:
            self.queue.set(self, "absorbing", self.timers.t4, TransactionTable._expire_absorbing)
        until.append((self.clock.seconds() + self.timers.t4, key))

    def _expire_absorbing(self) -> None:
        until = self._absorbing_until
        now = self.clock.seconds()
        while until and until[0][0] <= now:
            self.absorbing.discard(until.popleft()[1])
        if until:
            self.queue.set(self, "absorbing", max(0.0, until[0][0] - now),
                           TransactionTable._expire_absorbing)

    def linger(self, txn: "ServerTransaction", response: bytes) -> bool:
        """End ``txn`` now and keep only (response, where) under its key for 64*T1;
        False (nothing done) when its sender cannot be described as data."""
        where = getattr(txn.send, "where", None)
        if self.resend is None or (response and where is None):
            return False
        key = txn.key
        txn._cancel_all()
        txn.state = TERMINATED
        if self.servers.get(key) is txn:
            del self.servers[key]
        self._ended.append(txn)
        self.lingering[key] = (response, where)
        until = self._lingering_until
        if not until:
            self.queue.set(self, "lingering", self.timers.h, TransactionTable._expire_lingering)
        until.append((self.clock.seconds() + self.timers.h, key))
        return True

    def _expire_lingering(self) -> None:
        until = self._lingering_until
        now = self.clock.seconds()
        lingering = self.lingering
        while until and until[0][0] <= now:
            _, key = until.popleft()
            lingering.pop(key, None)
        if until:
            self.queue.set(self, "lingering", max(0.0, until[0][0] - now),
                           TransactionTable._expire_lingering)

    def _release_ended(self) -> None:
        ended = self._ended
        if ended:
            self._ended = []
            for txn in ended:
                txn._release()

    def __len__(self) -> int:
        return len(self.clients) + len(self.servers) + len(self.lingering) + len(self.absorbing)

    def clear(self) -> int:
        """Drop every transaction and cancel its timers (service shutdown);
        returns how many there were.  Nothing is sent."""
        count = len(self)
        for txn in [*self.clients.values(), *self.servers.values()]:
            txn._cancel_all()
            txn.state = TERMINATED
            txn._release()
        self.clients.clear()
        self.servers.clear()
        self.lingering.clear()
        self._lingering_until.clear()
        self.queue.cancel(self, "lingering")
        self.absorbing.clear()
        self._absorbing_until.clear()
        self.queue.cancel(self, "absorbing")
        self._release_ended()
        return count

    def find_server(self, request: Request) -> Optional["ServerTransaction"]:
        """The server transaction a request belongs to (retransmission, ACK)."""
        return self._find(server_key(request))

    def find_invite_server(self, request: Request) -> Optional["ServerTransaction"]:
        """The INVITE server transaction a CANCEL (or ACK) refers to."""
        return self._find(server_key(request, "INVITE"))

    def _find(self, key: tuple) -> Any:
        txn = self.servers.get(key)
        if txn is None and self.lingering:
            kept = self.lingering.get(key)
            if kept is not None:
                return _LingeringServer(self, kept)
        return txn

    def find_client(self, response: Response) -> Optional["ClientTransaction"]:
        via = response.top_via
        if not via.branch:
            return None
        key = client_key(via.branch, response.cseq[1])
        txn = self.clients.get(key)
        if txn is None and key in self.absorbing:
            return _ABSORBED
        return txn

    def client(self, request: Request, send: Send, reliable: bool,
               user: ClientUser) -> "ClientTransaction":
        """Create and start a client transaction for ``request`` (ours on top)."""
        self._release_ended()
        txn = ClientTransaction(self, request, send, reliable, user)
        if txn.key in self.clients:
            raise SipError("a client transaction with this branch exists")
        self.clients[txn.key] = txn
        txn._start()
        return txn

    def server(self, request: Request, send: Send, reliable: bool,
               terminated: Optional[Callable[["ServerTransaction"], None]] = None
               ) -> "ServerTransaction":
        """Create a server transaction for a request that matched none."""
        self._release_ended()
        txn = ServerTransaction(self, request, send, reliable, terminated)
        self.servers[txn.key] = txn
        return txn


# --------------------------------------------------------- transactions


class _Absorbed:
    """What find_client returns for a key kept only to absorb retransmitted
    final responses (TransactionTable.absorbing): they change nothing."""

    __slots__ = ()
    context = None
    terminated = False

    def receive_response(self, response: Response) -> None:
        pass


_ABSORBED = _Absorbed()


class _LingeringServer:
    """A lingering server transaction found again (a retransmitted request, a
    late CANCEL): built on demand from its data, answers like the object did."""

    __slots__ = ("table", "response", "where")

    #: It was answered with a final response; nothing of the request is left.
    final_status = 200
    context = None
    request = None
    terminated = False

    def __init__(self, table: TransactionTable, kept: Lingering) -> None:
        self.table = table
        self.response, self.where = kept

    def receive_request(self, request: Request) -> None:
        """Absorb it; a non-INVITE's final response is sent again (timer J)."""
        if self.response and request.method != "ACK" and self.table.resend is not None:
            self.table.resend(self.where, self.response)


class _Transaction:
    __slots__ = ("table", "request", "key", "send", "reliable", "state", "_timers", "is_invite")

    def __init__(self, table: TransactionTable, request: Request, send: Send,
                 reliable: bool) -> None:
        self.table = table
        self.request = request
        self.send = send
        self.reliable = reliable
        self.is_invite = request.method == "INVITE"
        self._timers: dict[str, int] = {}  # timer name -> sequence number (TimerQueue)

    def _set(self, name: str, delay: float, method: Callable[[], Any]) -> None:
        """Start (or restart) timer ``name``: ``method`` (bound to this
        transaction) runs after ``delay`` seconds unless cancelled first."""
        self.table.queue.set(self, name, delay, method.__func__)  # type: ignore[attr-defined]

    def _cancel(self, name: str) -> None:
        self.table.queue.cancel(self, name)

    def _cancel_all(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    def _send(self, data: bytes) -> None:
        self.send(data)

    def _release(self) -> None:
        """Cut the links to the owner once ended (see TransactionTable._ended)."""
        self.send = _discard

    @property
    def terminated(self) -> bool:
        return self.state == TERMINATED


class ClientTransaction(_Transaction):
    """Client INVITE (timers A, B, C, D) and non-INVITE (E, F, K) transactions."""

    __slots__ = ("user", "data", "provisional_seen", "final_status", "_interval", "context",
                 "on_terminated")

    def __init__(self, table: TransactionTable, request: Request, send: Send,
                 reliable: bool, user: ClientUser) -> None:
        super().__init__(table, request, send, reliable)
        via = request.top_via  # one Via parsed: ours, just pushed
        if via is None or not via.branch:
            raise SipError("client request without a branch")
        self.key = client_key(via.branch, request.method)
        self.user = user
        self.data = bytes(request)
        self.provisional_seen = False
        self.final_status: Optional[int] = None
        self.state = CALLING if self.is_invite else TRYING
        self._interval = table.timers.t1
        #: Free slot for the owner (the proxy core keeps its context here).
        self.context: Any = None
        #: Called once with the transaction when it leaves the table.
        self.on_terminated: Optional[Callable[["ClientTransaction"], None]] = None

    def _start(self) -> None:
        t = self.table.timers
        if not self.reliable:
            self._set("retransmit", self._interval, self._retransmit)
        self._set("timeout", t.b, self._timeout)
        self._send(self.data)

    def _retransmit(self) -> None:
        """Timer A (doubling) or E (doubling up to T2; T2 once proceeding)."""
        if self.state not in (CALLING, TRYING, PROCEEDING):
            return
        self._send(self.data)
        t = self.table.timers
        if self.is_invite:
            self._interval *= 2
        elif self.state == PROCEEDING:
            self._interval = t.t2
        else:
            self._interval = min(self._interval * 2, t.t2)
        self._set("retransmit", self._interval, self._retransmit)

    def _timeout(self) -> None:
        """Timer B / F, or timer C with no final response."""
        self._terminate()
        self.user.on_timeout(self)

    def transport_error(self, reason: str) -> None:
        """The I/O layer could not send (ICMP error, refused, TLS, DNS)."""
        if self.state in (CALLING, TRYING, PROCEEDING):
            self._terminate()
            self.user.on_transport_error(self, reason)
        elif self.state != TERMINATED:
            self._terminate()  # e.g. the ACK could not be sent; nothing to report

    def receive_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        if state == TERMINATED:
            return
        if status < 200:
            if state in (CALLING, TRYING):
                self.state = PROCEEDING
            if state in (CALLING, TRYING, PROCEEDING):
                if self.is_invite:
                    self._cancel("retransmit")
                    # Timer C replaces B once the INVITE is proceeding.
                    self._set("timeout", TIMER_C, self._timeout)
                self.provisional_seen = True
                self.user.on_response(self, response)
            return
        if state == COMPLETED:
            if self.is_invite and status >= 300:
                self._send_ack(response)  # retransmitted final: ACK again
            return
        self.final_status = status
        self._cancel("retransmit")
        self._cancel("timeout")
        if self.is_invite and status < 300:
            self._terminate()  # RFC 3261 §17.1.1.2: 2xx ACK is the UAC's business
            self.user.on_response(self, response)
            return
        self.state = COMPLETED
        if self.is_invite:
            self._send_ack(response)
            wait = 0.0 if self.reliable else TIMER_D
        else:
            wait = 0.0 if self.reliable else self.table.timers.t4
        self.user.on_response(self, response)
        if wait and not self.is_invite:
            self.table.absorb(self)  # timer K as a key only
            if self.on_terminated is not None:
                self.on_terminated(self)
        elif wait:
            self._set("linger", wait, self._terminate)
            self._shrink()
        elif self.state != TERMINATED:
            self._terminate()

    def _shrink(self) -> None:
        """Lingering only to absorb retransmitted finals (timer D/K): keep just
        what that needs.  Under load thousands of transactions linger for T4
        (5 s) on UDP; dropping their requests and owner links keeps the live
        object count, and so the cost of each full GC pass, small."""
        self.user = _NO_USER
        self.context = None
        self.data = b""
        if not self.is_invite:  # the INVITE keeps its request to ACK retransmitted finals
            self.request = None  # type: ignore[assignment]
            self.send = _discard

    def _send_ack(self, response: Response) -> None:
        self._send(bytes(build_ack(self.request, response)))

    def _terminate(self) -> None:
        if self.state == TERMINATED:
            return
        self.state = TERMINATED
        self._cancel_all()
        if self.table.clients.get(self.key) is self:
            del self.table.clients[self.key]
        self.table._ended.append(self)
        if self.on_terminated is not None:
            self.on_terminated(self)

    def _release(self) -> None:
        super()._release()
        self.user = _NO_USER
        self.context = None
        self.on_terminated = None
        # Cancelled timers may still name this transaction in the timer heap
        # until it is compacted: what is left of it must be small.
        self.request = None  # type: ignore[assignment]
        self.data = b""


class ServerTransaction(_Transaction):
    """Server INVITE (timers G, H, I, and L of RFC 6026) and non-INVITE (J)."""

    __slots__ = ("last_response", "final_status", "_interval", "_on_terminated", "context")

    def __init__(self, table: TransactionTable, request: Request, send: Send,
                 reliable: bool,
                 terminated: Optional[Callable[["ServerTransaction"], None]]) -> None:
        super().__init__(table, request, send, reliable)
        self.key = server_key(request)
        self.state = PROCEEDING if self.is_invite else TRYING
        self.last_response: Optional[bytes] = None
        self.final_status: Optional[int] = None
        self._interval = table.timers.t1
        self._on_terminated = terminated
        #: Free slot for the owner (the proxy core keeps its context here).
        self.context: Any = None

    def respond(self, response: Response) -> None:
        """Send a response from the TU; the state machine follows it."""
        if self.state == ACCEPTED and 200 <= response.status < 300:
            self._send(bytes(response))  # RFC 6026: further 2xx pass through
            return
        if self.state not in (TRYING, PROCEEDING):
            log.debug("response {status} after final ignored", status=response.status)
            return
        data = bytes(response)
        status = response.status
        self.last_response = data
        if status < 200:
            self.state = PROCEEDING
            self._send(data)
            return
        self.final_status = status
        self._send(data)
        t = self.table.timers
        if self.is_invite:
            if status < 300:
                # RFC 6026 §8.5: stay for timer L, so a retransmitted INVITE is
                # absorbed instead of being relayed again as a new request.
                self.state = ACCEPTED
                # Absorbing retransmissions needs only the key: at ~700 calls/s
                # some 20,000 of these linger, and each full GC pass walks
                # whatever they still hold.  As plain data when the owner can.
                if self.table.linger(self, b""):
                    self._after_terminate()
                    return
                self._set("linger", t.h, self._terminate)  # timer L = 64*T1
                self.context = None
                self.request = None  # type: ignore[assignment]
                self.last_response = None
                return
            self.state = COMPLETED
            if not self.reliable:
                self._set("retransmit", self._interval, self._retransmit)
            self._set("timeout", t.h, self._terminate)  # timer H: no ACK came
        else:
            self.state = COMPLETED
            if self.reliable:
                self._terminate()
            elif self.table.linger(self, data):  # timer J, as plain data
                self._after_terminate()
            else:
                self._set("linger", t.j, self._terminate)
                # Timer J only answers retransmissions with last_response.
                self.context = None
                self.request = None  # type: ignore[assignment]

    def _retransmit(self) -> None:
        """Timer G: the final non-2xx response again until the ACK comes."""
        if self.state != COMPLETED or self.last_response is None:
            return
        self._send(self.last_response)
        self._interval = min(self._interval * 2, self.table.timers.t2)
        self._set("retransmit", self._interval, self._retransmit)

    def receive_request(self, request: Request) -> None:
        """A retransmission of our request, or the ACK of a non-2xx final."""
        if request.method == "ACK":
            if self.is_invite and self.state == COMPLETED:
                self.state = CONFIRMED
                self._cancel("retransmit")
                self._cancel("timeout")
                if self.reliable:
                    self._terminate()
                else:
                    self._set("linger", self.table.timers.t4, self._terminate)  # timer I
            return
        # ACCEPTED: a retransmitted INVITE is absorbed silently (RFC 6026 §8.7).
        if self.state in (PROCEEDING, COMPLETED) and self.last_response is not None:
            self._send(self.last_response)

    def transport_error(self, reason: str) -> None:
        """A response could not be sent: nothing more can be done (§17.2.4)."""
        self._terminate()

    def _send(self, data: bytes) -> None:
        self.send(data)

    def _terminate(self) -> None:
        if self.state == TERMINATED:
            return
        self.state = TERMINATED
        self._cancel_all()
        if self.table.servers.get(self.key) is self:
            del self.table.servers[self.key]
        self.table._ended.append(self)
        self._after_terminate()

    def _after_terminate(self) -> None:
        if self._on_terminated is not None:
            self._on_terminated(self)

    def _release(self) -> None:
        super()._release()
        self.context = None
        self._on_terminated = None
        self.request = None  # type: ignore[assignment]
        self.last_response = None
