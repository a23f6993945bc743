"""The gateway's call into a model's replica, and what a failed call answers.

A configured model that cannot answer now is a 503 with a Retry-After, never
a 500 or a dropped connection, so that clients and load balancers retry:

- its replica died or cannot be reached (``RayActorError``: ``ActorDiedError``,
  ``ActorUnavailableError``): inference is idempotent (the same texts give the
  same result), so the call is retried once on whatever replica Ray routes it
  to next, waiting at most ``RECOVERY_WAIT_S`` for one; then 503;
- Ray's queue for the model is full (``BackPressureError``, past the
  deployment's ``max_queued_requests``) or it has no replica
  (``DeploymentUnavailableError``): 503 at once;
- no answer by the client's deadline plus ``GRACE_S``: 504. The replica
  answers 504 itself at its deadline; this bounds a replica that is stuck.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

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
        except RayActorError as e:
            models.forget(name)
            if attempt == 2:
                raise Unavailable(
                    f"model {name!r}: its replica stopped while serving this request "
                    f"({type(e).__name__}); retry shortly"
                ) from None
        except TimeoutError:
            if attempt == 2:  # waited for a replica to come back, in vain
                raise Unavailable(f"model {name!r} is recovering; retry shortly") from None
            raise TimeoutError(f"model {name!r} did not answer within {timeout:g} s") from None
        except BackPressureError as e:
            raise Unavailable(
                f"model {name!r} is at capacity: {e.message}", e.retry_after_s or 1.0
            ) from None
        except DeploymentUnavailableError as e:
            raise Unavailable(f"model {name!r} is unavailable: {e.message}") from None
        except Exception:
            # The application may have been deleted or redeployed under us: the
            # lookup says so (404 / 503); if it is still there, the error stands.
            models.forget(name)
            await models.handle(name)
            raise
    raise AssertionError("unreachable")


async def _bounded(response: Any, limit: float | None) -> Any:
    """Await a ``DeploymentResponse``; past ``limit`` seconds cancel it, TimeoutError."""
    if limit is None:
        return await response
    try:
        return await asyncio.wait_for(_await(response), max(0.0, limit))
    except TimeoutError:
        response.cancel()
        raise


async def _await(response: Any) -> Any:
    return await response
