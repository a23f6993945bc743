"""Errors the engine raises to its callers; serve/ maps each to an HTTP status.

Every message names the field and the limit so a caller can fix the request.
"""

from __future__ import annotations


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
