"""``VersionRouter``: the application of a versioned model, at ``/v2/models/<name>``.

Each version (and the shadow) is an application of its own, ``<name>--v<version>``
at ``/v2/models/<name>/versions/<version>`` (serve/generate.py), so a version's
own route reaches its replicas without this hop, adding a version builds only
its replicas and removing one drains only them. This router takes every
unversioned request (V2 over HTTP; V1, OpenAI and rerank from the gateway;
Python handle calls), picks a version by weight or by the sticky header
(serve/traffic.py), forwards the call through a ``DeploymentHandle`` with the
gateway's failure mapping (serve/forwarding.py), names the version that
answered (``x-model-version`` header; V2's ``model_version``) and, for a share
of requests, mirrors them to the shadow once the primary's reply is ready
(serve/shadow.py).

Weights, the sticky header, the shadow and the body cap are the deployment's
``user_config``: changing them is Ray Serve's light update (``reconfigure``),
no replica restarts and no model reloads. A version whose application is gone
or going (removed from models.yaml while requests were on their way) is retried
once on another version, so removing a canary fails no request.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response
from tritonclient.grpc import service_pb2 as pb

import textfleet
from textfleet.serve import auth, deadlines
from textfleet.serve.compare import REPLY_METHODS
from textfleet.serve.config import DEPLOYMENT_NAME, VERSION_DEPLOYMENT, version_app
from textfleet.serve.forwarding import call
from textfleet.serve.gateway import ModelDirectory
from textfleet.serve.grpc_service import PROTOCOL as GRPC
from textfleet.serve.grpc_service import Answer, GrpcIngress, model_named, requested_timeout
from textfleet.serve.metrics import VersionMetrics
from textfleet.serve.model_routes import protocol_route
from textfleet.serve.protocols import v2, v2_grpc
from textfleet.serve.protocols.body import read_request_body
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    Reply,
    Unavailable,
    dumps,
    error_reply,
    short_repr,
)
from textfleet.serve.server import VERSION_HEADER, subpath, to_response
from textfleet.serve.shadow import Shadow, ShadowPlan
from textfleet.serve.shadow_replica import Mirror, MirrorSummary
from textfleet.serve.traffic import TrafficPlan

_USER_CONFIG = ("weights", "sticky_header", "shadow", "max_request_bytes", "request_timeout_s")


# Named like a model's deployment: the gateway and `textfleet status` see the router
# as the model. Replicas come from the generated config (traffic.router_replicas).
@serve.deployment(
    name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096
)
class VersionRouter(GrpcIngress):
    def __init__(self, name: str):
        self.name = name
        self.keys = auth.KeyCheck()
        self.plan: TrafficPlan | None = None
        self.max_request_bytes = 4 * 1024 * 1024
        self.apps = ModelDirectory(deployment=VERSION_DEPLOYMENT)
        self.metrics = VersionMetrics(name)
        self.shadow = Shadow(name, self.metrics)
        self._metadata: dict[str, dict[str, Any]] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The light update: keys, weights, sticky header, shadow, body cap."""
        keys = auth.from_user_config(user_config, others=_USER_CONFIG)
        plan = TrafficPlan(user_config["weights"], user_config.get("sticky_header"))
        shadow = ShadowPlan.from_user_config(user_config.get("shadow"))
        limit = int(user_config.get("max_request_bytes") or self.max_request_bytes)
        # Everything validated: apply at once (requests see the old or the new plan).
        self.keys, self.plan, self.max_request_bytes = keys, plan, limit
        self.shadow.configure(shadow)
        self._metadata.clear()

    # ------------------------------------------------------------ which version

    def _known(self) -> list[str]:
        plan, shadow = self.plan, self.shadow.plan
        return [*plan.weights, *([shadow.version] if shadow else [])] if plan else []

    async def _dispatch(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        key: str | None = None,
        timeout: float | None = None,
        mirrored: bool = False,
        protocol: str = "handle",
    ) -> tuple[str, Any]:
        """Call ``method`` on the named version, or on one picked by the plan (retried
        once on another when its application is gone); then, for a ``mirrored`` kind
        of call, mirror if sampled."""
        kwargs = dict(kwargs or {})
        mirror = version is None and mirrored and self.shadow.sampled()
        if mirror and method == "v2_infer":
            kwargs["keep_outputs"] = True
        chosen = version or self._pick(key)
        try:
            result = await self._call(chosen, method, args, kwargs, timeout)
        except (NotFound, Unavailable):
            other = None if version is not None else self.plan.pick(key, exclude={chosen})
            if other is None:
                raise
            chosen = other
            result = await self._call(chosen, method, args, kwargs, timeout)
        self.metrics.routed.inc(1, {"version": chosen, "protocol": protocol})
        if mirror:
            primary = result[1] if method == "v2_infer" else result
            if method in REPLY_METHODS and result.status != 200:
                primary = None
            if primary is not None:  # an error reply has nothing to compare

                async def send(shadow_version: str, m: Mirror) -> MirrorSummary:
                    return await self._call(shadow_version, "shadow_mirror", (m,), {}, timeout)

                self.shadow.mirror(send, method, args, kwargs, chosen, primary)
            result = result[0] if method == "v2_infer" else result
        return chosen, result

    def _pick(self, key: str | None) -> str:
        if self.plan is None:
            raise Unavailable(f"model {self.name!r} is starting; retry shortly")
        return self.plan.pick(key)

    async def _call(self, version, method, args, kwargs, timeout):
        return await call(self.apps, version_app(self.name, version), method, args, kwargs, timeout)

    # ------------------------------------------------------------ HTTP (V2)

    async def __call__(self, request: Request) -> Response:
        try:
            reply = await self._route(request)
        except Exception as e:  # a bad request never takes the replica down
            reply = error_reply(e)
        return to_response(reply)

    async def _route(self, request: Request) -> Reply:
        self.keys.check(request.headers)
        sub, method = subpath(request.scope), request.method
        version = None
        if sub.startswith("/versions/"):
            # Normally the version's own application takes this prefix; here while
            # it starts (or for a version that does not exist).
            version, _, tail = sub[len("/versions/") :].partition("/")
            if version not in self._known():
                raise NotFound(
                    f"model {self.name!r} has no version {short_repr(version)}; "
                    f"versions: {', '.join(self._known())}"
                )
            sub = "/" + tail if tail else ""
        plan = self.plan
        key = request.headers.get(plan.sticky_header) if plan and plan.sticky_header else None
        if sub == "/infer":
            _expect(method, "POST", sub)
            body = await read_request_body(request, self.max_request_bytes, binary_ok=True)
            timeout = deadlines.parse_header(request.headers.get(deadlines.HEADER))
            header_length = request.headers.get(v2.HEADER_LENGTH)
            chosen, reply = await self._dispatch(
                "v2_infer", (body, timeout), {"header_length": header_length},
                version=version, key=key, timeout=timeout, protocol="v2", mirrored=True,
            )  # fmt: skip
            return _stamped(reply, chosen)
        if sub in ("", "/"):
            _expect(method, "GET", sub)
            chosen = version or self._pick(key)
            return _stamped(Reply(200, dumps(await self._version_metadata(chosen))), chosen)
        if sub == "/ready":
            _expect(method, "GET", sub)
            return Reply(200, dumps({"name": self.name, "ready": self.plan is not None}))
        route = protocol_route(sub, self.name)
        if route is not None and version is None:
            # The shared routes' protocols below the model's prefix (where HAProxy
            # also sends /v1/embeddings, /v1/rerank and V1 predict naming this model).
            try:
                _expect(method, "POST", sub)
                timeout = deadlines.parse_header(request.headers.get(deadlines.HEADER))
                body = await read_request_body(request, self.max_request_bytes)
            except Exception as e:
                return route.error_reply(e)
            return await self._forwarded(route.handler, body, timeout, route.protocol, key)
        where = f"{method[:16]} {request.scope['path'][:120]}"
        raise NotFound(f"no route {where} for model {self.name!r}")

    async def _version_metadata(self, version: str) -> dict[str, Any]:
        """A version's V2 metadata (asked once per version and config), listing all versions."""
        md = self._metadata.get(version)
        if md is None:
            md = dict(await self._call(version, "metadata", (), {}, None))
            self._metadata[version] = md
        return {**md, "versions": self._known()}

    # ------------------------------------------------------------ V2 gRPC

    async def grpc_call(self, rpc: str, request: Any, metadata: dict[str, str]) -> Answer:
        """A V2 gRPC call (from Ray's gRPC ingress, or the gateway's): to the version the
        request names (``model_version``), else to one the plan picks (the sticky header
        read from the call's metadata), as V2 over HTTP; the version's replica answers
        (its ``model_version``). Not mirrored to the shadow."""
        try:
            self.keys.check(metadata)
            if rpc == "ServerMetadata":
                return Answer(v2_grpc.server_metadata(textfleet.__version__))
            name, version = model_named(rpc, request)
            v2_grpc.check_model(name, "", self.name, "")
            if version and version not in self._known():
                raise NotFound(
                    f"model {self.name!r} has no version {short_repr(version)}; "
                    f"versions: {', '.join(self._known())}"
                )
            if rpc == "ModelReady":
                return Answer(pb.ModelReadyResponse(ready=self.plan is not None))
            plan, timeout = self.plan, requested_timeout(metadata)
            key = metadata.get(plan.sticky_header) if plan and plan.sticky_header else None
            _, answer = await self._dispatch(
                "grpc_call", (rpc, request, metadata), version=version or None, key=key,
                timeout=timeout, protocol=GRPC,
            )  # fmt: skip
            if rpc == "ModelMetadata" and answer.code is None:
                del answer.reply.versions[:]  # all versions, as over HTTP
                answer.reply.versions.extend(self._known())
            return answer
        except Exception as e:  # a bad call never takes the router down
            return Answer.failed(rpc, e)

    # ------------------------------------------------------------ gateway calls

    async def v1_predict(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._forwarded("v1_predict", body, timeout, "v1")

    async def openai_embeddings(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._forwarded("openai_embeddings", body, timeout, "openai")

    async def rerank_http(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._forwarded("rerank_http", body, timeout, "rerank")

    async def _forwarded(
        self, method: str, body: bytes, timeout, protocol: str, key: str | None = None
    ) -> Reply:
        chosen, reply = await self._dispatch(
            method, (body, timeout), timeout=timeout, protocol=protocol, key=key, mirrored=True
        )  # fmt: skip
        return _stamped(reply, chosen)

    async def v1_status(self) -> dict[str, Any]:
        return (await self._dispatch("v1_status", ()))[1]

    # ------------------------------------------------------------ Python callers

    async def embed(self, texts: list[str], timeout: float | None = None, priority=None):
        kwargs = _priority(priority)
        return (await self._dispatch("embed", (texts, timeout), kwargs, mirrored=True))[1]

    async def classify(self, texts: list[str], top_k: int | None = 1, timeout=None, priority=None):
        call_args, kwargs = (texts, top_k, timeout), _priority(priority)
        return (await self._dispatch("classify", call_args, kwargs, mirrored=True))[1]

    async def entities(
        self, texts: list[str], aggregation: str | None = None, timeout=None, priority=None
    ):
        call_args, kwargs = (texts, aggregation, timeout), _priority(priority)
        return (await self._dispatch("entities", call_args, kwargs, mirrored=True))[1]

    async def score(self, pairs: list, raw_scores: bool = False, timeout=None, priority=None):
        call_args, kwargs = (pairs, raw_scores, timeout), _priority(priority)
        return (await self._dispatch("score", call_args, kwargs, mirrored=True))[1]

    async def rerank(
        self, query: str, documents: list[str], top_k=None, raw_scores=False, timeout=None,
        priority=None,
    ):  # fmt: skip
        call_args = (query, documents, top_k, raw_scores, timeout)
        kwargs = _priority(priority)
        return (await self._dispatch("rerank", call_args, kwargs, mirrored=True))[1]

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        return (await self._dispatch("infer", (request,), mirrored=True))[1]

    async def infer_arrays(self, inputs: dict[str, Any], parameters: dict[str, Any] | None = None):
        """A graph step's call (``ModelServer.infer_arrays``), on a version."""
        call_args = (inputs, parameters)
        return (await self._dispatch("infer_arrays", call_args, mirrored=True))[1]

    async def metadata(self) -> dict[str, Any]:
        return await self._version_metadata(self._pick(None))

    # ------------------------------------------------------------ status

    def versions_status(self) -> dict[str, Any]:
        """Weights, sticky header and the shadow's figures (this replica's, since it started)."""
        plan = self.plan
        return {
            "model": self.name,
            "weights": dict(plan.weights) if plan else {},
            "shares": plan.shares() if plan else {},
            "sticky_header": plan.sticky_header if plan else None,
            "shadow": self.shadow.status(),
            "time": time.time(),
        }


def status_lines(status: dict[str, Any]) -> list[str]:
    """``versions_status()`` as the lines ``textfleet status`` prints under the model."""
    shares = status.get("shares", {})
    versions = ", ".join(
        f"{v} (weight {w:g}, {100 * shares.get(v, 0):.0f}%)" for v, w in status["weights"].items()
    )
    sticky = status.get("sticky_header")
    lines = [f"  versions: {versions}" + (f"; sticky header {sticky}" if sticky else "")]
    shadow = status.get("shadow") or {}
    for version, t in (shadow.get("versions") or {}).items():
        live = version == shadow.get("version")
        means = ", ".join(f"{k} {v:.4f}" for k, v in sorted(t["mean"].items()))
        head = f"shadow {version}" + (f" ({shadow['percent']:g}% mirrored)" if live else " (was)")
        lines.append(
            f"  {head}: {t['ok']} compared, {t['errors']} errors, {t['dropped']} dropped"
            + (f"; mean {means}" if means else "")
        )
    if shadow.get("version") and shadow["version"] not in (shadow.get("versions") or {}):
        lines.append(f"  shadow {shadow['version']} ({shadow['percent']:g}% mirrored): nothing yet")
    return lines


def _stamped(reply: Reply, version: str) -> Reply:
    headers = (*reply.headers, (VERSION_HEADER, version))
    return Reply(reply.status, reply.body, headers, reply.media_type)


def _expect(method: str, allowed: str, sub: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{sub or '/'} takes {allowed}, not {method[:16]}")


def _priority(priority: int | None) -> dict[str, Any]:
    """The handle keyword to forward: only when given, so versions on an older build
    still take the call."""
    return {} if priority is None else {"priority": priority}
