"""Static files on the WebSocket listeners: ``[http] document_root``.

A browser phone needs a page, and the page is simplest to deploy from the
same origin as its WebSocket (one port, one certificate, an Origin that
``[http] allowed_origins`` can name).  With ``document_root`` set, an HTTP
GET or HEAD *without* ``Upgrade: websocket`` on a ws/wss listener is answered
from that directory; with ``Upgrade`` it is a WebSocket handshake as always.
Off by default: a SIP edge proxy serves no files unless asked to.

What is refused, and why:

- anything outside the directory: ``..`` segments, encoded or not, and
  symbolic links that lead out (the resolved path must stay under the root);
- dotfiles and dot-directories (``.git``, ``.env``...), NUL, backslashes;
- files over MAX_FILE_SIZE (this is a page server, not a download site);
- methods other than GET and HEAD (405).

Files are read when asked for (no cache to go stale while editing the
page); ``Cache-Control: no-cache`` tells browsers to revalidate.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

#: Largest file served, bytes.
MAX_FILE_SIZE = 4 * 1024 * 1024
#: What "/" and every directory serve.
INDEX = "index.html"
#: Content types by extension (ES modules need a JavaScript type to load at all).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
    ".txt": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_STATUS_TEXT = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                413: "Content Too Large"}
_COMMON_HEADERS = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Connection", "close"),
)


@dataclass(frozen=True, slots=True)
class StaticResponse:
    """What to send back: the whole HTTP response, and a phrase for the log."""

    status: int
    data: bytes
    note: str


class StaticFiles:
    """Answers GET/HEAD from one directory (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def respond(self, method: str, target: str) -> StaticResponse:
        if method not in ("GET", "HEAD"):
            return _error(405, f"{method} not allowed", (("Allow", "GET, HEAD"),))
        path = self.resolve(target)
        if isinstance(path, StaticResponse):
            return path
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_SIZE:
                return _error(413, f"file of {size} bytes (over {MAX_FILE_SIZE})")
            with open(path, "rb") as handle:
                body = handle.read(MAX_FILE_SIZE + 1)
        except OSError:
            return _error(404, "not readable")
        if len(body) > MAX_FILE_SIZE:
            return _error(413, "file grew over the limit")
        content_type = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), DEFAULT_CONTENT_TYPE)
        head = _head(200, (("Content-Type", content_type), ("Content-Length", str(len(body)))))
        relative = os.path.relpath(path, self.root)
        return StaticResponse(200, head + (body if method == "GET" else b""), f"{relative} ({len(body)} bytes)")

    def resolve(self, target: str) -> str | StaticResponse:
        """The file a request target names, or the refusal."""
        raw_path = target.split("?", 1)[0].split("#", 1)[0]
        if not raw_path.startswith("/"):
            return _error(404, "not a path")
        try:
            path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            return _error(404, "path is not UTF-8")
        if "\x00" in path or "\\" in path:
            return _error(403, "forbidden character in path")
        segments = [s for s in path.split("/") if s]
        if any(s.startswith(".") for s in segments):
            return _error(403, "dot segment or dotfile")
        candidate = os.path.join(self.root, *segments) if segments else self.root
        real = os.path.realpath(candidate)
        if real != self.root and not real.startswith(self.root + os.sep):
            return _error(403, "outside the document root")
        if os.path.isdir(real):
            real = os.path.join(real, INDEX)
        if not os.path.isfile(real):
            return _error(404, f"no file {posixpath.join('/', *segments)}")
        return real


def _head(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in (*headers, *_COMMON_HEADERS)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _error(status: int, note: str, headers: tuple[tuple[str, str], ...] = ()) -> StaticResponse:
    return StaticResponse(status, _head(status, (*headers, ("Content-Length", "0"))), note)
