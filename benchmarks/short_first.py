"""Shorter requests first (``batching.short_first``) against arrival order, in one process.

Two engines on the same model, one with ``short_first`` at the given value and one
at 0 (arrival order), take turns in every round on the same work:

1. ``burst``: one client sends a one-sentence request every 10 ms while
   ``--long`` requests of a long document (the model's max length) arrive at
   once; reported: the short client's worst latency per burst (what it waits
   behind the long ones), median and worst over the bursts;
2. ``saturated``: ``--clients`` closed-loop clients send workload texts, one per
   request; reported: texts/s, p50 / p99 of all requests and of the short ones
   (under 120 characters), where reordering costs the long texts most.

    python -m benchmarks.short_first [--rounds 3] [--bursts 5] [--clients 64]

Writes benchmarks/results/short_first.{json,md} (``--name`` changes the stem). A
smoke run: ``--rounds 1 --bursts 1 --requests 64 --clients 8``.
"""

from __future__ import annotations

import argparse
import asyncio
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

SHORT_TEXT = "Where is the nearest train station?"
LONG_TEXT = "The committee reviewed the quarterly figures in detail. " * 60
SHORT_CHARS = 120


async def burst(engine: Engine, longs: int) -> float:
    """The short client's worst latency (s) while ``longs`` long requests are served."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def short_client() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await engine.aembed([SHORT_TEXT])
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.01)

    client = asyncio.ensure_future(short_client())
    await asyncio.sleep(0.2)
    latencies.clear()  # only those that overlap the burst
    await asyncio.gather(*(engine.aembed([LONG_TEXT]) for _ in range(longs)))
    stop.set()
    await client
    return max(latencies)


async def saturated(engine: Engine, texts: list[str], clients: int) -> dict:
    """``clients`` closed-loop callers over ``texts``: wall time and per-text latency."""
    queue = iter(texts)
    latencies, short = [], []

    async def client() -> None:
        for text in queue:
            start = time.perf_counter()
            await engine.aembed([text])
            seconds = time.perf_counter() - start
            latencies.append(seconds)
            if len(text) < SHORT_CHARS:
                short.append(seconds)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"seconds": time.perf_counter() - start, "latencies": latencies, "short": short}


def summarize(name: str, bursts: list[float], runs: list[dict]) -> dict:
    ms = np.array([x for r in runs for x in r["latencies"]]) * 1e3
    short = np.array([x for r in runs for x in r["short"]]) * 1e3
    texts = sum(len(r["latencies"]) for r in runs)
    return {
        "engine": name,
        "burst_worst_short_ms_median": float(np.median(bursts)) * 1e3,
        "burst_worst_short_ms_max": float(np.max(bursts)) * 1e3,
        "texts_per_s": texts / sum(r["seconds"] for r in runs),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "short_p50_ms": float(np.percentile(short, 50)),
        "short_p99_ms": float(np.percentile(short, 99)),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the exported default model")
    p.add_argument("--short-first", type=float, default=1.0, help="the value set against 0")
    p.add_argument("--long", type=int, default=10, help="long requests per burst")
    p.add_argument("--bursts", type=int, default=5, help="bursts per engine and round")
    p.add_argument("--clients", type=int, default=64, help="clients of the saturated run")
    p.add_argument("--requests", type=int, default=1000, help="texts per saturated run")
    p.add_argument("--rounds", type=int, default=3, help="turns of both engines")
    p.add_argument("--name", default="short_first", help="results file name (no suffix)")
    return p.parse_args(argv)


def write_markdown(name: str, args: argparse.Namespace, machine: dict, rows: list[dict]) -> str:
    headers = [
        "engine", "burst: worst short, median ms", "max ms", "saturated texts/s",
        "p50 ms", "p99 ms", "short p50 ms", "short p99 ms",
    ]  # fmt: skip
    keys = (
        "engine", "burst_worst_short_ms_median", "burst_worst_short_ms_max", "texts_per_s",
        "p50_ms", "p99_ms", "short_p50_ms", "short_p99_ms",
    )  # fmt: skip
    text = table([[r[k] for k in keys] for r in rows], headers)
    (RESULTS / f"{name}.md").write_text(
        "# Shorter requests first vs arrival order, in one process\n\n"
        + run_line(
            f"python -m benchmarks.short_first --rounds {args.rounds} --bursts {args.bursts} "
            f"--clients {args.clients} --requests {args.requests}",
            machine,
        )
        + " Burst: a one-sentence request every "
        f"10 ms while {args.long} requests of a {len(LONG_TEXT)}-character document "
        f"arrive at once ({args.rounds * args.bursts} bursts per engine). Saturated: "
        f"{args.clients} clients, one workload text per request; short: under "
        f"{SHORT_CHARS} characters.\n\n"
        "```\n" + text + "\n```\n"
    )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    texts = load_texts(args.rounds * args.requests)
    model_dir = ensure_model_dir(args.model_dir)
    names = {f"short_first {args.short_first:g}": args.short_first, "arrival order (0)": 0.0}
    engines = {n: Engine.load(model_dir, batching={"short_first": v}) for n, v in names.items()}
    bursts: dict[str, list[float]] = {n: [] for n in names}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for engine in engines.values():  # warm every width, and the measured rate
            engine.embed([LONG_TEXT] * 4 + texts[:64])
        for r in range(args.rounds):
            chunk = texts[r * args.requests : (r + 1) * args.requests]
            order = list(names) if r % 2 == 0 else list(reversed(names))
            for name in order:
                for _ in range(args.bursts):
                    bursts[name].append(asyncio.run(burst(engines[name], args.long)))
                runs[name].append(asyncio.run(saturated(engines[name], chunk, args.clients)))
    finally:
        for engine in engines.values():
            engine.close()
    rows = [summarize(n, bursts[n], runs[n]) for n in names]
    machine = machine_info()
    path = write_results(args.name, {"args": vars(args), "machine": machine, "rows": rows})
    print(write_markdown(args.name, args, machine, rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
