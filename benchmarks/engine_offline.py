"""Offline embedding throughput: ``Engine.embed`` vs raw onnxruntime on the workload.

Variants, in one run, same model file, same onnxruntime settings and threads:

- ``engine``: ``Engine.embed(texts)`` end to end (tokenize, the batch former's length-aware
  batches under the token budget, collate, run, pool, normalise, reorder);
- ``raw one-at-a-time``: session.run on each text alone;
- ``raw arrival x32``: fixed batches of 32 in arrival order, padded to the longest;
- ``raw sorted x32``: batches of 32 after sorting by length: the compute limit.

The raw variants are tokenized and padded ahead; only session.run is timed.
Ratios are against ``raw sorted x32``. Target: engine >= 0.95 of it.
``cpu share`` (process CPU / (wall x threads)) shows how much of the cores a
variant got: well below 1 means other processes competed and the timing is noisy.
On a shared machine, ``--chunks K`` times engine and limit alternately on K
slices of the texts (each slice sorted within itself) so noise hits both alike.

    python -m benchmarks.engine_offline [--limit N] [--repeat R] [--chunks K] [--threads T]

Writes benchmarks/results/engine_offline.json (``--name`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common import (
    Measured,
    ensure_model_dir,
    load_texts,
    machine_info,
    measure,
    table,
    write_results,
)
from textfleet.engine import Engine
from textfleet.engine.backends.base import physical_cores
from textfleet.engine.config import BatchingConfig

LIMIT_VARIANT = "raw sorted x32"


def raw_session(onnx_path: Path, threads: int) -> ort.InferenceSession:
    """The baseline: a plain session with the settings the engine's backend uses."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def feeds_for(seqs, groups: list[np.ndarray], inputs: list[str]) -> list[dict]:
    out = []
    for idx in groups:
        batch = seqs.collate(idx)
        out.append({name: getattr(batch, name) for name in inputs})
    return out


def sorted_groups(lengths: np.ndarray, batch_size: int, offset: int = 0) -> list[np.ndarray]:
    by_length = np.argsort(lengths, kind="stable") + offset
    return [by_length[s : s + batch_size] for s in range(0, len(by_length), batch_size)]


def slow_plans(n: int, batch_size: int) -> dict[str, list[np.ndarray]]:
    arrival = np.arange(n)
    return {
        "raw one-at-a-time": [np.array([i]) for i in range(n)],
        "raw arrival x32": [arrival[s : s + batch_size] for s in range(0, n, batch_size)],
    }


def padded_tokens(feeds: list[dict]) -> int:
    return int(sum(f["input_ids"].size for f in feeds))


def run_all(session, feeds: list[dict]) -> None:
    for f in feeds:
        session.run(None, f)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the exported default model")
    p.add_argument("--limit", type=int, default=None, help="only the first N workload texts")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of engine and the limit")
    p.add_argument(
        "--chunks",
        type=int,
        default=1,
        help="time engine and limit alternately on K consecutive slices of the texts "
        "(each sorted within itself), so a noisy spell on a shared machine hits both",
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per raw batch")
    p.add_argument("--max-batch-size", type=int, default=None, help="engine (default: config)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="engine (default: config)")
    p.add_argument("--skip-slow", action="store_true", help="skip one-at-a-time and arrival x32")
    p.add_argument(
        "--name", default="engine_offline", help="results file benchmarks/results/NAME.json"
    )
    return p.parse_args(argv)


def time_engine_vs_limit(engine, session, texts, limit_feeds, bounds, repeat, threads):
    """Summed wall and CPU seconds per run of each, alternating which goes first."""
    runs: dict[str, list[Measured]] = {"engine": [], LIMIT_VARIANT: []}
    for rep in range(repeat):
        totals = {name: Measured(threads) for name in runs}
        for k, ((start, end), feeds) in enumerate(zip(bounds, limit_feeds, strict=True)):
            jobs = {
                "engine": lambda s=start, e=end: engine.embed(texts[s:e]),
                LIMIT_VARIANT: lambda f=feeds: run_all(session, f),
            }
            for name in sorted(jobs, reverse=(rep + k) % 2 == 1):
                totals[name].add(measure(jobs[name], threads))
        for name in runs:
            runs[name].append(totals[name])
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or physical_cores()
    model_dir = ensure_model_dir(args.model_dir)
    texts = load_texts(args.limit)
    knobs = {"max_batch_size": args.max_batch_size, "max_batch_tokens": args.max_batch_tokens}
    batching = BatchingConfig(**{k: v for k, v in knobs.items() if v is not None})
    engine = Engine.load(model_dir, threads=threads, batching=batching)
    session = raw_session(engine.model_dir.onnx_path, threads)
    inputs = [i.name for i in session.get_inputs()]
    seqs = engine.tokenizer.tokenize(texts)  # tokenized ahead: raw variants time session.run only
    cuts = np.linspace(0, len(texts), max(1, args.chunks) + 1).astype(int)
    bounds = list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))
    limit_feeds = [
        feeds_for(seqs, sorted_groups(seqs.lengths[s:e], args.batch_size, s), inputs)
        for s, e in bounds
    ]
    plans = {} if args.skip_slow else slow_plans(len(texts), args.batch_size)
    feeds = {name: feeds_for(seqs, groups, inputs) for name, groups in plans.items()}
    print(
        f"{len(texts)} texts, {int(seqs.lengths.sum())} tokens, threads {threads}, "
        f"tokenizer {engine.tokenizer.backend}, batching {batching.max_batch_size} rows / "
        f"{batching.max_batch_tokens} tokens, {len(bounds)} chunk(s), "
        f"load {machine_info()['loadavg_1m']:.1f}",
        flush=True,
    )
    engine.embed(texts[:64])  # warm-up: first runs allocate the arena
    run_all(session, limit_feeds[0][:2])
    warm_padded = engine.stats().padded_tokens
    runs = time_engine_vs_limit(engine, session, texts, limit_feeds, bounds, args.repeat, threads)
    for name in plans:
        runs[name] = [measure(lambda name=name: run_all(session, feeds[name]), threads)]
    stats = engine.stats()
    engine.close()
    padded = {name: padded_tokens(f) for name, f in feeds.items()}
    padded[LIMIT_VARIANT] = sum(padded_tokens(f) for f in limit_feeds)
    # What the engine's batches really padded, per timed run (as its batch former formed them).
    padded["engine"] = (stats.padded_tokens - warm_padded) // args.repeat
    return report(args, texts, threads, batching, runs, padded, stats)


def report(args, texts, threads, batching, runs, padded, stats) -> int:
    def rate(ms) -> float:
        return len(texts) / statistics.median(m.wall for m in ms)

    limit = rate(runs[LIMIT_VARIANT])
    rows, variants = [], {}
    for name, ms in runs.items():
        variants[name] = {
            "seconds": [m.wall for m in ms],
            "texts_per_s": rate(ms),
            "ratio_vs_limit": rate(ms) / limit,
            "cpu_share": [m.cpu_share for m in ms],
            "padded_tokens": padded[name],
        }
        v = variants[name]
        shares = "/".join(f"{s:.2f}" for s in v["cpu_share"])
        rows.append([name, v["texts_per_s"], v["ratio_vs_limit"], shares, v["padded_tokens"]])
    print(table(rows, ["variant", "texts/s", "vs limit", "cpu share", "padded tokens"]))
    payload = {
        "benchmark": "engine_offline",
        "texts": len(texts),
        "limit": args.limit,
        "threads": threads,
        "repeat": args.repeat,
        "chunks": args.chunks,
        "batching": batching.model_dump(),
        "machine": machine_info(),
        "variants": variants,
        "engine_stats": stats.as_dict(),
        "target": "engine >= 0.95 x raw sorted x32",
    }
    print(f"wrote {write_results(args.name, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
