"""Offline batch inference: ``textfleet batch`` locally and on Ray Data vs ``Engine.embed``.

Variants, in one run, on the same workload texts (written once to a JSONL file
with ids):

- ``engine``: ``Engine.embed(texts)`` on a loaded engine, the texts in memory;
- ``batch local``: ``textfleet batch``'s local run (textfleet/batch/local.py) with
  the same loaded engine: reads the file, runs it in chunks, writes parquet parts;
- ``batch ray data``: ``textfleet batch --ray`` (textfleet/batch/ray_data.py):
  engine actors on a local Ray cluster of ``--nodes`` nodes (default 2,
  ``ray.cluster_utils.Cluster``: one raylet per node on this machine), by default
  one actor per node: each node offers ``--cpus-per-node`` logical CPUs (at
  least 2), the head one more for Ray Data's read and write tasks, and each
  actor reserves a node's worth, so no node fits a second one; the actors'
  engines split this machine's cores (threads = cores / actors). Or on the
  cluster at ``--address``. Its time includes what a run pays once: reading the
  file, starting the actors and loading an engine in each, so it needs more
  texts than the local variants to say much.

texts/s = texts / wall seconds; the ratio is against ``engine``. Target: the
local run within 10% of ``Engine.embed``; on a cluster, throughput growing with
nodes. Nodes on one machine share its cores, so the local cluster shows the cost
of Ray Data, not scaling; on real machines start Ray on each (``ray start
--head`` on one, ``ray start --address HEAD_IP:6379`` on the others, textfleet
installed on all, the model directory at the same path on every node) and run
this with ``--address HEAD_IP:6379 --actor-cpus <cores per node>``: one actor
per node by default; compare runs with 1, 2, ... nodes joined.

    python -m benchmarks.batch [--limit N] [--nodes K] [--concurrency C] [--actor-cpus N]
        [--address A] [--skip-ray]

Writes benchmarks/results/batch.{json,md} (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    ensure_model_dir,
    load_texts,
    machine_info,
    table,
    write_results,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the exported default model")
    p.add_argument("--limit", type=int, default=5000, help="the first N workload texts")
    p.add_argument("--batch-size", type=int, default=512, help="rows per engine call / block")
    p.add_argument(
        "--concurrency", type=int, default=None,
        help="Ray Data engine actors (default: one per node)",
    )  # fmt: skip
    p.add_argument(
        "--actor-cpus", type=int, default=None,
        help="CPUs each actor reserves (default: a local node's CPUs; with --address: 1, "
        "and its engine's threads too)",
    )  # fmt: skip
    p.add_argument("--nodes", type=int, default=2, help="nodes of the local Ray cluster")
    p.add_argument(
        "--cpus-per-node", type=int, default=None,
        help="logical CPUs of each local node; default: this machine's cores / nodes, at "
        "least 2 (the head gets one more: Ray Data's read and write tasks need a CPU no "
        "actor holds, or the run waits)",
    )  # fmt: skip
    p.add_argument("--address", default=None, help="an existing Ray cluster instead")
    p.add_argument("--skip-ray", action="store_true", help="only the local variants")
    p.add_argument("--name", default="batch", help="results file stem")
    return p.parse_args(argv)


def cpus_per_node(args) -> int:
    return args.cpus_per_node or max(2, (os.cpu_count() or 1) // args.nodes)


def start_ray(args) -> object | None:
    """A local Ray of ``--nodes`` nodes (returned to shut down), or the cluster at --address."""
    import ray

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
        return None
    from ray.cluster_utils import Cluster

    cpus = cpus_per_node(args)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus + 1})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=cpus)
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def main(argv=None) -> int:
    args = parse_args(argv)
    from textfleet.batch.local import run_local
    from textfleet.batch.rows import RowRunner
    from textfleet.engine.engine import Engine

    model_dir = ensure_model_dir(args.model_dir)
    texts = load_texts(args.limit)
    work = Path(tempfile.mkdtemp(prefix="tf-batch-bench"))
    data = work / "texts.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    runner_args = {"column": "text", "id_column": "id"}
    results: dict[str, dict] = {}
    try:
        with Engine.load(model_dir) as engine:
            engine.warmup()
            began = time.perf_counter()
            engine.embed(texts)
            results["engine"] = {"seconds": time.perf_counter() - began}
            runner = RowRunner(engine, **runner_args)
            began = time.perf_counter()
            summary = run_local(runner, data, work / "local.parquet", batch_size=args.batch_size)
            results["batch local"] = {"seconds": time.perf_counter() - began,
                                      "errors": summary.errors}  # fmt: skip
        if not args.skip_ray:
            import ray

            from textfleet.batch.ray_data import run_ray

            cluster = start_ray(args)
            try:
                nodes = sum(1 for n in ray.nodes() if n["Alive"])
                concurrency = args.concurrency or nodes
                actor_cpus, engine_config = args.actor_cpus, {}
                if not args.address:  # the nodes share this machine's cores
                    actor_cpus = actor_cpus or cpus_per_node(args)
                    engine_config = {"threads": max(1, (os.cpu_count() or 1) // concurrency)}
                began = time.perf_counter()
                summary = run_ray(
                    model_dir, engine_config, runner_args, data, work / "ray.parquet",
                    concurrency=concurrency, actor_cpus=actor_cpus,
                    batch_size=args.batch_size,
                    input_columns=["id", "text"],
                )  # fmt: skip
                results["batch ray data"] = {
                    "seconds": time.perf_counter() - began,
                    "errors": summary.errors,
                    "nodes": nodes,
                    "concurrency": concurrency,
                    "actor_cpus": actor_cpus,
                    "threads": engine_config.get("threads", actor_cpus),
                }
            finally:
                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results["engine"]["seconds"]
    for r in results.values():
        r["texts_per_s"] = len(texts) / r["seconds"]
        r["ratio"] = base / r["seconds"]
    headers = ["variant", "seconds", "texts/s", "vs engine"]
    rows = [[k, r["seconds"], r["texts_per_s"], r["ratio"]] for k, r in results.items()]
    print(table(rows, headers))
    payload = {
        "machine": machine_info(),
        "texts": len(texts),
        "batch_size": args.batch_size,
        "results": results,
        "target": "batch local within 10% of engine; Ray Data growing with nodes",
    }
    print(f"wrote {write_results(args.name, payload)}")
    write_markdown(args.name, payload, rows, headers)
    return 0


def write_markdown(name: str, payload: dict, rows: list, headers: list[str]) -> None:
    machine = payload["machine"]
    ray_run = payload["results"].get("batch ray data")
    where = (
        f" Ray Data: {ray_run['concurrency']} actor(s) on {ray_run['nodes']} node(s), "
        "its time including actor start and engine load."
        if ray_run
        else ""
    )
    lines = [
        "# Offline batch: `textfleet batch` locally and on Ray Data vs `Engine.embed`",
        "",
        f"{machine['cpu']}, {machine['logical_cores']} logical cores, {payload['texts']} "
        f"workload texts, batch size {payload['batch_size']}; load average at the end "
        f"{machine['loadavg_1m']:.1f}.{where}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for r in rows:
        cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in r]
        lines.append("| " + " | ".join(cells) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
