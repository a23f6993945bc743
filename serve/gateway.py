"""The gateway application: server-wide routes that belong to no single model.

Mounted at ``/``, so Ray's proxy sends it everything no model application
claims (models own ``/v2/models/<name>``, longest prefix wins):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
- ``POST /v1/embeddings`` and ``POST /v1/rerank`` routed by the body's ``model``;
- ``POST /v1/models/<name>:predict`` and ``GET /v1/models/<name>`` (KServe V1),
  which cannot live under a model's own ``/v2/models/<name>`` prefix;
- ``/v2/models/<unknown>/...``: 404 naming the served models, or 503 for a
  model whose application is deploying or failed (with Ray's message);
- ``POST /v2/repository/...``: the model repository API of pools (serve/repository.py);
- V2 gRPC calls with the metadata ``application: textfleet-gateway``, routed by
  the request's model name (serve/grpc_service.py).

A name ``<pool>/<id>`` (a body's ``model``) is member ``id`` of pool ``pool``:
its calls go to the pool's handle with ``multiplexed_model_id=<id>``, which Ray
routes to a replica holding the member (serve/pool.py).

Under HAProxy the ``POST`` routes above that name a running model do not come
here: HAProxy sends them to the model's own paths (serve/haproxy_routes.py,
serve/model_routes.py). The gateway answers the rest: unknown or starting
models, bodies too large for HAProxy's buffer, every request under Ray's proxy.

A configured model that cannot answer now (deploying, its replica killed and
restarting, Ray's queue for it full) is a 503 with a Retry-After, never a 404
or a 500: see ``forward`` (serve/forwarding.py).

The gateway learns the models from Ray Serve's status (applications whose
ingress is ``ModelServer``), never from its own arguments: adding or removing
a model must not redeploy the gateway.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import textfleet
from textfleet.serve import auth, deadlines, repository
from textfleet.serve.config import (
    DEPLOYMENT_NAME,
    GATEWAY_DEPLOYMENT,
    POOL_DEPLOYMENT,
    RequestLimits,
)
from textfleet.serve.forwarding import call, forward
from textfleet.serve.grpc_service import GatewayGrpcService
from textfleet.serve.protocols import openai, rerank, v2
from textfleet.serve.protocols.body import read_request_body
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    Reply,
    Unavailable,
    error_reply,
    json_reply,
    loads,
    short_repr,
)
from textfleet.serve.server import to_response

_V1_PREDICT = re.compile(r"^/v1/models/([^/:]+):predict$")
_V1_MODEL = re.compile(r"^/v1/models/([^/:]+)$")
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)")


# How old a cached status may be before a name it lacks is called unknown (404).
MISS_MAX_AGE_S = 0.1


def _unknown(name: str, apps: dict[str, Any]) -> str:
    served = ", ".join(sorted(apps)) or "none"
    return f"unknown model {short_repr(name)}; served models: {served}"


class ModelDirectory:
    """Which models exist and their handles, from ``serve.status()`` cached briefly."""

    def __init__(self, ttl_s: float = 1.0, deployment: str | tuple[str, ...] = DEPLOYMENT_NAME):
        self._ttl_s = ttl_s
        # The applications that count: those holding one of these deployments.
        self._deployments = (deployment,) if isinstance(deployment, str) else tuple(deployment)
        self._statuses: dict[str, Any] = {}
        self._fetched = 0.0
        self._handles: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def statuses(self, fresh: bool = False, max_age_s: float | None = None) -> dict[str, Any]:
        """Model name -> its ``ApplicationStatusOverview``, at most ``max_age_s`` old
        (default: the cache's ttl)."""
        max_age = self._ttl_s if max_age_s is None else max_age_s
        async with self._lock:
            if fresh or time.monotonic() - self._fetched > max_age:
                # serve.status() is a blocking controller call: keep it off the loop.
                status = await asyncio.to_thread(serve.status)
                # A model's application lists no deployments while it is still being
                # built: count it (as not RUNNING, so 503) rather than answer 404.
                self._statuses = {
                    name: app
                    for name, app in status.applications.items()
                    if any(d in app.deployments for d in self._deployments) or not app.deployments
                }
                self._fetched = time.monotonic()
        return self._statuses

    async def pools(self) -> list[str]:
        """The applications that are pools (their ingress is a ``ModelPool``)."""
        apps = await self.statuses()
        return sorted(n for n, app in apps.items() if POOL_DEPLOYMENT in app.deployments)

    async def handle(self, name: str):
        """A handle to a RUNNING model, or NotFound / Unavailable naming why not.
        ``<pool>/<id>``: the pool's handle for member ``id`` (not cached: ids come
        from clients; the pool checks them)."""
        h = self._handles.get(name)
        if h is not None:
            return h
        pool, sep, member = name.partition("/")
        if sep:
            handle = await self.handle(pool)  # the pool's own 404 / 503 first
            if pool not in await self.pools():  # "<model>/..." of a model that is no pool
                raise NotFound(_unknown(name, await self.statuses()))
            return handle.options(multiplexed_model_id=member)
        # The cached status (at most ttl_s old) answers known names, and floods of
        # unknown ones cost at most one controller call per MISS_MAX_AGE_S.
        apps = await self.statuses()
        app = apps.get(name)
        if app is None:
            # A model applied a moment ago is not in an older cached status: ask
            # again, at most every MISS_MAX_AGE_S, before calling it unknown.
            apps = await self.statuses(max_age_s=MISS_MAX_AGE_S)
            app = apps.get(name)
        if app is None:
            raise NotFound(_unknown(name, apps))
        if str(app.status.value) != "RUNNING":
            detail = f": {app.message}" if app.message else ""
            raise Unavailable(f"model {name!r} is {app.status.value}{detail}")
        h = await asyncio.to_thread(serve.get_app_handle, name)
        self._handles[name] = h
        return h

    def forget(self, name: str) -> None:
        self._handles.pop(name, None)
        self._fetched = 0.0


# Scaling options come from GatewayConfig when the application is built (serve/app.py).
# The V2 gRPC methods (application: textfleet-gateway) come from GatewayGrpcService.
@serve.deployment(name=GATEWAY_DEPLOYMENT, ray_actor_options={"num_cpus": 0})
class Gateway(GatewayGrpcService):
    def __init__(self, server_version: str = textfleet.__version__):
        self.models = ModelDirectory(deployment=(DEPLOYMENT_NAME, POOL_DEPLOYMENT))
        self._metadata = json_reply(v2.server_metadata(server_version))
        self.max_request_bytes = RequestLimits().max_request_bytes
        self.keys = auth.KeyCheck()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's light update (``user_config``, serve/generate.py): the API key
        digests and ``max_request_bytes``, the largest model's limit: the gateway
        never reads more of a body than some model accepts (each model's replica
        checks its own), and a change needs no restart."""
        self.keys = auth.from_user_config(user_config, others=("max_request_bytes",))
        limit = user_config.get("max_request_bytes", RequestLimits().max_request_bytes)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("user_config.max_request_bytes: expected a positive integer")
        self.max_request_bytes = limit

    async def __call__(self, request: Request) -> Response:
        try:
            reply = await self._route(request)
        except Exception as e:
            reply = error_reply(e)
        return to_response(reply)

    async def _route(self, request: Request) -> Reply:
        path, method = request.scope["path"].rstrip("/") or "/", request.method
        if path not in auth.OPEN_PATHS:
            self.keys.check(request.headers)
        if path == "/v1/embeddings":
            _expect(method, "POST", path)
            return await self._openai(request)
        if path == "/v1/rerank":
            _expect(method, "POST", path)
            body = await read_request_body(request, self.max_request_bytes)
            return await self._call(rerank.model_of(loads(body)), "rerank_http", body, request)
        if m := _V1_PREDICT.match(path):
            _expect(method, "POST", path)
            body = await read_request_body(request, self.max_request_bytes)
            return await self._call(m.group(1), "v1_predict", body, request)
        if m := _V1_MODEL.match(path):
            _expect(method, "GET", path)
            return json_reply(await call(self.models, m.group(1), "v1_status", (), {}, None))
        if path.startswith(repository.PREFIX):
            return await repository.route(self.models, path, method, request)
        if path == "/v2/health/live":
            return json_reply({"live": True})
        if path == "/v2/health/ready":
            return await self._ready(detail=self.keys.allows(request.headers))
        if path == "/v2":
            return self._metadata
        if m := _V2_MODEL.match(path):
            # A model's own application did not claim this path: unknown or not up.
            await self.models.handle(m.group(1))
            raise Unavailable(f"model {short_repr(m.group(1))} is starting; retry shortly")
        raise NotFound(f"no route {method[:16]} {path[:120]}")

    async def _ready(self, detail: bool) -> Reply:
        """Ready when every model is RUNNING; which models and their states only
        to a caller with a key (or when no keys are asked): probes run without."""
        apps = await self.models.statuses()
        states = {name: str(app.status.value) for name, app in apps.items()}
        ready = bool(states) and all(s == "RUNNING" for s in states.values())
        body = {"ready": ready, "models": states} if detail else {"ready": ready}
        return json_reply(body, status=200 if ready else 503)

    async def _openai(self, request: Request) -> Reply:
        try:
            body = await read_request_body(request, self.max_request_bytes)
            name = openai.model_of(loads(body))
            return await self._call(name, "openai_embeddings", body, request)
        except Exception as e:
            return openai.error_reply(e)

    async def _call(self, name: str, method: str, payload: Any, request: Request) -> Reply:
        """Forward to the model's ``method`` with the client's requested timeout."""
        timeout = deadlines.parse_header(request.headers.get(deadlines.HEADER))
        return await forward(self.models, name, method, payload, timeout)


def _expect(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{path} takes {allowed}, not {method[:16]}")
