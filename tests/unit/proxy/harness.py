"""In-memory harness for the proxy core: a Clock, a recording output, messages."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from twisted.internet.task import Clock

from sipws.config import SipConfig, SipListen
from sipws.proxy.core import EdgeProxy
from sipws.proxy.flows import FlowTokens
from sipws.proxy.targets import Target
from sipws.sip import Request, Response, parse

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "sip" / "captures"
#: The address sipws listens on toward the core in these tests.
ME = "127.0.0.1:5062"
CORE = ("127.0.0.1", 5060)
CLIENT = ("192.0.2.10", 56143)


def capture(name: str) -> bytes:
    kind = name.split("_", 1)[0]
    folder = {"jssip": "jssip", "sipjs": "sipjs", "uac": "sipp", "uas": "sipp",
              "via": "kamailio"}[kind]
    return (CAPTURES / folder / f"{name}.sip").read_bytes()


class Output:
    """Records what the core asks the I/O layer to send."""

    def __init__(self) -> None:
        self.to_flows: list[tuple[int, bytes]] = []
        self.to_targets: list[tuple[Target, bytes, Optional[Callable[[str], None]]]] = []
        self.gone: set[int] = set()

    def send_to_flow(self, conn_id: int, data: bytes) -> bool:
        if conn_id in self.gone:
            return False
        self.to_flows.append((conn_id, data))
        return True

    def send_to_target(self, target: Target, data: bytes, on_error) -> None:
        self.to_targets.append((target, data, on_error))

    # -- reading what was sent

    def flow_msgs(self, conn_id: Optional[int] = None):
        return [parse(d) for c, d in self.to_flows if conn_id is None or c == conn_id]

    def sip_msgs(self):
        return [(t, parse(d)) for t, d, _ in self.to_targets]

    def last_flow(self):
        return parse(self.to_flows[-1][1])

    def last_sip(self):
        target, data, _ = self.to_targets[-1]
        return target, parse(data)

    def clear(self) -> None:
        self.to_flows.clear()
        self.to_targets.clear()


def make_proxy(listen=(("udp", "127.0.0.1", 5062), ("tcp", "127.0.0.1", 5062)),
               upstream="sip:127.0.0.1:5060;transport=udp", advertise=""):
    config = SipConfig(listen=tuple(SipListen(*x) for x in listen), upstream=upstream,
                       advertise=advertise)
    clock = Clock()
    out = Output()
    proxy = EdgeProxy(config, clock, FlowTokens(b"test-secret", b"nonce"), out)
    return proxy, clock, out


def run_out(clock: Clock, seconds: float = 400.0, step: float = 0.25) -> None:
    """Advance the clock until every timer that can fire has fired."""
    for _ in range(int(seconds / step)):
        clock.advance(step)


def response_to(request: Request, status: int, reason: Optional[str] = None,
                to_tag: Optional[str] = "callee1", extra: str = "",
                body: bytes = b"") -> bytes:
    """A UAS response to ``request`` as it received it (all Vias, RR copied)."""
    lines = [f"SIP/2.0 {status} {reason or 'Whatever'}"]
    lines += [f"Via: {v}" for v in request.get_all("via")]
    lines += [f"Record-Route: {v}" for v in request.get_all("record-route")]
    to = request.get("to")
    if to_tag and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {request.get('from')}", f"To: {to}", f"Call-ID: {request.call_id}",
              f"CSeq: {request.cseq[0]} {request.cseq[1]}"]
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def message(text: str) -> bytes:
    """A message from readable text: LF line ends become CRLF."""
    head, sep, body = text.lstrip("\n").partition("\n\n")
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body.replace("\n", "\r\n").encode()


def assert_clean(proxy: EdgeProxy, clock: Clock) -> None:
    """Every transaction ends: after the longest timers, the table is empty."""
    run_out(clock)
    assert len(proxy.table) == 0, (proxy.table.clients, proxy.table.servers)
    assert proxy._toward_flow == {}
    assert not clock.getDelayedCalls()


def step(clock: Clock, seconds: float, tick: float = 1 / 16) -> None:
    """Advance in small ticks (exact binary fractions), so that timers set by
    timers fire within the same span."""
    target = clock.seconds() + seconds
    while clock.seconds() + tick <= target + 1e-9:
        clock.advance(tick)
    if target - clock.seconds() > 1e-9:
        clock.advance(target - clock.seconds())
