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

from textfleet.serve import auth
from textfleet.serve.config import ConfigError, GatewayConfig, RequestLimits, parse_model
from textfleet.serve.gateway import Gateway
from textfleet.serve.server import ModelServer

# A missing or corrupt model directory fails the same way every time; give up
# after a few tries instead of Ray's default 20 replica restarts.
CONSTRUCTOR_RETRIES = 3


def build_model_app(args: dict[str, Any]) -> Application:
    """One model's application: a ``ModelServer`` deployment configured by ``args``
    (a models.yaml entry, plus ``api_key_sha256`` when keys are asked)."""
    args, digests = auth.split_args(args)
    cfg = parse_model(args)
    opts = cfg.deployment_options()
    return ModelServer.options(**opts, max_constructor_retry_count=CONSTRUCTOR_RETRIES).bind(
        cfg.model_dump(mode="json"), digests
    )


def build_gateway_app(args: dict[str, Any] | None = None) -> Application:
    """The server-wide routes (health, server metadata, /v1/embeddings, KServe V1).

    ``args``: ``server.gateway`` of models.yaml, plus ``max_request_bytes`` (the
    largest model's limit; RequestLimits' default when absent) and
    ``api_key_sha256``."""
    args, digests = auth.split_args(args)
    max_bytes = args.pop("max_request_bytes", None)
    if max_bytes is None:
        max_bytes = RequestLimits().max_request_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError("gateway args: max_request_bytes must be a positive integer")
    cfg = GatewayConfig.model_validate(args)
    return Gateway.options(
        num_replicas=cfg.num_replicas, max_ongoing_requests=cfg.max_ongoing_requests
    ).bind(max_request_bytes=max_bytes, api_key_sha256=digests)
