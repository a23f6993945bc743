"""Two deployments for tests/test_handle_calls_serving.py: a ``Callee`` that fails in
each way a model's replica can, and a ``Caller`` that calls it through
serve/forwarding.py, by reference or by gRPC, and says what came back.

This folder is on the Ray workers' PYTHONPATH (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from ray import serve

from textfleet.engine.errors import InputError, Overloaded, TooLarge
from textfleet.serve.forwarding import call
from textfleet.serve.graph import GraphError
from textfleet.serve.protocols.common import NotFound, Unavailable, error_status

CALLEE = "handle-callee"
CALLER = "handle-caller"

FAILURES: dict[str, BaseException] = {
    "input": InputError("texts[0]", "an empty text"),
    "too_large": TooLarge("texts", "2000 texts; the limit is 1024"),
    "overloaded": Overloaded("the engine's queue is full", 2.5),
    "unavailable": Unavailable("model 'm' is starting", 3.0),
    "not_found": NotFound("unknown model 'x'"),
    "graph": GraphError("graph 'g': step 's': no case for rows 0 ('z')", 422),
    "timeout": TimeoutError("request timed out after 1.0 s"),
    "bug": RuntimeError("the callee fell over"),
}


@serve.deployment(
    name="Callee",
    num_replicas=2,
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=2,
    health_check_period_s=1,
)
class Callee:
    def fail(self, kind: str) -> None:
        raise FAILURES[kind]

    def echo(self, payload: bytes) -> bytes:
        return payload[::-1]

    def member(self) -> str:
        return serve.get_multiplexed_model_id()

    async def die(self, counter: str, times: int) -> int:
        """Kill this replica's process mid-call, the first ``times`` calls (counted in
        the file ``counter``); after that answer this process's id."""
        path = Path(counter)
        died = int(path.read_text()) if path.exists() else 0
        if died >= times:
            return os.getpid()
        path.write_text(str(died + 1))
        await asyncio.sleep(0.2)  # the call is running when the process goes
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)
        return -1

    async def wait(self, seconds: float, marker: str) -> None:
        """Sleep; ``marker`` says "started", then "cancelled" when the call is cancelled
        or "finished" when it was not."""
        Path(marker).write_text("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            Path(marker).write_text("cancelled")
            raise
        Path(marker).write_text("finished")


class _Directory:
    """What ``call`` needs of serve/gateway.py's ModelDirectory, with the handle's
    transport (and multiplexed member) chosen by the test."""

    def __init__(self, by_reference: bool, member: str | None, lookups: Counter[bool]):
        self.by_reference, self.member, self.lookups = by_reference, member, lookups

    async def handle(self, name: str):
        self.lookups[self.by_reference] += 1
        handle = await asyncio.to_thread(serve.get_app_handle, name)
        options: dict[str, Any] = {"_by_reference": self.by_reference}
        if self.member is not None:
            options["multiplexed_model_id"] = self.member
        return handle.options(**options)

    def forget(self, name: str) -> None:
        pass


@serve.deployment(name="Caller", ray_actor_options={"num_cpus": 0})
class Caller:
    def __init__(self):
        self.lookups: Counter[bool] = Counter()  # handle lookups per transport

    async def outcome(
        self,
        by_reference: bool,
        method: str,
        *args: Any,
        timeout: float | None = None,
        member: str | None = None,
    ) -> dict[str, Any]:
        """``call(CALLEE, method, args)``: its result, or what a failure looks like to
        our code (type, message, the HTTP status we answer, the attributes we read)."""
        try:
            directory = _Directory(by_reference, member, self.lookups)
            result = await call(directory, CALLEE, method, args, {}, timeout)
        except Exception as e:
            return {
                "type": type(e).__name__,
                "message": str(e),
                "http_status": error_status(e),
                "field": getattr(e, "field", None),
                "status": getattr(e, "status", None),
                "retry_after_s": getattr(e, "retry_after_s", None),
            }
        return {"result": result}

    def take_lookups(self) -> dict[bool, int]:
        """Handle lookups ``call`` made since the last ``take_lookups``, per transport
        (by reference or not)."""
        taken = dict(self.lookups)
        self.lookups.clear()
        return taken

    def settings(self) -> dict[str, str | None]:
        """The Ray Serve settings this replica runs with (read when Ray Serve was imported)."""
        from ray.serve._private import constants

        return {
            "use_grpc_by_default": constants.RAY_SERVE_USE_GRPC_BY_DEFAULT,
            "proxy_use_grpc": constants.RAY_SERVE_PROXY_USE_GRPC,
            "max_message_length": constants.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH,
        }


callee_app = Callee.bind()
caller_app = Caller.bind()
