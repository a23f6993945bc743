"""Request deadlines: the model's default, shortened by the client.

Every request has a deadline: its model's ``request_timeout_s`` (models.yaml).
A client may ask for a shorter one, never a longer one (the server's bound is
what protects its queue): the V2 ``parameters.timeout`` (microseconds, as
Triton's), a ``timeout`` argument of a Python handle call, or the
``X-Request-Timeout`` header (seconds) on any HTTP route; the gateway forwards
the header's value with OpenAI, rerank and KServe V1 requests.

The header's value travels to the task adapter in a context variable set for
the one request (``client_timeout``), so the adapters' signatures stay those
of the engine calls they make.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

from textfleet.engine.errors import InputError

HEADER = "x-request-timeout"
"""Seconds the client will wait for this request (a decimal number > 0)."""

_requested: ContextVar[float | None] = ContextVar("textfleet_request_timeout", default=None)


def parse_header(value: str | None) -> float | None:
    """The header's seconds, or None when absent; InputError (400) when malformed."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InputError(HEADER, f"expected seconds > 0, got {value!r}")
    return seconds


def effective(default_s: float | None, *requested: float | None) -> float | None:
    """The shortest of the model's default and what the client asked for."""
    bounds = [t for t in (default_s, *requested) if t is not None]
    return min(bounds) if bounds else None


@contextlib.contextmanager
def client_timeout(seconds: float | None) -> Iterator[None]:
    """The client's requested timeout for the request handled inside."""
    token = _requested.set(seconds)
    try:
        yield
    finally:
        _requested.reset(token)


def requested() -> float | None:
    """The timeout the current request's client asked for by header, if any."""
    return _requested.get()
