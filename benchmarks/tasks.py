"""Throughput of each task through the Engine vs raw onnxruntime, and torch vs onnxruntime.

For every task model (classification: categorium; token classification:
rampart; pair scoring: the MiniLM cross-encoder) on the same workload texts,
in one run, side by side:

- ``limit``: raw onnxruntime on pre-tokenized inputs in length-sorted
  batches of 32, only ``session.run`` timed (the compute limit);
- ``engine``: the Engine's task method end to end (tokenize, batch, run,
  head: top-k labels / entity spans / scores), onnxruntime backend;
- ``torch``: the same method on the torch backend (CPU, fp32).

Pairs are (text i, text i+1) of the workload. Writes benchmarks/results/tasks.json.

    python -m benchmarks.tasks [--limit 2000] [--threads N] [--torch-limit 500]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO.parent / "shared" / "bench" / "texts.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "tasks.json"
TASKS = {
    "classification": "categorium",
    "token-classification": "rampart",
    "pair-scoring": "minilm-cross-encoder",
}


def load_texts(limit: int) -> list[str]:
    if not WORKLOAD.is_file():
        sys.exit(f"workload not found at {WORKLOAD} (expected ../shared beside the repo)")
    with WORKLOAD.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return texts[:limit]


def model_dirs() -> dict[str, Path]:
    """Each task's model directory, built once under artifacts/bench-models."""
    from models.recipes import build, prepare

    out = {}
    for task, recipe in TASKS.items():
        target = REPO / "artifacts" / "bench-models" / recipe
        if not (target / "textfleet.json").is_file():
            build(prepare(recipe), target, force=True)
        out[task] = target
    return out


def call(engine, task: str, texts: list[str]):
    if task == "classification":
        return engine.classify(texts, top_k=1)
    if task == "token-classification":
        return engine.entities(texts)
    firsts, seconds = texts[:-1], texts[1:]
    return engine.score(list(zip(firsts, seconds, strict=True)))


def n_items(task: str, texts: list[str]) -> int:
    return len(texts) - 1 if task == "pair-scoring" else len(texts)


def raw_limit(md_path: Path, task: str, texts: list[str], threads: int, batch: int = 32) -> float:
    """Items/s of bare session.run over length-sorted batches of pre-tokenized inputs."""
    import onnxruntime as ort

    from engine.tokenizer import Tokenizer

    info = json.loads((md_path / "textfleet.json").read_text())
    tok = Tokenizer.from_file(md_path / "tokenizer.json", max_length=info["max_length"])
    pairs = (texts[:-1], texts[1:]) if task == "pair-scoring" else (texts, None)
    seqs = tok.tokenize(*pairs)
    order = np.argsort(-seqs.lengths, kind="stable")
    feeds = []
    for i in range(0, len(order), batch):
        b = seqs.collate(order[i : i + batch]).as_dict()
        feeds.append({k: b[k] for k in info["inputs"]})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(md_path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    session.run(None, feeds[-1])  # warm-up
    t0 = time.perf_counter()
    for f in feeds:
        session.run(None, f)
    return len(order) / (time.perf_counter() - t0)


def engine_rate(md_path: Path, task: str, texts: list[str], backend: str, threads: int) -> float:
    from engine.engine import Engine

    with Engine.load(md_path, backend=backend, threads=threads) as engine:
        call(engine, task, texts[:64])  # warm-up
        t0 = time.perf_counter()
        call(engine, task, texts)
        return n_items(task, texts) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=2000, help="workload texts per task")
    parser.add_argument("--torch-limit", type=int, default=500, help="texts for the torch runs")
    parser.add_argument("--threads", type=int, default=None, help="compute threads")
    args = parser.parse_args(argv)
    from engine.backends.base import physical_cores

    threads = args.threads or physical_cores()
    texts = load_texts(args.limit)
    rows = []
    for task, md in model_dirs().items():
        limit = raw_limit(md, task, texts, threads)
        eng = engine_rate(md, task, texts, "onnxruntime", threads)
        small = texts[: args.torch_limit]
        ort_small = engine_rate(md, task, small, "onnxruntime", threads)
        torch_small = engine_rate(md, task, small, "torch", threads) if (md / "model.safetensors").is_file() else None
        rows.append(
            {
                "task": task, "model": TASKS[task], "items": n_items(task, texts),
                "limit_per_s": limit, "engine_per_s": eng, "engine_vs_limit": eng / limit,
                "torch_items": n_items(task, small), "ort_small_per_s": ort_small,
                "torch_per_s": torch_small,
                "torch_vs_ort": torch_small / ort_small if torch_small else None,
            }
        )  # fmt: skip
        print(format_row(rows[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": threads, "cpu": platform.processor() or platform.machine(), "texts": len(texts)}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


def format_row(r: dict) -> str:
    torch = "n/a (no weights)" if r["torch_per_s"] is None else (
        f"torch {r['torch_per_s']:.1f}/s = {r['torch_vs_ort']:.2f}x onnxruntime"
    )
    return (
        f"{r['task']:<21} {r['model']:<21} limit {r['limit_per_s']:8.1f}/s  "
        f"engine {r['engine_per_s']:8.1f}/s ({r['engine_vs_limit']:.2f} of limit)  {torch}"
    )


if __name__ == "__main__":
    sys.exit(main())
