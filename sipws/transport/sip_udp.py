"""SIP over UDP toward the core: one socket per ``udp:`` entry of ``[sip] listen``.

Each datagram is one SIP message (RFC 3261 §18.3 needs no framing on UDP).
Datagrams up to 65535 bytes are read whole: Twisted's default read size
(8 KiB) would truncate a large INVITE and the parser would then reject it for
a Content-Length it cannot see.  Sending is fire-and-forget; an error the
kernel reports at once (no route, message too long) is passed back so the
transaction answers 503 instead of waiting for timer B/F.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger(namespace="sipws.transport.sip_udp")

#: Largest datagram read from the socket (the IPv4/IPv6 UDP payload limit).
MAX_DATAGRAM = 65535

Receiver = Callable[[bytes, tuple[str, int], str, Any], None]


class SipUdpProtocol(DatagramProtocol):
    """One bound UDP socket; hands every datagram to ``receiver``."""

    noisy = False  # no "Starting protocol" lines: the relay logs what it binds

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.family = socket.AF_INET

    def startProtocol(self) -> None:
        host = self.transport.getHost().host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.receiver(data, (addr[0], addr[1]), "udp", self)
        except Exception:
            log.failure("relay failed on a datagram from {host}:{port}", host=addr[0], port=addr[1])

    def send(self, data: bytes, address: tuple[str, int],
             on_error: Optional[Callable[[str], None]] = None) -> bool:
        """Send one datagram; False (and ``on_error``) when the kernel refuses it."""
        if self.transport is None:
            if on_error is not None:
                on_error("UDP socket closed")
            return False
        try:
            self.transport.write(data, address)
        except OSError as exc:
            log.warn("udp send to {host}:{port} failed: {error}", host=address[0], port=address[1],
                     error=exc.strerror or exc)
            if on_error is not None:
                on_error(f"UDP send failed: {exc.strerror or exc}")
            return False
        return True

    @property
    def local(self) -> tuple[str, int]:
        host = self.transport.getHost()
        return host.host, host.port


def listen_udp(reactor: Any, host: str, port: int, receiver: Receiver) -> tuple[SipUdpProtocol, Any]:
    """Bind one SIP UDP socket; returns (protocol, listening port)."""
    protocol = SipUdpProtocol(receiver)
    listening = reactor.listenUDP(port, protocol, interface=host, maxPacketSize=MAX_DATAGRAM)
    return protocol, listening
