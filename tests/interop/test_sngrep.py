"""sngrep, a real HEPv3 receiver, gets sipws's SIP packets and saves them to a pcap.

sngrep listens with ``-L udp:127.0.0.1:PORT`` (no terminal: ``-N -q``) and
writes what it decodes to ``-O FILE.pcap``; the capture is then read two ways:
by tshark (field-level check) and by a small pcap reader here (byte-level
check of the SIP payloads).  SIP-side messages are traced with documentation
addresses (192.0.2.0/24, 2001:db8::/32) that never appear on the wire, so
finding them in sngrep's capture proves they came through HEP.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted

from tests.conftest import require_peer
from tests.integration.conftest import in_thread, port_of, sipws_factory, wait_for  # noqa: F401 (fixture)
from tests.integration.test_trace import finish, sip_options, ws_session

pytestmark = pytest.mark.interop

#: Seconds allowed for sngrep to bind, to save packets, and to exit.
STARTUP_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP 127.0.0.1:port (from /proc/net/udp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == wanted for line in table.readlines()[1:])


class Sngrep:
    """One sngrep process, started and stopped by its pid."""

    def __init__(self, port: int, pcap: Path, workdir: Path) -> None:
        binary = require_peer("sngrep", "apt-get install sngrep")
        env = {**os.environ, "TERM": "dumb", "HOME": str(workdir)}
        self.log = open(workdir / "sngrep.log", "wb")
        # -F: ignore any system/user sngreprc so the test sees sngrep's defaults.
        self.process = subprocess.Popen(
            [binary, "-F", "-N", "-q", "-L", f"udp:127.0.0.1:{port}", "-O", str(pcap)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env,
            cwd=workdir,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not udp_port_bound(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"sngrep did not listen on udp {port}: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(EXIT_TIMEOUT)
        self.log.close()


def pcap_frames(path: Path) -> list[bytes]:
    """Frames of a classic little/big-endian pcap file."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        if offset + 16 + caplen > len(data):
            break  # being written
        frames.append(data[offset + 16:offset + 16 + caplen])
        offset += 16 + caplen
    return frames


def captured(path: Path, needle: bytes) -> bool:
    return any(needle in frame for frame in pcap_frames(path))


SIP_SIDE_REQUEST = (
    b"INVITE sip:bob@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK-sng-1\r\n"
    b"From: <sip:alice@192.0.2.2>;tag=a1\r\nTo: <sip:bob@192.0.2.1>\r\n"
    b"Call-ID: sngrep-udp-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Contact: <sip:alice@192.0.2.2:5060>\r\nContent-Length: 0\r\n\r\n"
)
SIP_SIDE_RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK-sng-1\r\n"
    b"From: <sip:alice@192.0.2.2>;tag=a1\r\nTo: <sip:bob@192.0.2.1>;tag=b1\r\n"
    b"Call-ID: sngrep-udp-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)
SIP_SIDE_V6 = SIP_SIDE_REQUEST.replace(b"sngrep-udp-1", b"sngrep-v6-1").replace(b"sng-1", b"sng-6")


@pytest_twisted.inlineCallbacks
def test_sngrep_saves_the_sip_messages_sipws_traced(sipws_factory, tmp_path):
    tshark = require_peer("tshark", "apt-get install tshark")
    port = free_udp_port()
    pcap = tmp_path / "hep.pcap"
    sngrep = yield in_thread(Sngrep, port, pcap, tmp_path)
    try:
        root = sipws_factory({"trace": {"destination": f"udp:127.0.0.1:{port}", "on": True,
                                        "capture_id": 77, "node_name": "sipws-interop"}})
        ws_port = port_of(root)
        # A WebSocket client's message, traced by the WS transport.
        session = yield in_thread(ws_session, ws_port, "sngrep-ws-1")
        yield wait_for(lambda: root.stats.get("ws.messages_in") == 1)
        yield in_thread(finish, session["client"])
        # SIP-side messages as the UDP transport traces them (v4 and v6).
        root.tracer.sip_message(None, "out", "udp", ("192.0.2.2", 5060), ("192.0.2.1", 5062),
                                SIP_SIDE_REQUEST, None)
        root.tracer.sip_message(None, "in", "udp", ("192.0.2.1", 5062), ("192.0.2.2", 5060),
                                SIP_SIDE_RESPONSE, None)
        root.tracer.sip_message(None, "out", "udp", ("2001:db8::2", 5060), ("2001:db8::1", 5062),
                                SIP_SIDE_V6, None)
        yield wait_for(lambda: all(captured(pcap, body) for body in (
            sip_options("sngrep-ws-1"), SIP_SIDE_REQUEST, SIP_SIDE_RESPONSE, SIP_SIDE_V6)))
        assert root.tracer.stats()["packets_dropped"] == 0
    finally:
        yield in_thread(sngrep.stop)

    # tshark reads sngrep's capture: the SIP-side messages with their real
    # (HEP-carried) addresses and ports, the WS one as SIP over TCP.
    result = yield in_thread(
        subprocess.run,
        [tshark, "-r", str(pcap), "-d", f"tcp.port=={ws_port},sip", "-Y", "sip", "-T", "fields",
         "-E", "separator=|", "-e", "sip.Call-ID", "-e", "ip.src", "-e", "ipv6.src",
         "-e", "udp.srcport", "-e", "tcp.srcport", "-e", "udp.dstport", "-e", "tcp.dstport",
         "-e", "sip.Status-Code"],
        capture_output=True, timeout=30, check=False,
    )
    rows = [line.split("|") for line in result.stdout.decode().splitlines() if line]
    assert result.returncode == 0, result.stderr.decode()
    by_call = {}
    for call_id, src4, src6, usrc, tsrc, udst, tdst, status in rows:
        by_call.setdefault(call_id, []).append((src4 or src6, usrc or tsrc, udst or tdst, status))
    assert sorted(by_call["sngrep-udp-1"]) == [("192.0.2.1", "5062", "5060", "180"),
                                               ("192.0.2.2", "5060", "5062", "")]
    # sngrep 1.6 received the IPv6 packet (ports and message intact) but its
    # pcap writer builds only IPv4 headers: the addresses come out as 0.0.0.0.
    [(_, sport, dport, _)] = by_call["sngrep-v6-1"]
    assert (sport, dport) == ("5060", "5062")
    [(src, sport, dport, _)] = by_call["sngrep-ws-1"]
    assert (src, sport, dport) == ("127.0.0.1", str(session["local_port"]), str(ws_port))
