"""SIP UDP sockets sized for load, and the kernel's drops counted ([sip] udp_buffer_size).

Real sockets on 127.0.0.1.  With the kernel's default receive buffer (~208 KiB) a burst of
calls overflowed it and the dropped INVITEs stalled call set-up until retransmitted.
"""

from __future__ import annotations

import socket

import pytest_twisted

from sipws.config import SipConfig
from sipws.transport.sip_udp import SipUdpPort, SipUdpProtocol, listen_udp
from tests.integration.conftest import port_of
from tests.integration.test_relay import relay_config

#: Datagrams sent at a reader that does not read, and their size: far over a tiny buffer.
BURST = 400
DATAGRAM = b"x" * 1000


class _NoReactor:
    """Enough of a reactor for a port whose reads the test drives by hand."""

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def _port(buffer_size: int, drops: list[int]) -> tuple[SipUdpPort, list[bytes]]:
    received: list[bytes] = []
    protocol = SipUdpProtocol(lambda data, *rest: received.append(data))
    port = SipUdpPort(0, protocol, interface="127.0.0.1", maxPacketSize=65535, reactor=_NoReactor())
    port.buffer_size = buffer_size
    port.on_drops = drops.append
    port.startListening()
    return port, received


def test_default_buffer_size_is_granted_to_the_socket():
    size = SipConfig().udp_buffer_size
    assert size >= 1024 * 1024
    port, _ = _port(size, [])
    try:
        # Linux reports twice what it grants; anything below size/2 would be the
        # kernel default cap, not our request.
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= size
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= size
    finally:
        port.socket.close()


def test_drops_on_a_full_receive_buffer_are_counted():
    drops: list[int] = []
    port, received = _port(4096, drops)  # the kernel's minimum: a few datagrams fit
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        address = port.socket.getsockname()
        for _ in range(BURST):
            sender.sendto(DATAGRAM, address)
        port.doRead()  # what fitted; the rest was dropped by the kernel
        fitted = len(received)
        assert 0 < fitted < BURST
        # The kernel reports its drop count with the next datagram it queues.
        sender.sendto(b"after the burst", address)
        port.doRead()
        assert received[-1] == b"after the burst"
        assert sum(drops) == port.drops == BURST - fitted
        # A later datagram with no new drop adds nothing.
        sender.sendto(b"once more", address)
        port.doRead()
        assert sum(drops) == BURST - fitted
    finally:
        sender.close()
        port.socket.close()


def test_zero_keeps_the_kernel_default():
    port, _ = _port(0, [])
    try:
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        plain.close()
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == default
    finally:
        port.socket.close()


def test_listen_udp_passes_size_and_drop_callback():
    drops: list[int] = []
    protocol, port = listen_udp(_NoReactor(), "127.0.0.1", 0, lambda *a: None, None, 1 << 20, drops.append)
    try:
        assert port.on_drops == drops.append
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
    finally:
        port.socket.close()


@pytest_twisted.inlineCallbacks
def test_relay_shows_udp_drops_in_stats_and_metrics(sipws_factory):
    from sipws.admin import metrics

    root = sipws_factory({**relay_config("udp", 5999, udp_buffer_size=1 << 20),
                          "ws": {"listen": ["127.0.0.1:0"]}})
    assert port_of(root) > 0
    udp = root.listening("sip-udp")[0]
    assert udp.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
    assert root.stats.snapshot()["sip.udp_drops"] == 0
    udp.on_drops(3)  # as the port reports a kernel drop count increase
    assert root.stats.get("sip.udp_drops") == 3
    text = metrics.render(metrics.make_registry(root)).decode()
    assert "sipws_sip_udp_drops_total 3.0" in text
    yield None
