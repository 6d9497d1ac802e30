"""The admin listener: JSON-RPC 2.0 at ``POST /rpc``, Prometheus at ``GET /metrics``.

It listens on ``[admin] listen`` (a Twisted endpoint string: ``tcp:8088:interface=127.0.0.1``,
``unix:/run/sipws/admin.sock`` (mode 0600 unless the string says otherwise);
``""`` turns it off).  With ``[admin] token`` set every request needs
``Authorization: Bearer TOKEN``, compared in constant time.

The JSON-RPC layer follows the 2.0 specification: batches, notifications (no
answer), -32700 for unparsable JSON, -32600 for a malformed request, -32601
for an unknown method, -32602 for wrong params, -32603 for our own bugs (the
traceback goes to the log, never to the client).  Application errors (unknown
connection id...) use -32001 and up, see ``methods.py``.  HTTP-level refusals
(401, 404, 405, 413) are logged with the caller's address.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from sipws.admin import methods
from sipws.admin import metrics as prometheus
from sipws.errors import StartupError

log = Logger(namespace="sipws.admin")

#: Largest request body accepted; larger ones get 413.
MAX_BODY = 64 * 1024
#: Past this many body bytes the connection is dropped instead of read to the end.
MAX_DISCARD = 16 * MAX_BODY
#: Mode of a unix-socket admin listener unless the endpoint string sets ``mode=``.
UNIX_SOCKET_MODE = "600"
JSON_TYPE = b"application/json"
JSONRPC_VERSION = "2.0"


# -- JSON-RPC 2.0 processing (no HTTP here) -------------------------------------------


def error_response(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "error": {"code": code, "message": message}, "id": request_id}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def handle_body(root: Any, body: bytes, peer: str) -> defer.Deferred:
    """One HTTP body → Deferred firing with the JSON answer, or None when none is due."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        log.warn("admin: unparsable JSON from {peer}: {why}", peer=peer, why=str(exc)[:200])
        return defer.succeed(error_response(None, methods.PARSE_ERROR, "parse error: not valid JSON"))
    if isinstance(message, list):
        if not message:
            log.warn("admin: empty batch from {peer}", peer=peer)
            return defer.succeed(error_response(None, methods.INVALID_REQUEST, "invalid request: empty batch"))
        answers = defer.gatherResults([handle_one(root, item, peer) for item in message], consumeErrors=True)
        return answers.addCallback(lambda results: [r for r in results if r is not None] or None)
    return handle_one(root, message, peer)


def _check_request(message: Any) -> str | None:
    """Why a request object is malformed, or None."""
    if not isinstance(message, dict):
        return "a request must be a JSON object"
    if message.get("jsonrpc") != JSONRPC_VERSION:
        return 'jsonrpc must be "2.0"'
    if not isinstance(message.get("method"), str):
        return "method must be a string"
    if "params" in message and not isinstance(message["params"], (list, dict)):
        return "params must be an array or an object"
    if "id" in message and not _valid_id(message["id"]):
        return "id must be a string, a number or null"
    return None


def handle_one(root: Any, message: Any, peer: str) -> defer.Deferred:
    """One request object → Deferred firing with its response object, or None (notification)."""
    problem = _check_request(message)
    if problem is not None:
        request_id = message.get("id") if isinstance(message, dict) and _valid_id(message.get("id")) else None
        log.warn("admin: invalid request from {peer}: {why}", peer=peer, why=problem)
        return defer.succeed(error_response(request_id, methods.INVALID_REQUEST, f"invalid request: {problem}"))
    name = message["method"]
    params = message.get("params")
    notification = "id" not in message
    request_id = message.get("id")
    method = methods.METHODS.get(name)
    if method is not None and method.mutating:
        shown = "" if params is None else " " + json.dumps(params)[:200]
        log.info("admin: {method}{params} from {peer}", method=name, params=shown, peer=peer)
    # A master answers by asking its workers (sipws.workers.admin); one process answers itself.
    call_admin = getattr(root, "call_admin", None)
    if call_admin is not None:
        answer = defer.maybeDeferred(call_admin, name, params)
    else:
        answer = defer.maybeDeferred(methods.call, root, name, params)

    def succeeded(result: Any) -> dict[str, Any] | None:
        if notification:
            return None
        return {"jsonrpc": JSONRPC_VERSION, "result": result, "id": request_id}

    def failed(failure: Failure) -> dict[str, Any] | None:
        if failure.check(methods.AdminError):
            exc = failure.value
            log.info("admin: {method} from {peer} refused: {why}", method=name, peer=peer, why=exc.message)
            code, text = exc.code, exc.message
        else:
            log.failure("admin: {method} from {peer} failed", failure, method=name, peer=peer)
            code, text = methods.INTERNAL_ERROR, "internal error (see the sipws log)"
        if notification:
            return None
        return error_response(request_id, code, text)

    return answer.addCallbacks(succeeded, failed)


def encode(answer: Any) -> bytes:
    return json.dumps(answer, default=str, separators=(",", ":")).encode("utf-8")


# -- HTTP -------------------------------------------------------------------------------


def describe_peer(request: server.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    return "unix socket"


class AdminRequest(server.Request):
    """A request whose body is bounded: past MAX_BODY it is discarded and answered 413."""

    body_too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.body_too_large = True
        if self._received > MAX_DISCARD:
            if self.channel is not None and self.channel.transport is not None:
                log.warn(
                    "admin: refused request from {peer}: body over {limit} bytes, connection dropped",
                    peer=describe_peer(self),
                    limit=MAX_DISCARD,
                )
                self.channel.transport.abortConnection()
            return
        if not self.body_too_large:
            super().handleContentChunk(data)


class AdminResource(Resource):
    """Common checks (token, body size, method, exact path) before ``answer``."""

    isLeaf = True
    allowed_methods: tuple[bytes, ...] = (b"GET",)

    def __init__(self, root: Any) -> None:
        super().__init__()
        self.root = root
        token = root.config.admin.token
        self._token = token.encode("utf-8") if token else None

    def render(self, request: server.Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        if self._token is not None and not self._authorized(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="sipws"')
            return refuse(request, 401, "missing or wrong bearer token")
        if request.postpath not in ([], [b""]):
            return refuse(request, 404, "no such resource")
        if request.method not in self.allowed_methods:
            request.setHeader(b"allow", b", ".join(self.allowed_methods))
            return refuse(request, 405, "method not allowed")
        if getattr(request, "body_too_large", False):
            return refuse(request, 413, f"body over {MAX_BODY} bytes")
        return self.answer(request)

    def _authorized(self, request: server.Request) -> bool:
        header = request.getHeader(b"authorization") or b""
        scheme, _, credentials = header.partition(b" ")
        given = credentials.strip() if scheme.lower() == b"bearer" else b""
        return hmac.compare_digest(given, self._token)

    def answer(self, request: server.Request) -> bytes | int:
        raise NotImplementedError


def refuse(request: server.Request, status: int, why: str) -> bytes:
    log.warn(
        "admin: refused {method} {path} from {peer}: {status} {why}",
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1")[:200],
        peer=describe_peer(request),
        status=status,
        why=why,
    )
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if status == 413:
        request.setHeader(b"connection", b"close")
    return f"{status} {why}\n".encode("utf-8")


class RpcResource(AdminResource):
    allowed_methods = (b"POST",)

    def answer(self, request: server.Request) -> int:
        request.content.seek(0)
        body = request.content.read()
        peer = describe_peer(request)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(answer: Any) -> None:
            if gone:
                return
            if answer is None:
                request.setResponseCode(204)
            else:
                request.setHeader(b"content-type", JSON_TYPE)
                request.write(encode(answer))
            request.finish()

        def broken(failure: Failure) -> None:
            log.failure("admin: answering {peer} failed", failure, peer=peer)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        handle_body(self.root, body, peer).addCallback(write).addErrback(broken)
        return server.NOT_DONE_YET


class MetricsResource(AdminResource):
    allowed_methods = (b"GET", b"HEAD")

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.registry = prometheus.make_registry(root)

    def answer(self, request: server.Request) -> bytes | int:
        request.setHeader(b"content-type", prometheus.CONTENT_TYPE.encode("ascii"))
        render_metrics = getattr(self.root, "render_metrics", None)
        if render_metrics is None:
            return prometheus.render(self.registry)

        def write(page: bytes) -> None:
            if not request.finished and request.channel is not None:
                request.write(page)
                request.finish()

        def broken(failure: Failure) -> None:
            log.failure("admin: /metrics failed", failure)
            if not request.finished and request.channel is not None:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"metrics unavailable (see the sipws log)\n")
                request.finish()

        defer.maybeDeferred(render_metrics).addCallbacks(write, broken)
        return server.NOT_DONE_YET


class NotFound(AdminResource):
    allowed_methods = (b"GET", b"HEAD", b"POST")

    def answer(self, request: server.Request) -> bytes:
        return refuse(request, 404, "no such resource")


class AdminRoot(Resource):
    def __init__(self, root: Any) -> None:
        super().__init__()
        self.children_by_name = {b"rpc": RpcResource(root), b"metrics": MetricsResource(root)}
        self.not_found = NotFound(root)

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return self.children_by_name.get(path, self.not_found)

    def render(self, request: server.Request) -> bytes:
        return self.not_found.render(request)


class AdminSite(server.Site):
    requestFactory = AdminRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: server.Request) -> None:
        """No access log line per request: refusals and state changes are logged instead."""


def endpoint_string(listen: str) -> str:
    """``[admin] listen`` as given, with mode 0600 added to a unix socket without one."""
    if listen.startswith("unix:") and ":mode=" not in listen:
        return f"{listen}:mode={UNIX_SOCKET_MODE}"
    return listen


class AdminService(Service):
    """Binds ``[admin] listen`` at privileged start, stops listening on stop."""

    name = "admin"

    def __init__(self, root: Any) -> None:
        self.root = root
        self.listen = root.config.admin.listen
        self.site = AdminSite(AdminRoot(root))
        self.port: Any = None

    def privilegedStartService(self) -> None:
        if self.listen:
            self.port = self._bind()
            self.root.ports["admin"] = [self.port]
        super().privilegedStartService()

    def _bind(self) -> Any:
        where = endpoint_string(self.listen)
        try:
            endpoint = serverFromString(self.root.reactor, where)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the operator's string
            raise StartupError(f"[admin] listen: bad endpoint {self.listen!r}: {exc}") from None
        outcome: list[Any] = []
        listening = endpoint.listen(self.site)
        listening.addBoth(outcome.append)
        if not outcome:
            listening.cancel()
            raise StartupError(f"[admin] listen: {self.listen!r} did not bind at start-up")
        result = outcome[0]
        if isinstance(result, Failure):
            why = result.value
            if isinstance(why, error.CannotListenError):
                why = getattr(why.socketError, "strerror", None) or why.socketError
            raise StartupError(f"[admin] listen: cannot listen on {self.listen}: {why}")
        host = result.getHost()
        log.info("admin interface listening on {where}", where=_describe_address(host))
        return result

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        self.root.ports.pop("admin", None)
        if port is None:
            return None
        return defer.maybeDeferred(port.stopListening)


def _describe_address(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return f"unix:{getattr(address, 'name', '?')}"


def install(root: Any) -> None:
    service = AdminService(root)
    service.setServiceParent(root)
    root.admin = service
