"""``ModelServer``: the one Ray Serve deployment that serves any textfleet model.

Each replica loads one ``Engine`` and answers, under its application's route
prefix ``/v2/models/<name>``, the V2 metadata, ready and infer routes, and the
shared routes' protocols (OpenAI embeddings, rerank, KServe V1 predict: see
serve/model_routes.py), where HAProxy also sends the shared routes themselves;
the gateway forwards them through a handle to the same handlers, and Python
callers use ``embed`` / ``infer`` on ``serve.get_app_handle(name)``; gRPC
clients call the V2 gRPC service (serve/grpc_service.py).

The HTTP path is a plain ``async __call__`` with a three-way hand router: no
ASGI framework, orjson, one await on the engine. Every error becomes a reply
with its status; nothing a client sends can raise out of a handler.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from textfleet.engine.errors import InputError, ModelDirError
from textfleet.serve import auth, cpu_priority, deadlines, model_source
from textfleet.serve.admission import AdmissionGate
from textfleet.serve.config import DEPLOYMENT_NAME, ModelConfig
from textfleet.serve.grpc_service import ModelGrpcService
from textfleet.serve.hooked_engine import load_hooks
from textfleet.serve.metrics import EngineStatsExporter, ModelMetrics
from textfleet.serve.model_routes import (
    OPENAI_EMBEDDINGS,
    RERANK,
    V1_PREDICT,
    ProtocolRoute,
    protocol_route,
)
from textfleet.serve.protocols import openai, rerank, v1, v2
from textfleet.serve.protocols.body import read_request_body
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    Reply,
    check_body_size,
    dumps,
    error_reply,
    loads,
    short_repr,
)
from textfleet.serve.shadow_replica import Mirror, MirrorSummary, ShadowComparer
from textfleet.serve.tasks import adapter_for

log = logging.getLogger(__name__)

VERSION_HEADER = "x-model-version"
"""Response header naming the version that answered (versioned models only)."""


def load_engine(cfg: ModelConfig):
    """Load the model's engine; any failure names the model and its directory."""
    from textfleet.engine.engine import Engine

    model_dir = model_source.replica_model_dir(cfg.model_dir)
    if not model_dir.is_dir():
        where = f" (unpacked from {cfg.model_uri})" if cfg.model_uri else ""
        raise ModelDirError(
            f"model {cfg.name!r}: model_dir {model_dir}{where} does not exist; "
            "export it with `textfleet export` or fix model_dir in models.yaml"
        )
    try:
        if cfg.model_sha256 is not None:
            model_source.check_pin(model_dir, cfg.model_sha256)
        return Engine.load(model_dir, cfg.engine_config())
    except Exception as e:
        raise ModelDirError(
            f"model {cfg.name!r}: cannot load {model_dir}: {type(e).__name__}: {e}"
        ) from e


def to_response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, dict(reply.headers), media_type=reply.media_type)


def subpath(scope: dict[str, Any]) -> str:
    """The request path below the application's route prefix (Ray sets it as root_path)."""
    path: str = scope["path"]
    root = scope.get("root_path", "").rstrip("/")
    return path[len(root) :] if root and path.startswith(root) else path


# Options come from the model's entry (ModelConfig.deployment_options) when its
# application is built; the decorator only names the deployment.
# The V2 gRPC methods (ModelInfer, ModelMetadata, ...) come from ModelGrpcService.
@serve.deployment(name=DEPLOYMENT_NAME)
class ModelServer(ModelGrpcService):
    def __init__(self, config: dict[str, Any], announce_version: bool = False):
        self.config = ModelConfig.model_validate(config)
        # A version of a versioned model names itself in a header on every HTTP reply.
        self._version_headers = ((VERSION_HEADER, self.config.version),) if announce_version else ()
        self.keys = auth.KeyCheck()  # no keys unless user_config names some
        self.name = self.config.name
        self.version = self.config.version
        # User hooks first: a module that cannot be imported fails this application
        # (its message in `textfleet status`) before the model is loaded.
        self.hooks = load_hooks(self.name, self.config.hooks)
        self.engine = load_engine(self.config)
        if self.config.warmup:  # Ray routes nothing here before __init__ returns
            took = self.engine.warmup()
            log.info("model %r warmed up: %s", self.name, {w: round(t, 3) for w, t in took.items()})
        self.metrics = ModelMetrics(self.name, self.version)
        # The adapters call the engine through the admission gate: a request that
        # could not finish before its deadline is refused on arrival (503).
        gate = AdmissionGate(self.engine, on_outcome=self.metrics.record_class)
        self.task = adapter_for(gate, self.config, self.hooks)
        self.exporter = EngineStatsExporter(self.name, self.engine.stats, version=self.version)
        # Metadata never changes for a replica: encode it once.
        self._metadata = v2.model_metadata(
            self.name,
            self.version,
            f"textfleet_{self.config.backend}",
            self.task.inputs,
            self.task.outputs,
            self.task.metadata_parameters(),
        )
        self._metadata_reply = Reply(200, dumps(self._metadata))
        self._ready_reply = Reply(200, dumps({"name": self.name, "ready": True}))
        self._shadow: ShadowComparer | None = None  # made by the first mirror (a shadow's)
        log.info("model %r loaded from %s", self.name, self.config.model_dir)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's light update (``user_config``): the API key digests (serve/auth.py)
        and, for a version's replicas, whether they run in the background of the CPUs (a
        shadow's: serve/cpu_priority.py)."""
        self.keys = auth.from_user_config(user_config, (cpu_priority.BACKGROUND_ARG,))
        background = bool(user_config.get(cpu_priority.BACKGROUND_ARG, False))
        if background or cpu_priority.is_background():
            cpu_priority.set_background(background)

    # ------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        self.exporter.start()
        route = protocol_route(subpath(request.scope), self.name)
        if route is not None:
            return to_response(await self._protocol_http(request, route))
        start = time.perf_counter()
        n_texts = 0
        try:
            asked = deadlines.parse_header(request.headers.get(deadlines.HEADER))
            with deadlines.client_timeout(asked):
                reply, n_texts = await self._route(request)
        except Exception as e:  # a bad request never takes the replica down
            reply = error_reply(e)
        self.metrics.record("v2", reply.status, time.perf_counter() - start, n_texts)
        if self._version_headers:
            reply = Reply(reply.status, reply.body, reply.headers + self._version_headers,
                          reply.media_type)  # fmt: skip
        return to_response(reply)

    async def _route(self, request: Request) -> tuple[Reply, int]:
        self.keys.check(request.headers)  # every route of a model needs a key, when asked
        sub = v2.split_version(subpath(request.scope), self.version, self.name)
        method = request.method
        if sub == "/infer":
            _expect(method, "POST", sub)
            limit = self.config.limits.max_request_bytes
            body = await read_request_body(request, limit, binary_ok=True)
            req = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH))
            outputs = await self.task.infer(req)
            return v2.infer_response(self.name, self.version, req, outputs), _rows(outputs)
        if sub in ("", "/"):
            _expect(method, "GET", sub)
            return self._metadata_reply, 0
        if sub == "/ready":
            _expect(method, "GET", sub)
            return self._ready_reply, 0
        where = f"{method[:16]} {request.scope['path'][:120]}"
        raise NotFound(f"no route {where} for model {self.name!r}")

    async def _protocol_http(self, request: Request, route: ProtocolRoute) -> Reply:
        """A shared route's protocol below this model's prefix: the key and the method
        (answered as the gateway answers them), the body's type and size (in the
        protocol's error shape), then the handler the gateway calls."""
        start = time.perf_counter()
        try:
            self.keys.check(request.headers)
            _expect(request.method, "POST", subpath(request.scope))
        except Exception as e:
            return self._refused(route, error_reply(e), start)
        try:
            timeout = deadlines.parse_header(request.headers.get(deadlines.HEADER))
            body = await read_request_body(request, self.config.limits.max_request_bytes)
        except Exception as e:
            return self._refused(route, route.error_reply(e), start)
        return await getattr(self, route.handler)(body, timeout)

    def _refused(self, route: ProtocolRoute, reply: Reply, start: float) -> Reply:
        self.metrics.record(route.protocol, reply.status, time.perf_counter() - start, 0)
        return reply

    def _check_model(self, model: str) -> None:
        """A body's ``model`` must name this model: the gateway routed on it, and on a
        path below this model's prefix another name is a client's mistake."""
        if model != self.name:
            raise InputError(
                "model",
                f"{short_repr(model)} is not served here: this path is model {self.name!r}'s; "
                "name it, or post to the shared route to choose any model",
            )

    # ------------------------------------------------------------ shared routes
    # Called by the gateway through a handle, and by _protocol_http for the same
    # protocols below this model's prefix (where HAProxy sends the shared routes).
    # A version's replica is reached only this way (by its model's router): each
    # starts the engine-stats poller, as __call__ does.

    async def v2_infer(
        self,
        body: bytes,
        timeout: float | None = None,
        header_length: str | None = None,
        keep_outputs: bool = False,
    ):
        """V2 infer forwarded by a versioned model's router: the raw body (its type
        checked there, this model's size limit here). ``keep_outputs``: also return the
        output arrays (None on failure), for the router's shadow comparison."""
        self.exporter.start()
        start, outputs = time.perf_counter(), None
        try:
            check_body_size(len(body), self.config.limits.max_request_bytes)
            req = v2.parse_infer_request(body, header_length)
            with deadlines.client_timeout(timeout):
                outputs = await self.task.infer(req)
            reply = v2.infer_response(self.name, self.version, req, outputs)
        except Exception as e:
            reply, outputs = error_reply(e), None
        n = 0 if outputs is None else _rows(outputs)
        self.metrics.record("v2", reply.status, time.perf_counter() - start, n)
        return (reply, outputs) if keep_outputs else reply

    async def v1_predict(self, body: bytes, timeout: float | None = None) -> Reply:
        """KServe V1 ``:predict`` (``timeout``: the client's)."""
        self.exporter.start()
        start, n = time.perf_counter(), 0
        try:
            check_body_size(len(body), self.config.limits.max_request_bytes)
            with deadlines.client_timeout(timeout):
                predictions = await self.task.v1_predictions(v1.parse_predict(body))
            n = len(predictions)
            reply = v1.predict_reply(predictions)
        except Exception as e:
            reply = error_reply(e)
        self.metrics.record(V1_PREDICT.protocol, reply.status, time.perf_counter() - start, n)
        return reply

    async def openai_embeddings(self, body: bytes, timeout: float | None = None) -> Reply:
        """OpenAI ``/v1/embeddings`` (the raw body: this model's size limit is checked
        before it is parsed, the gateway's being the largest model's; ``timeout``: the
        client's)."""
        self.exporter.start()
        start, obj = time.perf_counter(), None
        try:
            check_body_size(len(body), self.config.limits.max_request_bytes)
            obj = loads(body)
            self._check_model(openai.model_of(obj))
            with deadlines.client_timeout(timeout):
                reply = await self.task.openai_embeddings(obj)
        except Exception as e:
            reply = openai.error_reply(e)
        texts = obj.get("input") if isinstance(obj, dict) else None
        n = len(texts) if isinstance(texts, list) else int(isinstance(texts, str))
        took = time.perf_counter() - start
        self.metrics.record(OPENAI_EMBEDDINGS.protocol, reply.status, took, n)
        return reply

    async def rerank_http(self, body: bytes, timeout: float | None = None) -> Reply:
        """``POST /v1/rerank`` (the raw body, as above)."""
        self.exporter.start()
        start, obj = time.perf_counter(), None
        try:
            check_body_size(len(body), self.config.limits.max_request_bytes)
            obj = loads(body)
            self._check_model(rerank.model_of(obj))
            with deadlines.client_timeout(timeout):
                reply = await self.task.rerank_http(obj)
        except Exception as e:
            reply = error_reply(e)
        docs = obj.get("documents", obj.get("texts")) if isinstance(obj, dict) else None
        n = len(docs) if isinstance(docs, list) else 0
        self.metrics.record(RERANK.protocol, reply.status, time.perf_counter() - start, n)
        return reply

    def v1_status(self) -> dict[str, Any]:
        return v1.model_status(self.name, True)

    # ------------------------------------------------------------ Python callers

    async def embed(
        self,
        texts: list[str],
        timeout: float | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        priority: int | None = None,
    ) -> np.ndarray:
        """``await handle.embed.remote(texts, dimensions=256, prompt_name="query")``
        -> float32 [n, dimensions or dim]. ``priority`` here and below: the request's
        class, lower is more urgent (0 to 9, default 5; see the README)."""
        call = self.task.embed(
            texts, timeout, dimensions=dimensions, prompt_name=prompt_name, priority=priority
        )
        return await self._handle_call(call, len)

    async def classify(
        self, texts: list[str], top_k: int | None = 1, timeout=None, priority: int | None = None
    ):
        """``await handle.classify.remote(texts, top_k)`` -> per text [LabelScore], best first."""
        return await self._handle_call(self.task.classify(texts, top_k, timeout, priority), len)

    async def entities(
        self,
        texts: list[str],
        aggregation: str | None = None,
        timeout=None,
        priority: int | None = None,
    ):
        """``await handle.entities.remote(texts)`` -> per text [Entity] (character offsets)."""
        call = self.task.entities(texts, aggregation, timeout, priority)
        return await self._handle_call(call, len)

    async def score(
        self, pairs: list, raw_scores: bool = False, timeout=None, priority: int | None = None
    ) -> np.ndarray:
        """``await handle.score.remote([(query, document), ...])`` -> float32 [n]."""
        return await self._handle_call(self.task.score(pairs, raw_scores, timeout, priority), len)

    async def rerank(
        self,
        query: str,
        documents: list[str],
        top_k=None,
        raw_scores=False,
        timeout=None,
        priority: int | None = None,
    ):
        """``await handle.rerank.remote(query, documents, top_k)`` -> [Ranked], best first."""
        call = self.task.rerank(query, documents, top_k, raw_scores, timeout, priority)
        return await self._handle_call(call, len)

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """``await handle.infer.remote(v2_request_dict)`` -> the V2 response as a dict."""

        async def run():
            req = v2.infer_request_from_dict(request)
            outputs = await self.task.infer(req)
            return v2.infer_response_dict(self.name, self.version, req, outputs)

        return await self._handle_call(run(), lambda r: r["outputs"][0]["shape"][0])

    async def infer_arrays(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """A graph step's call (serve/graph_app.py): ``infer`` on named arrays, with no
        JSON form either way. ``inputs``: BYTES as object arrays of str; ``parameters``:
        the V2 request's (``timeout`` in microseconds, ``priority``, the task's), checked
        as ``infer`` checks them. The outputs are ``infer``'s, each as
        ``v2.output_array`` gives it back (BYTES as str), bit for bit."""

        async def run():
            req = v2.infer_request_from_arrays(inputs, parameters)
            return v2.output_arrays(await self.task.infer(req))

        return await self._handle_call(run(), _rows)

    def metadata(self) -> dict[str, Any]:
        return self._metadata

    async def shadow_mirror(self, mirror: Mirror) -> MirrorSummary:
        """A request the model's router mirrored to this replica (its shadow's), with
        the primary's answer: answered, compared and counted here; the router gets
        the summary (serve/shadow_replica.py)."""
        if self._shadow is None:
            self._shadow = ShadowComparer(self.name, self.version)
        return await self._shadow.run(self, mirror)

    def check_health(self) -> None:
        """Ray's periodic replica health check: a dead engine restarts the replica."""
        if not self.engine.health():
            raise RuntimeError(f"model {self.name!r}: engine is not healthy")

    async def _handle_call(self, coro, rows):
        """Await a Python caller's request, counted like an HTTP one; errors propagate."""
        self.exporter.start()
        start = time.perf_counter()
        try:
            result = await coro
        except Exception as e:
            self.metrics.record("handle", error_reply(e).status, time.perf_counter() - start, 0)
            raise
        self.metrics.record("handle", 200, time.perf_counter() - start, rows(result))
        return result

    def __del__(self):
        exporter, engine = getattr(self, "exporter", None), getattr(self, "engine", None)
        if exporter is not None:
            exporter.stop()
        if getattr(self, "hooks", None) is not None:
            self.hooks.close()
        if engine is not None:
            engine.close()


def _expect(method: str, allowed: str, sub: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{sub or '/'} takes {allowed}, not {method[:16]}")


def _rows(outputs: dict[str, np.ndarray]) -> int:
    first = next(iter(outputs.values()), None)
    return 0 if first is None or first.ndim == 0 else int(first.shape[0])
