"""Benchmark of the proxy core's decisions (not a test).

One relayed MESSAGE transaction, in memory: a JsSIP MESSAGE from a
WebSocket flow goes through ``EdgeProxy`` toward a UDP core (received/rport,
our Via, client and server transactions, timers armed), the core's 200 comes
back and is relayed to the flow, and the clock runs the transaction out.
Reference, timed in the same run: the unavoidable SIP work for the same two
messages (parse the request, push a Via, serialize; parse the response, pop
the Via, serialize).  The ratio says what the proxy's decisions and
transactions cost on top of the message layer.

Run: .venv/bin/python bench/proxy_core.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import heapq
import itertools

from sipws.config import SipConfig
from sipws.proxy import EdgeProxy, FlowTokens
from sipws.sip import parse

N = 5000
REPEATS = 5
CAPTURE = (Path(__file__).resolve().parents[1] / "tests" / "data" / "sip" / "captures"
           / "jssip" / "jssip_02_MESSAGE.sip").read_bytes()
SOURCE = ("192.0.2.10", 56143)
CORE = ("127.0.0.1", 5060)
UPSTREAM = "sip:127.0.0.1:5060;transport=udp"


class _Call:
    __slots__ = ("time", "f", "args", "cancelled", "called")

    def __init__(self, when: float, f, args) -> None:
        self.time, self.f, self.args = when, f, args
        self.cancelled = self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True


class HeapClock:
    """The reactor's timer structure (a heap), as ``seconds``/``callLater``.
    twisted.internet.task.Clock re-sorts a list on every call, which makes a
    run with thousands of pending timers quadratic; the reactor does not."""

    def __init__(self) -> None:
        self.now = 0.0
        self.heap: list = []
        self.seq = itertools.count()

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f, *args) -> _Call:
        call = _Call(self.now + delay, f, args)
        heapq.heappush(self.heap, (call.time, next(self.seq), call))
        return call

    def advance(self, amount: float) -> None:
        self.now += amount
        while self.heap and self.heap[0][0] <= self.now:
            _, _, call = heapq.heappop(self.heap)
            if call.active():
                call.called = True
                call.f(*call.args)


class Sink:
    def __init__(self) -> None:
        self.last = b""

    def send_to_flow(self, conn_id: int, data: bytes) -> bool:
        self.last = data
        return True

    def send_to_target(self, target, data: bytes, on_error) -> None:
        self.last = data


def messages() -> list[bytes]:
    base = CAPTURE.decode()
    return [base.replace("branch=z9hG4bK", f"branch=z9hG4bK{i}x").encode() for i in range(N)]


def answer(request: bytes) -> bytes:
    req = parse(request)
    lines = ["SIP/2.0 200 OK", *[f"Via: {v}" for v in req.get_all("via")],
             f"From: {req.get('from')}", f"To: {req.get('to')};tag=x", f"Call-ID: {req.call_id}",
             f"CSeq: {req.cseq[0]} {req.cseq[1]}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run_proxy(msgs: list[bytes], answers: list[bytes]) -> float:
    clock = HeapClock()
    sink = Sink()
    proxy = EdgeProxy(SipConfig(upstream=UPSTREAM), clock, FlowTokens(b"k", b"n"), sink)
    start = time.perf_counter()
    for i, (data, ok) in enumerate(zip(msgs, answers)):
        proxy.receive_from_flow(1 + i % 100, data, SOURCE, "ws")
        proxy.receive_from_sip(ok, CORE, "udp")
    for _ in range(100):
        clock.advance(0.5)
    elapsed = time.perf_counter() - start
    assert len(proxy.table) == 0, "transactions left"
    return elapsed


def run_reference(msgs: list[bytes], answers: list[bytes]) -> float:
    start = time.perf_counter()
    for data, ok in zip(msgs, answers):
        req = parse(data)
        req.set_top_via_received(*SOURCE)
        req.push_via("SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsw0123456789")
        bytes(req)
        resp = parse(ok)
        resp.pop_via()
        bytes(resp)
    return time.perf_counter() - start


def main() -> int:
    msgs = messages()
    # the core's answers to what the proxy really sends
    clock = HeapClock()
    sink = Sink()
    proxy = EdgeProxy(SipConfig(upstream=UPSTREAM), clock, FlowTokens(b"k", b"n"), sink)
    answers = []
    for i, data in enumerate(msgs):
        proxy.receive_from_flow(1 + i % 100, data, SOURCE, "ws")
        answers.append(answer(sink.last))
    best_proxy = min(run_proxy(msgs, answers) for _ in range(REPEATS))
    best_ref = min(run_reference(msgs, answers) for _ in range(REPEATS))
    per_proxy = best_proxy / N * 1e6
    per_ref = best_ref / N * 1e6
    print(f"relayed MESSAGE transactions (flow -> UDP core -> 200 -> flow): {N}")
    print(f"  EdgeProxy:  {per_proxy:7.1f} us/transaction  ({N / best_proxy:8.0f}/s)")
    print(f"  reference:  {per_ref:7.1f} us/transaction  ({N / best_ref:8.0f}/s) "
          "(parse + Via edits + serialize of the same two messages)")
    print(f"  ratio EdgeProxy / reference: {best_proxy / best_ref:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
