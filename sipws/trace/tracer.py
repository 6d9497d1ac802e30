"""HEP tracing: what is traced, the on/off switch, the filter, the destinations.

The transports call the hooks of ``root.tracer``:

- ``connection_made(record)`` once per WebSocket connection, when TCP is up;
  the ``[trace] filter`` decides here, once, whether the connection is traced
  (``record.traced``);
- ``ws_handshake(...)``, ``ws_closed(...)``: protocol type 0x59 events with a
  JSON payload and correlation id = the connection id;
- ``sip_message(...)``: every SIP message received or sent on any transport,
  protocol type 1 with the exact bytes;
- ``msrp_message(...)``: every MSRP chunk received or sent (WebSocket, TCP, TLS).
  HEPv3 assigns MSRP no protocol type (its table: 1 SIP, 2 XMPP, 3 SDP, 4 RTP,
  5 RTCP, ... 0x3c CDR), so sipws sends an event of its own type 0x59 with a JSON
  payload ``{"event": "msrp", ...}``: direction, connection id, sizes and the chunk's
  text cut to ``MSRP_TRACE_MAX`` bytes (a chunk may exceed a HEP packet's 64 KiB).

Hooks never raise and cost one attribute test when tracing is off.  Packets go
to a ``Destination``: UDP (one datagram each) or TCP (back to back, reconnect
with back-off).  Both keep a bounded queue (``[trace] queue_size`` packets and
``MAX_QUEUE_BYTES``) while the collector is unreachable or the socket is backed
up; a packet that does not fit is dropped and counted, so tracing never blocks
or slows the relay.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import time
from collections import deque
from typing import Any, Callable, Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from sipws.config import TraceConfig, parse_host_port, resolve_callable
from sipws.trace import hep
from sipws.trace.errors import HepError, TraceNotConfigured

log = Logger(namespace="sipws.trace")

#: Byte cap of the queue, on top of ``[trace] queue_size`` packets.
MAX_QUEUE_BYTES = 16 * 1024 * 1024
#: TCP reconnect back-off: first delay, factor, ceiling (seconds).
RECONNECT_INITIAL = 0.5
RECONNECT_FACTOR = 2.0
RECONNECT_MAX = 30.0
#: UDP socket re-opening after ICMP errors: first delay, ceiling, and the quiet
#: time after which the next error re-opens at once again (seconds).
UDP_REOPEN_MIN = 0.1
UDP_REOPEN_MAX = 5.0
UDP_REOPEN_RESET = 30.0
#: Seconds a stopping TCP destination waits for its buffer to drain before aborting.
STOP_GRACE = 2.0
#: Seconds allowed for one TCP connection attempt.
CONNECT_TIMEOUT = 10.0
#: Where the Call-ID is looked for: the header block, at most this many bytes.
CALL_ID_SCAN_LIMIT = 8192
#: Longest correlation id taken from a Call-ID.
MAX_CORRELATION_ID = 256
#: Distinct (source, destination) host pairs whose packed form is cached.
ADDRESS_CACHE_SIZE = 4096
#: Bytes of one MSRP chunk copied into its trace event (head and the start of the body).
MSRP_TRACE_MAX = 4096
#: At most one "dropping packets" warning per this many seconds.
DROP_LOG_INTERVAL = 10.0

IP_PROTO_BY_TRANSPORT = {"udp": hep.IPPROTO_UDP}  # everything else is TCP (6)

_COMPACT_CALL_ID_RE = re.compile(rb"\ni[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def find_call_id(data: bytes) -> bytes | None:
    """The Call-ID value of a SIP message, by a cheap scan of its header block.

    No full parse: the first ``Call-ID:`` (or compact ``i:``) header line in
    the first ``CALL_ID_SCAN_LIMIT`` bytes before the blank line.  None when
    there is none (a keep-alive, a fragment, garbage).
    """
    head = data[:CALL_ID_SCAN_LIMIT]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
    lower = head.lower()
    start = lower.find(b"\ncall-id")
    while start >= 0:
        colon = start + 8
        while lower[colon : colon + 1] in (b" ", b"\t"):
            colon += 1
        if lower[colon : colon + 1] == b":":
            stop = len(head)
            for terminator in (b"\r", b"\n"):
                found = head.find(terminator, colon)
                if 0 <= found < stop:
                    stop = found
            value = head[colon + 1 : stop].strip()
            return value[:MAX_CORRELATION_ID] or None
        start = lower.find(b"\ncall-id", start + 1)
    match = _COMPACT_CALL_ID_RE.search(head)
    if match is None:
        return None
    value = match.group(1).strip()
    return value[:MAX_CORRELATION_ID] or None


def _fmt(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _safe_fmt(address: Any) -> str:
    try:
        return _fmt(address)
    except Exception:  # noqa: BLE001 - only for log lines
        return repr(address)


# -- the bounded queue --------------------------------------------------------


class PacketQueue:
    """FIFO of encoded packets bounded by count and bytes; ``push`` says if it fit."""

    __slots__ = ("max_packets", "max_bytes", "_items", "bytes")

    def __init__(self, max_packets: int, max_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._items: deque[bytes] = deque()
        self.bytes = 0

    def push(self, packet: bytes) -> bool:
        if len(self._items) >= self.max_packets or self.bytes + len(packet) > self.max_bytes:
            return False
        self._items.append(packet)
        self.bytes += len(packet)
        return True

    def pop(self) -> bytes:
        packet = self._items.popleft()
        self.bytes -= len(packet)
        return packet

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        self.bytes = 0
        return count

    def __len__(self) -> int:
        return len(self._items)


# -- destinations ------------------------------------------------------------


class Counters(TypingProtocol):
    def sent(self, count: int = 1) -> None: ...

    def dropped(self, count: int = 1) -> None: ...


class Destination:
    """Where encoded packets go; ``send`` never blocks and never raises.

    Subclasses implement ``_write_now`` (True when the packet was handed to
    the socket) and ``_ready`` (the socket can take a packet right now).
    """

    kind = "memory"

    def __init__(self, queue: PacketQueue, counters: Counters) -> None:
        self.queue = queue
        self.counters = counters
        self.state = "stopped"

    def start(self) -> None:
        self.state = "started"

    def stop(self) -> defer.Deferred[None] | None:
        self.state = "stopped"
        return None

    def _ready(self) -> bool:
        return False

    def _write_now(self, packet: bytes) -> bool:
        raise NotImplementedError

    def send(self, packet: bytes) -> None:
        if self._ready() and not self.queue:
            if self._write_now(packet):
                self.counters.sent()
            else:
                self.counters.dropped()
        elif not self.queue.push(packet):
            self.counters.dropped()

    def flush(self) -> None:
        """Write queued packets while the socket takes them."""
        while self.queue and self._ready():
            if self._write_now(self.queue.pop()):
                self.counters.sent()
            else:
                self.counters.dropped()

    def describe(self) -> dict[str, Any]:
        return {"destination": self.kind, "state": self.state, "queue_length": len(self.queue),
                "queue_bytes": self.queue.bytes}


class _UdpSender(DatagramProtocol):
    noisy = False
    def __init__(self, owner: "UdpDestination") -> None:
        self.owner = owner

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass  # a collector has nothing to say; ignore whatever arrives

    def connectionRefused(self) -> None:
        # ICMP port unreachable for an earlier datagram: counted, never raised.
        self.owner.refused += 1

    def stopProtocol(self) -> None:
        self.owner._port_closed(self)


class UdpDestination(Destination):
    """One datagram per packet on a connected UDP socket."""

    kind = "udp"

    def __init__(self, reactor: Any, host: str, port: int, queue: PacketQueue,
                 counters: Counters) -> None:
        super().__init__(queue, counters)
        self.reactor = reactor
        self.host = host
        self.port = port
        self.refused = 0
        self._port: Any = None
        self._proto: _UdpSender | None = None
        self._address = host
        self._reopen: Any = None
        self._reopen_delay = 0.0
        self._last_reopen = float("-inf")
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        self.state = "resolving"
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            d = self.reactor.resolve(self.host)
            d.addCallbacks(self._bind, self._resolve_failed)
            return
        self._bind(self.host)

    def _resolve_failed(self, failure: Any) -> None:
        self.state = "unresolved"
        dropped = self.queue.clear()
        if dropped:
            self.counters.dropped(dropped)
        log.warn("trace: cannot resolve udp:{host}: {err}", host=self.host,
                 err=failure.getErrorMessage())

    def _bind(self, address: str) -> None:
        if self._stopped:
            return
        self._reopen = None
        self._address = address
        try:
            family_v6 = ipaddress.ip_address(address).version == 6
            proto = self._proto = _UdpSender(self)
            self._port = self.reactor.listenUDP(0, proto, interface="::" if family_v6 else "0.0.0.0")
            self._port.connect(address, self.port)
        except Exception as exc:  # noqa: BLE001 - reported, tracing stays harmless
            self.state = "error"
            log.warn("trace: cannot open udp socket to {dst}: {err}",
                     dst=_fmt((address, self.port)), err=exc)
            return
        self.state = "connected"
        self.flush()

    def _port_closed(self, proto: _UdpSender) -> None:
        """The reactor closed the socket under us: re-open it.

        Twisted's epoll reactor treats the error an ICMP port-unreachable
        leaves on a connected UDP socket as the end of the socket; that is the
        collector being down, counted like a refusal, and the socket comes
        back at once (packets queue meanwhile).
        """
        if self._stopped or proto is not self._proto:
            return
        self.refused += 1
        self._port = self._proto = None
        self.state = "reopening"
        # Back off while the collector stays down: each reopen costs a log
        # line in Twisted, and packets queue (then drop) meanwhile anyway.
        now = self.reactor.seconds()
        if now - self._last_reopen > UDP_REOPEN_RESET:
            self._reopen_delay = 0.0
        else:
            self._reopen_delay = min(max(self._reopen_delay * 2, UDP_REOPEN_MIN), UDP_REOPEN_MAX)
        self._last_reopen = now
        self._reopen = self.reactor.callLater(self._reopen_delay, self._bind, self._address)

    def _ready(self) -> bool:
        return self.state == "connected"

    def _write_now(self, packet: bytes) -> bool:
        try:
            self._port.write(packet)
        except (OSError, error.MessageLengthError):
            return False
        return True

    def stop(self) -> defer.Deferred[None] | None:
        self._stopped = True
        self.state = "stopped"
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        port, self._port = self._port, None
        self._proto = None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["icmp_errors"] = self.refused
        return info


@implementer(IPushProducer)
class _HepStream(Protocol):
    """The TCP connection to the collector; paused while its buffer is full."""

    def __init__(self, owner: "TcpDestination") -> None:
        self.owner = owner
        self.paused = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.owner._connected(self)

    def dataReceived(self, data: bytes) -> None:
        pass  # nothing is expected from a collector

    def connectionLost(self, reason: Any = None) -> None:
        self.owner._lost(self, reason)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.owner.flush()

    def stopProducing(self) -> None:
        self.paused = True


class TcpDestination(Destination):
    """Packets back to back on one TCP connection, re-dialled with back-off."""

    kind = "tcp"

    def __init__(self, reactor: Any, host: str, port: int, queue: PacketQueue,
                 counters: Counters, endpoint: Any = None) -> None:
        super().__init__(queue, counters)
        self.reactor = reactor
        self.host = host
        self.port = port
        self.endpoint = endpoint  # built at start, when the reactor is the real one
        self.delay = RECONNECT_INITIAL
        self.attempts = 0
        self._proto: _HepStream | None = None
        self._connecting: defer.Deferred[Any] | None = None
        self._retry: Any = None
        self._stopped = True
        self._lost_waiters: list[defer.Deferred[None]] = []

    def start(self) -> None:
        self._stopped = False
        if self.endpoint is None:
            self.endpoint = HostnameEndpoint(self.reactor, self.host, self.port,
                                             timeout=CONNECT_TIMEOUT)
        self._dial()

    def _dial(self) -> None:
        self._retry = None
        if self._stopped:
            return
        self.state = "connecting"
        self.attempts += 1
        factory = Factory.forProtocol(lambda: _HepStream(self))
        factory.noisy = False
        try:
            d = self.endpoint.connect(factory)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return
        self._connecting = d
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        self._connecting = None
        if self._stopped:
            return
        message = failure.getErrorMessage() if hasattr(failure, "getErrorMessage") else str(failure)
        if self.attempts == 1 or self.delay >= RECONNECT_MAX:
            log.warn("trace: cannot connect to tcp:{dst}: {err}; retrying in {delay}s",
                     dst=_fmt((self.host, self.port)), err=message, delay=self.delay)
        self._schedule()

    def _schedule(self) -> None:
        self.state = "waiting"
        self._retry = self.reactor.callLater(self.delay, self._dial)
        self.delay = min(self.delay * RECONNECT_FACTOR, RECONNECT_MAX)

    def _connected(self, proto: _HepStream) -> None:
        self._connecting = None
        if self._stopped:
            proto.transport.loseConnection()
            return
        self._proto = proto
        self.state = "connected"
        self.delay = RECONNECT_INITIAL
        self.attempts = 0
        log.info("trace: connected to tcp:{dst}", dst=_fmt((self.host, self.port)))
        self.flush()

    def _lost(self, proto: _HepStream, reason: Any) -> None:
        if self._proto is proto:
            self._proto = None
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._stopped:
            return
        log.warn("trace: connection to tcp:{dst} lost; reconnecting",
                 dst=_fmt((self.host, self.port)))
        self._schedule()

    def _ready(self) -> bool:
        proto = self._proto
        return proto is not None and not proto.paused

    def _write_now(self, packet: bytes) -> bool:
        self._proto.transport.write(packet)  # type: ignore[union-attr]
        return True

    def stop(self) -> defer.Deferred[None] | None:
        self._stopped = True
        self.state = "stopped"
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.addErrback(lambda _: None)
            connecting.cancel()
        if self._proto is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._lost_waiters.append(waiter)
            transport = self._proto.transport
            transport.loseConnection()
            # A stalled collector would hold a graceful close (and shutdown)
            # forever: abort after a grace period.
            abort = self.reactor.callLater(STOP_GRACE, transport.abortConnection)
            waiter.addBoth(_cancel_call, abort)
            return waiter
        return None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["reconnect_delay"] = self.delay
        return info


def _cancel_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def parse_destination(text: str) -> tuple[str, str, int]:
    """``udp:HOST:PORT`` / ``tcp:[V6]:PORT`` -> (kind, host, port)."""
    kind, _, rest = text.partition(":")
    address = parse_host_port("[trace] destination", rest, None)
    return kind, address.host, address.port


# -- the tracer ----------------------------------------------------------------


class Tracer(Service):
    """Builds HEP packets for every traced event and hands them to a destination."""

    name = "trace"

    def __init__(self, config: TraceConfig, stats: Any, reactor: Any,
                 destination: Destination | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.counters = stats
        self.reactor = reactor
        self.wall_clock = wall_clock
        self.packets_sent = 0
        self.packets_dropped = 0
        self._enabled = bool(config.on)
        self._filter: Callable[[dict[str, Any]], Any] | None = None
        if config.filter:
            self._filter = resolve_callable("[trace] filter", config.filter)
        self._last_drop_log = float("-inf")
        # Identity chunks in every packet (None = chunk left out).
        self._capture_id = config.capture_id
        self._auth_key = config.auth_key.encode("utf-8") if config.auth_key else None
        self._node_name = config.node_name.encode("utf-8") if config.node_name else None
        if destination is None:
            kind, host, port = parse_destination(config.destination)
            queue = PacketQueue(config.queue_size)
            cls = UdpDestination if kind == "udp" else TcpDestination
            destination = cls(reactor, host, port, queue, self)
        self.destination = destination

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.destination.start()
        log.info("trace: HEP to {dest} ({state})", dest=self.config.destination or "memory",
                 state="on" if self._enabled else "off")

    def stopService(self) -> Any:
        super().stopService()
        return self.destination.stop()

    # -- switches and counters ---------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, on: bool) -> None:
        """Admin ``trace on|off``: affects packets built from now on."""
        on = bool(on)
        if on != self._enabled:
            log.info("trace: turned {state}", state="on" if on else "off")
        self._enabled = on

    def sent(self, count: int = 1) -> None:
        self.packets_sent += count
        self.counters.incr("trace.packets_sent", count)

    def dropped(self, count: int = 1) -> None:
        self.packets_dropped += count
        self.counters.incr("trace.packets_dropped", count)
        now = self.wall_clock()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.warn("trace: dropping packets (queue full or collector unreachable); "
                     "{n} dropped so far", n=self.packets_dropped)

    def stats(self) -> dict[str, Any]:
        """State for the admin ``trace`` and ``stats`` methods."""
        info = {
            "enabled": self._enabled,
            "packets_sent": self.packets_sent,
            "packets_dropped": self.packets_dropped,
        }
        info.update(self.destination.describe())
        info["destination"] = self.config.destination or info["destination"]
        return info

    # -- hooks called by the transports -------------------------------------------

    def connection_made(self, record: Any) -> None:
        """Decide once whether this WebSocket connection is traced."""
        if self._filter is None:
            record.traced = True
            return
        record.traced = False
        try:
            info = {
                "id": record.id,
                "transport": record.transport,
                "role": record.role,
                "local": _fmt(record.local),
                "remote": _fmt(record.remote),
            }
            record.traced = bool(self._filter(info))
        except Exception:  # noqa: BLE001 - a user's function must not break us
            log.failure("trace: filter {ref} failed for #{id} {remote}; connection not traced",
                        ref=self.config.filter, id=getattr(record, "id", "?"),
                        remote=_safe_fmt(getattr(record, "remote", None)))

    def ws_handshake(self, record: Any, request: bytes, response: bytes, status: int,
                     reason: str, tls: dict[str, Any] | None) -> None:
        """The accepted / connected / refused event of one handshake."""
        if not self._enabled or not record.traced:
            return
        try:
            if status == 101:
                event = "connected" if record.role == "client" else "accepted"
            else:
                event = "refused"
            payload = {
                "event": event,
                "id": record.id,
                "transport": record.transport,
                "role": record.role,
                "local": _fmt(record.local),
                "remote": _fmt(record.remote),
                "status": status,
                "reason": reason,
                "subprotocol": getattr(record, "subprotocol", ""),
                "identity": getattr(record, "identity", ""),
                "request": bytes(request or b"").decode("latin-1"),
                "response": bytes(response or b"").decode("latin-1"),
                "tls": tls,
            }
            self._net_event(record, payload)
        except Exception:  # noqa: BLE001
            self._internal_error("ws_handshake")

    def ws_closed(self, record: Any, code: int | None, reason: str, side: str) -> None:
        """The closed event with its code, reason, side and the connection's counters."""
        if not self._enabled or not record.traced:
            return
        try:
            payload = {
                "event": "closed",
                "id": record.id,
                "transport": record.transport,
                "role": record.role,
                "local": _fmt(record.local),
                "remote": _fmt(record.remote),
                "code": code,
                "reason": reason,
                "side": side,
                "identity": getattr(record, "identity", ""),
                "counters": {
                    "messages_in": record.messages_in,
                    "messages_out": record.messages_out,
                    "bytes_in": record.bytes_in,
                    "bytes_out": record.bytes_out,
                },
            }
            self._net_event(record, payload)
        except Exception:  # noqa: BLE001
            self._internal_error("ws_closed")

    def sip_message(self, record: Any, direction: str, transport: str,
                    src: tuple[str, int], dst: tuple[str, int], data: bytes,
                    timestamp: float | None = None) -> None:
        """One SIP message as received ("in") or sent ("out"), exact bytes."""
        if not self._enabled or (record is not None and not record.traced):
            return
        try:
            data = data.encode("utf-8") if isinstance(data, str) else memoryview(data).tobytes()
            call_id = find_call_id(data)
            if call_id is None and record is not None:
                call_id = str(record.id).encode()
            self._emit(
                proto_type=hep.PROTO_SIP,
                ip_proto=IP_PROTO_BY_TRANSPORT.get(transport, hep.IPPROTO_TCP),
                src=src, dst=dst, payload=data, correlation_id=call_id,
                timestamp=self.wall_clock() if timestamp is None else timestamp,
            )
        except Exception:  # noqa: BLE001
            self._internal_error("sip_message")

    def msrp_message(self, record: Any, direction: str, transport: str,
                     src: tuple[str, int], dst: tuple[str, int], data: bytes,
                     timestamp: float | None = None) -> None:
        """One MSRP chunk as received ("in") or sent ("out"): a 0x59 JSON event (see above).
        ``record`` is the WebSocket connection, or None for a TCP/TLS peer."""
        if not self._enabled or (record is not None and not record.traced):
            return
        try:
            data = memoryview(data).tobytes()
            payload = {
                "event": "msrp",
                "id": record.id if record is not None else None,
                "direction": direction,
                "transport": transport,
                "src": _fmt(src),
                "dst": _fmt(dst),
                "bytes": len(data),
                "truncated": len(data) > MSRP_TRACE_MAX,
                "message": data[:MSRP_TRACE_MAX].decode("utf-8", "replace"),
            }
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
            correlation = str(record.id).encode() if record is not None else None
            self._emit(proto_type=hep.PROTO_NET, ip_proto=hep.IPPROTO_TCP, src=src, dst=dst,
                       payload=body, correlation_id=correlation,
                       timestamp=self.wall_clock() if timestamp is None else timestamp)
        except Exception:  # noqa: BLE001
            self._internal_error("msrp_message")

    # -- packet building -----------------------------------------------------------

    def _net_event(self, record: Any, payload: dict[str, Any]) -> None:
        # Addresses in the direction of the connection: the dialling side is the source.
        if record.role == "client":
            src, dst = record.local, record.remote
        else:
            src, dst = record.remote, record.local
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        self._emit(proto_type=hep.PROTO_NET, ip_proto=hep.IPPROTO_TCP, src=src, dst=dst,
                   payload=body, correlation_id=str(record.id).encode(),
                   timestamp=self.wall_clock())

    def _emit(self, proto_type: int, ip_proto: int, src: tuple[str, int],
              dst: tuple[str, int], payload: bytes, correlation_id: bytes | None,
              timestamp: float) -> None:
        seconds = int(timestamp)
        micros = min(max(int(round((timestamp - seconds) * 1_000_000)), 0), 999_999)
        try:
            src_addr, dst_addr = packed_addresses(src[0], dst[0])
            packet = hep.encode_capture(
                ip_proto, src_addr, dst_addr, int(src[1]), int(dst[1]), seconds, micros,
                proto_type, self._capture_id, payload, self._auth_key, correlation_id,
                self._node_name)
        except (HepError, ValueError, TypeError, IndexError) as exc:
            self.dropped()
            log.warn("trace: packet not built ({err}); dropped", err=exc)
            return
        self.destination.send(packet)

    def _internal_error(self, hook: str) -> None:
        self.dropped()
        log.failure("trace: {hook} failed; event dropped", hook=hook)


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def packed_addresses(src_host: str, dst_host: str) -> tuple[bytes, bytes]:
    """Packed source and destination addresses of one family (cached: hosts repeat).

    Both IPv4 (also v4-mapped IPv6) -> 4 bytes each; otherwise both IPv6,
    an IPv4 one written v4-mapped.  ValueError for anything not an address.
    """
    s, d = _ip(src_host), _ip(dst_host)
    if s.version == 4 and d.version == 4:
        return s.packed, d.packed
    return _as_v6(s).packed, _as_v6(d).packed


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(f"::ffff:{address}")


class UnconfiguredTracer:
    """Stands in when ``[trace] destination`` is empty: hooks do nothing.

    ``set_enabled(True)`` raises ``TraceNotConfigured`` so the admin ``trace
    on`` answers an error saying a destination is needed; ``off`` is a no-op.
    """

    enabled = False

    def connection_made(self, record: Any) -> None:
        record.traced = False

    def ws_handshake(self, *args: Any, **kwargs: Any) -> None:
        return None

    def ws_closed(self, *args: Any, **kwargs: Any) -> None:
        return None

    def sip_message(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_enabled(self, on: bool) -> None:
        if on:
            raise TraceNotConfigured("tracing needs [trace] destination in the configuration")

    def stats(self) -> dict[str, Any]:
        return {"enabled": False, "packets_sent": 0, "packets_dropped": 0,
                "destination": "", "state": "unconfigured", "queue_length": 0,
                "queue_bytes": 0}


def install(root: Any) -> None:
    """Replace ``root.tracer`` with a real Tracer when a destination is configured."""
    config = root.config.trace
    if not config.destination:
        root.tracer = UnconfiguredTracer()
        return
    tracer = Tracer(config, root.stats, root.reactor)
    tracer.setServiceParent(root)
    root.tracer = tracer
