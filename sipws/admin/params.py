"""Admin JSON-RPC plumbing shared by every method: error codes, the errors a caller
can cause, and the binding and checking of parameters (positional or named)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sipws.errors import SipwsError
from sipws.transport.ws_common import MAX_CLOSE_REASON, close_code_allowed

# -- JSON-RPC 2.0 error codes -----------------------------------------------------

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Implementation-defined server errors (-32000 to -32099).
NO_SUCH_CONNECTION = -32001
NOT_OPEN = -32002
NOT_AVAILABLE = -32003
CONNECT_FAILED = -32004
RELOAD_FAILED = -32005

class AdminError(SipwsError):
    """A request the admin interface refuses; ``code`` is its JSON-RPC error code."""

    code = INTERNAL_ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class InvalidParams(AdminError):
    code = INVALID_PARAMS


class NoSuchConnection(AdminError):
    code = NO_SUCH_CONNECTION

    def __init__(self, conn_id: int) -> None:
        super().__init__(f"no connection with id {conn_id}")
        self.conn_id = conn_id


# -- parameter binding ----------------------------------------------------------------

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter: its name, a checker turning the raw JSON value into the typed one."""

    name: str
    check: Callable[[str, Any], Any]
    default: Any = REQUIRED


@dataclass(frozen=True)
class Method:
    name: str
    function: Callable[..., Any]
    params: tuple[Param, ...] = field(default_factory=tuple)
    #: Changes state: logged at info with the caller's address.
    mutating: bool = False


def bind(method: Method, params: Any) -> dict[str, Any]:
    """JSON-RPC params (absent, array or object) → keyword arguments, or InvalidParams."""
    spec = method.params
    raw: dict[str, Any] = {}
    if params is None:
        pass
    elif isinstance(params, list):
        if len(params) > len(spec):
            raise InvalidParams(f"{method.name} takes at most {len(spec)} parameter(s), got {len(params)}")
        raw = {p.name: value for p, value in zip(spec, params)}
    elif isinstance(params, dict):
        known = {p.name for p in spec}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidParams(f"{method.name}: unknown parameter {unknown[0]!r}")
        raw = dict(params)
    else:
        raise InvalidParams("params must be an array or an object")
    bound: dict[str, Any] = {}
    for p in spec:
        if p.name in raw:
            bound[p.name] = p.check(p.name, raw[p.name])
        elif p.default is REQUIRED:
            raise InvalidParams(f"{method.name}: missing parameter {p.name!r}")
        else:
            bound[p.name] = p.default
    return bound


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        # JSON has one number type: 7.0 is accepted as 7, 7.5 and true are not.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise InvalidParams(f"{name}: must be an integer, got {value!r}")
        value = int(value)
        if minimum is not None and value < minimum:
            raise InvalidParams(f"{name}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise InvalidParams(f"{name}: must be <= {maximum}, got {value}")
        return value

    return check


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParams(f"{name}: must be a string, got {value!r}")
    return value


def choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise InvalidParams(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def on_off(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    raise InvalidParams(f"{name}: must be on or off, got {value!r}")


def close_code(name: str, value: Any) -> int:
    code = integer()(name, value)
    if not close_code_allowed(code):
        raise InvalidParams(f"{name}: close code {code} may not be sent (1000-1003, 1007-1011, 3000-4999)")
    return code


def close_reason(name: str, value: Any) -> str:
    # sipws-ctl sends numeric-looking arguments as numbers: `ws.close 7 4000 42`.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    reason = text(name, value)
    if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
        raise InvalidParams(f"{name}: at most {MAX_CLOSE_REASON} bytes in UTF-8")
    return reason


def ban_network(name: str, value: Any) -> Any:
    """An address or CIDR to ban (host bits cleared)."""
    from sipws.edge.limits import BadBan, parse_ban_network

    try:
        return parse_ban_network(text(name, value))
    except BadBan as exc:
        raise InvalidParams(f"{name}: {exc}") from None


def duration(name: str, value: Any) -> float:
    """Seconds >= 0 (0: until ws.unban), at most MAX_BAN_DURATION."""
    from sipws.edge.limits import MAX_BAN_DURATION

    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidParams(f"{name}: must be a number of seconds, got {value!r}")
    if value < 0 or value > MAX_BAN_DURATION:
        raise InvalidParams(f"{name}: must be between 0 (no end) and {MAX_BAN_DURATION:.0f} seconds, got {value}")
    return float(value)


def ban_reason(name: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # sipws-ctl sends numeric-looking words as numbers
    reason = text(name, value)
    if len(reason) > MAX_BAN_REASON:
        raise InvalidParams(f"{name}: at most {MAX_BAN_REASON} characters")
    return reason


#: Longest reason kept with a ban.
MAX_BAN_REASON = 200
