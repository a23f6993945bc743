"""A one-node Ray cluster whose ingress is HAProxy, started as
``textfleet config --target cluster`` says (``cluster.node_env``), with
``server.replica_connections: per_request``.

`textfleet serve --address` finds nothing to warn about, the model answers
through HAProxy, and the HAProxy config that the node's HAProxy manager wrote
closes each connection to a replica after its response: the setting reached
the cluster through `ray start`'s environment alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import free_port
from ray_nodes import Node, cluster_env, infer, node_ip, serve_address

from textfleet.serve import cluster, network
from textfleet.serve.config import ServerConfig

pytestmark = pytest.mark.slow


def test_per_request_connections_reach_a_clusters_haproxy(model_dir, tmp_path):
    server = ServerConfig(
        ingress="haproxy",
        replica_connections="per_request",
        port=free_port(),
        metrics_export_port=free_port(),
    )
    # HAProxy's files and pages of this node's own, apart from the test session's
    # server (on a real cluster, one node per machine, Ray's defaults do).
    files = network.haproxy_env(environ={})
    env = cluster_env({**cluster.node_env(server), **files})
    temp = tempfile.mkdtemp(prefix="tfh", dir="/tmp")  # Ray's socket paths: short
    gcs = free_port()
    head = Node(
        [
            "--head",
            f"--port={gcs}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            f"--metrics-export-port={server.metrics_export_port}",
            "--include-dashboard=false",
        ],
        env,
    )
    try:
        models_yaml = tmp_path / "models.yaml"
        models_yaml.write_text(
            json.dumps(
                {
                    "server": server.model_dump(
                        mode="json",
                        include={"ingress", "replica_connections", "port", "metrics_export_port"},
                    ),
                    "models": [
                        {
                            "name": "minilm",
                            "model_dir": str(model_dir.path),
                            "model_dir_shared": True,
                            "threads": 1,
                            "ray_actor_options": {"num_cpus": 0},
                        }
                    ],
                }
            )
        )
        out = serve_address(models_yaml, f"{node_ip()}:{gcs}", env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "(ingress: haproxy;" in out.stderr, out.stderr
        assert "differs" not in out.stderr, out.stderr

        status, answer = infer(server.port, ["hi"], timeout=60)
        assert status == 200, answer
        assert answer["outputs"][0]["shape"] == [1, 384]

        home = Path(files["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
        configs = [p.read_text() for p in home.rglob("haproxy.cfg")]
        assert configs, f"no HAProxy config under {home}"
        assert all("\n    option http-server-close\n" in c for c in configs)
    finally:
        head.kill()
        shutil.rmtree(temp, ignore_errors=True)
