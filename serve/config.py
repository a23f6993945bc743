"""The ``models.yaml`` schema: which models to serve, and how.

One typed pydantic tree with ``extra="forbid"``: a misspelt knob is an error
that names the model and the field, never a silently ignored line. Relative
``model_dir`` paths are resolved against the folder of the yaml file, so a
``models.yaml`` and its model directories can move together.

Example::

    server:
      port: 8000
    models:
      - name: minilm
        model_dir: ../artifacts/models/all-MiniLM-L6-v2
        batching: {max_batch_tokens: 8192}
        num_replicas: 1
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from textfleet.engine.config import EngineConfig
from textfleet.engine.tasks.registry import TaskName
from textfleet.serve.graph_config import GraphConfig, check_graphs
from textfleet.serve.hooks import check_call
from textfleet.serve.model_source import check_archive_path, check_model_uri

GATEWAY_APP = "textfleet-gateway"
"""Ray Serve application name of the server-wide routes; no model may take it."""

DEPLOYMENT_NAME = "ModelServer"
"""Name of the one deployment inside every model's application."""

GATEWAY_DEPLOYMENT = "Gateway"
"""Name of the one deployment inside the gateway application."""

VERSION_DEPLOYMENT = "ModelVersion"
"""Name of the deployment inside a version's application (a ``ModelServer`` too);
not ``DEPLOYMENT_NAME``, so the gateway never takes a version for a model."""

POOL_DEPLOYMENT = "ModelPool"
"""Name of the deployment inside a pool's application (serve/pool.py)."""

VERSION_APP_SEPARATOR = "--v"
"""A version's application is ``<model><separator><version>`` (``version_app``)."""

MAX_REQUEST_TIMEOUT_S = 300.0
"""Longest deadline a model may set; HAProxy gives up on a replica a little after it."""

HEALTH_CHECK_PERIOD_S = 2.0
"""Seconds between Ray's health checks of a replica (Ray's default is 10): a replica
killed outright is noticed only at its next check and only then replaced. Models set
theirs per entry; routers, graph ingresses and the gateway use this."""

# URL-safe and unambiguous in every route: no "/" (path segments) and no ":"
# (KServe V1 puts ":predict" right after the name). HAProxy checks a name taken
# from a request against the same pattern (serve/haproxy_routes.py).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ConfigError(ValueError):
    """A models.yaml that does not validate; the message names model and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestLimits(_Strict):
    """Per-request size limits; a request over one is answered 413."""

    max_texts: int = Field(1024, ge=1, le=1_000_000)
    """Most texts (or pairs) in one request."""

    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Most bytes in one request body, checked before the body is parsed."""


class RayActorOptions(_Strict):
    """The subset of Ray's ``ray_actor_options`` a model replica may set."""

    num_cpus: float | None = Field(None, ge=0)
    """CPUs reserved per replica (Ray's default is 1). 0 packs replicas freely."""

    num_gpus: float | None = Field(None, ge=0)
    """GPUs reserved per replica; set to 1 by default when ``device`` is CUDA."""

    memory: int | None = Field(None, ge=0)
    """Bytes of memory reserved per replica."""

    resources: dict[str, float] | None = None
    """Custom Ray resources per replica."""

    accelerator_type: str | None = None
    """Ray accelerator type constraint, e.g. ``A100``."""


class TrafficConfig(_Strict):
    """How a versioned model's unversioned requests pick a version."""

    sticky_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    """A request header (e.g. ``x-session-id``) whose value picks the version: the same
    value always reaches the same version while the weights stay; requests without it
    are split at random by weight."""

    router_replicas: int = Field(1, ge=1, le=64)
    """Replicas of the model's router (the deployment that splits and mirrors)."""


class ShadowRecord(_Strict):
    """Sampled (primary, shadow) answer pairs written as JSON lines by the shadow's
    replicas (on their node)."""

    path: Path
    """JSONL file, appended to; relative paths resolve against the yaml's folder."""

    sample: float = Field(0.01, gt=0, le=1)
    """Share of compared requests written."""

    texts: bool = False
    """Write the input texts; by default only their SHA-256 digests."""

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolved(v, info)


V2_DATATYPES = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
"""The V2 tensor datatypes (serve/protocols/v2.py)."""


class TensorDecl(_Strict):
    """An output tensor a postprocess hook adds, as the V2 metadata shows it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    datatype: V2_DATATYPES
    shape: list[int] = Field(min_length=1, max_length=8)
    """One row per text: the first dimension is -1; -1 elsewhere is a free width."""

    @field_validator("shape")
    @classmethod
    def _rows_first(cls, v: list[int]) -> list[int]:
        if v[0] != -1 or any(d < 1 and d != -1 for d in v):
            raise ValueError(
                f"got {v}; the first dimension is the rows (-1), the others are widths >= 1 or -1"
            )
        return v


class HookCall(_Strict):
    """User code to run: an import path and its keyword arguments (serve/hooks.py)."""

    call: str
    """``"package.module:function"`` (called with ``args`` bound) or
    ``"package.module:Class"`` (built once per replica as ``Class(**args)``, then called)."""

    args: dict[str, JsonValue] = {}
    """Keyword arguments, plain JSON."""

    @field_validator("call")
    @classmethod
    def _check_call(cls, v: str) -> str:
        return check_call(v)


class PostprocessCall(HookCall):
    outputs: list[TensorDecl] = []
    """Output tensors the hook adds beside the task's (V2 metadata and responses)."""

    @field_validator("outputs")
    @classmethod
    def _unique(cls, v: list[TensorDecl]) -> list[TensorDecl]:
        names = [t.name for t in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"output {dup!r} is declared twice")
        return v


class HooksConfig(_Strict):
    """A model's pre/post-processing, run in the replica around every engine call
    (V2, V1, OpenAI, rerank, handle calls). See serve/hooked_engine.py."""

    preprocess: HookCall | None = None
    """``texts -> texts`` (pair models: ``[(query, document)] -> [(query, document)]``),
    one out per one in; raising ``InputError`` answers 400."""

    postprocess: PostprocessCall | None = None
    """``(outputs, texts) -> outputs``: the task's V2 output tensors (a dict of numpy
    arrays, one row per text) to the same tensors, plus any declared in ``outputs``."""

    threads: int = Field(1, ge=1, le=64)
    """Threads running the hooks in each replica, off its event loop. 1: a hook (a
    class instance) sees one call at a time; more only helps hooks that release the
    GIL (numpy, I/O) and must then be thread-safe."""


def _engine_overrides() -> dict[str, Any]:
    """Every engine setting, optional: what ``pool.member`` may set for each member."""
    return {
        name: (f.annotation | None, FieldInfo.merge_field_infos(f, default=None))
        for name, f in EngineConfig.model_fields.items()
    }


MemberEngineConfig = create_model(
    "MemberEngineConfig",
    __base__=_Strict,
    __doc__="Engine settings of each member of a pool (threads, batching, ...), laid over "
    "the pool entry's own; a ``batching`` knob lays over the entry's knob by knob.",
    **_engine_overrides(),
)


class PoolConfig(_Strict):
    """Many models of one task behind one application: member ``<id>`` is the exported
    model directory ``<model_root>/<id>/``, loaded by a replica on its first call and
    evicted when the replica holds ``max_models_per_replica`` others used more recently
    (Ray Serve's model multiplexing; see serve/pool.py)."""

    model_root: Path
    """Folder whose sub-directories are the members (relative paths resolve against the
    yaml's folder). Member ids are checked and resolved inside it (serve/pool_members.py)."""

    max_models_per_replica: int = Field(4, ge=1, le=1024)
    """Members a replica keeps loaded; loading one more evicts the least recently used
    (its engine closed, its threads joined)."""

    member: MemberEngineConfig = MemberEngineConfig()  # type: ignore[valid-type]
    """Engine settings of every member, over the entry's (e.g. ``{threads: 1}``)."""

    @field_validator("model_root")
    @classmethod
    def _resolve_root(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolved(v, info)


class ModelConfig(EngineConfig):
    """One served model: one Ray Serve application at ``/v2/models/<name>``.

    The engine's settings (backend, device, threads, max_length, batching) are
    ``EngineConfig``'s fields, inherited: validated by the schema the engine
    loads with, so an entry that validates is one a replica can load.
    """

    name: str
    """Model name used in routes, the OpenAI ``model`` field and handle lookups."""

    model_uri: str | None = None
    """A zip of the model directory that Ray delivers to every node running a
    replica (``s3://``, ``gs://``, ``https://``, ``file://``; Ray's ``runtime_env``
    ``working_dir`` of the model's application). ``model_dir`` is then the path
    inside the unpacked archive (default ``.``). See serve/model_source.py."""

    model_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Pin of the model: sha256 (hex) of its ``textfleet.json``, which records the
    sha256 of every other file; a replica whose model differs refuses to load."""

    model_dir_shared: bool = False
    """``model_dir`` is a path valid on every node of a cluster (a shared file
    system, or baked into the image): taken as written, never resolved against
    the yaml's folder. A cluster target accepts a plain path only when marked so."""

    model_dir: Path | None = None
    """Directory written by ``textfleet export``; relative paths are resolved
    against the folder holding the models.yaml (inside the archive with
    ``model_uri``). Required unless ``versions`` lists the model's versions (each
    with its own model_dir) or ``pool`` names a folder of member models."""

    task: TaskName | None = None
    """Task of the model; None takes the one recorded in the model directory.
    When set, it must match the directory (checked when the replica loads it)."""

    limits: RequestLimits = RequestLimits()
    """Per-request size limits (413 past them)."""

    request_timeout_s: float | None = Field(30.0, gt=0, le=MAX_REQUEST_TIMEOUT_S)
    """Deadline of every request, in seconds; a client may ask for a shorter one
    (serve/deadlines.py), never a longer one. Past it the request is answered 504,
    and one that could not finish by then is refused at once with 503 and a
    Retry-After (serve/admission.py). None: no deadline (and no admission check)."""

    warmup: bool = True
    """Run one batch per length bucket (``Engine.warmup``) before the replica takes
    traffic, so the first requests do not pay one-time costs (the runtime's first
    runs, arena growth, page faults) and the admission gate's first measurement
    is of a warm engine."""

    version: str = Field("1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """Model version reported by the V2 metadata and accepted in
    ``/v2/models/<name>/versions/<version>/...`` routes."""

    num_replicas: int | None = Field(None, ge=1, le=1024)
    """Fixed replica count (default 1). Exclusive with ``autoscaling``."""

    autoscaling: dict[str, Any] | None = None
    """Ray Serve ``autoscaling_config`` (min_replicas, max_replicas,
    target_ongoing_requests, ...); validated by Ray's own schema."""

    max_ongoing_requests: int = Field(256, ge=1, le=100_000)
    """Requests Ray sends to one replica at once. High on purpose: the engine's
    batcher can only form batches from requests that reached it."""

    max_queued_requests: int = Field(2048, ge=-1, le=1_000_000)
    """Requests that may wait for one of a replica's ``max_ongoing_requests`` slots
    (Ray Serve's option, in Ray's router and in the replica); past it Ray answers
    503 at once. -1: unbounded."""

    health_check_period_s: float = Field(HEALTH_CHECK_PERIOD_S, ge=0.5, le=600.0)
    """Seconds between Ray's health checks of each replica (Ray's default is 10). A
    replica killed outright is noticed at its next check, and only then replaced:
    until the new one is up its model answers 503 or holds requests, so this bounds
    the outage. A check is one cheap call that asks the engine whether it runs."""

    ray_actor_options: RayActorOptions = RayActorOptions()
    """Resources of each replica (``resources`` pins replicas to nodes offering them)."""

    max_replicas_per_node: int | None = Field(None, ge=1, le=100)
    """Most replicas of this model on one node (Ray Serve's option): spreads them."""

    versions: list[VersionConfig] | None = Field(None, min_length=1)
    """Versions served under this one name, instead of ``model_dir``: unversioned
    requests are split between them by ``weight``; ``/v2/models/<name>/versions/<v>``
    reaches version v. Each entry may override any field of the model's entry."""

    traffic: TrafficConfig = TrafficConfig()
    """How unversioned requests pick a version (only with ``versions``)."""

    shadow: ShadowConfig | None = None
    """A version that gets a copy of some requests after the primary answered; its
    answers are compared with the primary's and never returned (only with ``versions``)."""

    hooks: HooksConfig | None = None
    """Pre/post-processing code run in the replica around every request (preprocess,
    postprocess: import paths). It runs with the server's privileges."""

    pool: PoolConfig | None = None
    """Serve every model directory under ``pool.model_root`` as member ``<name>/<id>``
    from one application, instead of ``model_dir`` (see serve/pool.py)."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"got {v!r}; a model name must start with a letter or digit and hold only "
                "letters, digits, '.', '_' or '-' (at most 128 characters)"
            )
        if v == GATEWAY_APP:
            raise ValueError(f"{v!r} is reserved for the gateway application")
        return v

    @model_validator(mode="before")
    @classmethod
    def _archive_root_by_default(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("model_uri") is not None and "model_dir" not in v:
            v = {**v, "model_dir": "."}
        return v

    @field_validator("model_uri")
    @classmethod
    def _check_uri(cls, v: str | None) -> str | None:
        return None if v is None else check_model_uri(v)

    @field_validator("model_dir")
    @classmethod
    def _resolve_dir(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        if info.data.get("model_uri") is not None:
            return check_archive_path(v)
        if info.data.get("model_dir_shared"):
            if not v.is_absolute():
                raise ValueError(f"got {str(v)!r}; a shared model_dir must be an absolute path")
            return v
        return _resolved(v, info)

    @field_validator("autoscaling")
    @classmethod
    def _check_autoscaling(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        from ray.serve.config import AutoscalingConfig  # heavy import, only when used

        try:
            AutoscalingConfig.model_validate(v)
        except ValidationError as e:
            raise ValueError("; ".join(_brief(x) for x in e.errors(include_url=False))) from None
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelConfig:
        if self.pool is not None:
            check_pool(self)
        elif (self.model_dir is None) == (self.versions is None):
            raise ValueError(
                "set model_dir (the exported model directory), or versions (a list of "
                "versions, each with its model_dir), not both"
                if self.model_dir is not None
                else "model_dir is required (or versions: a list, each with its model_dir)"
            )
        if self.versions is None and (self.shadow is not None or self.traffic != TrafficConfig()):
            raise ValueError("shadow and traffic need versions (a list of the model's versions)")
        if self.versions is not None:
            check_versions(self)
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        if self.model_uri is not None and self.model_dir_shared:
            raise ValueError("set model_uri or model_dir_shared, not both")
        if self.device.startswith("cuda") and self.ray_actor_options.num_gpus is None:
            opts = self.ray_actor_options.model_copy(update={"num_gpus": 1.0})
            object.__setattr__(self, "ray_actor_options", opts)
        return self

    def version_configs(self) -> list[ModelConfig]:
        """Each version (then the shadow) as a model entry of its own: this entry with
        the version's fields laid over it. Empty for an unversioned model."""
        entries = [*(self.versions or ()), *([self.shadow] if self.shadow else [])]
        return [merged_version(self, v) for v in entries]

    def engine_config(self) -> dict[str, Any]:
        """This entry's engine settings, as ``Engine.load`` takes them: the knobs the
        entry sets under ``batching`` lay over the model directory's and the device's
        defaults one by one (an entry setting only ``max_wait_ms`` keeps a GPU's
        bigger batches), as ``Engine.load(batching={...})`` does."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in EngineConfig.model_fields}
        if self.batching is not None:
            fields["batching"] = self.batching.model_dump(exclude_unset=True)
        return fields

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve deployment options of this model, as a config file spells them.

        They are kept out of the builder's args so that changing them (scaling,
        resources) is a light update of the running application, not a rebuild.
        """
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # Ray's 503 past max_queued_requests, with a Retry-After (none by default).
            "backpressure_config": {"status_code": 503, "retry_after_s": 1.0},
            "health_check_period_s": self.health_check_period_s,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = dict(self.autoscaling)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        if self.max_replicas_per_node is not None:
            opts["max_replicas_per_node"] = self.max_replicas_per_node
        actor = self.ray_actor_options.model_dump(exclude_none=True)
        if actor:
            opts["ray_actor_options"] = actor
        return opts

    def builder_args(self) -> dict[str, Any]:
        """Arguments of the application builder: what the replica needs to load
        the model. A change here rebuilds this model's application (only it)."""
        deploy_keys = {
            "num_replicas",
            "autoscaling",
            "max_ongoing_requests",
            "max_queued_requests",
            "health_check_period_s",
            "ray_actor_options",
            "max_replicas_per_node",
            *_VERSIONING,
        }
        args = self.model_dump(mode="json", exclude=deploy_keys, exclude_none=True)
        if self.model_dir is not None:
            args["model_dir"] = str(self.model_dir)
        return args

    def member_config(self, member_id: str, model_dir: Path) -> ModelConfig:
        """Member ``member_id`` of this pool as a model entry of its own, named
        ``<pool>/<id>``: the entry's fields with ``pool.member``'s laid over them."""
        fields = self.model_dump(exclude={"pool", "name", "model_dir"}, exclude_unset=True)
        member = self.pool.member.model_dump(exclude_unset=True, exclude_none=True)
        if "batching" in member:
            member["batching"] = {**(fields.get("batching") or {}), **member["batching"]}
        fields |= member | {"name": self.name, "model_dir": model_dir}
        try:
            cfg = ModelConfig.model_validate(fields)
        except ValidationError as e:
            msg = "; ".join(_brief(x) for x in e.errors(include_url=False))
            raise ValueError(f"pool.member: {msg}") from None
        # Not a valid application name (it holds a '/'): set after validation on purpose.
        return cfg.model_copy(update={"name": f"{self.name}/{member_id}"})


def _resolved(v: Path, info: ValidationInfo) -> Path:
    """``v`` against the yaml's folder (the validation context's ``base_dir``)."""
    base = (info.context or {}).get("base_dir")
    if not v.is_absolute() and base is not None:
        v = Path(base) / v
    return Path(v).expanduser().resolve() if v.is_absolute() else v


# ---------------------------------------------------------------- versions

_VERSIONING = ("versions", "traffic", "shadow")
_OWN_FIELDS = {"name", "version", "model_dir", "pool", *_VERSIONING}
_VERSION_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


def version_app(model: str, version: str) -> str:
    """The Ray Serve application of one version of a versioned model."""
    return f"{model}{VERSION_APP_SEPARATOR}{version}"


def _overrides() -> dict[str, Any]:
    """Every other field of a model entry, optional: what a version may override."""
    out: dict[str, Any] = {}
    for name, f in ModelConfig.model_fields.items():
        if name not in _OWN_FIELDS:
            out[name] = (f.annotation | None, FieldInfo.merge_field_infos(f, default=None))
    return out


class _VersionEntry(_Strict):
    version: str = Field(pattern=_VERSION_PATTERN)
    """The version's label: ``/v2/models/<name>/versions/<version>`` and ``model_version``."""

    model_dir: Path
    """The version's model directory (resolved like a model's)."""

    @field_validator("model_dir")
    @classmethod
    def _resolve_dir(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolved(v, info)


class _VersionFields(_VersionEntry):
    weight: float = Field(ge=0, le=1_000_000)
    """Share of the unversioned requests: weight / sum of the weights. 0 keeps the
    version serving its own route and sticky sessions nothing."""


class _ShadowFields(_VersionEntry):
    percent: float = Field(100.0, gt=0, le=100)
    """Share of the primary's requests mirrored to the shadow, in percent."""

    max_in_flight: int = Field(32, ge=1, le=100_000)
    """Mirrored requests waiting for the shadow at once; beyond it mirrors are dropped
    (and counted), never queued."""

    record: ShadowRecord | None = None
    """Sampled (primary, shadow) pairs written to a JSONL file; None: none."""

    cpu_priority: Literal["background", "shared"] = "background"
    """``background``: the shadow's replicas run at the lowest CPU priority (SCHED_IDLE), so
    on cores it shares with the primary the shadow computes only in the time the primary
    leaves (under saturation its mirrors past ``max_in_flight`` are dropped and counted,
    never slowing the primary). ``shared``: the primary's priority; every mirror is
    computed, at the cost of the primary's latency where they share cores
    (serve/cpu_priority.py)."""


VersionConfig = create_model(
    "VersionConfig",
    __base__=_VersionFields,
    __doc__="One version of a versioned model: version, model_dir, weight, and any "
    "field of a model entry to override for this version.",
    **_overrides(),
)
ShadowConfig = create_model(
    "ShadowConfig",
    __base__=_ShadowFields,
    __doc__="The shadow version of a versioned model: version, model_dir, percent, "
    "max_in_flight, record, and any field of a model entry to override.",
    **_overrides(),
)
ModelConfig.model_rebuild()


def merged_version(m: ModelConfig, v: Any) -> ModelConfig:
    """Version (or shadow) ``v`` of ``m`` as a model entry: ``m``'s fields with ``v``'s set
    ones laid over them (a nested field such as ``batching`` is replaced whole)."""
    own = {"version", "model_dir", *_VersionFields.model_fields, *_ShadowFields.model_fields}
    fields = m.model_dump(exclude={*_VERSIONING, "model_dir"}, exclude_unset=True)
    fields |= v.model_dump(exclude=own, exclude_unset=True)
    fields |= {"version": v.version, "model_dir": v.model_dir}
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as e:
        msg = "; ".join(_brief(x) for x in e.errors(include_url=False))
        raise ValueError(f"version {v.version!r}: {msg}") from None


def check_versions(m: ModelConfig) -> None:
    """Cross-checks of a versioned entry; errors name the version and the field."""
    versions = list(m.versions or ())
    seen: dict[str, str] = {}
    for i, v in enumerate(versions):
        if v.version in seen:
            raise ValueError(
                f"duplicate version {v.version!r} ({seen[v.version]} and versions.{i})"
            )
        seen[v.version] = f"versions.{i}"
    if m.shadow is not None and m.shadow.version in seen:
        raise ValueError(
            f"shadow version {m.shadow.version!r} is also in versions ({seen[m.shadow.version]}); "
            "a shadow is a version of its own"
        )
    if sum(v.weight for v in versions) <= 0:
        raise ValueError("the weights of versions sum to 0; at least one must be positive")
    tasks = {c.version: c.task or _recorded_task(c.model_dir) for c in m.version_configs()}
    known = {v: t for v, t in tasks.items() if t is not None}
    if len(set(known.values())) > 1:
        first = next(iter(known))
        odd = next(v for v, t in known.items() if t != known[first])
        raise ValueError(
            f"version {odd!r}: field 'task': {known[odd]!r}, but version {first!r} is "
            f"{known[first]!r}; every version and the shadow must share the task"
        )


def model_task(m: ModelConfig) -> str | None:
    """The task of a model entry: its ``task``, else the one its model directory (or its
    first version's) records; None when neither is known on this machine."""
    for c in [m, *m.version_configs()]:
        task = c.task or _recorded_task(c.model_dir)
        if task is not None:
            return task
    return None


# ---------------------------------------------------------------- pools

_NOT_WITH_POOL = ("model_dir", "model_uri", "model_sha256", "versions", "shadow")


def check_pool(m: ModelConfig) -> None:
    """A pool's entry names no model directory of its own; its member settings load."""
    clash = [f for f in _NOT_WITH_POOL if getattr(m, f) is not None]
    if m.model_dir_shared:
        clash.append("model_dir_shared")
    if m.traffic != TrafficConfig():
        clash.append("traffic")
    if clash:
        raise ValueError(
            f"pool: a pool's members are the directories under pool.model_root; remove "
            f"{', '.join(clash)} (or remove pool to serve one model)"
        )
    m.member_config("member", m.pool.model_root / "member")  # a bad pool.member fails here


def _recorded_task(model_dir: Path | None) -> str | None:
    """The task a model directory records (textfleet.json), when it is on this machine."""
    import json

    try:
        info = json.loads((Path(model_dir) / "textfleet.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    task = info.get("task") if isinstance(info, dict) else None
    return task if isinstance(task, str) else None


class ApiKeysConfig(_Strict):
    """Where the API keys come from; never the keys themselves.

    Exactly one of ``env`` (a variable holding comma-separated keys) or
    ``file`` (one key per line; blank lines and ``#`` comments skipped). The
    keys are read when the config is applied or generated (``textfleet
    serve`` / ``textfleet config``) and reach the replicas as SHA-256 digests
    only. A client sends one as ``Authorization: Bearer <key>`` or
    ``x-api-key: <key>``.
    """

    env: str | None = None
    """Environment variable holding the keys, comma-separated (e.g. ``TEXTFLEET_API_KEYS``)."""

    file: Path | None = None
    """File holding the keys, one per line; relative paths resolve against the yaml's folder."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_keys(cls, v: Any) -> Any:
        # Checked before pydantic sees the values, so that no message echoes a key.
        if not isinstance(v, dict) or set(v) - {"env", "file"}:
            raise ValueError(
                "keys are never written in models.yaml; name where they come from: "
                "{env: TEXTFLEET_API_KEYS} (comma-separated) or {file: path} (one per line)"
            )
        env = v.get("env")
        if env is not None and not (isinstance(env, str) and _ENV_NAME_RE.match(env)):
            raise ValueError(
                "env must name an environment variable (letters, digits and '_'), not hold the keys"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeysConfig:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")
        return self

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if v is not None and not v.is_absolute() and base is not None:
            v = Path(base) / v
        return v


class GatewayConfig(_Strict):
    """The small application serving server-wide routes (health, /v1/embeddings)."""

    num_replicas: int = Field(1, ge=1, le=64)
    max_ongoing_requests: int = Field(1024, ge=1, le=100_000)


class ServerConfig(_Strict):
    """Where and how the HTTP front door listens."""

    host: str = "127.0.0.1"
    """Listen address of the HTTP port; loopback by default. Use 0.0.0.0 to expose
    the server: with ``textfleet serve`` only the HTTP port moves, every other port
    (metrics, HAProxy's pages, replicas, Ray) stays on loopback."""

    port: int = Field(8000, ge=1, le=65535)
    """HTTP port (of HAProxy or of Ray Serve's proxy, see ``ingress``)."""

    grpc_port: int | None = Field(9000, ge=1, le=65535)
    """Port of the V2 gRPC endpoint (``inference.GRPCInferenceService``, what
    ``tritonclient.grpc`` calls), on ``host`` like the HTTP port; null turns gRPC off.
    A call picks its model by the gRPC metadata ``application: <model name>``. Fixed
    while Ray Serve runs, like the HTTP port."""

    metrics_export_port: int = Field(8080, ge=1, le=65535)
    """Prometheus endpoint of Ray's metrics agent, on loopback (``textfleet serve`` only)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Ray Serve log level of the proxy, controller and replicas."""

    access_log: bool = False
    """Per-request access log lines; off by default (a measurable cost per request)."""

    ingress: Literal["auto", "haproxy", "ray-proxy"] = "auto"
    """What carries HTTP to the replicas (``textfleet serve`` only, see serve/README.md).
    ``haproxy``: Ray Serve's HAProxy mode: HAProxy listens on host:port and forwards
    each request straight to an HTTP server inside the model's replica (Ray's direct
    ingress), no Ray call on the request path. ``ray-proxy``: Ray Serve's Python HTTP
    proxy, which hands each request to the replica as Ray calls. ``auto``: haproxy
    when the ``haproxy`` binary is on PATH, else ray-proxy."""

    replica_connections: Literal["keep_alive", "per_request"] = "keep_alive"
    """How HAProxy (the ``haproxy`` ingress) talks to the replicas. ``keep_alive``:
    connections are kept open and reused, the fastest; a replica killed with a
    request in flight resets that client's connection now and then (once in 67 kills,
    serve/ingress_policy.py). ``per_request``: a connection per request, which a dead
    replica refuses, so the request goes to a live one (no reset seen on a quiet
    machine), at a cost on every request: 8-17% of a small model's throughput at 64
    clients on 2 cores. Ray's proxy has no such setting. On a cluster it is part of
    ``ray start``'s environment on every node (serve/cluster.py: the commands
    ``textfleet config --target cluster`` prints, KubeRay's pods); ``textfleet serve
    --address`` names a node started otherwise."""

    gateway: GatewayConfig = GatewayConfig()

    api_keys: ApiKeysConfig | None = None
    """Where the API keys come from (``{env: NAME}`` or ``{file: path}``); None: no keys
    asked. With keys, every route but ``/v2/health/live`` and ``/v2/health/ready``
    answers 401 without one of them."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        if self.grpc_port is not None and self.grpc_port in (self.port, self.metrics_export_port):
            other = "port" if self.grpc_port == self.port else "metrics_export_port"
            raise ValueError(f"grpc_port {self.grpc_port} is also {other}; give gRPC its own port")
        return self


class ModelsFile(_Strict):
    """The whole ``models.yaml``."""

    server: ServerConfig = ServerConfig()
    models: list[ModelConfig] = Field(..., min_length=1)
    graphs: list[GraphConfig] = Field(default_factory=list)
    """Inference graphs over the models (serve/graph_config.py), each served at
    ``/v2/models/<graph>`` like a model."""

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsFile:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(
                    f"duplicate model name {m.name!r} (entries {seen[m.name]} and {i}); "
                    "names must be unique"
                )
            seen[m.name] = i
        for i, m in enumerate(self.models):
            for app in application_names(m)[:-1]:
                if app in seen:
                    raise ValueError(
                        f"model {m.name!r} (entry {i}): its version's application {app!r} "
                        f"is the name of entry {seen[app]}; rename one"
                    )
        return self

    @model_validator(mode="after")
    def _check_graphs(self) -> ModelsFile:
        taken = {GATEWAY_APP: "the gateway application"}
        for m in self.models:
            taken |= {app: f"model {m.name!r}" for app in application_names(m)}
        check_graphs(self.graphs, {m.name: model_task(m) for m in self.models}, taken)
        return self

    def app_names(self) -> list[str]:
        """Every Ray Serve application of these models (versions first, then the model),
        then the graphs'."""
        return [app for m in self.models for app in application_names(m)] + [
            g.name for g in self.graphs
        ]

    def graph_tasks(self, graph: GraphConfig) -> dict[str, str]:
        """The tasks of the models ``graph`` calls (the graph application's args)."""
        tasks = {m.name: model_task(m) for m in self.models}
        return {name: tasks[name] for name in graph.models()}

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r}; models: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [m.name for m in self.models]


def application_names(m: ModelConfig) -> list[str]:
    """The applications of one model entry: its versions' (and shadow's), then its own."""
    return [*(version_app(m.name, c.version) for c in m.version_configs()), m.name]


def parse_models(data: Any, base_dir: str | Path | None = None, source: str = "models.yaml"):
    """Validate a loaded models.yaml mapping; errors name the model and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'models' list at the top level")
    ctx = {"base_dir": str(base_dir) if base_dir is not None else None}
    try:
        return ModelsFile.model_validate(data, context=ctx)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid configuration\n{_flatten(e, data=data)}") from None


def parse_model(args: Any, source: str = "application args") -> ModelConfig:
    """Validate one model's mapping (an application builder's ``args``)."""
    try:
        return ModelConfig.model_validate(args)
    except ValidationError as e:
        data = {"models": [args]}
        errors = e.errors(include_url=False)
        for err in errors:  # report as the models.yaml entry it came from
            err["loc"] = ("models", 0, *err["loc"])
        raise ConfigError(f"{source}: invalid model\n{_lines(errors, data, '  ')}") from None


def load_models(path: str | Path) -> ModelsFile:
    """Read and validate a models.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_models(data, base_dir=path.resolve().parent, source=str(path))


def _flatten(err: ValidationError, data: Any = None, prefix: str = "  ") -> str:
    return _lines(err.errors(include_url=False), data, prefix)


def _lines(errors: list[Any], data: Any, prefix: str) -> str:
    """One line per error: ``model 'x': field 'batching.max_batch_size': message``."""
    lines = []
    for e in errors:
        loc = list(e["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            where = f"model {_model_label(data, loc[1])}: "
            entry, loc = loc[1], loc[2:]
            if len(loc) >= 2 and loc[0] == "versions" and isinstance(loc[1], int):
                where += f"version {_version_label(data, entry, loc[1])}: "
                loc = loc[2:]
            elif loc[:1] == ["shadow"]:
                where += f"shadow {_version_label(data, entry, None)}: "
                loc = loc[1:]
        field = ".".join(str(p) for p in loc) or "(entry)"
        msg = e["msg"].removeprefix("Value error, ")
        got = ""
        if e["type"] not in ("missing", "value_error") and "input" in e:
            got = f" (got {e['input']!r})"
        if len(loc) >= 2 and loc[0] == "graphs" and isinstance(loc[1], int):
            where, field = _graph_where(data, loc[1:])
            if field is None:  # a check of the whole graph or step
                lines.append(f"{prefix}{where}{msg}{got}")
                continue
        elif not loc and msg.startswith("graph "):  # a graph's cross-check: named already
            lines.append(f"{prefix}{msg}")
            continue
        lines.append(f"{prefix}{where}field '{field}': {msg}{got}")
    return "\n".join(lines)


def _graph_where(data: Any, loc: list[Any]) -> tuple[str, str | None]:
    """``("graph 'g': step 's': ", field)`` for an error at ``graphs[i]...`` (field
    None: the graph's or the step's own check)."""
    try:
        graph = data["graphs"][loc[0]]
    except (TypeError, KeyError, IndexError):
        graph = None
    name = graph.get("name") if isinstance(graph, dict) else None
    where = f"graph {name!r}: " if isinstance(name, str) else f"graph #{loc[0]}: "
    rest = loc[1:]
    if len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int):
        try:
            step = graph["steps"][rest[1]].get("name")
        except (TypeError, KeyError, IndexError, AttributeError):
            step = None
        where += f"step {step!r}: " if isinstance(step, str) else f"step #{rest[1]}: "
        rest = rest[2:]
    return where, ".".join(str(p) for p in rest) or None


def _brief(e: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _model_label(data: Any, index: int) -> str:
    try:
        name = data["models"][index].get("name")
    except (TypeError, KeyError, IndexError, AttributeError):
        name = None
    return f"{name!r}" if isinstance(name, str) else f"#{index}"


def _version_label(data: Any, entry: int, index: int | None) -> str:
    """The version label of ``versions[index]`` (or of the shadow) as written."""
    try:
        m = data["models"][entry]
        v = (m["shadow"] if index is None else m["versions"][index]).get("version")
    except (TypeError, KeyError, IndexError, AttributeError):
        v = None
    return f"{v!r}" if isinstance(v, str) else ("" if index is None else f"#{index}")
