"""Deploy onto a Ray cluster someone else started: ``textfleet serve --address``.

Nothing is started here: the driver joins the cluster, reads how its nodes
and its Serve instance were set up, says where they differ from models.yaml
(``ingress_differences``), and applies the cluster config (serve/cluster.py).
The ingress settings are fixed when Ray's processes start (``ray start``'s
environment) and Serve's HTTP host, port and proxy deadline when Serve first
starts (Ray keeps the first ``http_options``); a driver cannot change them, so
a difference is reported, not patched.
"""

from __future__ import annotations

from typing import Any

import ray

from textfleet.serve.cluster import HAPROXY_SWITCH, cluster_ingress, node_env
from textfleet.serve.config import ServerConfig
from textfleet.serve.ingress_policy import REPLICA_CONNECTIONS_ENV


@ray.remote(num_cpus=0)
def _read_env(names: list[str]) -> dict[str, str | None]:
    import os

    return {n: os.environ.get(n) for n in names}


def node_settings() -> list[dict[str, Any]]:
    """Per alive node: its address, metrics port and the ingress environment its
    workers run with (what ``ray start`` was given)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    every = ServerConfig(ingress="haproxy", replica_connections="per_request")
    names = sorted({*node_env(every), HAPROXY_SWITCH})
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        _read_env.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(names)
        for n in nodes
    ]
    envs = ray.get(refs, timeout=60)
    return [
        {
            "node": f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})",
            "metrics_export_port": n.get("MetricsExportPort"),
            "env": env,
        }
        for n, env in zip(nodes, envs, strict=True)
    ]


def serve_http_options() -> dict[str, Any] | None:
    """Host, port and proxy deadline (``request_timeout_s``) of the Serve instance
    already on the cluster, or None."""
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    try:
        http = _get_global_client().http_config
    except RayServeException:
        return None
    return {"host": http.host, "port": http.port, "request_timeout_s": http.request_timeout_s}


def ingress_differences(
    server: ServerConfig,
    nodes: list[dict[str, Any]],
    serve_http: dict[str, Any] | None,
    proxy_timeout_s: float | None = None,
) -> list[str]:
    """Where the cluster's ingress differs from what models.yaml asks for;
    ``proxy_timeout_s``: the proxy deadline its longest model deadline needs."""
    found = []
    want = node_env(server)
    wanted_ingress = cluster_ingress(server)
    for node in nodes:
        env = node["env"]
        has = "haproxy" if env.get(HAPROXY_SWITCH) == "1" else "ray-proxy"
        if has != wanted_ingress:
            found.append(
                f"node {node['node']}: ingress {has}, models.yaml asks for {wanted_ingress} "
                f"(set {HAPROXY_SWITCH}={'1' if wanted_ingress == 'haproxy' else '0'} "
                "for `ray start`)"
            )
        unset = [f"{k}={v}" for k, v in want.items() if k != HAPROXY_SWITCH and env.get(k) != v]
        if unset:
            found.append(f"node {node['node']}: `ray start` ran without {' '.join(unset)}")
        connections = env.get(REPLICA_CONNECTIONS_ENV)
        if connections and REPLICA_CONNECTIONS_ENV not in want:
            found.append(
                f"node {node['node']}: `ray start` ran with {REPLICA_CONNECTIONS_ENV}="
                f"{connections}, models.yaml asks for replica_connections "
                f"{server.replica_connections} under ingress {wanted_ingress}"
            )
        port = node["metrics_export_port"]
        if port is not None and port != server.metrics_export_port:
            found.append(
                f"node {node['node']}: metrics on port {port}, models.yaml says "
                f"{server.metrics_export_port}"
            )
    if serve_http is not None:
        for key, wanted in (("host", server.host), ("port", server.port)):
            if serve_http[key] != wanted:
                found.append(
                    f"Serve is already running with HTTP {key} {serve_http[key]!r}, models.yaml "
                    f"says {wanted!r}; it stays {serve_http[key]!r} until Serve is shut down "
                    "(`serve shutdown`)"
                )
        running = serve_http.get("request_timeout_s")
        if proxy_timeout_s is not None and running != proxy_timeout_s:
            # A request still waiting for a replica when the proxy's deadline passes
            # gets 504, whatever deadline its model gives it.
            found.append(
                f"Serve's proxy is already running with request_timeout_s {running}, "
                f"models.yaml's longest deadline needs {proxy_timeout_s:g}; it stays "
                f"{running} until Serve is shut down (`serve shutdown`)"
            )
    return found
