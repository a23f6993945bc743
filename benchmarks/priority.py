"""Request priority under load: an urgent stream's latency while low-priority clients
saturate the engine, in one process.

One engine, one text per request, closed-loop asyncio clients:

1. ``idle``: one client alone sends its stream at priority 0 (most urgent);
2. ``urgent under load``: ``--background`` clients (64) send workload texts at
   priority 9 without pause, and once they have filled the queue the same one
   client sends the same stream at priority 0;
3. ``same class under load``: as 2, the stream at the background's priority
   (what it gets without priority classes).

Reported: the stream's p50 / p99 in each, its p50 over the idle p50 (the
target: within 2x under load), and the background's texts/s while the stream
ran (what the lower class keeps).

    python -m benchmarks.priority [--background 64] [--requests 200]

Writes benchmarks/results/priority.json (``--name`` changes the stem). A smoke
run: ``--background 4 --requests 5 --ramp-s 0.05``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import numpy as np

from benchmarks.common import (
    RESULTS,
    ensure_model_dir,
    load_texts,
    machine_info,
    run_line,
    table,
    write_results,
)
from textfleet.engine import Engine

URGENT, LOW = 0, 9


async def stream(engine: Engine, texts: list[str], priority: int) -> np.ndarray:
    """One client: each text once its last one returned; latencies in seconds."""
    latencies = np.zeros(len(texts))
    for i, text in enumerate(texts):
        start = time.perf_counter()
        await engine.aembed([text], priority=priority)
        latencies[i] = time.perf_counter() - start
    return latencies


async def background(engine: Engine, texts: list[str], clients: int, done: list[int], stop):
    """``clients`` closed-loop callers at priority LOW until ``stop``; ``done[0]`` counts
    the texts they got back."""
    cycle = itertools.cycle(texts)

    async def client() -> None:
        while not stop.is_set():
            await engine.aembed([next(cycle)], priority=LOW)
            done[0] += 1

    await asyncio.gather(*(client() for _ in range(clients)))


async def under_load(engine, texts, foreground, args, priority: int) -> dict:
    """The stream at ``priority`` while the background saturates the engine."""
    stop, done = asyncio.Event(), [0]
    busy = asyncio.ensure_future(background(engine, texts, args.background, done, stop))
    await asyncio.sleep(args.ramp_s)  # the background fills the queue first
    start, before = time.perf_counter(), done[0]
    latencies = await stream(engine, foreground, priority)
    seconds, served = time.perf_counter() - start, done[0] - before
    stop.set()
    await busy
    return {"latencies": latencies, "background_texts_per_s": served / seconds}


def summary(name: str, latencies: np.ndarray, idle_p50: float | None, extra=None) -> dict:
    ms = latencies * 1e3
    p50 = float(np.percentile(ms, 50))
    out = {
        "run": name,
        "p50_ms": p50,
        "p99_ms": float(np.percentile(ms, 99)),
        "p50_over_idle": p50 / idle_p50 if idle_p50 else 1.0,
    }
    return out | (extra or {})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the exported default model")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--workers", type=int, default=None, help="batches side by side (default)")
    p.add_argument("--background", type=int, default=64, help="low-priority clients")
    p.add_argument("--requests", type=int, default=200, help="requests of the urgent stream")
    p.add_argument("--ramp-s", type=float, default=1.0, help="background alone before the stream")
    p.add_argument("--name", default="priority", help="results file name (no suffix)")
    return p.parse_args(argv)


def write_markdown(name: str, args: dict, machine: dict, runs: list[dict]) -> str:
    """The runs as a table in results/NAME.md (also returned)."""
    headers = ["run", "p50 ms", "p99 ms", "p50 / idle", "background texts/s"]
    keys = ("run", "p50_ms", "p99_ms", "p50_over_idle", "background_texts_per_s")
    text = table([[r.get(k, "") for k in keys] for r in runs], headers)
    (RESULTS / f"{name}.md").write_text(
        "# Request priority under load, in one process\n\n"
        + run_line(
            f"python -m benchmarks.priority --background {args['background']} "
            f"--requests {args['requests']}",
            machine,
        )
        + "\n\n```\n"
        + text
        + "\n```\n"
    )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    texts = load_texts(max(1000, 2 * args.requests))
    foreground, rest = texts[: args.requests], texts[args.requests :]
    options = {"threads": args.threads}
    if args.workers:
        options["batching"] = {"workers": args.workers}
    engine = Engine.load(ensure_model_dir(args.model_dir), **options)
    try:
        engine.embed(rest[:64])  # warm every width the runs will see
        for t in foreground[:16]:
            engine.embed([t])
        idle = asyncio.run(stream(engine, foreground, URGENT))
        urgent = asyncio.run(under_load(engine, rest, foreground, args, URGENT))
        same = asyncio.run(under_load(engine, rest, foreground, args, LOW))
    finally:
        engine.close()
    idle_p50 = float(np.percentile(idle * 1e3, 50))
    runs = [
        summary("idle", idle, None),
        summary("urgent under load", urgent.pop("latencies"), idle_p50, urgent),
        summary("same class under load", same.pop("latencies"), idle_p50, same),
    ]
    machine = machine_info()
    path = write_results(args.name, {"args": vars(args), "machine": machine, "runs": runs})
    print(write_markdown(args.name, vars(args), machine, runs))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
