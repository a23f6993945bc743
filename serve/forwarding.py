"""The gateway's call into a model's replica, and what a failed call answers.

A configured model that cannot answer now is a 503 with a Retry-After, never
a 500 or a dropped connection, so that clients and load balancers retry:

- its replica died or cannot be reached: inference is idempotent (the same
  texts give the same result), so the call is retried once on whatever replica
  Ray routes it to next, waiting at most ``RECOVERY_WAIT_S`` for one; then 503;
- Ray's queue for the model is full (``BackPressureError``, past the
  deployment's ``max_queued_requests``) or it has no replica
  (``DeploymentUnavailableError``): 503 at once;
- no answer by the client's deadline plus ``GRACE_S``: 504. The replica
  answers 504 itself at its deadline; this bounds a replica that is stuck.

Any other failure is the callee's own exception, raised here as it was raised
there (an ``InputError`` stays one, with its field and message).

A handle call goes by reference (a Ray actor call) or by value (gRPC to the
replica, ``RAY_SERVE_USE_GRPC_BY_DEFAULT``, serve/deploy.py), and each reports
failures its own way: the callee's exception wrapped in a ``RayTaskError`` or
as it is; a dead replica as ``ActorDiedError`` or as ``ActorUnavailableError``,
or, for a replica that stopped while the call ran, a gRPC status. ``call``
answers the same with either.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from textfleet.engine.errors import EngineError
from textfleet.serve.protocols.common import Reply, Unavailable

GRACE_S = 2.0
"""Beyond the request's deadline, for the replica's own 504 to travel back."""

RECOVERY_WAIT_S = 10.0
"""How long the retry after a replica's death waits for a replica to take it."""


async def forward(
    models: Any, name: str, method: str, payload: Any, timeout: float | None
) -> Reply:
    """``models.handle(name).<method>.remote(payload, timeout)``, its failures mapped."""
    return await call(models, name, method, (payload, timeout), {}, timeout)


async def call(
    models: Any,
    name: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    """``models.handle(name).<method>.remote(*args, **kwargs)``, bounded by ``timeout``
    (the request's deadline, None: none) plus ``GRACE_S``, its failures mapped."""
    start = time.monotonic()
    for attempt in (1, 2):
        handle = await models.handle(name)
        limit = None if timeout is None else timeout + GRACE_S - (time.monotonic() - start)
        if attempt == 2:
            limit = RECOVERY_WAIT_S if limit is None else min(limit, RECOVERY_WAIT_S)
        try:
            return await _bounded(getattr(handle, method).remote(*args, **kwargs), limit)
        except _NoAnswer:
            if attempt == 2:  # waited for a replica to come back, in vain
                raise Unavailable(f"model {name!r} is recovering; retry shortly") from None
            raise TimeoutError(f"model {name!r} did not answer within {timeout:g} s") from None
        except Exception as e:
            error = callee_error(e)
            if replica_gone(error):
                models.forget(name)
                if attempt == 2:
                    raise Unavailable(
                        f"model {name!r}: its replica stopped while serving this request; "
                        "retry shortly"
                    ) from None
                continue
            if isinstance(error, BackPressureError):
                raise Unavailable(
                    f"model {name!r} is at capacity: {error.message}", error.retry_after_s or 1.0
                ) from None
            if isinstance(error, DeploymentUnavailableError):
                raise Unavailable(f"model {name!r} is unavailable: {error.message}") from None
            # Our own errors (bad input, overload, the callee's deadline) come from a
            # live application: its handle stays. Any other failure may mean the
            # application was deleted or redeployed under us: the lookup says so
            # (404 / 503); if it is still there, the error stands.
            if not isinstance(error, EngineError | TimeoutError):
                models.forget(name)
                await models.handle(name)
            if error is e:
                raise
            raise error from None
    raise AssertionError("unreachable")


def callee_error(exc: BaseException) -> BaseException:
    """The exception the callee raised: by reference Ray wraps it in a ``RayTaskError``
    (once per hop: a router re-raising its version's error adds one), by gRPC it
    arrives as raised. A ``RayTaskError``'s own text is the remote traceback, which
    must not reach a client."""
    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


def replica_gone(exc: BaseException) -> bool:
    """The callee's replica died or stopped under the call. By reference Ray says
    ``ActorDiedError`` / ``ActorUnavailableError``; by gRPC a lost connection is
    ``ActorUnavailableError`` too, but a replica whose gRPC server stopped while the
    call ran (a drain past its graceful shutdown budget) cancels the call from its
    side: ``CANCELLED``. Our own cancellation is ``asyncio.CancelledError``, never
    this."""
    if isinstance(exc, RayActorError):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )


class _NoAnswer(Exception):
    """The wait's own limit passed (not a TimeoutError the callee raised)."""


class _CalleeTimeout(Exception):
    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


async def _bounded(response: Any, limit: float | None) -> Any:
    """Await a ``DeploymentResponse``; past ``limit`` seconds cancel it, _NoAnswer."""
    if limit is None:
        return await response
    try:
        return await asyncio.wait_for(_await(response), max(0.0, limit))
    except asyncio.TimeoutError:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
        response.cancel()
        raise _NoAnswer from None
    except _CalleeTimeout as e:
        raise e.error from None


async def _await(response: Any) -> Any:
    """The response; a TimeoutError the callee raised (its own deadline, a 504 it
    reports) set apart from ``wait_for``'s."""
    try:
        return await response
    except TimeoutError as e:
        raise _CalleeTimeout(e) from None
