"""``GraphServer``: the application of one inference graph, at ``/v2/models/<graph>``.

One ingress deployment per graph, holding no model: each model step is a call
to the model's own application through ``serve.get_app_handle(<model>)``
(``ModelDirectory``, with the gateway's failure mapping, serve/forwarding.py),
the way a versioned model's router calls its versions (serve/versions.py). The
models are thus shared with direct traffic and batch both together; the
graph's arguments hold the graph and its models' tasks only, so redeploying
a model never redeploys the graph. The DAG walk is serve/graph.py.

It answers V2 like a model: ``POST .../infer`` (JSON or binary tensors; the
response's ``parameters`` give the time of each step and the optional steps
left out), ``GET ...`` (metadata), ``GET .../ready`` (ready when every model
it calls is RUNNING), and Python callers use
``serve.get_app_handle(<graph>).infer.remote(v2_request_dict)``.

Named like a model's deployment, so the gateway counts a graph among the
models (``/v2/health/ready``, the served models a 404 lists) without knowing
graphs; the shared routes' protocols (OpenAI, rerank, V1) are a model's, and a
graph answers them with a 404 that says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response
from tritonclient.grpc import service_pb2 as pb

import textfleet
from textfleet.engine.errors import InputError
from textfleet.serve import auth, deadlines
from textfleet.serve.config import DEPLOYMENT_NAME
from textfleet.serve.forwarding import call
from textfleet.serve.gateway import ModelDirectory
from textfleet.serve.graph import GraphError, GraphResult, run_graph
from textfleet.serve.graph_config import GraphConfig, output_shapes, plan_graph
from textfleet.serve.graph_python import PythonSteps
from textfleet.serve.grpc_service import Answer, GrpcIngress, model_named, requested_timeout
from textfleet.serve.model_routes import protocol_route
from textfleet.serve.protocols import v2, v2_grpc
from textfleet.serve.protocols.body import read_request_body
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    Reply,
    TensorSpec,
    dumps,
    error_reply,
)
from textfleet.serve.server import subpath, to_response

log = logging.getLogger(__name__)

GRAPH_VERSION = "1"
"""A graph has one version: it is redeployed, not versioned."""


# Replicas and max_ongoing_requests come from the graph's entry (serve/generate.py).
@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0})
class GraphServer(GrpcIngress):
    def __init__(self, args: dict[str, Any]):
        graph = GraphConfig.model_validate(args["graph"])
        self.plan = plan_graph(graph, args["tasks"])  # the check models.yaml passed
        self.graph, self.name = graph, graph.name
        # User code of python steps, imported once here: a step that cannot be
        # loaded fails this replica, and so the graph's application, by name.
        self.python = PythonSteps(self.plan)
        self.keys = auth.KeyCheck()
        self.models = ModelDirectory()
        self.inputs = tuple(TensorSpec(i.name, i.datatype, tuple(i.shape)) for i in graph.inputs)
        shapes = output_shapes(self.plan)
        outputs = tuple(TensorSpec(n, dt, tuple(shapes[n])) for n, dt in self.plan.outputs.items())
        self._metadata = v2.model_metadata(
            self.name,
            GRAPH_VERSION,
            "textfleet_graph",
            self.inputs,
            outputs,
            {"models": ", ".join(self.plan.tasks), "steps": ", ".join(s.name for s in graph.steps)},
        )
        self._grpc_metadata = v2_grpc.model_metadata(
            self.name, GRAPH_VERSION, "textfleet_graph", self.inputs, outputs
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's light update (``user_config``): the API key digests."""
        self.keys = auth.from_user_config(user_config)

    # ------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        try:
            reply = await self._route(request)
        except Exception as e:  # a bad request never takes the replica down
            reply = graph_error_reply(e)
        return to_response(reply)

    async def _route(self, request: Request) -> Reply:
        self.keys.check(request.headers)
        sub = v2.split_version(subpath(request.scope), GRAPH_VERSION, self.name)
        method = request.method
        if sub == "/infer":
            _expect(method, "POST", sub)
            body = await read_request_body(request, self.graph.max_request_bytes, binary_ok=True)
            req = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH))
            asked = deadlines.parse_header(request.headers.get(deadlines.HEADER))
            result = await self._run(req, asked)
            return v2.infer_response(
                self.name,
                GRAPH_VERSION,
                _present(req, result),
                result.outputs,
                result.parameters(),
            )
        if sub in ("", "/"):
            _expect(method, "GET", sub)
            return Reply(200, dumps(self._metadata))
        if sub == "/ready":
            _expect(method, "GET", sub)
            ready, states = await self._models_ready()
            body = {"name": self.name, "ready": ready, "models": states}
            return Reply(200 if ready else 503, dumps(body))
        if protocol_route(sub, self.name) is not None:
            return _v2_only(self.name)
        where = f"{method[:16]} {request.scope['path'][:120]}"
        raise NotFound(f"no route {where} for graph {self.name!r}")

    async def _run(self, req: v2.InferRequest, asked: float | None) -> GraphResult:
        v2.check_input_names(req, self.inputs)
        inputs = {}
        for spec in self.graph.inputs:
            texts = v2.texts_input(req, spec.name, self.graph.max_texts)
            if spec.shape[0] != -1 and len(texts) != spec.shape[0]:
                raise InputError(
                    f"inputs.{spec.name}",
                    f"{len(texts)} rows; graph {self.name!r} takes "
                    f"{spec.shape[0]} here (shape {spec.shape})",
                )
            arr = np.empty(len(texts), dtype=object)
            arr[:] = texts
            inputs[spec.name] = arr
        budget = deadlines.effective(self.graph.request_timeout_s, asked, req.timeout_s)
        return await run_graph(
            self.plan, inputs, self._call_model, budget, self.python, req.priority
        )

    async def _call_model(
        self, model: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any], timeout
    ) -> dict[str, np.ndarray]:
        """One model step: the model application's ``infer_arrays``, by handle: a V2
        request's checks and answer, its tensors as arrays both ways (no JSON form)."""
        if timeout is not None:  # V2's timeout is in microseconds
            parameters = {**parameters, "timeout": max(1, math.floor(timeout * 1e6))}
        # A failure is the model's own error (InputError, Overloaded, ...) or the
        # forwarding's (serve/forwarding.py), either way as raised.
        return await call(self.models, model, "infer_arrays", (inputs, parameters), {}, timeout)

    async def _models_ready(self) -> tuple[bool, dict[str, str]]:
        apps = await self.models.statuses()
        states = {m: str(apps[m].status.value) if m in apps else "ABSENT" for m in self.plan.tasks}
        return all(s == "RUNNING" for s in states.values()), states

    # ------------------------------------------------------------ V2 gRPC

    async def grpc_call(self, rpc: str, request: Any, metadata: dict[str, str]) -> Answer:
        """A V2 gRPC call (from Ray's gRPC ingress, or the gateway's), answered as V2 over
        HTTP: the same walk, outputs and response ``parameters`` (step times); ready when
        every model it calls is RUNNING; a failure with its HTTP status's gRPC code."""
        try:
            self.keys.check(metadata)
            if rpc == "ServerMetadata":
                return Answer(v2_grpc.server_metadata(textfleet.__version__))
            name, version = model_named(rpc, request)
            v2_grpc.check_model(name, version, self.name, GRAPH_VERSION)
            if rpc == "ModelReady":
                return Answer(pb.ModelReadyResponse(ready=(await self._models_ready())[0]))
            if rpc == "ModelMetadata":
                return Answer(self._grpc_metadata)
            req = v2_grpc.infer_request(request)
            result = await self._run(req, requested_timeout(metadata))
            reply = v2_grpc.infer_response(
                self.name, GRAPH_VERSION, _present(req, result), result.outputs,
                result.parameters(),
            )  # fmt: skip
            return Answer(reply)
        except GraphError as e:
            return Answer.failed(rpc, e, e.status)
        except Exception as e:  # a bad call never takes the replica down
            return Answer.failed(rpc, e)

    # ------------------------------------------------------------ Python callers

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """``await handle.infer.remote(v2_request_dict)`` -> the V2 response as a dict;
        a failure raises (a ``GraphError`` carries the status)."""
        req = v2.infer_request_from_dict(request)
        result = await self._run(req, None)
        return v2.infer_response_dict(
            self.name, GRAPH_VERSION, _present(req, result), result.outputs, result.parameters()
        )

    def metadata(self) -> dict[str, Any]:
        return self._metadata

    # ------------------------------------------------------------ the gateway's calls

    def v1_status(self) -> dict[str, Any]:
        return {"name": self.name, "ready": True}

    async def v1_predict(self, body: bytes, timeout: float | None = None) -> Reply:
        return _v2_only(self.name)

    async def openai_embeddings(self, body: bytes, timeout: float | None = None) -> Reply:
        return _v2_only(self.name)

    async def rerank_http(self, body: bytes, timeout: float | None = None) -> Reply:
        return _v2_only(self.name)


def graph_error_reply(exc: BaseException) -> Reply:
    """A failed graph request: a GraphError's own status (Retry-After with a 503)."""
    if not isinstance(exc, GraphError):
        return error_reply(exc)
    headers = ()
    if exc.retry_after_s is not None:
        headers = (("Retry-After", str(max(1, math.ceil(exc.retry_after_s)))),)
    return Reply(exc.status, dumps({"error": str(exc)}), headers)


def _v2_only(name: str) -> Reply:
    message = f"{name!r} is an inference graph: it answers V2 infer (/v2/models/{name}/infer) only"
    return error_reply(NotFound(message))


def _present(req: v2.InferRequest, result: GraphResult) -> v2.InferRequest:
    """``req`` without the requested outputs of optional steps that failed (they are
    left out of the answer, not a client's mistake)."""
    if req.outputs is None or not result.failed:
        return req
    kept = tuple(o for o in req.outputs if o.name in result.outputs or o.name not in result.omitted)
    return dataclasses.replace(req, outputs=kept)


def _expect(method: str, allowed: str, sub: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{sub or '/'} takes {allowed}, not {method[:16]}")
