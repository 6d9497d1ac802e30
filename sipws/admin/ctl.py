"""``sipws-ctl``: call the admin JSON-RPC methods from a shell.

    sipws-ctl ws.dump used_asc
    sipws-ctl ws.close 7 4000 "bye"
    sipws-ctl --json stats

Arguments after the method are positional params; those that look like
integers are sent as numbers.  The answer is printed readably (``ws.dump``
as a table, objects as ``key: value`` lines) or, with ``--json``, as the raw
JSON result.  Exit status: 0 on success, 1 when the method answered an error,
2 on a usage error, 3 when the server cannot be reached or refuses the call
(HTTP error, wrong token).

``--url`` may also be ``unix:/path/to/admin.sock`` for a unix-socket listener.
Only the standard library is used, so the tool works wherever sipws is installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from typing import Any, Sequence

DEFAULT_URL = "http://127.0.0.1:8088/rpc"
DEFAULT_TIMEOUT = 10.0
ENV_URL = "SIPWS_ADMIN_URL"
ENV_TOKEN = "SIPWS_ADMIN_TOKEN"

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_INTEGER = re.compile(r"^-?\d+$")

#: ws.dump table columns: (heading, key in each connection's dict).
DUMP_COLUMNS = (
    ("ID", "id"),
    ("TRANSPORT", "transport"),
    ("ROLE", "role"),
    ("REMOTE", "remote"),
    ("LOCAL", "local"),
    ("STATE", "state"),
    ("AGE", "age"),
    ("IDLE", "idle"),
    ("PONG?", "awaiting_pong"),
    ("MSG IN", "messages_in"),
    ("MSG OUT", "messages_out"),
    ("BYTES IN", "bytes_in"),
    ("BYTES OUT", "bytes_out"),
    ("ORIGIN", "origin"),
    ("USER-AGENT", "user_agent"),
)


class CtlError(Exception):
    """A failed call: the message for stderr and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def convert_arg(text: str) -> Any:
    """Numeric-looking arguments become integers (ids, close codes, limits)."""
    return int(text) if _INTEGER.match(text) else text


def build_request(method: str, args: Sequence[str]) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if args:
        request["params"] = [convert_arg(arg) for arg in args]
    return request


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def post(url: str, body: bytes, token: str, timeout: float) -> tuple[int, bytes]:
    """POST the body; returns (HTTP status, response body); OSError when unreachable."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if url.startswith("unix:"):
        connection = _UnixHTTPConnection(url[len("unix:"):], timeout)
        try:
            connection.request("POST", "/rpc", body, headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def call(url: str, token: str, timeout: float, method: str, args: Sequence[str]) -> Any:
    """The method's result; CtlError for every kind of failure."""
    body = json.dumps(build_request(method, args)).encode("utf-8")
    try:
        status, answer = post(url, body, token, timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CtlError(f"cannot reach sipws at {url}: {reason}", EXIT_UNREACHABLE) from None
    if status == 401:
        raise CtlError(f"refused by {url}: wrong or missing token (--token or ${ENV_TOKEN})", EXIT_UNREACHABLE)
    if status != 200:
        text = answer.decode("utf-8", "replace").strip()[:200]
        raise CtlError(f"HTTP {status} from {url}: {text}", EXIT_UNREACHABLE)
    try:
        response = json.loads(answer)
    except ValueError:
        raise CtlError(f"not a JSON-RPC answer from {url}", EXIT_UNREACHABLE) from None
    if not isinstance(response, dict):
        raise CtlError(f"not a JSON-RPC answer from {url}", EXIT_UNREACHABLE)
    if "error" in response:
        error = response["error"] or {}
        raise CtlError(f"error {error.get('code')}: {error.get('message')}", EXIT_RPC_ERROR)
    return response.get("result")


# -- output -------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]] = DUMP_COLUMNS) -> str:
    """Rows as a left-aligned table, one space-padded column per key."""
    cells = [[heading for heading, _ in columns]]
    cells += [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def format_dump(result: dict[str, Any]) -> str:
    connections = result.get("connections") or []
    shown = len(connections)
    total = result.get("total", shown)
    footer = f"{total} connection(s)"
    if result.get("truncated"):
        footer += f", {shown} shown (raise the limit: ws.dump ORDER LIMIT)"
    if not connections:
        return footer
    return format_table(connections) + "\n" + footer


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as dotted keys, in the order the server sent them."""
    if isinstance(value, dict):
        lines: list[tuple[str, Any]] = []
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(item, dict) and item:
                lines.extend(flatten(item, name))
            else:
                lines.append((name, item))
        return lines
    return [(prefix, value)]


#: ws.bans table columns.
BAN_COLUMNS = (
    ("NETWORK", "network"),
    ("REMAINING", "remaining"),
    ("DROPS", "drops"),
    ("REASON", "reason"),
)


def format_bans(result: dict[str, Any]) -> str:
    bans = result.get("bans") or []
    footer = f"{len(bans)} ban(s)"
    if not bans:
        return footer
    rows = [dict(ban, remaining="until unbanned" if ban.get("remaining") is None else f"{ban['remaining']:.0f} s")
            for ban in bans]
    return format_table(rows, BAN_COLUMNS) + "\n" + footer


def format_result(method: str, result: Any) -> str:
    if method == "ws.dump" and isinstance(result, dict) and "connections" in result:
        return format_dump(result)
    if method == "ws.bans" and isinstance(result, dict) and isinstance(result.get("bans"), list):
        return format_bans(result)
    if isinstance(result, dict):
        return "\n".join(f"{key}: {_value(item)}" for key, item in flatten(result))
    if isinstance(result, list):
        return "\n".join(_value(item) for item in result)
    return _value(result)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# -- command line -----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipws-ctl",
        description="Call a sipws admin method (ws.dump, ws.close, ws.ping, ws.pong, ws.disable, "
        "ws.enable, ws.connect, ws.ban, ws.unban, ws.bans, trace, stats, version, tls.reload, "
        "registrar.dump, workers).",
    )
    p.add_argument("--url", default=None, help=f"admin endpoint (default ${ENV_URL} or {DEFAULT_URL}; unix:/PATH for a unix socket)")
    p.add_argument("--token", default=None, help=f"bearer token (default ${ENV_TOKEN})")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the answer")
    p.add_argument("method", help="method name, e.g. ws.dump")
    p.add_argument("args", nargs=argparse.REMAINDER, help="positional params")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    url = options.url or os.environ.get(ENV_URL) or DEFAULT_URL
    token = options.token if options.token is not None else os.environ.get(ENV_TOKEN, "")
    try:
        result = call(url, token, options.timeout, options.method, options.args)
    except CtlError as exc:
        print(f"sipws-ctl: {exc}", file=sys.stderr)
        return exc.status
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(options.method, result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
