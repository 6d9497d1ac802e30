"""Every buffer has a bound: the in-memory rows of docs/websocket.md "Bounds", driven to
their limit with the real constants (each takes well under a second).

Rows already driven to their limit elsewhere, not repeated here:

- stream framer over ``[sip] max_message_size`` → 513: tests/unit/sip/test_framer.py
  ``test_over_limit_without_end_of_headers``, ``test_over_limit_by_content_length``
  (this file adds "exactly at the limit passes");
- transaction table (MAX_TRANSACTIONS → 503): tests/unit/proxy/test_core_robust.py
  ``test_transaction_table_is_bounded_new_requests_get_503`` (the proxy's
  ``max_transactions`` lowered to 2);
- the relay's failed-address map: tests/unit/test_relay_failed_addresses.py;
- the ICMP report / silent-next-hop limiter with a small ``max_hops``:
  tests/unit/proxy/test_hop_failures.py ``test_remembered_next_hops_are_bounded`` (this file
  drives the real MAX_SILENT_HOPS);
- registrar bindings (per AOR → 403, in total → 503): tests/unit/registrar/test_bindings.py
  ``test_table_limits_all_or_nothing``, ``test_registrar_per_aor_limit_403_refresh_still_ok``,
  ``test_registrar_total_limit_503_retry_after``;
- HEP queue (packets and bytes): tests/unit/trace/test_tracer.py
  ``test_queue_while_down_then_flush_in_order_and_drop_when_full``, ``test_queue_byte_cap_drops_too``;
- static file size (MAX_FILE_SIZE → 413): tests/unit/test_static_files.py.
"""

from __future__ import annotations

import types

import pytest
from twisted.internet.task import Clock

from sipws.config import config_from_dict
from sipws.proxy.hop_failures import MAX_SILENT_HOPS, HopReportLimiter
from sipws.registrar import BindingTable, Registrar
from sipws.registrar import home_proxy
from sipws.registrar.home_proxy import MAX_KNOWN_AORS, HomeProxy
from sipws.sip import SipParseError
from sipws.sip.framer import StreamFramer
from sipws.sip.limits import Limits
from sipws.transport import resolver as resolver_mod
from sipws.transport.resolver import MAX_CACHE_ENTRIES, SipResolver
from sipws.transport.tls_store import MAX_CLIENT_CONTEXTS, TlsStore


def framed(total: int) -> bytes:
    head = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: %d\r\n\r\n"
    body = total - len(head % 0)
    body -= len(head % body) - len(head % 0)
    message = head % body + b"x" * body
    assert len(message) == total
    return message


def test_framer_message_of_exactly_max_message_size_passes_one_more_byte_513():
    assert StreamFramer(Limits(max_message_size=1000)).feed(framed(1000)) == [framed(1000)]
    with pytest.raises(SipParseError) as info:
        StreamFramer(Limits(max_message_size=1000)).feed(framed(1001))
    assert info.value.status == 513


def test_tls_client_contexts_are_bounded_least_recently_used_first():
    store = TlsStore(types.SimpleNamespace(config=config_from_dict({})))
    first = store.client("keep.example.com")
    for n in range(MAX_CLIENT_CONTEXTS + 50):
        store.client(f"h{n}.example.com")
        store.client("keep.example.com")  # used all along: never the one dropped
    assert len(store._clients) == MAX_CLIENT_CONTEXTS
    assert store.client_evictions == 51
    assert store.client("keep.example.com") is first
    assert ("h0.example.com", ()) not in store._clients
    assert (f"h{MAX_CLIENT_CONTEXTS + 49}.example.com", ()) in store._clients


def test_silent_hop_limiter_real_bound():
    limiter = HopReportLimiter()
    for n in range(MAX_SILENT_HOPS * 2):
        assert limiter.due(f"hop{n}", 0.0) == 0  # all recent: the oldest go
    assert len(limiter._hops) == MAX_SILENT_HOPS
    assert limiter.due(f"hop{MAX_SILENT_HOPS * 2 - 1}", 1.0) is None  # the newest are kept


def test_known_aors_are_bounded_oldest_forgotten():
    clock = Clock()
    registrar = Registrar(BindingTable(clock), clock)
    home = HomeProxy(clock, types.SimpleNamespace(send=lambda *a: None), registrar, ("127.0.0.1", 5070))
    for n in range(MAX_KNOWN_AORS + 10):
        home._remember(f"sip:u{n}@example.com")
    assert len(home._known) == MAX_KNOWN_AORS == home_proxy.MAX_KNOWN_AORS
    assert "sip:u0@example.com" not in home._known  # forgotten: 404 instead of 480
    assert f"sip:u{MAX_KNOWN_AORS + 9}@example.com" in home._known


def test_dns_cache_is_bounded():
    resolver = SipResolver(Clock(), resolver=object())
    for n in range(MAX_CACHE_ENTRIES + 10):
        resolver._store(([("192.0.2.1", 5060)], 60.0), ("udp", f"h{n}.example.com", None))
    assert len(resolver._cache) == MAX_CACHE_ENTRIES == resolver_mod.MAX_CACHE_ENTRIES
    assert ("udp", "h0.example.com", None) not in resolver._cache
