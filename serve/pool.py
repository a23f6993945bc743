"""``ModelPool``: one application serving many member models (Ray Serve multiplexing).

A models.yaml entry with ``pool:`` is one application at ``/v2/models/<pool>``
whose replicas load members on demand: member ``<id>`` is the exported model
directory ``<model_root>/<id>/`` (checked by serve/pool_members.py before
anything is opened), loaded into a ``ModelServer`` of its own, named
``<pool>/<id>``: the same engine, adapter, admission gate, handlers and
metrics as a model served alone (serve/server.py), so a member answers
exactly as that model would. Calls:

- HTTP: ``/v2/models/<pool>/<id>/infer``, ``.../<id>`` (metadata), ``.../<id>/ready``
  (tritonclient's model name ``<pool>/<id>``), and the OpenAI, rerank and V1
  paths below ``.../<id>``, as for a model's own prefix (serve/model_routes.py);
- the shared routes with ``"model": "<pool>/<id>"``: the gateway calls the pool's
  handle with ``multiplexed_model_id=<id>`` (serve/gateway.py);
- Python: ``serve.get_app_handle(pool).options(multiplexed_model_id=id).embed.remote(...)``
  (and ``classify``, ``entities``, ``score``, ``rerank``, ``infer``, ``metadata``).

Each replica keeps at most ``pool.max_models_per_replica`` members: Ray Serve's
``@serve.multiplexed`` wrapper is the LRU, and a handle call carrying a
``multiplexed_model_id`` is routed to a replica that already holds the member
when one does. Loading one more evicts the least recently used member: Ray
calls the member's ``__del__``, which waits (at most ``DRAIN_S``) for the
calls still inside it, then closes its engine (the scheduler joins its
threads) and stops its stats poller, so no engine, thread or session
outlives its place in the LRU. A member that fails to load is a 503 naming
it; the replica and the other members keep serving.

HTTP under HAProxy goes straight to some replica of the pool (Ray's
multiplexed routing applies to handle calls and, under Ray's proxy, to
requests with a ``serve_multiplexed_model_id`` header); a replica that lacks
the member loads it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import textfleet
from textfleet.serve import auth
from textfleet.serve.config import POOL_DEPLOYMENT, ModelConfig
from textfleet.serve.grpc_service import Answer, GrpcIngress, model_named
from textfleet.serve.pool_members import (
    MemberNotFound,
    check_member_id,
    list_members,
    member_dir,
    resolved_root,
)
from textfleet.serve.pool_metrics import PoolMetrics
from textfleet.serve.protocols import openai, v2_grpc
from textfleet.serve.protocols.common import (
    NotFound,
    Reply,
    Unavailable,
    error_reply,
    json_reply,
    short_repr,
)
from textfleet.serve.server import ModelServer, subpath, to_response

log = logging.getLogger(__name__)

DRAIN_S = 30.0
"""How long an evicted member waits for the calls still inside it before its engine
closes (they then fail with 503)."""

GAUGE_PERIOD_S = 2.0
"""How often the loaded-members gauge is reported again (Ray drops a gauge series
that has not been set for a while, its time-to-live, however current its value)
and the requests counted per member are exported."""

LOAD_RETRY_AFTER_S = 5.0
"""How long a member that failed to load is answered 503 at once (its Retry-After):
a retry cannot help until its directory is fixed, and each load attempt first
evicts a working member when the replica is full."""

# The class under Ray's deployment wrapper: a member is a plain instance of it.
_MemberServer = ModelServer.func_or_class


class Member:
    """One loaded member: its ``ModelServer`` and the calls inside it.

    No ``__slots__``: Ray's multiplexing wrapper sets ``__del__`` on the instance
    after calling it."""

    def __init__(self, member_id: str, server: Any, loop: asyncio.AbstractEventLoop, on_close):
        self.id = member_id
        self.server = server
        self._loop = loop
        self._on_close = on_close
        self._cond = threading.Condition()
        self._inflight = 0
        self._closed = False

    @contextlib.contextmanager
    def in_use(self):
        """Count a call as inside the member, so that eviction waits for it."""
        with self._cond:
            if self._closed:
                raise Unavailable(f"member {self.id!r} was just unloaded; retry")
            self._inflight += 1
        try:
            yield self.server
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0:
                    self._cond.notify_all()

    def close(self, reason: str = "lru", drain_s: float = DRAIN_S) -> bool:
        """Wait for the calls inside (at most ``drain_s``), stop the stats poller, close
        the engine (joining its threads). Idempotent; True the first time."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._cond.wait_for(lambda: self._inflight == 0, timeout=drain_s)
        server, self.server = self.server, None
        try:
            self._stop_exporter(server.exporter)
        finally:
            server.engine.close()
            self._on_close(self.id, reason)
        return True

    def _stop_exporter(self, exporter) -> None:
        """The poller is a task of the replica's loop: cancel it there."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop or not self._loop.is_running():
            exporter.stop()
            return

        async def stop() -> None:
            exporter.stop()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        except Exception:  # the engine still closes; a poller left running only reads stats
            log.exception("member %r: stopping its stats poller failed", self.id)

    def __del__(self):
        # Ray's LRU eviction calls this (in a worker thread); so does the garbage collector.
        self.close()


@serve.deployment(name=POOL_DEPLOYMENT)
class ModelPool(GrpcIngress):
    def __init__(self, config: dict[str, Any]):
        self.config = ModelConfig.model_validate(config)
        if self.config.pool is None:
            raise ValueError(f"model {self.config.name!r}: a ModelPool needs a pool: entry")
        self.name = self.config.name
        self.root = resolved_root(self.config.pool.model_root)
        self.keys = auth.KeyCheck()
        self.metrics = PoolMetrics(self.name, self.config.version)
        self.load_counts: collections.Counter[str] = collections.Counter()
        self.alive = 0  # engines open in this replica
        self.peak_alive = 0
        self._count_lock = threading.Lock()
        self._failed: dict[str, float] = {}  # member id -> when its load failed (monotonic)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reporter: asyncio.Task | None = None

        async def load_member(member_id: str) -> Member:
            return await self._load(member_id)

        # Decorated here, not on the class: the LRU's size is this pool's setting. Ray
        # keeps its wrapper (the LRU table) on the function object.
        self._load_fn = load_member
        self._member = serve.multiplexed(
            max_num_models_per_replica=self.config.pool.max_models_per_replica
        )(load_member)
        log.info("pool %r serving members of %s", self.name, self.root)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's light update (``user_config``): the API key digests."""
        self.keys = auth.from_user_config(user_config)

    # ------------------------------------------------------------ members

    async def _get(self, member_id: str) -> Member:
        """The loaded member (loading it, evicting the LRU one if the replica is full)."""
        if self._reporter is None:  # needs the running loop: started by the first call
            self._reporter = asyncio.get_running_loop().create_task(self._report_gauge())
        if not member_id:
            raise MemberNotFound(
                f"model {self.name!r} is a pool: name a member as '{self.name}/<id>'"
            )
        lru = self._lru()
        if lru is None or member_id not in lru:  # a loaded member opens nothing more
            member_dir(self.root, self.name, member_id)  # refused before Ray hears of the id
            failed = self._failed.get(member_id)
            if failed is not None and time.monotonic() - failed < LOAD_RETRY_AFTER_S:
                raise self._load_failed(member_id, "failed to load moments ago")
        return await self._member(member_id)

    async def _report_gauge(self) -> None:
        while True:
            with self._count_lock:
                alive = self.alive
            self.metrics.loaded_now(alive)
            self.metrics.flush()
            await asyncio.sleep(GAUGE_PERIOD_S)

    def _load_failed(self, member_id: str, what: str) -> Unavailable:
        return Unavailable(
            f"pool {self.name!r}: member {member_id!r} {what}; see the server log",
            LOAD_RETRY_AFTER_S,
        )

    async def _load(self, member_id: str) -> Member:
        path = member_dir(self.root, self.name, member_id)
        cfg = self.config.member_config(member_id, path)
        self._loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            # The validated entry itself: its name "<pool>/<id>" is not an application's.
            server = await asyncio.to_thread(_MemberServer, cfg)
        except Exception as e:
            self._failed[member_id] = time.monotonic()
            self.metrics.load(False, time.perf_counter() - start)
            log.warning("pool %r: member %r failed to load: %s", self.name, member_id, e)
            raise self._load_failed(member_id, f"failed to load ({type(e).__name__})") from None
        self._failed.pop(member_id, None)
        took = time.perf_counter() - start
        with self._count_lock:
            self.alive += 1
            self.peak_alive = max(self.peak_alive, self.alive)
            self.load_counts[member_id] += 1
            alive = self.alive
        self.metrics.load(True, took)
        self.metrics.loaded_now(alive)
        log.info("pool %r: member %r loaded in %.3f s", self.name, member_id, took)
        return Member(member_id, server, self._loop, self._closed_member)

    def _closed_member(self, member_id: str, reason: str) -> None:
        """A member's engine closed (eviction or unload); runs in any thread."""
        with self._count_lock:
            self.alive -= 1
            alive = self.alive
        self.metrics.evicted(reason)
        self.metrics.loaded_now(alive)
        log.info("pool %r: member %r closed (%s)", self.name, member_id, reason)

    def _lru(self) -> collections.OrderedDict | None:
        """Ray's LRU table of this replica (id -> Member, least recent first); None
        before the first load."""
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        return None if wrapper is None else wrapper.models

    def loaded(self) -> list[str]:
        """Member ids loaded in this replica, least recently used first."""
        lru = self._lru()
        return list(lru) if lru is not None else []

    async def _call(self, member_id: str, method: str, *args, **kwargs):
        member = await self._get(member_id)
        with member.in_use() as server:
            self.metrics.request(member_id)
            return await getattr(server, method)(*args, **kwargs)

    # ------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        """``/<id>/...`` below the pool's prefix: the member's own routes; ``""``: the pool."""
        try:
            self.keys.check(request.headers)
            sub = subpath(request.scope)
            member_id, _, _ = sub.lstrip("/").partition("/")
            if not member_id:
                return to_response(json_reply(self.repository_index()))
            # The member's routes see its own prefix: /v2/models/<pool>/<id>.
            root = request.scope.get("root_path", "").rstrip("/")
            scope = {**request.scope, "root_path": f"{root}/{member_id}"}
            return await self._call(member_id, "__call__", Request(scope, request.receive))
        except Exception as e:  # a bad request never takes the replica down
            return to_response(error_reply(e))

    # ------------------------------------------------------------ gateway calls
    # The member is the handle's multiplexed_model_id; each returns a Reply.

    async def _reply(self, method: str, on_error, *args) -> Reply:
        try:
            return await self._call(serve.get_multiplexed_model_id(), method, *args)
        except Exception as e:
            return on_error(e)

    async def openai_embeddings(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._reply("openai_embeddings", openai.error_reply, body, timeout)

    async def rerank_http(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._reply("rerank_http", error_reply, body, timeout)

    async def v1_predict(self, body: bytes, timeout: float | None = None) -> Reply:
        return await self._reply("v1_predict", error_reply, body, timeout)

    async def v2_infer(self, body: bytes, timeout=None, header_length=None) -> Reply:
        return await self._reply("v2_infer", error_reply, body, timeout, header_length)

    # ------------------------------------------------------------ V2 gRPC

    async def grpc_call(self, rpc: str, request: Any, metadata: dict[str, str]) -> Answer:
        """A V2 gRPC call for a member, answered by the member's own ``grpc_call`` (as it
        answers HTTP). The member: the handle's ``multiplexed_model_id`` (the gateway's
        call, or Ray's gRPC ingress given that metadata), else the request's model name
        ``<pool>/<id>`` (a replica that lacks it loads it, as over HTTP)."""
        try:
            self.keys.check(metadata)
            if rpc == "ServerMetadata":
                return Answer(v2_grpc.server_metadata(textfleet.__version__))
            member_id = serve.get_multiplexed_model_id() or self._member_named(rpc, request)
            return await self._call(member_id, "grpc_call", rpc, request, metadata)
        except Exception as e:  # a bad call never takes the replica down
            return Answer.failed(rpc, e)

    def _member_named(self, rpc: str, request: Any) -> str:
        name, _ = model_named(rpc, request)
        pool, sep, member_id = name.partition("/")
        if pool != self.name or not sep:
            raise NotFound(
                f"model {short_repr(name)} is not a member of pool {self.name!r}; "
                f"name one as '{self.name}/<id>'"
            )
        return member_id

    # ------------------------------------------------------------ Python callers
    # ``serve.get_app_handle(pool).options(multiplexed_model_id=id).<method>.remote(...)``;
    # errors propagate as for a model's own handle.

    # The member's own handle methods, with the same arguments (``priority`` included).
    async def embed(self, texts, timeout=None, dimensions=None, prompt_name=None, priority=None):
        member = serve.get_multiplexed_model_id()
        return await self._call(
            member, "embed", texts, timeout, dimensions, prompt_name, priority=priority
        )

    async def classify(self, texts, top_k=1, timeout=None, priority=None):
        member = serve.get_multiplexed_model_id()
        return await self._call(member, "classify", texts, top_k, timeout, priority=priority)

    async def entities(self, texts, aggregation=None, timeout=None, priority=None):
        member = serve.get_multiplexed_model_id()
        return await self._call(member, "entities", texts, aggregation, timeout, priority=priority)

    async def score(self, pairs, raw_scores=False, timeout=None, priority=None):
        member = serve.get_multiplexed_model_id()
        return await self._call(member, "score", pairs, raw_scores, timeout, priority=priority)

    async def rerank(
        self, query, documents, top_k=None, raw_scores=False, timeout=None, priority=None
    ):
        member = serve.get_multiplexed_model_id()
        return await self._call(
            member, "rerank", query, documents, top_k, raw_scores, timeout, priority=priority
        )

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._call(serve.get_multiplexed_model_id(), "infer", request)

    async def metadata(self) -> dict[str, Any]:
        member = await self._get(serve.get_multiplexed_model_id())
        with member.in_use() as server:
            return server.metadata()

    async def v1_status(self) -> dict[str, Any]:
        member = await self._get(serve.get_multiplexed_model_id())
        with member.in_use() as server:
            return server.v1_status()

    # ------------------------------------------------------------ repository API
    # Called by the gateway (serve/repository.py). Per replica: a load warms the
    # member on the replica Ray routes the id to, an unload drops it from the one
    # the call reaches (one holding it, when any does), the index is the answering
    # replica's view.

    def repository_index(self) -> dict[str, Any]:
        return {
            "pool": self.name,
            "version": self.config.version,
            "replica": _replica_id(),
            "members": list_members(self.root, self.name),
            "loaded": self.loaded(),
            "max_models_per_replica": self.config.pool.max_models_per_replica,
        }

    async def repository_load(self) -> Reply:
        member_id = serve.get_multiplexed_model_id()
        try:
            await self._get(member_id)
        except Exception as e:
            return error_reply(e)
        return json_reply({"name": f"{self.name}/{member_id}", "loaded_on": _replica_id()})

    async def repository_unload(self) -> Reply:
        member_id = serve.get_multiplexed_model_id()
        try:
            check_member_id(self.name, member_id)
            unloaded = await self._unload(member_id)
        except Exception as e:
            return error_reply(e)
        body = {"name": f"{self.name}/{member_id}", "unloaded": unloaded}
        return json_reply(body | {"replica": _replica_id()})

    async def _unload(self, member_id: str) -> bool:
        """Drop the member from this replica's LRU and close it; False if not loaded."""
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        if wrapper is None:
            return False
        # Ray's own lock around its LRU table: no load or eviction runs meanwhile.
        async with wrapper._model_cache_lock:
            member = wrapper.models.pop(member_id, None)
            if member is None:
                return False
            wrapper._push_multiplexed_replica_info = True  # tell the routers it is gone
        await asyncio.to_thread(member.close, "unload")
        return True

    # ------------------------------------------------------------ status

    def pool_status(self) -> dict[str, Any]:
        """This replica's members, engines and threads (for tests and operators)."""
        with self._count_lock:
            alive, peak, loads = self.alive, self.peak_alive, dict(self.load_counts)
        return {
            "pool": self.name,
            "replica": _replica_id(),
            "loaded": self.loaded(),
            "engines_alive": alive,
            "peak_engines_alive": peak,
            "loads": loads,
            "threads": _os_threads(),
        }


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica
        return ""


def _os_threads() -> int:
    """Threads of this process, native ones included (a scheduler's workers)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()
