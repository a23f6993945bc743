"""A real two-node Ray cluster on this machine: two `ray start` processes, the
second offering a custom resource (``node2``).

``textfleet serve --address`` deploys onto it without a local Ray; the model
arrives by ``model_uri`` (a ``file://`` zip, pinned by ``model_sha256``) and is
pinned to the second node by the resource; requests go through the head's
HTTP port. The generated ``--target cluster`` config deploys with Ray's own
``serve deploy``. Killing the second node under load fails requests within the
model's deadline (never a hang) and the model answers again once a node with
the resource returns.

Both nodes share this machine's address, so their proxies share the HTTP port
(Ray's proxies bind it with SO_REUSEPORT) and the second node needs its own
metrics port: ``textfleet serve --address`` reports that difference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from ray_nodes import Node, cluster_env, infer, node_ip, run, serve_address

from textfleet.serve import cluster, model_source
from textfleet.serve.config import MAX_REQUEST_TIMEOUT_S, ServerConfig

pytestmark = pytest.mark.slow

SERVE = str(Path(sys.executable).with_name("serve"))
TEXTS = ["a cluster of two nodes", "hello world", "the model came from a zip"]
DEADLINE_S = 5.0  # the model's request_timeout_s: how long a request may wait


@pytest.fixture(scope="module")
def two_nodes(model_dir):
    # A short temp dir: Ray's socket paths live under it (107 characters at most).
    temp = tempfile.mkdtemp(prefix="tfc", dir="/tmp")
    server = ServerConfig(port=free_port(), metrics_export_port=free_port())
    env = cluster_env(cluster.node_env(server))
    gcs, dashboard = free_port(), free_port()
    ip = node_ip()
    node2_args = [
        f"--address={ip}:{gcs}",
        "--num-cpus=2",
        '--resources={"node2": 1}',
        f"--metrics-export-port={free_port()}",  # one machine: a port of its own
    ]
    nodes: dict[str, Node] = {}
    shared = Path(temp) / "shared"  # what every node mounts: the zip's home
    here = Path(tempfile.mkdtemp(prefix="tfc-config"))  # the generating machine's folder
    try:
        nodes["head"] = Node(
            [
                "--head",
                f"--port={gcs}",
                "--num-cpus=2",
                f"--temp-dir={temp}",
                f"--metrics-export-port={server.metrics_export_port}",
                "--include-dashboard=true",
                f"--dashboard-port={dashboard}",
            ],
            env,
        )
        nodes["node2"] = Node(node2_args, env)
        shared.mkdir()
        pin = model_source.pack(model_dir.path, shared / "minilm-1.zip")
    except BaseException:
        for node in nodes.values():
            node.kill()
        raise
    models_yaml = here / "models.yaml"
    models_yaml.write_text(
        json.dumps(
            {
                "server": {"port": server.port, "metrics_export_port": server.metrics_export_port},
                "models": [
                    {
                        "name": "minilm",
                        "model_uri": f"file://{shared / 'minilm-1.zip'}",
                        "model_sha256": pin,
                        "request_timeout_s": DEADLINE_S,
                        "ray_actor_options": {"num_cpus": 0.5, "resources": {"node2": 1}},
                    }
                ],
            }
        )
    )
    info = {
        "address": f"{ip}:{gcs}",
        "dashboard": f"http://127.0.0.1:{dashboard}",
        "port": server.port,
        "env": env,
        "models_yaml": models_yaml,
        "here": here,
        "nodes": nodes,
        "node2_args": node2_args,
    }
    yield info
    for node in info["nodes"].values():
        node.kill()
    shutil.rmtree(temp, ignore_errors=True)
    shutil.rmtree(here, ignore_errors=True)


def replica_nodes(info) -> list[str]:
    """The node ("head" or "node2") of every live replica of minilm."""
    script = (
        "import json, ray\n"
        f"ray.init(address={info['address']!r}, log_to_driver=False)\n"
        "from ray._private import state\n"
        "res = {n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}\n"
        "out = ['node2' if 'node2' in res.get(a['Address']['NodeID'], {}) else 'head'"
        " for a in state.actors().values() if a['State'] == 'ALIVE'"
        " and a['ActorClassName'] == 'ServeReplica:minilm:ModelServer']\n"
        "print(json.dumps(sorted(out)))\n"
    )
    out = run([sys.executable, "-P", "-c", script], info["env"], timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for_200(port: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = infer(port, TEXTS, timeout=10)
        except OSError:
            status, body = 0, {}
        if status == 200:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 200 within {timeout_s}s (last status {status})")
        time.sleep(1)


def test_serve_address_deploys_a_zip_model_onto_the_node_with_its_resource(two_nodes, engine):
    info = two_nodes
    out = serve_address(info["models_yaml"], info["address"], info["env"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "minilm: RUNNING" in out.stdout
    assert f"deployed onto {info['address']}" in out.stderr
    # The second node's own metrics port (one machine) is a difference it names.
    assert "warning: the cluster differs from models.yaml" in out.stderr
    assert "metrics on port" in out.stderr
    status, body = infer(info["port"], TEXTS)
    assert status == 200
    got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(len(TEXTS), -1)
    np.testing.assert_allclose(got, engine.embed(TEXTS), atol=1e-5)
    assert replica_nodes(info) == ["node2"]


def test_generated_cluster_config_deploys_with_serve_deploy(two_nodes):
    info = two_nodes
    data = json.loads(info["models_yaml"].read_text())
    (entry,) = data["models"]
    entry.update(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.5})
    spread = info["here"] / "spread.yaml"
    spread.write_text(json.dumps(data))
    target = info["here"] / "serve_config.yaml"
    cmd = [sys.executable, "-P", "-m", "textfleet.cli", "config", str(spread)]
    out = run([*cmd, "--target", "cluster", "-o", str(target)], info["env"])
    assert out.returncode == 0, out.stderr
    text = target.read_text()
    for path in (info["here"], Path.home(), Path.cwd(), Path(__file__).parents[1]):
        assert str(path) not in text
    out = run([SERVE, "deploy", str(target), "-a", info["dashboard"]], info["env"], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 240
    while replica_nodes(info) != ["head", "node2"]:  # one per node
        assert time.monotonic() < deadline, f"replicas not spread: {replica_nodes(info)}"
        time.sleep(2)
    wait_for_200(info["port"], 60)


def test_losing_the_node_fails_requests_within_the_deadline_and_the_model_returns(two_nodes):
    info = two_nodes
    # Back to one replica, on node2.
    out = serve_address(info["models_yaml"], info["address"], info["env"])
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 120
    while replica_nodes(info) != ["node2"]:
        assert time.monotonic() < deadline
        time.sleep(2)
    results: list[tuple[float, object, float]] = []
    replies: list[dict] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status, body = infer(info["port"], TEXTS[:1], timeout=60)
            except OSError as e:  # a connection to the lost node's proxy
                status, body = type(e).__name__, {}
            results.append((start, status, time.monotonic() - start))
            if status != 200:
                replies.append(body)
            if status != 200:
                time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(4)
    killed = time.monotonic()
    info["nodes"]["node2"].kill()
    time.sleep(20)
    stop.set()
    for t in threads:
        t.join(90)
    before = [r for r in results if r[0] + r[2] < killed]
    after = [r for r in results if r[0] > killed + 1]
    assert before and all(r[1] == 200 for r in before)
    assert after and all(r[1] in (503, 504) for r in after), replies[-3:]
    # Never a hang: every request answered within the model's deadline and the
    # proxy's margin (plus slack for two busy cores).
    limit = DEADLINE_S + cluster.PROXY_MARGIN_S + 4
    assert max(r[2] for r in results) < limit, max(results, key=lambda r: r[2])
    # Capacity returns: a node with the resource; the model answers again.
    info["nodes"]["node2"] = Node(info["node2_args"], info["env"])
    wait_for_200(info["port"], 240)
    assert replica_nodes(info) == ["node2"]


WATCH_REPLICAS = """
import json, sys, time, ray
from ray import serve
ray.init(address=sys.argv[1], namespace="serve", log_to_driver=False)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    app = serve.status().applications.get("minilm")
    states = app.deployments["ModelServer"].replica_states if app else {}
    running = sum(n for k, n in states.items() if str(getattr(k, "value", k)) == "RUNNING")
    print(json.dumps([round(time.time(), 1), running]), flush=True)
    time.sleep(1)
"""


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(two_nodes):
    info = two_nodes
    data = json.loads(info["models_yaml"].read_text())
    (entry,) = data["models"]
    entry.pop("ray_actor_options")
    # The longest deadline: this test is about scaling, not admission. On two
    # shared cores a replica that just started measures its throughput on its
    # first (cold) batches, and the admission gate (serve/admission.py) then
    # refuses some of many clients' requests with 503 under a 30 s deadline.
    # Ray's proxy keeps the deadline of the first deploy on this cluster
    # (DEADLINE_S, `serve --address` warns), so the load stays light enough
    # for every request to be answered well within it while replicas start.
    entry["request_timeout_s"] = MAX_REQUEST_TIMEOUT_S
    entry.update(
        ray_actor_options={"num_cpus": 0.25},
        autoscaling={
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 5,
        },
    )
    scaled = info["here"] / "autoscaling.yaml"
    scaled.write_text(json.dumps(data))
    out = serve_address(scaled, info["address"], info["env"])
    assert out.returncode == 0, out.stdout + out.stderr
    load_s, after_s = 40, 60
    clients = 16  # 8 times target_ongoing_requests: the policy asks for max_replicas
    watcher = subprocess.Popen(
        [sys.executable, "-P", "-c", WATCH_REPLICAS, info["address"], str(load_s + after_s)],
        env=info["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    statuses: list[object] = []
    failures: list[object] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = infer(info["port"], TEXTS[:1], timeout=60)
            except OSError as e:
                status, body = type(e).__name__, {}
            statuses.append(status)
            if status != 200:
                failures.append(body.get("reply", status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(load_s)
    stop.set()
    for t in threads:
        t.join(90)
    lines = watcher.communicate(timeout=after_s + 120)[0].splitlines()
    counts = [json.loads(line) for line in lines if line.startswith("[")]
    start = counts[0][0]
    changes = [
        (round(t - start), n) for i, (t, n) in enumerate(counts) if i == 0 or n != counts[i - 1][1]
    ]
    print(
        f"\nRUNNING replicas (seconds from the load's start, count; load until {load_s} s):",
        changes,
    )
    print(f"{len(statuses)} requests, {len(failures)} failed")
    assert statuses and not failures, failures[:3]
    peak = max(n for _, n in counts)
    assert peak > 1, counts  # scaled up under the load
    assert counts[-1][1] == 1, counts  # and back down to min_replicas after
