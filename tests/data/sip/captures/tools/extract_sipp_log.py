"""Split a sipp -trace_msg *_messages.log into one file per message.

sipp writes each message after a line such as ``UDP message sent (511 bytes):``
or ``UDP message received [309] bytes :`` and a blank line; the count is the
exact size on the wire, so the message is that many bytes (CRLFs kept).
Usage: python extract_sipp_log.py LOG OUTDIR PREFIX
"""

import re
import sys
from pathlib import Path

HEADER = re.compile(rb"(UDP|TCP) message (sent|received) [\(\[](\d+)(?:\] bytes :| bytes\):)\n\n")


def main() -> None:
    log, outdir, prefix = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    data = log.read_bytes()
    n = 0
    for m in HEADER.finditer(data):
        size = int(m.group(3))
        msg = data[m.end():m.end() + size]
        n += 1
        first = msg.split(b" ", 2)
        name = first[0].decode() if not msg.startswith(b"SIP/2.0") else first[1].decode()
        (outdir / f"{prefix}_{n:02d}_{m.group(2).decode()}_{name}.sip").write_bytes(msg)


if __name__ == "__main__":
    main()
