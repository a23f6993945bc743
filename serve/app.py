"""Application builders: the import paths a Ray Serve config file points at.

``textfleet config`` writes one application per model with
``import_path: textfleet.serve.app:build_model_app`` and the model's entry of
models.yaml as ``args``, plus one ``textfleet.serve.app:build_gateway_app`` application
at ``/``. A hand-written Ray Serve config can use the same import paths::

    applications:
      - name: minilm
        route_prefix: /v2/models/minilm
        import_path: textfleet.serve.app:build_model_app
        args: {name: minilm, model_dir: /abs/path/all-MiniLM-L6-v2}
      - name: textfleet-gateway
        route_prefix: /
        import_path: textfleet.serve.app:build_gateway_app

``args`` takes every field of a models.yaml model entry (use an absolute
``model_dir``); deployment options given under ``deployments:`` in the Ray
config override the ones in ``args``, as Ray Serve always does.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from textfleet.serve.config import VERSION_DEPLOYMENT, GatewayConfig, parse_model
from textfleet.serve.gateway import Gateway
from textfleet.serve.server import ModelServer

# A missing or corrupt model directory fails the same way every time; give up
# after a few tries instead of Ray's default 20 replica restarts.
CONSTRUCTOR_RETRIES = 3


def build_model_app(args: dict[str, Any]) -> Application:
    """One model's application: a ``ModelServer`` deployment configured by ``args``."""
    cfg = parse_model(args)
    opts = cfg.deployment_options()
    return ModelServer.options(**opts, max_constructor_retry_count=CONSTRUCTOR_RETRIES).bind(
        cfg.model_dump(mode="json")
    )


def build_version_app(args: dict[str, Any]) -> Application:
    """One version of a versioned model (``args``: the version's merged entry): a
    ``ModelServer`` that names its version in a response header."""
    cfg = parse_model(args)
    opts = cfg.deployment_options()
    return ModelServer.options(
        name=VERSION_DEPLOYMENT, **opts, max_constructor_retry_count=CONSTRUCTOR_RETRIES
    ).bind(cfg.model_dump(mode="json"), announce_version=True)


def build_router_app(args: dict[str, Any]) -> Application:
    """A versioned model's router (serve/versions.py); weights and the shadow come as
    its user_config."""
    from textfleet.serve.versions import VersionRouter

    name = args.get("name") if isinstance(args, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError("build_router_app: args.name must be the model's name")
    return VersionRouter.bind(name)


def build_graph_app(args: dict[str, Any]) -> Application:
    """An inference graph (serve/graph_app.py); ``args``: the graph and its models' tasks."""
    from textfleet.serve.graph_app import GraphServer

    if not isinstance(args, dict) or not {"graph", "tasks"} <= set(args):
        raise ValueError("build_graph_app: args must hold graph and tasks")
    return GraphServer.bind(args)


def build_gateway_app(args: dict[str, Any] | None = None) -> Application:
    """The server-wide routes (health, server metadata, /v1/embeddings, KServe V1)."""
    cfg = GatewayConfig.model_validate(args or {})
    return Gateway.options(
        num_replicas=cfg.num_replicas, max_ongoing_requests=cfg.max_ongoing_requests
    ).bind()
