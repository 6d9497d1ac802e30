"""Builders of MSRP messages for the tests (our own equivalents of the RFC 4975 examples)."""

ALICE = "msrp://atlanta.example.com:7654/jshA7weztas;tcp"
BOB = "msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp"


def request(method="SEND", tid="a786hjs2", to=BOB, frm=ALICE, headers=(), body=None,
            ctype="text/plain", flag="$"):
    lines = [f"MSRP {tid} {method}", f"To-Path: {to}", f"From-Path: {frm}", *headers]
    if body is not None:
        lines.append(f"Content-Type: {ctype}")
        head = "\r\n".join(lines).encode() + b"\r\n\r\n" + body + b"\r\n"
    else:
        head = "\r\n".join(lines).encode() + b"\r\n"
    return head + f"-------{tid}{flag}\r\n".encode()


def send(tid="a786hjs2", to=BOB, frm=ALICE, body=b"Hey Bob, are you there?", mid="87652491",
         fr=None, sr=None, rng=None, flag="$"):
    headers = [f"Message-ID: {mid}"]
    if sr is not None:
        headers.append(f"Success-Report: {sr}")
    if fr is not None:
        headers.append(f"Failure-Report: {fr}")
    headers.append(f"Byte-Range: {rng or f'1-{len(body)}/{len(body)}'}")
    return request("SEND", tid, to, frm, headers, body, flag=flag)


def response(tid="a786hjs2", status=200, comment="OK", to=ALICE, frm=BOB, headers=()):
    lines = [f"MSRP {tid} {status}" + (f" {comment}" if comment else ""), f"To-Path: {to}",
             f"From-Path: {frm}", *headers]
    return "\r\n".join(lines).encode() + f"\r\n-------{tid}$\r\n".encode()
