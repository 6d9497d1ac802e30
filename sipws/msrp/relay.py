"""MSRP relay decisions (RFC 4976) for WebSocket clients (RFC 7977). STUB: API only."""

from __future__ import annotations

from dataclasses import dataclass

from sipws.msrp.limits import MAX_CHUNK_SIZE
from sipws.msrp.uri import PeerKey


@dataclass(frozen=True)
class SendToConnection:
    conn_id: int
    data: bytes


@dataclass(frozen=True)
class SendToPeer:
    peer: PeerKey
    data: bytes


@dataclass(frozen=True)
class CloseConnection:
    conn_id: int
    code: int
    reason: str


@dataclass(frozen=True)
class Log:
    level: str
    text: str


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int = 2855
    tls: bool = True
    require_auth: bool = False
    max_chunk_size: int = MAX_CHUNK_SIZE
    default_expires: int = 1800
    min_expires: int = 60
    max_expires: int = 3600
    transaction_timeout: float = 30.0
    max_backlog: int = 1 << 20
    max_sessions: int = 10000


class MsrpRelay:
    def __init__(self, clock, settings: RelaySettings, token=None) -> None:
        self.counters: dict[str, int] = {}

    def connection_opened(self, conn_id, kind, identity=None, peer=None):
        return []

    def received(self, conn_id, data):
        return []

    def connection_closed(self, conn_id):
        return []

    def peer_unreachable(self, peer, reason):
        return []

    def buffered(self, target, nbytes):
        return []

    def tick(self):
        return []

    def dump(self):
        return []

    def sessions_of(self, conn_id):
        return []
