"""Errors the engine raises to its callers; serve/ maps each to an HTTP status.

Every message names the field and the limit so a caller can fix the request.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of the errors below."""


class InputError(EngineError, ValueError):
    """Bad input (HTTP 400). ``field`` names what was wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):
        # Rebuild from both arguments: Ray pickles errors raised in a replica
        # back to the caller, and the default (self.args) has only one.
        return (type(self), (self.field, self.message))


class TooLarge(InputError):
    """A request over a configured size limit (HTTP 413)."""


class Overloaded(EngineError):
    """The engine's queue is full (HTTP 503 + Retry-After); retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (str(self), self.retry_after_s))


class ModelDirError(EngineError):
    """A model directory is missing, incomplete or corrupt."""


def short_repr(value: Any, limit: int = 40) -> str:
    """A caller's value for an error message, at most about ``limit`` characters.

    Scalars are shown (strings cut), containers only by kind and size: a
    message never grows with the request nor recurses into its nesting.
    """
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    return type(value).__name__
