"""``textfleet batch --address`` on a real two-node Ray cluster on this machine:
two ``ray start`` processes (tests/ray_nodes.py), the second with a custom
resource (``node2``) that names it.

Two engine actors, each reserving two CPUs: the head offers three (one actor
and a CPU for Ray Data's read and write tasks), the second node two, so each
node holds exactly one actor. Ray's own state (actors and tasks as the state
API lists them) must show both nodes holding an actor and running batches,
and the output must equal ``Engine.embed`` row for row, in input order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import free_port
from ray_nodes import Node, cluster_env, node_ip

from textfleet.batch.files import read_output

pytestmark = pytest.mark.slow

ROWS = 400
BATCH = 16  # rows per engine call: many batches, so both actors get some

# The node ("head" or "node2") of each engine actor of the run, and the nodes whose
# actors finished batches (the submitted tasks of those actors). Task states reach
# the state API within a second or so of the run; waits for both nodes to appear.
WHERE = """
import json, sys, time, ray
from ray.util import state
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = {n["NodeID"]: "node2" if "node2" in n["Resources"] else "head" for n in ray.nodes()}
def ours(name):
    return name.startswith("MapWorker(") and "EngineReplica" in name
deadline = time.monotonic() + 60
while True:
    actors = [a for a in state.list_actors(sys.argv[1], detail=True, limit=10_000,
              raise_on_missing_output=False) if ours(a.class_name)]
    tasks = [t for t in state.list_tasks(sys.argv[1], detail=True, limit=10_000,
             raise_on_missing_output=False)
             if ours(t.name) and t.name.endswith(".submit") and t.state == "FINISHED"]
    ran = sorted({nodes.get(t.node_id, t.node_id) for t in tasks if t.node_id})
    if len(ran) == 2 or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps({"actors": sorted(nodes.get(a.node_id, str(a.node_id)) for a in actors),
                  "ran": ran, "batches": len(tasks)}))
"""


@pytest.fixture(scope="module")
def two_nodes():
    # A short temp dir: Ray's socket paths live under it (107 characters at most).
    temp = tempfile.mkdtemp(prefix="tfb", dir="/tmp")
    env = cluster_env()
    address = f"{node_ip()}:{free_port()}"
    nodes: list[Node] = []
    try:
        nodes.append(Node([
            "--head", f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=3",
            f"--temp-dir={temp}", "--include-dashboard=true",  # the state API's server
            f"--dashboard-port={free_port()}", f"--metrics-export-port={free_port()}",
        ], env))  # fmt: skip
        nodes.append(Node([
            f"--address={address}", "--num-cpus=2", '--resources={"node2": 1}',
            f"--metrics-export-port={free_port()}",  # one machine: a port of its own
        ], env))  # fmt: skip
        yield {"address": address, "env": env}
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)


def run(args: list[str], env: dict[str, str], timeout: float = 600):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def test_batch_runs_on_both_nodes_and_equals_engine_embed(
    two_nodes, tmp_path, model_dir, engine, workload_texts
):
    texts = workload_texts[:ROWS]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-P", "-m", "textfleet.cli", "batch", str(model_dir.path),
           "--input", str(data), "--output", str(out), "--id-column", "id",
           "--address", two_nodes["address"], "--concurrency", "2", "--actor-cpus", "2",
           "--threads", "1", "--batch-size", str(BATCH)]  # fmt: skip
    # Ray Data hands batches to the actors that are up; on two shared cores one actor
    # may load its engine seconds before the other and take every batch of so small
    # a run. Both up before the first batch, so the placement decides, not the race.
    env = {**two_nodes["env"], "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}
    done = run(cmd, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"batch: {ROWS} rows: {ROWS} computed" in done.stderr

    rows = read_output(out).to_pylist()
    assert [r["id"] for r in rows] == list(range(ROWS))
    assert all(r["error"] is None for r in rows)
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(texts), rtol=1e-4, atol=1e-5)

    found = run([sys.executable, "-P", "-c", WHERE, two_nodes["address"]], two_nodes["env"], 180)
    assert found.returncode == 0, found.stderr[-3000:]
    where = json.loads(found.stdout.strip().splitlines()[-1])
    assert where["actors"] == ["head", "node2"], where  # one engine replica per node
    assert where["ran"] == ["head", "node2"], where  # and each computed batches
