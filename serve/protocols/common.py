"""What every protocol shares: the reply type, JSON, size limits, errors -> status."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson

from textfleet.engine.errors import (
    EngineError,
    InputError,
    ModelDirError,
    Overloaded,
    TooLarge,
)
from textfleet.engine.errors import short_repr as short_repr  # re-exported for the protocols
from textfleet.engine.tasks.spec import TensorSpec as TensorSpec  # declared by the tasks

log = logging.getLogger(__name__)

JSON = "application/json"


class NotFound(EngineError):
    """Unknown model, version or route (HTTP 404)."""


class MethodNotAllowed(EngineError):
    """A known route called with the wrong HTTP method (HTTP 405)."""


class Unavailable(EngineError):
    """A known model that cannot answer now: deploying, recovering, its replica gone
    (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (str(self), self.retry_after_s))


class Unauthorized(InputError):
    """No API key, or not one of the server's (HTTP 401 with ``WWW-Authenticate``)."""


class UnsupportedMediaType(InputError):
    """A body in a type or encoding the route does not read (HTTP 415)."""


@dataclass(frozen=True)
class Reply:
    """A finished HTTP answer: what a handler returns and a Ray handle can carry."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    media_type: str = JSON


def dumps(obj: Any) -> bytes:
    """JSON bytes; numpy arrays are written natively (float32 as shortest repr)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes | str, field: str = "body") -> Any:
    """Parse JSON or raise InputError naming ``field``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InputError(field, f"malformed JSON: {e}") from None


def json_reply(obj: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, dumps(obj), headers)


def check_body_size(nbytes: int, limit: int) -> None:
    if nbytes > limit:
        raise TooLarge(
            "body", f"{nbytes} bytes; the limit is {limit} bytes (limits.max_request_bytes)"
        )


def check_count(n: int, limit: int, field: str) -> None:
    if n > limit:
        raise TooLarge(field, f"{n} texts; the limit is {limit} per request (limits.max_texts)")
    if n == 0:
        raise InputError(field, "no texts; send at least one")


def as_mapping(obj: Any, field: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(field, f"expected a JSON object, got {type_name(obj)}")
    return obj


def type_name(obj: Any) -> str:
    """JSON-flavoured name of a parsed value, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(obj, bool | dict | list | str) or obj is None:
        return names[type(obj)]
    if isinstance(obj, int | float):
        return "number"
    return type(obj).__name__


def error_status(exc: BaseException) -> int:
    """HTTP status of an exception raised while serving a request."""
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, UnsupportedMediaType):
        return 415
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, MethodNotAllowed):
        return 405
    if isinstance(exc, Overloaded | Unavailable):
        return 503
    if isinstance(exc, TimeoutError):
        return 504
    if isinstance(exc, ModelDirError):
        return 500
    return 500


def error_headers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    if isinstance(exc, Unauthorized):
        return (("WWW-Authenticate", 'Bearer realm="textfleet"'),)
    if isinstance(exc, Overloaded | Unavailable):
        # Retry-After takes whole seconds; round up so clients never retry early.
        return (("Retry-After", str(max(1, math.ceil(exc.retry_after_s)))),)
    return ()


def error_message(exc: BaseException) -> str:
    """The message a client sees; internals are logged, not sent."""
    if error_status(exc) == 500 and not isinstance(exc, EngineError):
        log.exception("internal error while serving a request", exc_info=exc)
        return f"internal error ({type(exc).__name__}); see the server log"
    if isinstance(exc, TimeoutError):
        return str(exc) or "request timed out"
    return str(exc)


def error_reply(exc: BaseException) -> Reply:
    """V2 / KServe style error body: ``{"error": "<message>"}``."""
    status = error_status(exc)
    return Reply(status, dumps({"error": error_message(exc)}), error_headers(exc))
