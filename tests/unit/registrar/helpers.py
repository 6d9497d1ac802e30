"""Building REGISTER requests as JsSIP sends them, relayed by the edge."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipws.registrar import BindingTable, Registrar
from sipws.sip import parse

START = 1_700_000_000.0
INSTANCE = "<urn:uuid:7d90c86b-e588-4ee1-8871-e9d2f6dc3c34>"
TOKEN = "tok1"


def contact(user: str = "7l5foh4m", host: str = "9t7ivgcfqmuh.invalid", *,
            reg_id: int | None = 1, instance: str | None = INSTANCE,
            expires: int | None = 600, extra: str = "") -> str:
    value = f"<sip:{user}@{host};transport=ws>;+sip.ice"
    if reg_id is not None:
        value += f";reg-id={reg_id}"
    if instance is not None:
        value += f';+sip.instance="{instance}"'
    if expires is not None:
        value += f";expires={expires}"
    return value + extra


def register(*contacts: str, aor: str = "sip:alice@example.com", call_id: str = "h0b636t6hfh82",
             cseq: int = 1, expires: str | None = "600", token: str | None = TOKEN,
             ob: bool = True, supported: str | None = "path,gruu,outbound",
             extra: tuple[str, ...] = ()) -> bytes:
    """A REGISTER: JsSIP's headers, the edge's Via and Path in front."""
    lines = ["REGISTER sip:example.com SIP/2.0"]
    if token is not None:
        lines.append("Via: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKedge" + str(cseq))
    lines += [
        "Via: SIP/2.0/WS 9t7ivgcfqmuh.invalid;received=127.0.0.1;branch=z9hG4bK77" + str(cseq),
        "Max-Forwards: 69",
    ]
    if token is not None:
        lines.append(f"Path: <sip:{token}@127.0.0.1:5062;transport=tcp;lr{';ob' if ob else ''}>")
    lines += [
        f"To: <{aor}>",
        f'From: "Alice" <{aor}>;tag=jbl7hppm23',
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"Contact: {c}" for c in contacts]
    lines.append("Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY,SUBSCRIBE")
    if supported is not None:
        lines.append(f"Supported: {supported}")
    lines += list(extra)
    lines += ["User-Agent: JsSIP 3.13.8", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def setup(**kwargs):
    """(clock, table, registrar) at START; kwargs go to Registrar, or to
    the table when named max_per_aor / max_total."""
    clock = Clock()
    clock.advance(START)
    limits = {k: kwargs.pop(k) for k in ("max_per_aor", "max_total") if k in kwargs}
    table = BindingTable(clock, **limits)
    return clock, table, Registrar(table, clock, **kwargs)


def send(registrar: Registrar, data: bytes):
    return registrar.handle(parse(data))


def contacts_of(resp) -> list[str]:
    return resp.get_all("contact")
