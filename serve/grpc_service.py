"""The V2 gRPC service (``inference.GRPCInferenceService``) of the model replicas and the gateway.

Ray Serve's gRPC ingress (``grpc_options`` in the Serve config, see
serve/generate.py) picks the application by the call's ``application``
metadata and calls the method of the RPC's name on its ingress deployment,
with the request proto:

- ``application: <model name>``: the model's ``ModelServer``
  (``ModelGrpcService``), straight to its replica, as the per-model HTTP paths;
  for a versioned model its router, for a graph its ``GraphServer``, for a pool
  its ``ModelPool`` (the member named ``<pool>/<id>`` in the request), each a
  ``GrpcIngress`` answering with its own ``grpc_call``;
- ``application: textfleet-gateway``: the ``Gateway`` (``GatewayGrpcService``),
  which answers the server-wide calls itself and forwards the model calls to
  the model the request names, through a handle, as the shared HTTP routes.

Each call is answered with a proto; a failure sets the gRPC status (its HTTP
meaning, see protocols/v2_grpc.py) on Ray's context and returns an empty proto,
so a bad request costs no exception inside Ray and no traceback in the log.
The API keys (``server.api_keys``) are checked on every call but ServerLive
and ServerReady, as on HTTP, from the ``authorization`` (``Bearer <key>``) or
``x-api-key`` metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb

import textfleet
from textfleet.serve import deadlines, forwarding
from textfleet.serve.protocols import v2_grpc

PROTOCOL = "grpc"
"""The ``protocol`` label of the request metrics."""

# The reply of each RPC served; a failed call answers an empty one.
_REPLIES: dict[str, type] = {
    "ServerMetadata": pb.ServerMetadataResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelInfer": pb.ModelInferResponse,
}


@dataclass(frozen=True)
class Answer:
    """A call's outcome as it crosses a Ray handle: the reply, and the status if it failed."""

    reply: Any
    code: grpc.StatusCode | None = None
    details: str = ""

    @classmethod
    def failed(cls, rpc: str, exc: BaseException, http_status: int | None = None) -> Answer:
        """``exc`` as the call's status; ``http_status``: the one it carries itself (a
        graph's errors), instead of the one its type means."""
        code, details, _ = v2_grpc.status(exc)
        if http_status is not None:
            code = v2_grpc.code_for(http_status)
        return cls(_REPLIES[rpc](), code, details)

    def deliver(self, grpc_context) -> Any:
        """Set the status on Ray's context (when it failed); the reply to return."""
        if self.code is not None and grpc_context is not None:
            grpc_context.set_code(self.code)
            grpc_context.set_details(self.details)
        return self.reply


def call_metadata(grpc_context) -> dict[str, str]:
    """The call's metadata as headers (lower-case keys, text values)."""
    if grpc_context is None:
        return {}
    return {
        k.lower(): v
        for k, v in grpc_context.invocation_metadata()
        if isinstance(k, str) and isinstance(v, str)
    }


class GrpcIngress:
    """The RPCs Ray's gRPC ingress calls on an application's ingress deployment, each
    answered by the host's ``grpc_call(rpc, request, metadata) -> Answer`` (what the
    gateway also calls through a handle). Mixed into the model server, a versioned
    model's router, a graph and a pool."""

    async def ServerLive(self, request: pb.ServerLiveRequest, grpc_context=None):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, grpc_context=None):
        # Ray routes nothing to a replica before it has started.
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, grpc_context=None):
        return await self._grpc_deliver("ServerMetadata", request, grpc_context)

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context=None):
        return await self._grpc_deliver("ModelReady", request, grpc_context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, grpc_context=None):
        return await self._grpc_deliver("ModelMetadata", request, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context=None):
        return await self._grpc_deliver("ModelInfer", request, grpc_context)

    async def _grpc_deliver(self, rpc: str, request: Any, grpc_context) -> Any:
        answer = await self.grpc_call(rpc, request, call_metadata(grpc_context))
        return answer.deliver(grpc_context)

    async def grpc_call(self, rpc: str, request: Any, metadata: dict[str, str]) -> Answer:
        raise NotImplementedError


def model_named(rpc: str, request: Any) -> tuple[str, str]:
    """(model name, version or "") that a model call's request names."""
    if rpc == "ModelInfer":
        return request.model_name, request.model_version
    return request.name, request.version


def requested_timeout(metadata: dict[str, str]) -> float | None:
    """The ``x-request-timeout`` metadata (seconds), as the HTTP header of that name."""
    return deadlines.parse_header(metadata.get(deadlines.HEADER))


class ModelGrpcService(GrpcIngress):
    """Mixed into ``ModelServer``: needs its ``name``, ``version``, ``config``, ``task``
    (the adapter), ``keys``, ``metrics`` and ``exporter``."""

    async def grpc_call(self, rpc: str, request: Any, metadata: dict[str, str]) -> Answer:
        """One call of ``rpc`` (a key of ``_REPLIES``), checked and counted; also what the
        gateway forwards through a handle."""
        self.exporter.start()
        start, rows, status = time.perf_counter(), 0, 200
        try:
            self.keys.check(metadata)
            with deadlines.client_timeout(requested_timeout(metadata)):
                answer = Answer(await self._grpc_reply(rpc, request))
            if rpc == "ModelInfer" and answer.reply.outputs:
                rows = answer.reply.outputs[0].shape[0]
        except Exception as e:  # a bad call never takes the replica down
            answer, status = Answer.failed(rpc, e), v2_grpc.status(e)[2]
        self.metrics.record(PROTOCOL, status, time.perf_counter() - start, rows)
        return answer

    async def _grpc_reply(self, rpc: str, request: Any) -> Any:
        if rpc == "ServerMetadata":
            return v2_grpc.server_metadata(textfleet.__version__)
        if rpc == "ModelInfer":
            v2_grpc.check_model(request.model_name, request.model_version, self.name, self.version)
            req = v2_grpc.infer_request(request)
            outputs = await self.task.infer(req)
            return v2_grpc.infer_response(self.name, self.version, req, outputs)
        v2_grpc.check_model(request.name, request.version, self.name, self.version)
        if rpc == "ModelReady":
            return pb.ModelReadyResponse(ready=True)
        if rpc == "ModelMetadata":
            return self._grpc_metadata
        raise ValueError(f"no gRPC method {rpc!r}")

    @cached_property
    def _grpc_metadata(self) -> pb.ModelMetadataResponse:
        """Built once per replica: it never changes."""
        return v2_grpc.model_metadata(
            self.name,
            self.version,
            f"textfleet_{self.config.backend}",
            self.task.inputs,
            self.task.outputs,
        )


class GatewayGrpcService:
    """Mixed into the ``Gateway``: needs its ``models`` (a ``ModelDirectory``) and ``keys``.
    Server-wide calls are answered here (ServerReady: every model RUNNING, as
    ``/v2/health/ready``); model calls go to the model named in the request."""

    async def ServerLive(self, request: pb.ServerLiveRequest, grpc_context=None):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, grpc_context=None):
        apps = await self.models.statuses()
        running = [str(app.status.value) == "RUNNING" for app in apps.values()]
        return pb.ServerReadyResponse(ready=bool(running) and all(running))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, grpc_context=None):
        try:
            self.keys.check(call_metadata(grpc_context))
            answer = Answer(v2_grpc.server_metadata(textfleet.__version__))
        except Exception as e:
            answer = Answer.failed("ServerMetadata", e)
        return answer.deliver(grpc_context)

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context=None):
        return await self._forward("ModelReady", request.name, request, grpc_context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, grpc_context=None):
        return await self._forward("ModelMetadata", request.name, request, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context=None):
        return await self._forward("ModelInfer", request.model_name, request, grpc_context)

    async def _forward(self, rpc: str, model: str, request: Any, grpc_context) -> Any:
        """The ``grpc_call`` of the model, versioned model, graph or pool member
        (``<pool>/<id>``) the request names, as the shared HTTP routes reach them; an
        unknown model is NOT_FOUND, one that cannot answer now UNAVAILABLE
        (serve/forwarding.py); an ``x-request-timeout`` bounds the wait, as on HTTP."""
        metadata = call_metadata(grpc_context)
        try:
            self.keys.check(metadata)
            timeout = requested_timeout(metadata)
            args = (rpc, request, metadata)
            answer = await forwarding.call(self.models, model, "grpc_call", args, {}, timeout)
        except Exception as e:
            answer = Answer.failed(rpc, e)
        return answer.deliver(grpc_context)
