"""The Ray Serve config for a Ray cluster: ``textfleet config --target cluster``.

``local`` (``serve/generate.py``) is for the machine it is generated on: model
directories are its paths, and the ingress settings exist only in the Ray that
``textfleet serve`` starts. A cluster's config has to be valid on every node:

- no path of the generating machine: each model comes by ``model_uri`` (a zip
  Ray delivers to the nodes) or from a ``model_dir_shared`` path
  (``check_portable``); the header names the models.yaml by file name only;
- a proxy on every node (``proxy_location: EveryNode``), listening on
  ``server.host`` as written: loopback unless the user asks for ``0.0.0.0``;
- the ingress settings are environment of ``ray start`` on every node
  (``node_env``; Ray reads them when its processes start), written into the
  header as the commands to run, and, for KubeRay, into the pods
  (serve/kuberay.py).

textfleet must be installed on every node (``pip install textfleet``, or in
the image): replicas import ``textfleet.serve.app`` from the installed
package; nothing is put on ``PYTHONPATH``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textfleet.serve import ingress_policy
from textfleet.serve.config import MAX_REQUEST_TIMEOUT_S, ConfigError, ModelsFile, ServerConfig
from textfleet.serve.deploy import LEAN_ENV

TARGETS = ("local", "cluster", "kuberay")

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"

GCS_PORT = 6379

PROXY_MARGIN_S = 1.0
"""Ray's proxy gives up on a request this long after the longest model deadline."""


def cluster_ingress(server: ServerConfig) -> str:
    """The ingress of a cluster: ``haproxy`` only when asked for by name. ``auto``
    decides by this machine's haproxy binary, which says nothing about the nodes."""
    return "haproxy" if server.ingress == "haproxy" else "ray-proxy"


def node_env(server: ServerConfig) -> dict[str, str]:
    """Environment of ``ray start`` on every node (head and workers) for this ingress.

    HAProxy mode is Ray Serve's (``ray[serve]`` bundles the binary on Linux);
    Ray then binds each replica's direct-ingress port on every interface, as
    HAProxy on another node must reach it. ``server.replica_connections:
    per_request`` is read by each node's HAProxy manager (serve/ingress_policy.py)
    from the environment it inherits from ``ray start``.
    """
    env = dict(LEAN_ENV)
    if cluster_ingress(server) == "haproxy":
        env[HAPROXY_SWITCH] = "1"
        env.update(ingress_policy.HAPROXY_ENV)
        if server.replica_connections == "per_request":
            env[ingress_policy.REPLICA_CONNECTIONS_ENV] = "per_request"
    return env


def local_paths(models: ModelsFile) -> list[str]:
    """One line per model whose directory is only a path of this machine."""
    pools = [
        f"model {m.name!r}: pool.model_root {m.pool.model_root} is a path of this machine; "
        "pools are served on one machine for now"
        for m in models.models
        if m.pool is not None
    ]
    return pools + [
        f"model {m.name!r}: model_dir {m.model_dir} is a path of this machine; give the "
        "model a model_uri (a zip Ray delivers to every node) or, if this path holds "
        "the model on every node, mark it model_dir_shared: true"
        for m in models.models
        if m.pool is None and m.model_uri is None and not m.model_dir_shared
    ]


def check_portable(models: ModelsFile, source: str = "models.yaml") -> None:
    """Raise ConfigError naming each model a cluster's nodes could not find."""
    problems = local_paths(models)
    if problems:
        raise ConfigError(f"{source}: not deployable on a cluster\n  " + "\n  ".join(problems))


def cluster_serve_config(models: ModelsFile, source: str = "models.yaml") -> dict[str, Any]:
    """The Ray Serve config of these models for any node of a cluster."""
    from textfleet.serve.generate import serve_config

    check_portable(models, source)
    config = serve_config(models)
    # A request no replica can take (the model's only node gone, all replicas
    # restarting) waits in Ray's proxy; this bounds the wait to the longest
    # deadline a model gives its requests, then the proxy answers.
    longest = max(
        [m.request_timeout_s or MAX_REQUEST_TIMEOUT_S for m in models.models]
        + [g.request_timeout_s for g in models.graphs]
    )
    config["http_options"]["request_timeout_s"] = longest + PROXY_MARGIN_S
    config["proxy_location"] = "EveryNode"
    return config


def ray_start_commands(server: ServerConfig, head: str = "HEAD_IP") -> list[str]:
    """``ray start`` for the head and for each worker, with ``node_env``."""
    env = " ".join(f"{k}={v}" for k, v in node_env(server).items())
    metrics = f"--metrics-export-port={server.metrics_export_port}"
    return [
        f"{env} ray start --head --port={GCS_PORT} {metrics}",
        f"{env} ray start --address={head}:{GCS_PORT} {metrics}",
    ]


def header(models: ModelsFile, source: str) -> str:
    """Comment lines for the top of a cluster config: how to start the nodes."""
    server = models.server
    head, worker = ray_start_commands(server)
    where = (
        "loopback only (set server.host: 0.0.0.0 to take traffic from other machines)"
        if is_loopback(server.host)
        else server.host
    )
    lines = [
        f"Ray Serve config generated by `textfleet config --target cluster` from {source}.",
        "Every node needs textfleet installed (pip install textfleet) and Ray started so:",
        f"  head:    {head}",
        f"  workers: {worker}",
        f"Ingress: {cluster_ingress(server)}, a proxy on every node at port {server.port}, "
        f"host {where}.",
        f"Metrics: Prometheus on every node at port {server.metrics_export_port}.",
        "Deploy with `serve deploy` (address of the head's dashboard) or",
        "`textfleet serve MODELS_YAML --address HEAD_IP:6379`; regenerate rather than edit.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def source_name(models_yaml: str | Path) -> str:
    """The models.yaml as a cluster config names it: its file name, not its path."""
    return Path(models_yaml).name


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")
