"""How sipws hears ICMP errors toward the core, and what it costs.

Two ways let a UDP sender learn that its datagram hit a closed port (ICMP
port unreachable): ``IP_RECVERR`` on the one shared socket (what sipws does,
sipws/transport/sip_udp.py), or one *connected* UDP socket per destination.
This measures, in one run on the same machine:

1. send path: CPU per datagram for ``sendto`` on an unconnected socket with
   IP_RECVERR on, against ``send`` on a connected socket (the alternative) and
   against a plain unconnected socket (before the change);
2. read path: CPU per datagram of sipws's ``SipUdpPort.doRead`` (which must
   watch for ICMP errors) against Twisted's own ``udp.Port.doRead``;
3. the ICMP path itself: CPU to read one queued error and find its
   transaction key.

Prints each figure and its ratio to the reference measured in the same run.
Usage: .venv/bin/python bench/udp_icmp.py [--datagrams N]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import udp  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

from sipws.proxy.hop_failures import sent_request_key  # noqa: E402
from sipws.transport.sip_udp import IP_RECVERR, SipUdpPort, SipUdpProtocol  # noqa: E402

PAYLOAD = (b"OPTIONS sip:bob@127.0.0.1:5060 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsipws.0123456789abcdef;rport\r\n"
           b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKclient;rport=50000;received=127.0.0.1\r\n"
           b"Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
           b"Call-ID: bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
ROUNDS = 5


def sink() -> socket.socket:
    """A bound UDP socket nobody reads: sends succeed, the kernel drops the overflow."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def cpu_per_send(sock: socket.socket, send, count: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(count):
            send(PAYLOAD)
        best = min(best, time.process_time() - start)
        drain_errors(sock)
    return best / count


def drain_errors(sock: socket.socket) -> None:
    try:
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError:
        pass


def bench_send(count: int) -> dict[str, float]:
    target = sink()
    address = target.getsockname()
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    recverr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recverr.bind(("127.0.0.1", 0))
    recverr.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.bind(("127.0.0.1", 0))
    connected.connect(address)
    try:
        return {
            "plain": cpu_per_send(plain, lambda data: plain.sendto(data, address), count),
            "recverr": cpu_per_send(recverr, lambda data: recverr.sendto(data, address), count),
            "connected": cpu_per_send(connected, connected.send, count),
        }
    finally:
        for sock in (target, plain, recverr, connected):
            sock.close()


class Counting(DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0

    def datagramReceived(self, data, addr) -> None:
        self.count += 1

    def unreachable(self, quoted, destination, reason) -> None:
        pass


class FakeReactor:
    """Enough of a reactor for a port whose doRead the benchmark calls directly."""

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def cpu_per_read(port_class, count: int) -> float:
    protocol = Counting()
    port = port_class(0, protocol, interface="127.0.0.1", maxPacketSize=65535, reactor=FakeReactor())
    port.startListening()
    port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = port.socket.getsockname()
    best = float("inf")
    try:
        for _ in range(ROUNDS):
            batch = min(count, 2000)  # what fits in the receive buffer
            for _ in range(batch):
                sender.sendto(PAYLOAD, address)
            protocol.count = 0
            start = time.process_time()
            while protocol.count < batch:
                port.doRead()
            best = min(best, (time.process_time() - start) / batch)
    finally:
        sender.close()
        port.socket.close()
    return best


def bench_icmp(count: int) -> float:
    """CPU to read one ICMP error from the queue and find its transaction key."""
    errors = []
    protocol = SipUdpProtocol(lambda *a: None, lambda quoted, dest, reason: errors.append(sent_request_key(quoted)))
    port = SipUdpPort(0, protocol, interface="127.0.0.1", maxPacketSize=65535, reactor=FakeReactor())
    port.startListening()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    closed = dead.getsockname()
    dead.close()
    batch = min(count, 50)  # the error queue is charged to the receive buffer: keep it small
    best = float("inf")
    try:
        for _ in range(ROUNDS):
            errors.clear()
            for _ in range(batch):
                while True:  # a queued error surfaces on the next send, which then is not sent
                    try:
                        port.socket.sendto(PAYLOAD, closed)
                        break
                    except ConnectionRefusedError:
                        pass
            time.sleep(0.05)  # let the kernel queue the ICMP errors
            start = time.process_time()
            for _ in range(batch):  # bounded: every entry read, or the queue lost some
                port.read_errors()
                if len(errors) >= batch:
                    break
            if len(errors) < batch:
                raise SystemExit(f"only {len(errors)} of {batch} ICMP errors were queued")
            best = min(best, (time.process_time() - start) / batch)
            assert errors[0] == ("z9hG4bKsipws.0123456789abcdef", "OPTIONS"), errors[0]
    finally:
        port.socket.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=50_000, help="datagrams per send round")
    args = parser.parse_args()
    send = bench_send(args.datagrams)
    print(f"send path, CPU per datagram (best of {ROUNDS} x {args.datagrams}):")
    print(f"  unconnected, IP_RECVERR on (sipws):     {send['recverr'] * 1e6:6.2f} us")
    print(f"  unconnected, plain (before):            {send['plain'] * 1e6:6.2f} us"
          f"   sipws/plain = {send['recverr'] / send['plain']:.2f}")
    print(f"  connected socket per destination:       {send['connected'] * 1e6:6.2f} us"
          f"   sipws/connected = {send['recverr'] / send['connected']:.2f}")
    ours = cpu_per_read(SipUdpPort, args.datagrams)
    twisted = cpu_per_read(udp.Port, args.datagrams)
    print("read path, CPU per datagram:")
    print(f"  SipUdpPort.doRead:                      {ours * 1e6:6.2f} us")
    print(f"  twisted udp.Port.doRead:                {twisted * 1e6:6.2f} us   ratio {ours / twisted:.2f}")
    icmp = bench_icmp(args.datagrams)
    print(f"ICMP error read and mapped to its transaction: {icmp * 1e6:.2f} us per error "
          f"({icmp / send['recverr']:.1f} x one send)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
