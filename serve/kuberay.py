"""A KubeRay ``RayService`` manifest for models.yaml: ``textfleet config --target kuberay``.

The manifest holds the cluster's Serve config (serve/cluster.py) as
``serveConfigV2``, which KubeRay applies through the head's dashboard, and a
``rayClusterConfig`` sized for it:

- every Ray container (head and workers) gets ``node_env``, the ingress's
  environment, and ``--metrics-export-port`` with that port declared;
- the head runs no replicas (``num-cpus: 0``, KubeRay's advice): the GCS, the
  Serve controller, the dashboard and a proxy;
- the ``workers`` group's CPU requests cover every replica's ``num_cpus`` at
  its largest count (``autoscaling.max_replicas``), the gateway's included;
  with autoscaling, Ray's autoscaler adds pods between the group's min and max;
- a model that asks for custom resources or GPUs gets its own group, one
  replica per pod, whose pods offer exactly that (so the pinning means
  something).

The image must hold the Ray version of this machine and textfleet.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from textfleet.serve.cluster import GCS_PORT, cluster_serve_config, node_env
from textfleet.serve.config import ModelConfig, ModelsFile

DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
HEAD_CPUS = "2"
"""CPU request of the head pod (GCS, controller, dashboard, a proxy; no replicas)."""

MEMORY_PER_CPU_GI = 2


def _replicas(m: ModelConfig) -> tuple[int, int]:
    """(fewest, most) replicas of a model."""
    if m.autoscaling is not None:
        low = int(m.autoscaling.get("min_replicas", 1))
        return low, int(m.autoscaling.get("max_replicas", max(low, 1)))
    n = m.num_replicas or 1
    return n, n


def _cpus(m: ModelConfig) -> float:
    opts = m.ray_actor_options
    return 1.0 if opts.num_cpus is None else opts.num_cpus  # Ray Serve's default


def _pinned(m: ModelConfig) -> bool:
    opts = m.ray_actor_options
    return bool(opts.resources) or bool(opts.num_gpus)


def _container(
    name: str,
    image: str,
    env: dict[str, str],
    ports: dict[str, int],
    cpus: str,
    memory: str,
    gpus: int = 0,
) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "requests": {"cpu": cpus, "memory": memory},
        "limits": {"cpu": cpus, "memory": memory},
    }
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
    return {
        "name": name,
        "image": image,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": k, "containerPort": v} for k, v in ports.items()],
        "resources": resources,
    }


def _group(
    name: str,
    image: str,
    env: dict[str, str],
    ports: dict[str, int],
    cpus: float,
    low: int,
    high: int,
    resources: dict[str, float] | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    pod_cpus = max(1, math.ceil(cpus))
    params = {"num-cpus": str(pod_cpus), "metrics-export-port": str(ports["metrics"])}
    if resources:
        # rayStartParams values are strings; KubeRay passes this one quoted to --resources.
        params["resources"] = json.dumps(json.dumps(resources))
    return {
        "groupName": name,
        "replicas": low,
        "minReplicas": low,
        "maxReplicas": high,
        "rayStartParams": params,
        "template": {
            "spec": {
                "containers": [
                    _container(
                        "ray-worker",
                        image,
                        env,
                        ports,
                        str(pod_cpus),
                        f"{pod_cpus * MEMORY_PER_CPU_GI}Gi",
                        gpus,
                    )
                ]
            }
        },
    }


def worker_groups(models: ModelsFile, image: str, worker_cpus: int) -> list[dict[str, Any]]:
    """The shared ``workers`` group, then one group per pinned model."""
    server = models.server
    env = node_env(server)
    ports = {"serve": server.port, "metrics": server.metrics_export_port}
    gateway = models.server.gateway.num_replicas * 1.0
    low_cpus = high_cpus = gateway
    groups = []
    for m in models.models:
        low, high = _replicas(m)
        if _pinned(m):
            opts = m.ray_actor_options
            gpus = math.ceil(opts.num_gpus or 0)
            groups.append(
                _group(
                    f"model-{m.name.lower().replace('.', '-').replace('_', '-')}"[:63],
                    image,
                    env,
                    ports,
                    _cpus(m),
                    low,
                    high,
                    opts.resources,
                    gpus,
                )
            )
        else:
            low_cpus += low * _cpus(m)
            high_cpus += high * _cpus(m)
    shared = _group(
        "workers",
        image,
        env,
        ports,
        worker_cpus,
        math.ceil(low_cpus / worker_cpus),
        math.ceil(high_cpus / worker_cpus),
    )
    return [shared, *groups]


def rayservice(
    models: ModelsFile,
    image: str,
    name: str = "textfleet",
    worker_cpus: int = 4,
    source: str = "models.yaml",
) -> dict[str, Any]:
    """The RayService manifest (a mapping) for these models."""
    import ray

    if not image:
        raise ValueError("a RayService needs the image of its Ray containers (--image)")
    server = models.server
    serve_config = cluster_serve_config(models, source)
    env = node_env(server)
    head_ports = {
        "gcs-server": GCS_PORT,
        "dashboard": DASHBOARD_PORT,
        "client": CLIENT_PORT,
        "serve": server.port,
        "metrics": server.metrics_export_port,
    }
    autoscale = any(m.autoscaling is not None for m in models.models)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray.__version__,
                "enableInTreeAutoscaling": autoscale,
                "headGroupSpec": {
                    "rayStartParams": {
                        "num-cpus": "0",
                        # KubeRay reaches the dashboard to apply serveConfigV2.
                        "dashboard-host": "0.0.0.0",
                        "metrics-export-port": str(server.metrics_export_port),
                    },
                    "template": {
                        "spec": {
                            "containers": [
                                _container(
                                    "ray-head",
                                    image,
                                    env,
                                    head_ports,
                                    HEAD_CPUS,
                                    f"{int(HEAD_CPUS) * MEMORY_PER_CPU_GI}Gi",
                                )
                            ]
                        }
                    },
                },
                "workerGroupSpecs": worker_groups(models, image, worker_cpus),
            },
        },
    }


def dump(manifest: dict[str, Any], source: str) -> str:
    head = (
        f"# KubeRay RayService generated by `textfleet config --target kuberay` from {source}.\n"
        "# kubectl apply -f this file; regenerate rather than edit.\n"
    )
    return head + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
