"""Task throughput: each task through the Engine vs raw onnxruntime; torch vs onnxruntime.

For each task model, on the same workload texts, in one run, same threads:

- ``limit``: raw onnxruntime, inputs tokenized and padded ahead, length-sorted
  batches of 32, only ``session.run`` timed: the compute limit;
- ``engine``: the task method end to end, onnxruntime backend: tokenize,
  token-budget batches, run, head (top-1 labels / entity spans with offsets /
  sigmoid scores), results in input order;
- ``torch`` vs ``onnxruntime``: the same task method on both backends (CPU,
  float32) over the first ``--torch-limit`` texts.

Models: classification = categorium (2-layer BERT, hidden 32), token
classification = rampart (6-layer BERT, 4-bit ONNX, no torch weights: its
torch row is n/a), pair scoring = the MiniLM cross-encoder on pairs
(text i, text i+1), both segments in one sequence.

    python -m benchmarks.tasks [--limit 2000] [--torch-limit 300] [--threads T]

Writes benchmarks/results/tasks.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, load_texts, machine_info, measure, table, write_results
from benchmarks.engine_offline import raw_session, run_all
from textfleet.engine import Engine
from textfleet.engine.backends.base import physical_cores

MODELS = ROOT / "artifacts" / "models"
RECIPES = {
    "classification": "categorium",
    "token-classification": "rampart",
    "pair-scoring": "minilm-cross-encoder",
}


def model_dir(recipe: str) -> Path:
    """The recipe's model directory under artifacts/models, built once."""
    target = MODELS / recipe
    if not (target / "textfleet.json").is_file():
        from textfleet.models.recipes import build, prepare

        print(f"building {recipe} into {target} (once)", flush=True)
        build(prepare(recipe), target, force=True)
    return target


def inputs_for(task: str, texts: list[str]) -> tuple[list[str], list[str] | None]:
    if task == "pair-scoring":
        return texts[:-1], texts[1:]
    return texts, None


def call(engine: Engine, task: str, texts: list[str]):
    firsts, seconds = inputs_for(task, texts)
    if task == "classification":
        return engine.classify(firsts, top_k=1)
    if task == "token-classification":
        return engine.entities(firsts)
    return engine.score(list(zip(firsts, seconds, strict=True)))


def limit_feeds(engine: Engine, task: str, texts: list[str], batch: int = 32) -> list[dict]:
    seqs = engine.tokenizer.tokenize(*inputs_for(task, texts))
    order = np.argsort(seqs.lengths, kind="stable")
    names = engine.info.inputs
    out = []
    for s in range(0, len(order), batch):
        b = seqs.collate(order[s : s + batch])
        out.append({n: getattr(b, n) for n in names})
    return out


def bench_task(task: str, texts: list[str], threads: int, torch_limit: int, repeat: int) -> dict:
    md = model_dir(RECIPES[task])
    n = len(inputs_for(task, texts)[0])
    engine = Engine.load(md, threads=threads)
    session = raw_session(md / "model.onnx", threads)
    feeds = limit_feeds(engine, task, texts)
    # Warm-up on the widest batches: onnxruntime grows its memory arena on the
    # first pass over a new largest shape; neither variant should pay that timed.
    longest = sorted(texts, key=len)[-64:]
    call(engine, task, longest)
    run_all(session, feeds[-2:])
    runs: dict[str, list] = {"limit": [], "engine": []}
    for _ in range(repeat):  # interleaved, so a noisy spell hits both
        runs["limit"].append(measure(lambda: run_all(session, feeds), threads))
        runs["engine"].append(measure(lambda: call(engine, task, texts), threads))
    small = texts[:torch_limit]
    n_small = len(inputs_for(task, small)[0])
    runs["ort small"] = [measure(lambda: call(engine, task, small), threads)]
    engine.close()
    if (md / "model.safetensors").is_file():
        with Engine.load(md, backend="torch", threads=threads) as torch_engine:
            call(torch_engine, task, small[:32])
            runs["torch small"] = [measure(lambda: call(torch_engine, task, small), threads)]

    def rate(key: str, items: int) -> float:
        return items / statistics.median(m.wall for m in runs[key])

    row = {
        "model": RECIPES[task],
        "items": n,
        "limit_per_s": rate("limit", n),
        "engine_per_s": rate("engine", n),
        "cpu_share": {k: [round(m.cpu_share, 3) for m in v] for k, v in runs.items()},
        "torch_items": n_small,
        "ort_small_per_s": rate("ort small", n_small),
        "torch_per_s": rate("torch small", n_small) if "torch small" in runs else None,
    }
    row["engine_vs_limit"] = row["engine_per_s"] / row["limit_per_s"]
    row["torch_vs_ort"] = (
        row["torch_per_s"] / row["ort_small_per_s"] if row["torch_per_s"] else None
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=2000, help="workload texts per task")
    p.add_argument("--torch-limit", type=int, default=300, help="texts for torch vs onnxruntime")
    p.add_argument("--threads", type=int, default=None, help="compute threads")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of engine and limit")
    p.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = p.parse_args(argv)
    threads = args.threads or physical_cores()
    texts = load_texts(args.limit)
    print(f"{len(texts)} texts, threads {threads}, load {machine_info()['loadavg_1m']:.1f}")
    results = {
        task: bench_task(task, texts, threads, args.torch_limit, args.repeat) for task in args.tasks
    }
    rows = [
        [
            task, r["model"], r["items"], r["limit_per_s"], r["engine_per_s"], r["engine_vs_limit"],
            "n/a" if r["torch_vs_ort"] is None else r["torch_vs_ort"],
        ]
        for task, r in results.items()
    ]  # fmt: skip
    heads = ["task", "model", "items", "limit/s", "engine/s", "engine/limit", "torch/ort"]
    print(table(rows, heads))
    payload = {
        "benchmark": "tasks",
        "texts": len(texts),
        "threads": threads,
        "repeat": args.repeat,
        "machine": machine_info(),
        "tasks": results,
    }
    print(f"wrote {write_results('tasks', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
