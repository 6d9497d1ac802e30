"""The relay's memory of failed addresses stays bounded (next hops can come from clients)."""

from twisted.internet.task import Clock

from sipws.config import config_from_dict
from sipws.tap import build_service
from sipws.transport.relay import FAILED_ADDRESS_MEMORY, MAX_FAILED_ADDRESSES


def test_failed_addresses_are_bounded_and_expire():
    clock = Clock()
    root = build_service(config_from_dict({"sip": {"listen": []}, "admin": {"listen": ""}}), reactor=clock)
    relay = root.relay
    for n in range(MAX_FAILED_ADDRESSES * 3):
        relay._remember_failure("tcp", (f"10.0.{n >> 8}.{n & 255}", 5060))
    assert len(relay._failed_at) == MAX_FAILED_ADDRESSES
    recent = ("10.9.9.9", 5060)
    clock.advance(FAILED_ADDRESS_MEMORY + 1)
    relay._remember_failure("tcp", recent)  # over the bound: the expired ones go
    assert list(relay._failed_at) == [("tcp", recent)]
    # a recently failed address is still tried last
    assert relay._by_health("tcp", [recent, ("10.8.8.8", 5060)]) == [("10.8.8.8", 5060), recent]
