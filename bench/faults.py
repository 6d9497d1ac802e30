"""Fault benchmark (not a test): sipws as a real subprocess in relay mode, faults injected
around it, every request counted.

- ``core``: a Python UDP core (answers every request 200) that is stopped and restarted
  (requests meanwhile: 503 at once from the ICMP port-unreachable), then goes silent
  (requests meanwhile: 408 after timer F = 64*T1); a WebSocket client sends OPTIONS every
  100 ms throughout.  Each request gets exactly one final response: none lost, none
  answered twice (a second final or a stray response is counted).
- ``dns``: ``[sip] upstream`` a host name whose resolver answers SERVFAIL (sipws's
  twisted.names resolver pointed at a fake DNS server through a small launcher, since it
  otherwise reads /etc/resolv.conf): every request answered, none lost.
- ``hep``: ``[trace]`` to a UDP and then a TCP collector that is stopped and restarted;
  counters ``trace.packets_sent`` / ``trace.packets_dropped`` and what the collector got.
- ``kamailio``: Kamailio 5.6 (tests/interop/peers.py) as the core with two JsSIP clients
  (Node) registered through sipws; a call; Kamailio restarted (its location table is in
  memory: bindings gone); the clients register again and a call works afterwards.

Run: nice -n 10 .venv/bin/python bench/faults.py [--quick] [--only core dns hep kamailio]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sipload import (ROOT_DIR, Phone, Sampler, SipFailure, Sipws, free_port, raise_file_limit,  # noqa: E402
                      stop_on_sigterm)
from _relay_peers import answer  # noqa: E402

RELAY_CONFIG = """
[ws]
listen = ["127.0.0.1:{ws}"]

[sip]
listen = ["udp:127.0.0.1:0"]
upstream = "%(upstream)s"
t1 = %(t1)s

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[log]
level = "warn"
%(extra)s
"""
#: Seconds between two requests of the client.
PERIOD = 0.1


class UdpCore(asyncio.DatagramProtocol):
    """Answers every request 200 (``silent``: reads and answers nothing); counts Call-IDs."""

    def __init__(self) -> None:
        self.silent = False
        self.received: Counter = Counter()
        self.transport = None

    def datagram_received(self, data: bytes, address) -> None:
        self.received["datagrams"] += 1
        if self.silent:
            return
        reply = answer(data)
        if reply is not None:
            self.transport.sendto(reply, address)


async def start_core(port: int) -> UdpCore:
    core = UdpCore()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: core, local_addr=("127.0.0.1", port))
    core.transport = transport
    return core


class Counting:
    """A client sending OPTIONS every PERIOD; each request's outcome in the phase it was sent."""

    def __init__(self, phone: Phone, timeout: float) -> None:
        self.phone = phone
        self.timeout = timeout
        self.phase = "start"
        self.outcomes: dict[str, Counter] = {}
        self.tasks: set[asyncio.Task] = set()
        self.running = True

    async def one(self, phase: str) -> None:
        phone = self.phone
        call_id = f"fault-{phase.replace(' ', '-')}-{time.monotonic_ns()}"
        data = phone.build("OPTIONS", "sip:core@example.com", "<sip:core@example.com>", call_id, 1)
        counts = self.outcomes.setdefault(phase, Counter())
        counts["sent"] += 1
        try:
            final, _, rtt = await phone.request(data, call_id, 1, "OPTIONS", timeout=self.timeout)
            counts[str(final.status)] += 1
        except SipFailure as exc:
            counts[f"lost ({exc})"] += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            task = loop.create_task(self.one(self.phase))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(PERIOD)

    async def finish(self) -> None:
        self.running = False
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.timeout + 5)


def report(outcomes: dict[str, Counter], expected: dict[str, set[str]], sampler: Sampler) -> bool:
    ok = True
    for phase, counts in outcomes.items():
        answered = sum(v for k, v in counts.items() if k.isdigit())
        lost = sum(v for k, v in counts.items() if k.startswith("lost"))
        wrong = {k: v for k, v in counts.items() if k.isdigit() and k not in expected.get(phase, {k})}
        good = lost == 0 and answered == counts["sent"] and not wrong
        ok &= good
        print(f"   {'PASS' if good else 'FAIL'} {phase:<14} {dict(counts)}"
              f"{'  unexpected: ' + str(wrong) if wrong else ''}")
    twice = {k: v for k, v in sampler.errors.items() if "stray" in k or "second" in k}
    print(f"   {'PASS' if not twice else 'FAIL'} answered twice / stray responses: {twice or 0}; "
          f"other client errors: {dict(sampler.errors) or 0}")
    return ok and not twice


#: Phases around a change of the core's behaviour, and how long before it they begin (s).
TRANSITIONS = {"stop": "(core stopping)", "silent": "(core falling silent)"}
TRANSITION_GRACE = 0.3


async def fault_core(tmp: Path, quick: bool) -> bool:
    port = free_port(socket.SOCK_DGRAM)
    t1 = 0.05 if quick else 0.5
    phase_seconds = 1.5 if quick else 5.0
    core = await start_core(port)
    sipws = Sipws(tmp / "core", RELAY_CONFIG % {"upstream": f"sip:127.0.0.1:{port};transport=udp", "t1": t1,
                                                "extra": ""})
    sampler = Sampler()
    try:
        phone = await Phone(sipws.ws_port, "alice", sampler).connect()
        client = Counting(phone, 64 * t1 + 10)
        runner = asyncio.get_running_loop().create_task(client.run())
        print(f"== core restart / core silent: UDP core 127.0.0.1:{port}, [sip] t1 = {t1} (timer F "
              f"{64 * t1:.1f}s), OPTIONS every {PERIOD * 1e3:.0f} ms, {phase_seconds}s per phase", flush=True)
        received = Counter()
        # Requests sent in the last timer-F seconds of the silence may still be answered 200
        # (their retransmissions reach the core once it answers again): a phase of their own.
        timer_f = 64 * t1
        for phase, action, seconds in (("up", None, phase_seconds), ("core stopped", "stop", phase_seconds),
                                       ("core restarted", "start", phase_seconds),
                                       ("core silent", "silent", phase_seconds),
                                       ("silent < timer F before it answers", None, timer_f),
                                       ("core answers", "answer", phase_seconds)):
            if action in TRANSITIONS:
                # A request still on its way through sipws when the core stops or falls silent
                # meets the new behaviour: requests sent within TRANSITION_GRACE of the change
                # count in a phase of their own that accepts either outcome.
                client.phase = TRANSITIONS[action]
                await asyncio.sleep(TRANSITION_GRACE)
            client.phase = phase
            if action == "stop":
                received.update(core.received)
                core.transport.close()
                await asyncio.sleep(0.05)
            elif action == "start":
                core = await start_core(port)
            elif action == "silent":
                core.silent = True
            elif action == "answer":
                core.silent = False
            await asyncio.sleep(seconds)
        client.running = False
        await runner
        await client.finish()
        received.update(core.received)
        counters = sipws.counters()
        ok = report(client.outcomes, {"up": {"200"}, "core stopped": {"503"}, "core restarted": {"200"},
                                      TRANSITIONS["stop"]: {"200", "503"}, TRANSITIONS["silent"]: {"200", "408"},
                                      "core silent": {"408"},
                                      "silent < timer F before it answers": {"200", "408"}, "core answers": {"200"}}, sampler)
        tables = sipws.tables()
        print(f"   core received {received['datagrams']} datagrams (retransmissions included); sipws "
              f"sip.icmp_errors {counters['sip.icmp_errors']}; tables after: {tables}")
        await phone.close()
        core.transport.close()
        return ok
    finally:
        sipws.stop()


class FailingDns(asyncio.DatagramProtocol):
    """Answers every query SERVFAIL (RCODE 2), echoing the question."""

    def __init__(self) -> None:
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        self.queries += 1
        if len(data) < 12:
            return
        ident, flags = struct.unpack("!HH", data[:4])
        reply_flags = 0x8000 | (flags & 0x0100) | 0x0080 | 2  # QR, RD copied, RA, SERVFAIL
        self.transport.sendto(struct.pack("!HHHHHH", ident, reply_flags, 1, 0, 0, 0) + data[12:], address)


#: Runs sipws with its resolver pointed at 127.0.0.1:PORT (argv[1]) instead of /etc/resolv.conf.
DNS_LAUNCHER = """
import sys
from twisted.names import client
port = int(sys.argv.pop(1))
client.createResolver = lambda *a, **k: client.Resolver(servers=[("127.0.0.1", port)], resolv=None)
from sipws.cli import main
sys.exit(main())
"""


async def fault_dns(tmp: Path, quick: bool) -> bool:
    loop = asyncio.get_running_loop()
    dns_port = free_port(socket.SOCK_DGRAM)
    dns = FailingDns()
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", dns_port))
    launcher = tmp / "launch_with_dns.py"
    launcher.write_text(DNS_LAUNCHER)
    sipws = Sipws(tmp / "dns", RELAY_CONFIG % {"upstream": "sip:core.test;transport=udp", "t1": 0.5, "extra": ""},
                  command=[sys.executable, str(launcher), str(dns_port), "--config"])
    sampler = Sampler()
    try:
        phone = await Phone(sipws.ws_port, "alice", sampler).connect()
        client = Counting(phone, 40)
        client.phase = "DNS SERVFAIL"
        runner = loop.create_task(client.run())
        await asyncio.sleep(2 if quick else 5)
        client.running = False
        await runner
        await client.finish()
        counters = sipws.counters()
        print(f"== DNS failing: upstream sip:core.test, resolver 127.0.0.1:{dns_port} answers SERVFAIL", flush=True)
        ok = report(client.outcomes, {"DNS SERVFAIL": {"503", "500", "408", "404", "480"}}, sampler)
        print(f"   DNS server got {dns.queries} queries; sipws sip.dns_failures {counters['sip.dns_failures']}; "
              f"tables after: {sipws.tables()}")
        await phone.close()
        return ok
    finally:
        sipws.stop()
        transport.close()


class UdpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets = 0

    def datagram_received(self, data: bytes, address) -> None:
        self.packets += 1


async def fault_hep(tmp: Path, quick: bool) -> bool:
    loop = asyncio.get_running_loop()
    ok = True
    for kind in ("udp", "tcp"):
        port = free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        got = Counter()

        async def start():
            if kind == "udp":
                collector = UdpCollector()
                transport, _ = await loop.create_datagram_endpoint(lambda: collector, local_addr=("127.0.0.1", port))
                return transport, collector
            writers = []

            async def handle(reader, writer):
                writers.append(writer)
                while data := await reader.read(65536):
                    got["tcp bytes"] += len(data)
                    # HEPv3: "HEP3" + length; count packets by their magic
                    got["tcp packets"] += data.count(b"HEP3")

            server = await asyncio.start_server(handle, "127.0.0.1", port)
            return (server, writers), None

        async def stop(handle):
            if kind == "udp":
                handle.close()
            else:
                server, writers = handle
                server.close()
                for writer in writers:
                    writer.transport.abort()
                await server.wait_closed()

        core_port = free_port(socket.SOCK_DGRAM)
        core = await start_core(core_port)
        extra = f'[trace]\ndestination = "{kind}:127.0.0.1:{port}"\non = true\n'
        handle, collector = await start()
        sipws = Sipws(tmp / f"hep-{kind}", RELAY_CONFIG % {"upstream": f"sip:127.0.0.1:{core_port};transport=udp",
                                                           "t1": 0.5, "extra": extra})
        sampler = Sampler()
        try:
            phone = await Phone(sipws.ws_port, "alice", sampler).connect()
            client = Counting(phone, 40)
            runner = loop.create_task(client.run())
            # the TCP sender retries after 0.5, 1, 2, 4 ... s (tracer RECONNECT_*): give it time
            seconds = 2.0 if quick else 5.0
            if kind == "tcp":
                seconds *= 2
            lines = []
            for phase in ("collector up", "collector down", "collector back"):
                if phase == "collector down":
                    got["udp packets"] += collector.packets if collector else 0
                    await stop(handle)
                elif phase == "collector back":
                    handle, collector = await start()
                client.phase = phase
                before = sipws.rpc("stats")["trace"]
                await asyncio.sleep(seconds)
                after = sipws.rpc("stats")["trace"]
                lines.append(f"{phase}: packets_sent +{after['packets_sent'] - before['packets_sent']}, "
                             f"packets_dropped +{after['packets_dropped'] - before['packets_dropped']}, "
                             f"state {after['state']}, queue {after['queue_length']}")
            client.running = False
            await runner
            await client.finish()
            got["udp packets"] += collector.packets if collector else 0
            print(f"== HEP collector ({kind}) down and back, OPTIONS every {PERIOD * 1e3:.0f} ms", flush=True)
            for line in lines:
                print(f"   {line}")
            print(f"   collector received: {dict(got)}")
            back = lines[-1]
            delivered = got["udp packets"] if kind == "udp" else got["tcp packets"]
            good = report(client.outcomes, {}, sampler) and delivered > 0 and "packets_sent +0," not in back
            print(f"   {'PASS' if good else 'FAIL'} SIP unaffected and tracing resumed after the collector came back")
            ok &= good
            await phone.close()
        finally:
            sipws.stop()
            await stop(handle)
            core.transport.close()
    return ok


def fault_kamailio(tmp: Path, quick: bool) -> bool:
    """Blocking (peers are subprocesses driven by threads)."""
    sys.path.insert(0, str(ROOT_DIR))
    from tests.interop.peers import JsSipUa, KamailioCore, free_port as peer_port

    kamailio = KamailioCore(tmp / "kam", peer_port())
    (tmp / "kam").mkdir()
    kamailio.start()
    sipws = Sipws(tmp / "kam-sipws", RELAY_CONFIG % {"upstream": f"sip:127.0.0.1:{kamailio.port};transport=udp",
                                                     "t1": 0.5, "extra": ""})
    uas = []
    results = []
    try:
        url = f"ws://127.0.0.1:{sipws.ws_port}"
        alice = JsSipUa(url, "sip:alice@example.com").start()
        uas.append(alice)
        bob = JsSipUa(url, "sip:bob@example.com").start()
        uas.append(bob)
        print("== Kamailio restarted under registered JsSIP clients", flush=True)

        def call(label: str) -> bool:
            alice.send(cmd="call", target="sip:bob@example.com")
            try:
                bob.expect("confirmed", tag="in")
                alice.expect("confirmed", tag="out")
                alice.send(cmd="hangup")
                bob.expect("ended", tag="in")
                alice.expect("ended", tag="out")
                print(f"   PASS call {label}: confirmed at both ends, BYE seen by both")
                return True
            except AssertionError as exc:
                print(f"   FAIL call {label}: {exc}")
                return False

        for ua in (alice, bob):
            results.append(ua.register()["status"] == 200)
        print(f"   registered: {results}")
        results.append(call("before the restart"))
        began = time.monotonic()
        kamailio.stop()
        kamailio.start()
        print(f"   Kamailio restarted in {time.monotonic() - began:.1f}s (location table lost); "
              f"sipws connections {sipws.tables()['connections']}")
        alice.send(cmd="message", target="sip:bob@example.com", body="are you there?")
        try:
            failed = alice.expect("message_failed")
            print(f"   before registering again: MESSAGE to bob -> {failed.get('status')} ({failed.get('cause')})")
        except AssertionError as exc:
            print(f"   before registering again: {exc}")
        # JsSIP emits "registered" only on a state change, so the new bindings are read from
        # Kamailio (ul.dump); a REGISTER meeting Kamailio before its sockets are up is retried.
        deadline = time.monotonic() + 20
        stored = False
        while not stored and time.monotonic() < deadline:
            for ua in (alice, bob):
                ua.send(cmd="register")
            time.sleep(2)
            dump = kamailio.kamcmd("ul.dump")
            stored = "alice" in dump and "bob" in dump
        print(f"   registered again (both bindings in Kamailio's ul.dump): {stored}")
        results.append(stored)
        results.append(call("after the restart"))
        print(f"   sipws tables: {sipws.tables()}")
    finally:
        for ua in uas:
            ua.stop()
        sipws.stop()
        kamailio.stop()
    ok = all(results)
    print(f"   {'PASS' if ok else 'FAIL'} clients registered again and calls work after the core restart")
    return ok


async def faults(args: argparse.Namespace) -> int:
    raise_file_limit()
    results = []
    only = args.only or ["core", "dns", "hep", "kamailio"]
    with tempfile.TemporaryDirectory(prefix="sipws-faults-") as tmp_name:
        tmp = Path(tmp_name)
        if "core" in only:
            results.append(await fault_core(tmp, args.quick))
        if "dns" in only:
            results.append(await fault_dns(tmp, args.quick))
        if "hep" in only:
            results.append(await fault_hep(tmp, args.quick))
        if "kamailio" in only:
            results.append(await asyncio.get_running_loop().run_in_executor(None, fault_kamailio, tmp, args.quick))
    print(f"{'PASS' if all(results) else 'FAIL'} faults: {len(results)} run, {results.count(False)} failed")
    return 0 if all(results) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases, [sip] t1 = 0.05 (the make test slice)")
    parser.add_argument("--only", nargs="*", choices=["core", "dns", "hep", "kamailio"])
    stop_on_sigterm()
    return asyncio.run(faults(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
