"""Benchmark of HEP tracing on the relay path (not a test).

Measures, per SIP message, in one process and run:
1. ``tracer.sip_message`` with tracing ON: Call-ID scan, HEP encode, hand-off
   to the destination (an in-memory one, so no syscall is timed);
2. the same call with tracing OFF (the cost every relayed message pays);
3. ``hep.decode`` of the packet built in 1 (what a collector pays);
Reference: ``sipws.sip.parse`` of the same ~730-byte INVITE, the work the
relay does on every message anyway.  Target: traced cost <= 0.5 x parse,
off cost <= 0.02 x parse.

Run: .venv/bin/python bench/trace_hep.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

from sipws.config import TraceConfig
from sipws.sip import parse
from sipws.stats import Stats
from sipws.trace import hep
from sipws.trace.tracer import Destination, PacketQueue, Tracer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sip_parse import build_invite  # noqa: E402

TARGET_ON = 0.5
TARGET_OFF = 0.02
REPEATS = 7
NUMBER = 20_000


class Sink(Destination):
    kind = "memory"

    def __init__(self, counters) -> None:
        super().__init__(PacketQueue(1), counters)
        self.last = b""

    def _ready(self) -> bool:
        return True

    def _write_now(self, packet: bytes) -> bool:
        self.last = packet
        return True


def best(stmt, number: int = NUMBER) -> float:
    """Best per-call time in microseconds over REPEATS runs."""
    return min(timeit.repeat(stmt, number=number, repeat=REPEATS)) / number * 1e6


def main() -> int:
    message = build_invite()
    config = TraceConfig(destination="udp:127.0.0.1:9060", on=True, capture_id=7,
                         node_name="bench")
    holder: list[Tracer] = []

    class Counters:
        def sent(self, n: int = 1) -> None:
            holder[0].sent(n)

        def dropped(self, n: int = 1) -> None:
            holder[0].dropped(n)

    sink = Sink(Counters())
    tracer = Tracer(config, Stats(), None, destination=sink)
    holder.append(tracer)
    src, dst = ("192.0.2.10", 50120), ("127.0.0.1", 8080)

    def traced() -> None:
        tracer.sip_message(None, "in", "ws", src, dst, message, 1_700_000_000.5)

    reference = best(lambda: parse(message))
    on = best(traced)
    packet = sink.last
    tracer.set_enabled(False)
    off = best(traced)
    decode = best(lambda: hep.decode(packet))
    print(f"message {len(message)} bytes, HEP packet {len(packet)} bytes")
    print(f"reference sipws.sip.parse : {reference:7.2f} us/message")
    print(f"sip_message, tracing on   : {on:7.2f} us/message  ratio {on / reference:.3f}"
          f"  (target <= {TARGET_ON})")
    print(f"sip_message, tracing off  : {off:7.2f} us/message  ratio {off / reference:.3f}"
          f"  (target <= {TARGET_OFF})")
    print(f"hep.decode                : {decode:7.2f} us/packet   ratio {decode / reference:.3f}")
    ok = on / reference <= TARGET_ON and off / reference <= TARGET_OFF
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
