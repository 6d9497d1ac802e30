"""An ICE-lite STUN responder (RFC 8445 §2.5, RFC 5389): the media end of the
sipp callee in tests/interop/sipp/uas_webrtc.xml.

It answers every Binding request with a success response carrying
XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY (short-term credential: the ice-pwd the
SDP gave) and FINGERPRINT, so a browser's ICE reaches "connected" toward the
address signalled in the callee's answer.  One JSON line per request on stdout
(source, USERNAME).  No DTLS, no RTP.

Usage: python -m tests.interop.stun_lite PORT ICE_PWD
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import sys
import zlib

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")


def attributes(body: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(body):
        kind, length = struct.unpack_from("!HH", body, offset)
        found.setdefault(kind, body[offset + 4:offset + 4 + length])
        offset += 4 + length + (-length % 4)
    return found


def answer(data: bytes, source: tuple[str, int], password: bytes) -> tuple[bytes, str] | None:
    """The success response to a Binding request (and its USERNAME), or None."""
    if len(data) < HEADER.size:
        return None
    kind, length, cookie, transaction = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE or HEADER.size + length > len(data):
        return None
    username = attributes(data[HEADER.size:HEADER.size + length]).get(USERNAME, b"").decode(errors="replace")
    address = struct.unpack("!I", socket.inet_aton(source[0]))[0] ^ MAGIC_COOKIE
    body = struct.pack("!HHBBHI", XOR_MAPPED_ADDRESS, 8, 0, 1, source[1] ^ (MAGIC_COOKIE >> 16), address)
    # MESSAGE-INTEGRITY covers the header with the length as if it ended after itself.
    header = HEADER.pack(BINDING_SUCCESS, len(body) + 24, MAGIC_COOKIE, transaction)
    body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + hmac.new(password, header + body, hashlib.sha1).digest()
    header = HEADER.pack(BINDING_SUCCESS, len(body) + 8, MAGIC_COOKIE, transaction)
    crc = (zlib.crc32(header + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return header + body, username


def main() -> None:
    port, password = int(sys.argv[1]), sys.argv[2].encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    print(json.dumps({"listening": port}), flush=True)
    while True:
        data, source = sock.recvfrom(2048)
        result = answer(data, source, password)
        if result is not None:
            sock.sendto(result[0], source)
            print(json.dumps({"binding": f"{source[0]}:{source[1]}", "username": result[1]}), flush=True)


if __name__ == "__main__":
    main()
