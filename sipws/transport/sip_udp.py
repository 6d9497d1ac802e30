"""SIP over UDP toward the core: one socket per ``udp:`` entry of ``[sip] listen``.

Each datagram is one SIP message (RFC 3261 §18.3 needs no framing on UDP).
Datagrams up to 65535 bytes are read whole: Twisted's default read size
(8 KiB) would truncate a large INVITE and the parser would then reject it for
a Content-Length it cannot see.  Sending is fire-and-forget; an error the
kernel reports at once (no route, message too long) is passed back so the
transaction answers 503 instead of waiting for timer B/F.

ICMP errors (Linux).  A datagram to a port nobody listens on comes back as
ICMP port unreachable; without help an unconnected UDP socket never hears of
it and the client waits 32 s for a 408.  ``SipUdpPort`` turns on
``IP_RECVERR`` / ``IPV6_RECVERR``: the kernel then queues each ICMP error with
the destination and the first bytes of the datagram that caused it, and the
port reads that queue (``recvmsg(MSG_ERRQUEUE)``) and hands each error to the
protocol's ``unreachable``, which lets the relay fail exactly the transaction
whose request it was (its branch is in those bytes) with 503 at once.

Chosen over one connected UDP socket per destination (the other way to hear
ICMP): it keeps a single socket per ``[sip] listen`` entry, so the Via port and
the port the core answers to stay the same, works for any number of next
hops, and costs nothing on the send path (bench/udp_icmp.py measures both).
Twisted's own UDP port would treat the error queue's EPOLLERR wake-up as the
socket closing: ``readConnectionLost`` below drains the queue instead.

One more trap: with IP_RECVERR the kernel also reports a queued ICMP error
on the *next send*, whatever its destination, and does not send that
datagram; Twisted's ``write`` swallows ECONNREFUSED, so a request to a
healthy next hop would vanish because another one was down.
``SipUdpPort.write`` reads the queue and sends again instead.

Buffers and drops.  A burst of calls overflows the kernel's default receive
buffer (~208 KiB): datagrams are dropped before sipws sees them, the core
retransmits after T1 and call set-up stalls.  ``[sip] udp_buffer_size`` sizes
both buffers (as root beyond ``net.core.rmem_max`` / ``wmem_max`` with
``SO_RCVBUFFORCE`` / ``SO_SNDBUFFORCE``; otherwise one log line says what the
kernel granted), and ``SO_RXQ_OVFL`` makes the kernel attach its running
count of dropped datagrams to each datagram read (``recvmsg``): the port
hands every increase to ``on_drops`` (the ``sip.udp_drops`` counter).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Callable, Optional

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="sipws.transport.sip_udp")

#: Largest datagram read from the socket (the IPv4/IPv6 UDP payload limit).
MAX_DATAGRAM = 65535

#: Linux socket options (not all exported by Python's socket module).
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
#: Bytes of the offending datagram kept from an error-queue entry: enough for
#: the request line and our Via (the kernel quotes at most ~540 bytes anyway).
ERROR_QUOTE_SIZE = 2048
#: Ancillary buffer for one error-queue entry (sock_extended_err + offender address).
ERROR_ANCILLARY_SIZE = 512
#: Error-queue entries read per wake-up (a burst of ICMP is bounded work).
MAX_ERRORS_PER_READ = 64
#: struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, pad, ee_info, ee_data.
_EXTENDED_ERR = struct.Struct("=IBBBBII")
#: Read errors that an ICMP error (or the queue it sits in) surfaces as.
ICMP_READ_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              errno.EHOSTDOWN, errno.ENETDOWN, errno.EPROTO, errno.EMSGSIZE})
#: Sends retried after a queued ICMP error surfaced on them (each retry first drains the queue).
SEND_ATTEMPTS = 4
#: Send errors that are a queued ICMP error about an earlier datagram, not about this one.
_EARLIER_ICMP = ICMP_READ_ERRORS - {errno.EMSGSIZE}
#: SOL_SOCKET options (Linux numbers where Python does not export them).
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
#: Ancillary space for the SO_RXQ_OVFL drop counter (one uint32).
_OVFL_ANCILLARY = socket.CMSG_SPACE(4)
_UINT32 = struct.Struct("=I")
#: Read errors that only mean "nothing more to read now".
_READ_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})

Receiver = Callable[[bytes, tuple[str, int], str, Any], None]
#: on_drops(datagrams the kernel dropped since the last report)
OnDrops = Callable[[int], None]
#: unreachable(quoted datagram head, original destination, reason)
Unreachable = Callable[[bytes, tuple[str, int], str], None]


class SipUdpProtocol(DatagramProtocol):
    """One bound UDP socket; hands every datagram to ``receiver``."""

    noisy = False  # no "Starting protocol" lines: the relay logs what it binds

    def __init__(self, receiver: Receiver, unreachable: Optional[Unreachable] = None) -> None:
        self.receiver = receiver
        self.on_unreachable = unreachable
        self.family = socket.AF_INET

    def startProtocol(self) -> None:
        host = self.transport.getHost().host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.receiver(data, (addr[0], addr[1]), "udp", self)
        except Exception:
            log.failure("relay failed on a datagram from {host}:{port}", host=addr[0], port=addr[1])

    def unreachable(self, quoted: bytes, destination: tuple[str, int], reason: str) -> None:
        """An ICMP error for a datagram we sent to ``destination`` (its first bytes quoted)."""
        if self.on_unreachable is None:
            return
        try:
            self.on_unreachable(quoted, destination, reason)
        except Exception:
            log.failure("relay failed on an ICMP error for {host}:{port}", host=destination[0],
                        port=destination[1])

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


def _icmp_reason(err: int, ancillary: list[tuple[int, int, bytes]]) -> str:
    """What the kernel says about one queued error, e.g. "ICMP port unreachable from 192.0.2.9"."""
    for level, kind, data in ancillary:
        if len(data) < _EXTENDED_ERR.size or kind not in (IP_RECVERR, IPV6_RECVERR):
            continue
        ee_errno, origin, icmp_type, icmp_code = _EXTENDED_ERR.unpack_from(data)[:4]
        text = _ERRNO_TEXT.get(ee_errno) or errno.errorcode.get(ee_errno, str(ee_errno))
        offender = _offender(data[_EXTENDED_ERR.size:])
        where = f" from {offender}" if offender else ""
        return f"ICMP {text}{where}"
    return f"ICMP {_ERRNO_TEXT.get(err) or errno.errorcode.get(err, str(err))}"


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "port unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host down",
    errno.EMSGSIZE: "message too big",
}


def _offender(data: bytes) -> str:
    """The address of whoever sent the ICMP error (a sockaddr_in / sockaddr_in6), or ""."""
    if len(data) >= 8 and struct.unpack_from("=H", data)[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, data[4:8])
    if len(data) >= 24 and struct.unpack_from("=H", data)[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, data[8:24])
    return ""


def size_buffers(sock: socket.socket, size: int) -> tuple[int, int]:
    """Ask for ``size``-byte receive and send buffers; what the kernel granted.

    Linux caps SO_RCVBUF / SO_SNDBUF at net.core.rmem_max / wmem_max; the
    FORCE variants (CAP_NET_ADMIN) are tried first and go beyond.  The values
    returned are what the buffers hold for data (Linux reports twice the size
    asked, the other half being its bookkeeping allowance).
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # not root: the plain option, capped by the kernel
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2,
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)


@implementer(IHalfCloseableDescriptor)
class SipUdpPort(udp.Port):
    """A UDP port that reads ICMP errors from the socket's error queue and counts
    the kernel's receive-buffer drops (see module docstring)."""

    #: Bytes asked for each socket buffer; 0 = the kernel's default.
    buffer_size = 0
    #: Called with each increase of the kernel's drop count.
    on_drops: Optional[OnDrops] = None
    #: Datagrams the kernel dropped on this socket (its count as last reported).
    drops = 0
    #: SO_RXQ_OVFL is on: reads go through recvmsg to see the drop count.
    count_drops = False

    def startListening(self) -> None:
        super().startListening()
        self._size_buffers()
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self.count_drops = True
        except OSError:
            log.info("udp {port}: no SO_RXQ_OVFL on this system; receive-buffer drops are not "
                     "counted", port=self._realPortNumber)
        self.recverr = False
        try:
            if self.addressFamily == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            self.recverr = True
        except OSError:
            log.info("udp {port}: no IP_RECVERR on this system; an unreachable core is "
                     "noticed by timer B/F only", port=self._realPortNumber)

    def _size_buffers(self) -> None:
        size = self.buffer_size
        if not size:
            return
        rcv, snd = size_buffers(self.socket, size)
        if rcv >= size and snd >= size:
            log.info("udp {port}: socket buffers {rcv} bytes (receive), {snd} bytes (send)",
                     port=self._realPortNumber, rcv=rcv, snd=snd)
        else:
            log.warn("udp {port}: [sip] udp_buffer_size asks {size} bytes, the kernel granted "
                     "{rcv} (receive) and {snd} (send): raise net.core.rmem_max and wmem_max, "
                     "or start as root", port=self._realPortNumber, size=size, rcv=rcv, snd=snd)

    def doRead(self) -> None:
        """Twisted's read loop, except that an ICMP error does not end it, and
        the kernel's drop count rides along (SO_RXQ_OVFL)."""
        if self.count_drops:
            self._read_counting()
            return
        read = 0
        receive = self.socket.recvfrom
        protocol = self.protocol
        while read < self.maxThroughput:
            try:
                data, addr = receive(self.maxPacketSize)
            except OSError as exc:
                if exc.errno in _READ_AGAIN:
                    return
                if exc.errno in ICMP_READ_ERRORS:
                    self.read_errors()
                    continue
                raise
            read += len(data)
            try:
                protocol.datagramReceived(data, addr[:2])
            except BaseException:
                log.failure("datagram handler failed")

    def _read_counting(self) -> None:
        """doRead with recvmsg: each datagram may carry the socket's drop count."""
        read = 0
        receive = self.socket.recvmsg
        size = self.maxPacketSize
        protocol = self.protocol
        while read < self.maxThroughput:
            try:
                data, ancillary, _flags, addr = receive(size, _OVFL_ANCILLARY)
            except OSError as exc:
                if exc.errno in _READ_AGAIN:
                    return
                if exc.errno in ICMP_READ_ERRORS:
                    self.read_errors()
                    continue
                raise
            if ancillary:
                self._note_drops(ancillary)
            read += len(data)
            try:
                protocol.datagramReceived(data, addr[:2])
            except BaseException:
                log.failure("datagram handler failed")

    def _note_drops(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= _UINT32.size:
                total = _UINT32.unpack_from(data)[0]
                if total > self.drops:
                    new, self.drops = total - self.drops, total
                    if self.on_drops is not None:
                        self.on_drops(new)

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """Send one datagram; a queued ICMP error surfacing here is read, then the send retried.

        Addresses are numeric (the relay resolves first); a wrong family or a
        refusal by the kernel raises OSError for the caller to report.
        """
        for _ in range(SEND_ATTEMPTS):
            try:
                self.socket.sendto(datagram, addr)
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno in _EARLIER_ICMP and self.recverr:
                    self.read_errors()  # about an earlier datagram: this one was not sent
                    continue
                raise
        raise OSError(errno.EAGAIN, "ICMP errors kept arriving; datagram not sent")

    def read_errors(self) -> None:
        """Drain the error queue (bounded per call); each entry goes to ``protocol.unreachable``."""
        if not self.recverr:
            return
        sock = self.socket
        for _ in range(MAX_ERRORS_PER_READ):
            try:
                quoted, ancillary, _flags, destination = sock.recvmsg(
                    ERROR_QUOTE_SIZE, ERROR_ANCILLARY_SIZE, socket.MSG_ERRQUEUE)
            except OSError as exc:
                if exc.errno not in _READ_AGAIN:
                    log.warn("udp {port}: reading the error queue failed: {error}",
                             port=self._realPortNumber, error=exc.strerror or exc)
                break
            reason = _icmp_reason(0, ancillary)
            if destination:
                self.protocol.unreachable(quoted, (destination[0], destination[1]), reason)
        # A pending socket error (sk_err) is cleared by reading it; the queue is
        # what keeps EPOLLERR raised, and it is now drained or left for next time.
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def readConnectionLost(self, reason: Any) -> None:
        """The reactor saw EPOLLERR with nothing to read: that is the error queue, not a close."""
        if not self.connected:
            return
        self.read_errors()
        self.startReading()


def listen_udp(reactor: Any, host: str, port: int, receiver: Receiver,
               unreachable: Optional[Unreachable] = None, buffer_size: int = 0,
               on_drops: Optional[OnDrops] = None) -> tuple[SipUdpProtocol, Any]:
    """Bind one SIP UDP socket that hears ICMP errors, its buffers ``buffer_size``
    bytes (0: the kernel's default), drops reported to ``on_drops``; returns
    (protocol, listening port)."""
    protocol = SipUdpProtocol(receiver, unreachable)
    listening = SipUdpPort(port, protocol, interface=host, maxPacketSize=MAX_DATAGRAM, reactor=reactor)
    listening.buffer_size = buffer_size
    listening.on_drops = on_drops
    listening.startListening()
    return protocol, listening
