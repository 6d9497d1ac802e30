"""Fast failure toward the core: ICMP unreachable → 503 at once; a silent core → one warning.

Real sockets on 127.0.0.1: a datagram to a port nobody listens on makes the
kernel answer ICMP port unreachable, which sipws reads from its UDP socket's
error queue (IP_RECVERR).  Without that, the client waited 32 s (timer B/F)
for a 408.
"""

from __future__ import annotations

import socket

import pytest_twisted

from tests.integration.conftest import in_thread, port_of
from tests.integration.sipcore import reply, udp_core, ws_request
from tests.integration.test_relay import exchange, open_client, read_sip, relay_config

#: Seconds a client may wait for the 503: far below timer B/F (32 s with T1 = 0.5 s).
FAST_ANSWER = 5.0


def dead_udp_port() -> int:
    """A UDP port on 127.0.0.1 with nobody behind it (bound once, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answer_within(client, seconds: float):
    client.sock.settimeout(seconds)
    return read_sip(client)


@pytest_twisted.inlineCallbacks
def test_unreachable_core_answers_503_at_once_and_the_socket_keeps_working(sipws_factory, sipws_log):
    port = dead_udp_port()
    root = sipws_factory(relay_config("udp", port))
    client = yield in_thread(open_client, port_of(root))
    try:
        for method, call_id in (("OPTIONS", "icmp-1"), ("INVITE", "icmp-2"), ("MESSAGE", "icmp-3")):
            yield in_thread(exchange, client, ws_request(method, call_id))
            resp, _ = yield in_thread(answer_within, client, FAST_ANSWER)
            if resp.status == 100:  # INVITE: the proxy's 100 Trying comes first
                resp, _ = yield in_thread(answer_within, client, FAST_ANSWER)
            assert resp.status == 503, (method, resp.status)
            assert resp.call_id == call_id
        assert root.stats.get("sip.icmp_errors") == 3
        assert any("ICMP port unreachable" in line for line in sipws_log), sipws_log

        # The core comes up on that port: the same socket relays normally again.
        core = udp_core_on(port)
        try:
            yield in_thread(exchange, client, ws_request("OPTIONS", "icmp-4"))
            req, _, source = yield core.next()
            core.send(reply(req), source)
            resp, _ = yield in_thread(answer_within, client, FAST_ANSWER)
            assert resp.status == 200 and resp.call_id == "icmp-4"
        finally:
            core.port.stopListening()
    finally:
        client.shutdown()


def udp_core_on(port: int):
    from twisted.internet import reactor

    from tests.integration.sipcore import CoreUdp

    core = CoreUdp()
    core.port = reactor.listenUDP(port, core, interface="127.0.0.1", maxPacketSize=65535)
    return core


@pytest_twisted.inlineCallbacks
def test_icmp_for_a_response_or_an_unknown_transaction_changes_nothing(sipws_factory):
    """An ICMP error quoting something that is not a pending request of ours is ignored."""
    core = udp_core()
    try:
        root = sipws_factory(relay_config("udp", core.number))
        client = yield in_thread(open_client, port_of(root))
        yield in_thread(exchange, client, ws_request("OPTIONS", "live-1"))
        req, _, source = yield core.next()
        relay = root.relay
        relay._unreachable(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKnothing\r\n",
                           ("127.0.0.1", core.number), "ICMP port unreachable")
        relay._unreachable(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKother\r\n",
                           ("127.0.0.1", core.number), "ICMP port unreachable")
        core.send(reply(req), source)
        resp, _ = yield in_thread(answer_within, client, FAST_ANSWER)
        assert resp.status == 200
        client.shutdown()
    finally:
        core.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_silent_core_is_reported_once_not_per_request(sipws_factory, sipws_log):
    """A core that receives but never answers: each request ends in 408, the log says so once."""
    silent = udp_core()  # listens (no ICMP), never answers
    try:
        root = sipws_factory(relay_config("udp", silent.number, t1=0.02, t2=0.08, t4=0.1))
        client = yield in_thread(open_client, port_of(root))
        for i in range(4):
            yield in_thread(exchange, client, ws_request("OPTIONS", f"silent-{i}"))
        statuses = []
        for _ in range(4):
            resp, _ = yield in_thread(answer_within, client, FAST_ANSWER)
            statuses.append(resp.status)
        assert statuses == [408] * 4
        warnings = [line for line in sipws_log if "does not answer" in line]
        assert len(warnings) == 1, warnings
        assert f"next hop upstream sip:127.0.0.1:{silent.number};transport=udp does not answer" in warnings[0]
        client.shutdown()
    finally:
        silent.port.stopListening()


class _NoReactor:
    """A port driven by hand: nobody reads its socket between the test's steps."""

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def test_queued_icmp_error_does_not_cost_the_next_datagram_to_another_destination():
    """With IP_RECVERR the kernel reports a queued ICMP error on the next send, whatever its
    destination, and drops that datagram; sipws reads the error and sends again."""
    import select

    from sipws.transport.sip_udp import SipUdpPort, SipUdpProtocol

    errors = []
    protocol = SipUdpProtocol(lambda *args: None, lambda quoted, dest, reason: errors.append((quoted, dest)))
    port = SipUdpPort(0, protocol, interface="127.0.0.1", maxPacketSize=65535, reactor=_NoReactor())
    port.startListening()
    live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    live.bind(("127.0.0.1", 0))
    live.settimeout(FAST_ANSWER)
    try:
        dead = ("127.0.0.1", dead_udp_port())
        assert protocol.send(b"to the dead port", dead)
        poller = select.poll()
        poller.register(port.socket.fileno(), 0)  # POLLERR only: does not consume the error
        assert poller.poll(FAST_ANSWER * 1000), "no ICMP error queued"
        sent = protocol.send(b"to the live port", live.getsockname())
        assert sent
        assert live.recvfrom(100)[0] == b"to the live port"
        port.read_errors()
        assert errors == [(b"to the dead port", dead)]
    finally:
        live.close()
        port.socket.close()
