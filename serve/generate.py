"""models.yaml -> a standard Ray Serve config file (``serve deploy`` / ``serve run``).

One application per model (route prefix ``/v2/models/<name>``) built by
``textfleet.serve.app:build_model_app`` with the model's settings as ``args``, and its
scaling and resources as the ``ModelServer`` deployment's options: Ray Serve
compares applications one by one, so changing a model's args rebuilds only
that model, changing its replicas or resources only updates that deployment,
and the other applications are left running untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from textfleet.serve import model_source
from textfleet.serve.auth import KEYS_ARG, key_digests
from textfleet.serve.config import (
    DEPLOYMENT_NAME,
    GATEWAY_APP,
    GATEWAY_DEPLOYMENT,
    HEALTH_CHECK_PERIOD_S,
    POOL_DEPLOYMENT,
    VERSION_DEPLOYMENT,
    ModelConfig,
    ModelsFile,
    ServerConfig,
    load_models,
    version_app,
)
from textfleet.serve.cpu_priority import BACKGROUND_ARG
from textfleet.serve.graph_config import GraphConfig

MODEL_BUILDER = "textfleet.serve.app:build_model_app"
GATEWAY_BUILDER = "textfleet.serve.app:build_gateway_app"
VERSION_BUILDER = "textfleet.serve.app:build_version_app"
ROUTER_BUILDER = "textfleet.serve.app:build_router_app"
GRAPH_BUILDER = "textfleet.serve.app:build_graph_app"
POOL_BUILDER = "textfleet.serve.app:build_pool_app"
# The V2 gRPC service (inference.GRPCInferenceService), as tritonclient ships it generated.
GRPC_SERVICER = "textfleet.serve.protocols.v2_grpc:add_servicer_to_server"


# The API key digests and the gateway's body cap travel as each deployment's
# user_config: Ray Serve applies a change by calling ``reconfigure`` on the
# running replicas (no restart, no model reload); always written, so that
# removing the keys reaches the replicas too.


def model_application(m: ModelConfig, digests: list[str] | None = None) -> dict[str, Any]:
    user_config = {KEYS_ARG: list(digests or [])}
    app: dict[str, Any] = {
        "name": m.name,
        "route_prefix": f"/v2/models/{m.name}",
        "import_path": MODEL_BUILDER,
        "args": m.builder_args(),
        "deployments": [
            {"name": DEPLOYMENT_NAME, **m.deployment_options(), "user_config": user_config}
        ],
    }
    env = model_source.runtime_env(m.model_uri)  # Ray delivers the model to each node
    if env is not None:
        app["runtime_env"] = env
    return app


def model_applications(m: ModelConfig, digests: list[str] | None = None) -> list[dict[str, Any]]:
    """A model's applications: one, or for a versioned model one per version (and the
    shadow) then the model's router at ``/v2/models/<name>``."""
    if m.pool is not None:
        return [pool_application(m, digests)]
    if m.versions is None:
        return [model_application(m, digests)]
    configs = m.version_configs()  # the versions, then the shadow
    background = m.shadow is not None and m.shadow.cpu_priority == "background"
    apps = [
        version_application(v, digests, background=background and i == len(configs) - 1)
        for i, v in enumerate(configs)
    ]
    return apps + [router_application(m, digests)]


def pool_application(m: ModelConfig, digests: list[str] | None = None) -> dict[str, Any]:
    """A pool: one ModelPool at ``/v2/models/<name>``, its members below it as
    ``/v2/models/<name>/<id>`` (serve/pool.py)."""
    return {
        "name": m.name,
        "route_prefix": f"/v2/models/{m.name}",
        "import_path": POOL_BUILDER,
        "args": m.builder_args(),
        "deployments": [
            {
                "name": POOL_DEPLOYMENT,
                **m.deployment_options(),
                "user_config": {KEYS_ARG: list(digests or [])},
            }
        ],
    }


def version_application(
    v: ModelConfig, digests: list[str] | None = None, *, background: bool = False
) -> dict[str, Any]:
    """One version: a ModelServer at ``/v2/models/<name>/versions/<v>`` (the longest
    prefix, so that route reaches it without the router). ``background`` (a shadow's
    replicas at the lowest CPU priority) is user_config: promoting the shadow to a
    version changes it without a restart."""
    user_config: dict[str, Any] = {KEYS_ARG: list(digests or [])}
    if background:
        user_config[BACKGROUND_ARG] = True
    return {
        "name": version_app(v.name, v.version),
        "route_prefix": f"/v2/models/{v.name}/versions/{v.version}",
        "import_path": VERSION_BUILDER,
        "args": v.builder_args(),
        "deployments": [
            {
                "name": VERSION_DEPLOYMENT,
                **v.deployment_options(),
                "user_config": user_config,
            }
        ],
    }


def router_application(m: ModelConfig, digests: list[str] | None = None) -> dict[str, Any]:
    """The model's router: its only arg is the name; versions, weights, the shadow and
    the body cap are its user_config, so changing them restarts nothing."""
    return {
        "name": m.name,
        "route_prefix": f"/v2/models/{m.name}",
        "import_path": ROUTER_BUILDER,
        "args": {"name": m.name},
        "deployments": [
            {
                "name": DEPLOYMENT_NAME,
                "num_replicas": m.traffic.router_replicas,
                "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                "user_config": router_user_config(m, digests),
            }
        ],
    }


def router_user_config(m: ModelConfig, digests: list[str] | None = None) -> dict[str, Any]:
    shadow = None
    if m.shadow is not None:
        record = m.shadow.record.model_dump(mode="json") if m.shadow.record else None
        shadow = {
            "version": m.shadow.version,
            "percent": m.shadow.percent,
            "max_in_flight": m.shadow.max_in_flight,
            "record": record,
        }
    configs = m.version_configs()
    return {
        KEYS_ARG: list(digests or []),
        "weights": {v.version: v.weight for v in m.versions or ()},
        "sticky_header": m.traffic.sticky_header,
        "shadow": shadow,
        "max_request_bytes": max(c.limits.max_request_bytes for c in configs),
        "request_timeout_s": max((c.request_timeout_s or 0.0) for c in configs) or None,
    }


def graph_application(
    g: GraphConfig, models: ModelsFile, digests: list[str] | None = None
) -> dict[str, Any]:
    """An inference graph: one ingress at ``/v2/models/<graph>`` calling the models'
    applications by handle (serve/graph_app.py). Its args are the graph and its
    models' tasks, nothing else of theirs: a model's change leaves it untouched."""
    return {
        "name": g.name,
        "route_prefix": f"/v2/models/{g.name}",
        "import_path": GRAPH_BUILDER,
        "args": {"graph": g.model_dump(mode="json"), "tasks": models.graph_tasks(g)},
        "deployments": [
            {
                "name": DEPLOYMENT_NAME,
                "num_replicas": g.num_replicas,
                "max_ongoing_requests": g.max_ongoing_requests,
                "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                "user_config": {KEYS_ARG: list(digests or [])},
            }
        ],
    }


def gateway_application(models: ModelsFile, digests: list[str] | None = None) -> dict[str, Any]:
    """The gateway: its scaling as args; as user_config the key digests and the
    largest body any model takes (the most it reads). No model list: adding a
    model within the largest limit leaves it untouched."""
    user_config = {
        "max_request_bytes": max(_largest_body(m) for m in models.models),
        KEYS_ARG: list(digests or []),
    }
    return {
        "name": GATEWAY_APP,
        "route_prefix": "/",
        "import_path": GATEWAY_BUILDER,
        "args": models.server.gateway.model_dump(mode="json"),
        "deployments": [
            {
                "name": GATEWAY_DEPLOYMENT,
                "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                "user_config": user_config,
            }
        ],
    }


def serve_config(models: ModelsFile) -> dict[str, Any]:
    """The Ray Serve config (a ``ServeDeploySchema`` mapping) for these models.

    Reads the API keys ``server.api_keys`` names (a ConfigError if they are
    missing); only their SHA-256 digests go into the deployments' user_config.
    """
    digests = key_digests(models.server.api_keys)
    return serve_options(models.server) | {
        "applications": [app for m in models.models for app in model_applications(m, digests)]
        + [graph_application(g, models, digests) for g in models.graphs]
        + [gateway_application(models, digests)],
    }


def serve_options(server: ServerConfig) -> dict[str, Any]:
    """The server-wide part of the Serve config: HTTP, gRPC (unless off) and logging.

    gRPC is Ray Serve's gRPC ingress serving the V2 gRPC service: a call goes to the
    application its ``application`` metadata names (serve/grpc_service.py)."""
    options: dict[str, Any] = {"http_options": {"host": server.host, "port": server.port}}
    if server.grpc_port is not None:
        options["grpc_options"] = {
            "port": server.grpc_port,
            "grpc_servicer_functions": [GRPC_SERVICER],
        }
    options["logging_config"] = {
        "log_level": server.log_level,
        "enable_access_log": server.access_log,
    }
    return options


def _largest_body(m: ModelConfig) -> int:
    return max(c.limits.max_request_bytes for c in [m, *m.version_configs()])


def missing_model_dirs(models: ModelsFile) -> list[str]:
    """Warnings for model directories absent here (they may exist on the cluster)."""
    out = []
    for m in models.models:
        if m.pool is not None:
            if not Path(m.pool.model_root).is_dir():
                out.append(
                    f"model {m.name!r}: pool.model_root {m.pool.model_root} "
                    "does not exist on this machine"
                )
            continue
        for c in m.version_configs() or [m]:
            if c.model_uri is None and not Path(c.model_dir).is_dir():
                which = f"version {c.version!r}: " if m.versions is not None else ""
                out.append(
                    f"model {m.name!r}: {which}model_dir {c.model_dir} "
                    "does not exist on this machine"
                )
    return out


def dump(config: dict[str, Any], source: str = "models.yaml") -> str:
    head = (
        f"# Ray Serve config generated by `textfleet config` from {source}.\n"
        "# Deploy with `serve deploy` / `serve run` as is; regenerate rather than edit.\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_serve_config(models_yaml: str | Path, out: str | Path | None) -> str:
    """Generate from a models.yaml; write it to ``out`` if given; return the text."""
    text = dump(serve_config(load_models(models_yaml)), str(models_yaml))
    if out is not None:
        Path(out).write_text(text, encoding="utf-8")
    return text
