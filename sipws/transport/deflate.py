"""permessage-deflate (RFC 7692): negotiation with memory bounds, and the zlib streams.

Compression itself is Autobahn's ``PerMessageDeflate`` (its frame handling, its
bounded inflation: ``decompress_message_data`` never produces more than the
message budget left, so a "zip bomb" costs at most ``max_message_size`` bytes
of output before the connection is failed with 1009).  What this module adds:

- ``accept_offer``: the server's choice among a client's offers, by the tables
  of RFC 7692 §7.1, bounded by ``[ws] compression_*``.  Autobahn's own offer
  parser fails the whole handshake on an offer it does not like (a window of
  8 bits, an unknown parameter) and forgets the value of
  ``client_max_window_bits``; RFC 7692 §5 says such an offer is *declined*
  (the connection opens without compression), and the answer must not exceed
  that value.
- ``client_offer`` / ``check_response``: the client role's offer and the check
  of the server's answer (Autobahn's negotiation, our limits).
- ``BoundedDeflate``: Autobahn's processor that also *drops* its zlib streams
  after each message when context takeover is off.  Autobahn keeps them until
  the next message starts; with thousands of idle connections that is the
  whole window and hash table of each one (about 40-300 KB depending on the
  window bits and memory level), for nothing.

zlib's window-bits quirk: zlib (since 1.2.9) refuses to *compress* a raw
deflate stream with an 8-bit window, and a zlib-based peer asked for 8 bits
compresses with 9 (a 512-byte window), which an 8-bit inflater rejects.  So
sipws never promises 8 bits for its own compressor (an offer demanding it is
declined), never asks for less than 9 (``MIN_CONFIG_WINDOW_BITS``), and always
inflates with at least 9 bits (a larger inflate window reads a smaller one's
output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from autobahn.websocket.compress_deflate import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.logger import Logger

log = Logger(namespace="sipws.ws")

EXTENSION = "permessage-deflate"
#: Window sizes RFC 7692 §7.1.2 allows in a negotiation.
MIN_WINDOW_BITS = 8
MAX_WINDOW_BITS = 15
#: Smallest window sipws compresses with, asks for, or inflates with (zlib, see above).
MIN_CONFIG_WINDOW_BITS = 9
#: zlib's memLevel range (hash table of 2**(mem_level + 9) bytes in the compressor).
MIN_MEM_LEVEL = 1
MAX_MEM_LEVEL = 9

SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"
_PARAMETERS = (SERVER_NO_CONTEXT_TAKEOVER, CLIENT_NO_CONTEXT_TAKEOVER, SERVER_MAX_WINDOW_BITS, CLIENT_MAX_WINDOW_BITS)
#: A window-bits value: a decimal integer without leading zeroes (RFC 7692 §7.1.2.1).
_BITS = re.compile(r"^[1-9][0-9]?$")


class NegotiationError(ValueError):
    """An offer or response that RFC 7692 says must be declined (offer) or failed (response)."""


@dataclass(frozen=True, slots=True)
class DeflateSettings:
    """The ``[ws]`` / ``[wss]`` compression keys, plus the message limit zlib must respect."""

    enabled: bool
    max_window_bits: int
    no_context_takeover: bool
    mem_level: int
    max_message_size: int

    @classmethod
    def from_section(cls, section: Any) -> "DeflateSettings":
        return cls(
            enabled=section.compression,
            max_window_bits=section.compression_max_window_bits,
            no_context_takeover=section.compression_no_context_takeover,
            mem_level=section.compression_mem_level,
            max_message_size=section.max_message_size,
        )


@dataclass(frozen=True, slots=True)
class Agreement:
    """What one connection uses, seen from sipws's side (either role)."""

    #: Our compressor starts afresh for every message (and is dropped after it).
    local_no_context_takeover: bool
    #: The peer's compressor does: our inflater is dropped after every message.
    remote_no_context_takeover: bool
    #: Window of our compressor.
    local_window_bits: int
    #: Window the peer may use, so the window of our inflater (at least 9, see the module).
    remote_window_bits: int
    #: The extension as it appears in the 101's Sec-WebSocket-Extensions.
    header: str

    def processor(self, is_server: bool, settings: DeflateSettings,
                  count: Callable[[str, int], None] | None = None) -> "BoundedDeflate":
        """Autobahn's processor for these parameters (server_* are the server's direction)."""
        if is_server:
            server_nct, client_nct = self.local_no_context_takeover, self.remote_no_context_takeover
            server_bits, client_bits = self.local_window_bits, self.remote_window_bits
        else:
            server_nct, client_nct = self.remote_no_context_takeover, self.local_no_context_takeover
            server_bits, client_bits = self.remote_window_bits, self.local_window_bits
        return BoundedDeflate(is_server, server_nct, client_nct, server_bits, client_bits,
                              settings.mem_level, settings.max_message_size, count)


def _flag(name: str, value: Any) -> bool:
    if value is not True:
        raise NegotiationError(f"{name} takes no value, got {value!r}")
    return True


def _bits(name: str, value: Any, *, optional: bool) -> int | bool:
    if value is True:
        if optional:
            return True
        raise NegotiationError(f"{name} needs a value")
    if not isinstance(value, str) or not _BITS.match(value) or not MIN_WINDOW_BITS <= int(value) <= MAX_WINDOW_BITS:
        raise NegotiationError(f"{name}={value!r} is not a window size 8..15")
    return int(value)


def parse_params(params: dict[str, list[Any]], *, offer: bool) -> dict[str, Any]:
    """One offer's (``offer=True``) or response's parameters, checked (RFC 7692 §5, §7.1).

    ``params`` is what Autobahn's header parser makes of one extension: lower-cased
    names, each with the list of its values (True for a parameter without a value).
    """
    result: dict[str, Any] = {}
    for name, values in params.items():
        if name not in _PARAMETERS:
            raise NegotiationError(f"unknown parameter {name}")
        if len(values) != 1:
            raise NegotiationError(f"{name} appears more than once")
        value = values[0]
        if name in (SERVER_NO_CONTEXT_TAKEOVER, CLIENT_NO_CONTEXT_TAKEOVER):
            result[name] = _flag(name, value)
        elif name == SERVER_MAX_WINDOW_BITS:
            result[name] = _bits(name, value, optional=False)
        else:
            # client_max_window_bits: valueless in an offer means "I can be limited".
            result[name] = _bits(name, value, optional=offer)
    return result


def _header(nct_server: bool, nct_client: bool, server_bits: int | None, client_bits: int | None) -> str:
    parts = [EXTENSION]
    if nct_server:
        parts.append(SERVER_NO_CONTEXT_TAKEOVER)
    if nct_client:
        parts.append(CLIENT_NO_CONTEXT_TAKEOVER)
    if server_bits is not None:
        parts.append(f"{SERVER_MAX_WINDOW_BITS}={server_bits}")
    if client_bits is not None:
        parts.append(f"{CLIENT_MAX_WINDOW_BITS}={client_bits}")
    return "; ".join(parts)


def answer_offer(params: dict[str, list[Any]], settings: DeflateSettings) -> Agreement:
    """The server's answer to one permessage-deflate offer; NegotiationError to decline it.

    - ``server_no_context_takeover`` is answered when offered or configured (RFC 7692
      §7.1.1.1 lets a server include it unasked); the compressor then starts afresh
      for every message.
    - ``client_no_context_takeover`` likewise (§7.1.1.2): the client must then reset its
      compressor, so sipws can drop its inflater between messages.
    - ``server_max_window_bits``: when offered, answered with the smaller of the offer
      and ours; an offer of 8 is declined (zlib cannot compress with 8).  When not
      offered sipws still compresses with its own (smaller) window and says nothing:
      any inflater reads a stream made with a smaller window, and some clients fail
      on the parameter when they did not offer it.
    - ``client_max_window_bits``: only when offered (§7.1.2.2), with our value, or the
      client's if smaller.  A client that does not offer it (Firefox) may use 15 bits.
    """
    offer = parse_params(params, offer=True)
    server_nct = settings.no_context_takeover or SERVER_NO_CONTEXT_TAKEOVER in offer
    client_nct = settings.no_context_takeover or CLIENT_NO_CONTEXT_TAKEOVER in offer
    ours = settings.max_window_bits
    server_bits: int | None = None
    local_bits = ours
    if SERVER_MAX_WINDOW_BITS in offer:
        server_bits = local_bits = min(offer[SERVER_MAX_WINDOW_BITS], ours)
        if local_bits < MIN_CONFIG_WINDOW_BITS:
            raise NegotiationError(f"{SERVER_MAX_WINDOW_BITS}={local_bits}: zlib cannot compress with that window")
    client_bits: int | None = None
    remote_bits = MAX_WINDOW_BITS
    if CLIENT_MAX_WINDOW_BITS in offer:
        asked = offer[CLIENT_MAX_WINDOW_BITS]
        client_bits = ours if asked is True else min(asked, ours)
        remote_bits = max(client_bits, MIN_CONFIG_WINDOW_BITS)
    return Agreement(server_nct, client_nct, local_bits, remote_bits,
                     _header(server_nct, client_nct, server_bits, client_bits))


def accept_offer(extensions: Iterable[tuple[str, dict[str, list[Any]]]],
                 settings: DeflateSettings) -> tuple[Agreement | None, list[str]]:
    """The first acceptable permessage-deflate offer of a handshake request, and why
    the ones before it (if any) were declined.  Other extensions are ignored."""
    declined: list[str] = []
    for name, params in extensions:
        if name != EXTENSION:
            continue
        try:
            return answer_offer(params, settings), declined
        except NegotiationError as exc:
            declined.append(str(exc))
    return None, declined


# -- client role (Autobahn negotiates; these are its offer and accept hooks) -----------


def client_offer(settings: DeflateSettings) -> PerMessageDeflateOffer:
    """What sipws offers when it dials: ``client_max_window_bits`` (the server may limit
    us), our window for the server's compressor, and no context takeover both ways
    when configured."""
    return PerMessageDeflateOffer(
        accept_no_context_takeover=settings.no_context_takeover,
        accept_max_window_bits=True,
        request_no_context_takeover=settings.no_context_takeover,
        request_max_window_bits=settings.max_window_bits,
    )


def check_response(response: PerMessageDeflateResponse, settings: DeflateSettings) -> PerMessageDeflateResponseAccept:
    """Accepts the server's answer to ``client_offer``; NegotiationError fails the handshake
    (RFC 7692 §5: a response that does not fit the offer)."""
    ours = settings.max_window_bits
    if response.server_max_window_bits and response.server_max_window_bits > ours:
        raise NegotiationError(f"{SERVER_MAX_WINDOW_BITS}={response.server_max_window_bits} exceeds the {ours} offered")
    # A server that leaves out server_no_context_takeover or server_max_window_bits
    # keeps its context or a 15-bit window: Autobahn then keeps our inflater and sizes
    # it for 15 bits (it works; it only costs memory).
    window = ours
    if response.client_max_window_bits:
        window = min(window, response.client_max_window_bits)
    return PerMessageDeflateResponseAccept(
        response,
        no_context_takeover=settings.no_context_takeover or response.client_no_context_takeover,
        window_bits=window,
        mem_level=settings.mem_level,
        max_message_size=settings.max_message_size,
    )


def client_agreement(pmce: PerMessageDeflate, header: str) -> Agreement:
    """The Agreement Autobahn's client negotiation reached (to rebuild it as BoundedDeflate)."""
    return Agreement(
        local_no_context_takeover=pmce.client_no_context_takeover,
        remote_no_context_takeover=pmce.server_no_context_takeover,
        local_window_bits=pmce.client_max_window_bits,
        remote_window_bits=max(pmce.server_max_window_bits, MIN_CONFIG_WINDOW_BITS),
        header=header,
    )


# -- the processor --------------------------------------------------------------------


class BoundedDeflate(PerMessageDeflate):
    """Autobahn's permessage-deflate, dropping zlib streams it will not reuse, and counting.

    Without context takeover a stream serves one message: it is released as soon as
    the message is done, so an idle connection holds no zlib memory at all.  ``count``
    (``Stats.incr``) receives ``ws.deflate_*`` figures: messages, compressed bytes on
    the wire, and the same messages' uncompressed bytes, per direction.
    """

    def __init__(self, is_server: bool, server_no_context_takeover: bool, client_no_context_takeover: bool,
                 server_max_window_bits: int, client_max_window_bits: int, mem_level: int,
                 max_message_size: int | None = None, count: Callable[[str, int], None] | None = None) -> None:
        super().__init__(is_server, server_no_context_takeover, client_no_context_takeover,
                         server_max_window_bits, client_max_window_bits, mem_level, max_message_size)
        if is_server:
            self._drop_compressor, self._drop_decompressor = server_no_context_takeover, client_no_context_takeover
        else:
            self._drop_compressor, self._drop_decompressor = client_no_context_takeover, server_no_context_takeover
        self._count = count or _no_count

    # sending: Autobahn calls start, compress (once per message), end
    def compress_message_data(self, data: bytes) -> bytes:
        self._count("ws.deflate_raw_bytes_out", len(data))
        out = super().compress_message_data(data)
        self._count("ws.deflate_wire_bytes_out", len(out))
        return out

    def end_compress_message(self) -> bytes:
        out = super().end_compress_message()
        self._count("ws.deflate_messages_out", 1)
        self._count("ws.deflate_wire_bytes_out", len(out))
        if self._drop_compressor:
            self._compressor = None
        return out

    # receiving: start, decompress (per frame chunk), end
    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        self._count("ws.deflate_wire_bytes_in", len(data))
        return super().decompress_message_data(data, max_output_len)

    def end_decompress_message(self) -> None:
        super().end_decompress_message()
        self._count("ws.deflate_messages_in", 1)
        self._count("ws.deflate_raw_bytes_in", self._decompress_message_size)
        if self._drop_decompressor:
            self._decompressor = None


def _no_count(name: str, amount: int) -> None:
    return None


# -- glue for the two protocol classes ------------------------------------------------


def negotiate_server(protocol: Any) -> str:
    """Server role, from ``onConnect``: the extension to answer with ("" = none).

    Autobahn is left nothing to negotiate (its list of offers is emptied), so an offer
    it would choke on never fails a handshake, with compression on or off.
    """
    offers, protocol.websocket_extensions = protocol.websocket_extensions, []
    factory = protocol.factory
    settings: DeflateSettings = factory.deflate
    if not settings.enabled or not offers:
        return ""
    agreement, declined = accept_offer(offers, settings)
    if declined:
        log.info("declined permessage-deflate offer(s) from {conn}: {why}",
                 conn=protocol.record.describe(), why="; ".join(declined), conn_id=protocol.record.id)
    if agreement is None:
        return ""
    protocol._perMessageCompress = agreement.processor(True, settings, factory.root.stats.incr)
    protocol.record.extensions = agreement.header
    return agreement.header


def adopt_client(protocol: Any) -> None:
    """Client role, from ``onOpen``: Autobahn's negotiated processor, rebuilt as BoundedDeflate."""
    pmce = protocol._perMessageCompress
    if pmce is None:
        return
    header = protocol.http_headers.get("sec-websocket-extensions", "")
    factory = protocol.factory
    agreement = client_agreement(pmce, header)
    protocol._perMessageCompress = agreement.processor(False, factory.deflate, factory.root.stats.incr)
    protocol.record.extensions = header


class ClientAccept:
    """Autobahn's ``perMessageCompressionAccept`` for the client role: a response that
    does not fit the offer fails the handshake (None), with the reason logged."""

    def __init__(self, settings: DeflateSettings, url: str) -> None:
        self.settings = settings
        self.url = url

    def __call__(self, response: Any) -> PerMessageDeflateResponseAccept | None:
        if not isinstance(response, PerMessageDeflateResponse):
            return None
        try:
            return check_response(response, self.settings)
        except NegotiationError as exc:
            log.warn("{url}: permessage-deflate answer refused: {why}", url=self.url, why=str(exc))
            return None
