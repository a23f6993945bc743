"""Online embedding: closed-loop asyncio clients, one text per request, in one process.

Each client sends one workload text, waits for its vector, sends the next; a
fixed number of requests per run, at 1, 8 and 64 concurrent clients. Compared
in one run, same model file, same onnxruntime thread count:

1. ``lock``: one text at a time through onnxruntime behind a lock, each call in
   a worker thread (the plain REST-wrapper way; ``benchmarks/http_peers.py``'s
   ``PlainEmbedder``: HF ``tokenizers`` + onnxruntime + numpy pooling);
2. ``serve_batch``: the batching a Ray Serve user writes with ``@serve.batch``
   (max batch 32, 5 ms wait, arrival order, one batch at a time), reproduced
   in-process with asyncio so that only the batching policy differs from 3;
   same ``PlainEmbedder`` (pads each batch to its longest text);
3. ``textfleet``: ``await Engine.aembed([text])`` (native tokenizer and scheduler).

At each concurrency level the offline compute limit is measured on the same
texts: tokenized ahead, sorted by length, batches of 32, backend + pooling only.
The level runs in ``--rounds`` slices, each running a share of the limit's
batches and every variant on a slice of the texts (rotating their order), so
a noisy spell on a shared machine hits all of them alike. Reported per
variant: texts/s, ratio to the limit, p50 / p99 latency, padding efficiency
(real / padded tokens) and mean batch size.

    python -m benchmarks.engine_online [--requests N] [--clients 1 8 64] [--int8 DIR]

Writes benchmarks/results/engine_online.{json,md,png} (``--name`` changes the stem).
``--peers-no-spin`` gives the peers textfleet's onnxruntime thread setting, so that
only the batching differs.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS,
    ensure_model_dir,
    load_texts,
    machine_info,
    table,
    write_results,
)
from benchmarks.http_peers import PlainEmbedder
from textfleet.engine import Engine
from textfleet.engine.backends.base import physical_cores
from textfleet.engine.engine import default_workers

VARIANTS = ("lock", "serve_batch", "textfleet")


class Tally:
    """Batches a variant ran: rows and padding, from the texts' token counts."""

    def __init__(self, lengths: dict[str, int]):
        self.lengths = lengths
        self.batches = self.rows = self.real = self.padded = 0

    def add(self, texts: list[str]) -> None:
        n = [self.lengths[t] for t in texts]
        self.batches += 1
        self.rows += len(n)
        self.real += sum(n)
        self.padded += len(n) * max(n)


class LockedOneAtATime:
    """(1) every request runs alone; a lock keeps onnxruntime to one call at a time."""

    def __init__(self, embedder: PlainEmbedder, tally: Tally):
        self.embedder, self.tally = embedder, tally
        self.lock = threading.Lock()

    def _run(self, text: str) -> np.ndarray:
        with self.lock:
            self.tally.add([text])
            return self.embedder.embed([text])[0]

    async def __call__(self, text: str) -> np.ndarray:
        return await asyncio.to_thread(self._run, text)


class HandWrittenBatcher:
    """(2) ``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)``, in asyncio.

    Wait for a first request, then up to 5 ms for more until 32; run the batch
    (in a thread, so the loop keeps accepting) and start collecting the next
    one only when it is done, as Ray Serve does with one batch in flight.
    """

    def __init__(self, embedder: PlainEmbedder, tally: Tally, max_size=32, wait_s=0.005):
        self.embedder, self.tally = embedder, tally
        self.max_size, self.wait_s = max_size, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(items) < self.max_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            texts = [t for t, _ in items]
            self.tally.add(texts)
            try:
                out = await asyncio.to_thread(self.embedder.embed, texts)
            except Exception as exc:  # noqa: BLE001 - handed to every caller
                for _, fut in items:
                    fut.set_exception(exc)
                continue
            for (_, fut), row in zip(items, out, strict=True):
                fut.set_result(row)

    async def __call__(self, text: str) -> np.ndarray:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((text, fut))
        return await fut

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def closed_loop(call, texts: list[str], clients: int) -> dict:
    """``clients`` callers, each sending its next text when its last one returned."""
    latencies = np.zeros(len(texts))
    next_request = iter(range(len(texts)))

    async def client() -> None:
        for i in next_request:
            start = time.perf_counter()
            await call(texts[i])
            latencies[i] = time.perf_counter() - start

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "latencies": latencies,
        "seconds": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
    }


def sorted_batches(engine: Engine, texts: list[str], batch_size: int = 32) -> list:
    """The offline limit's input: tokenized ahead, length-sorted batches of 32."""
    seqs = engine.tokenizer.tokenize(texts)
    order = np.argsort(seqs.lengths, kind="stable")
    return [seqs.collate(order[s : s + batch_size]) for s in range(0, len(texts), batch_size)]


def offline_limit(engine: Engine, batches: list) -> dict:
    """Backend + pooling only, on ready batches."""
    start = time.perf_counter()
    for b in batches:
        engine.head(engine.backend.run(b), b)
    return {
        "seconds": time.perf_counter() - start,
        "real": sum(b.real_tokens for b in batches),
        "padded": sum(b.padded_tokens for b in batches),
        "batches": len(batches),
    }


def run_variant(name, engine, embedder, tally, texts, clients) -> dict:
    """One slice of closed-loop requests; padding counters as deltas."""
    if name.startswith("textfleet"):
        before = engine.stats()

        async def call(text):
            return (await engine.aembed([text]))[0]

        result = asyncio.run(closed_loop(call, texts, clients))
        after = engine.stats()
        result["real"] = after.real_tokens - before.real_tokens
        result["padded"] = after.padded_tokens - before.padded_tokens
        result["batches"] = after.batches - before.batches
        return result
    before = (tally.real, tally.padded, tally.batches)
    if name == "lock":
        result = asyncio.run(closed_loop(LockedOneAtATime(embedder, tally), texts, clients))
    else:

        async def with_batcher():
            batcher = HandWrittenBatcher(embedder, tally)
            try:
                return await closed_loop(batcher, texts, clients)
            finally:
                batcher.stop()

        result = asyncio.run(with_batcher())
    result["real"], result["padded"], result["batches"] = (
        tally.real - before[0],
        tally.padded - before[1],
        tally.batches - before[2],
    )
    return result


def summarize(variant: str, clients: int, parts: list[dict], n_texts: int) -> dict:
    """Slices of one variant -> throughput, latency percentiles, padding, batch size."""
    seconds = sum(p["seconds"] for p in parts)
    out = {
        "variant": variant,
        "clients": clients,
        "requests": n_texts,
        "seconds": seconds,
        "texts_per_s": n_texts / seconds,
        "padding_efficiency": sum(p["real"] for p in parts) / sum(p["padded"] for p in parts),
        "mean_batch_size": n_texts / sum(p["batches"] for p in parts),
    }
    if "latencies" in parts[0]:
        lat = np.concatenate([p["latencies"] for p in parts]) * 1e3
        out["p50_ms"] = float(np.percentile(lat, 50))
        out["p99_ms"] = float(np.percentile(lat, 99))
        out["cpu_share"] = sum(p["cpu"] for p in parts) / (seconds * physical_cores())
    return out


def stop_spinning(embedder: PlainEmbedder, model_dir: Path, threads: int) -> None:
    """Give the peers' session textfleet's setting (idle intra-op threads sleep), so
    that only the batching differs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    embedder.session = ort.InferenceSession(
        str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )


def warm_up(engine: Engine, embedder: PlainEmbedder, texts: list[str]) -> None:
    engine.embed(texts[:64])
    for t in texts[:16]:
        engine.embed([t])
        embedder.embed([t])
    embedder.embed(texts[:32])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the exported default model")
    p.add_argument("--int8", default=None, help="also run textfleet on this (int8) model dir")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument(
        "--workers", type=int, default=None, help="textfleet batches side by side (engine default)"
    )
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--requests", type=int, default=600, help="requests per run (8+ clients)")
    p.add_argument("--requests-single", type=int, default=150, help="requests with 1 client")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--peers-no-spin",
        action="store_true",
        help="run the peers' onnxruntime without spinning threads too (as textfleet does)",
    )
    p.add_argument("--name", default="engine_online", help="results file name (no suffix)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved slices per client count")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or physical_cores()
    model_dir = ensure_model_dir(args.model_dir)
    texts = load_texts(max(args.requests, args.requests_single))
    # textfleet spends the same threads its own way: `workers` batches side by
    # side on threads / workers each (the engine's default split).
    workers = args.workers = args.workers or min(default_workers("cpu"), threads)
    split = {"threads": max(1, threads // workers), "batching": {"workers": workers}}
    engines = {"textfleet": Engine.load(model_dir, **split)}
    if args.int8:
        engines["textfleet int8"] = Engine.load(args.int8, **split)
    embedder = PlainEmbedder(str(model_dir), threads)
    if args.peers_no_spin:
        stop_spinning(embedder, Path(model_dir), threads)
    lengths = dict(zip(texts, engines["textfleet"].count_tokens(texts), strict=True))
    for engine in engines.values():
        warm_up(engine, embedder, texts)
    print(f"{len(texts)} texts, threads {threads}, load {machine_info()['loadavg_1m']:.1f}")
    variants = [v for v in args.variants if v != "textfleet"] + list(engines)
    runs = []
    for clients in args.clients:
        n = args.requests_single if clients == 1 else args.requests
        runs += measure_level(args, engines, embedder, lengths, texts[:n], clients, variants)
    for engine in engines.values():
        engine.close()
    return report(args, threads, runs)


def measure_level(args, engines, embedder, lengths, texts, clients, variants) -> list[dict]:
    """All variants at one client count, in ``args.rounds`` interleaved slices (the
    order rotates each round), so that a noisy spell on a shared machine hits all."""
    parts: dict[str, list[dict]] = {v: [] for v in variants}
    limits: dict[str, list[dict]] = {name: [] for name in engines}
    # The limit sorts all the texts of this level; each round runs every R-th batch.
    batches = {name: sorted_batches(engine, texts) for name, engine in engines.items()}
    tallies = {v: Tally(lengths) for v in variants}
    rounds = max(1, min(args.rounds, len(texts) // max(1, clients)))
    step = -(-len(texts) // rounds)
    for r in range(rounds):
        chunk = texts[r * step : (r + 1) * step]
        for name, engine in engines.items():
            limits[name].append(offline_limit(engine, batches[name][r::rounds]))
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            engine = engines.get(v)
            parts[v].append(run_variant(v, engine, embedder, tallies[v], chunk, clients))
    out = []
    for name in engines:
        label = "offline limit" + name.removeprefix("textfleet")
        out.append(summarize(label, clients, limits[name], len(texts)))
    for v in variants:
        out.append(summarize(v, clients, parts[v], len(texts)))
        limit = out[0] if v != "textfleet int8" else out[1]
        out[-1]["ratio_vs_limit"] = out[-1]["texts_per_s"] / limit["texts_per_s"]
        print(row_text(out[-1]), flush=True)
    return out


def row_text(r: dict) -> str:
    return (
        f"{r['variant']:>14} x{r['clients']:<3} {r['texts_per_s']:8.1f}/s "
        f"ratio {r.get('ratio_vs_limit', 1.0):.2f} p50 {r.get('p50_ms', 0):7.1f} ms "
        f"p99 {r.get('p99_ms', 0):7.1f} ms pad {r['padding_efficiency']:.2f} "
        f"batch {r['mean_batch_size']:.1f}"
    )


HEADERS = ["variant", "clients", "texts/s", "vs limit", "p50 ms", "p99 ms", "pad eff", "batch"]


def rows_of(runs: list[dict]) -> list[list]:
    return [
        [
            r["variant"],
            r["clients"],
            round(r["texts_per_s"], 1),
            round(r.get("ratio_vs_limit", 1.0), 2),
            round(r["p50_ms"], 1) if "p50_ms" in r else "",
            round(r["p99_ms"], 1) if "p99_ms" in r else "",
            round(r["padding_efficiency"], 3),
            round(r["mean_batch_size"], 1),
        ]
        for r in runs
    ]


def ratios(runs: list[dict]) -> dict:
    """textfleet vs the others at each client count (throughput and p99)."""
    by = {(r["variant"], r["clients"]): r for r in runs}
    out = {}
    for (variant, clients), r in by.items():
        if variant != "textfleet":
            continue
        for peer in ("lock", "serve_batch"):
            if (peer, clients) in by:
                p = by[(peer, clients)]
                out[f"x{clients} throughput vs {peer}"] = r["texts_per_s"] / p["texts_per_s"]
                out[f"x{clients} p99 vs {peer}"] = r["p99_ms"] / p["p99_ms"]
                out[f"x{clients} p50 vs {peer}"] = r["p50_ms"] / p["p50_ms"]
    return out


def report(args, threads: int, runs: list[dict]) -> int:
    rows = rows_of(runs)
    print(table(rows, HEADERS))
    rel = ratios(runs)
    for k, v in rel.items():
        print(f"{k}: {v:.2f}")
    machine = machine_info()
    payload = {
        "benchmark": "engine_online",
        "threads": threads,
        "args": vars(args),
        "machine": machine,
        "runs": runs,
        "ratios": rel,
        "targets": "x64: >= 0.9 of the limit, >= 1.2x lock, >= 3x serve_batch, p99 below both; "
        "x1: p50 within 10% + 1 ms of lock",
    }
    print(f"wrote {write_results(args.name, payload)}")
    write_markdown(args, rows, rel, machine, threads)
    write_plot(args.name, runs)
    return 0


def write_markdown(args, rows, rel, machine, threads) -> None:
    lines = [
        "# Online embedding: closed-loop clients, one text per request",
        "",
        f"{machine['cpu']}, {threads} onnxruntime threads (textfleet: "
        f"{args.workers} batches side by side on them), load average at the end "
        f"{machine['loadavg_1m']:.1f}. Ratios are against the offline limit measured in "
        "the same interleaved rounds (at 1 client its batches of 32 come from 120 texts "
        "and pad poorly). Peers' onnxruntime threads "
        + ("sleep when idle, as textfleet's do." if args.peers_no_spin else "spin (its default)."),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in rel.items()]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(name: str, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Throughput as a share of the offline limit measured at the same level: on a
    # shared machine the absolute rate drifts between levels, the ratio much less.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        pts = [r for r in runs if r["variant"] == variant and "p99_ms" in r]
        if not pts:
            continue
        xs = [r["ratio_vs_limit"] for r in pts]
        ax.plot(xs, [r["p99_ms"] for r in pts], "o-", label=variant)
        for x, r in zip(xs, pts, strict=True):
            ax.annotate(f"x{r['clients']}", (x, r["p99_ms"]), fontsize=8)
    ax.axvline(1.0, color="grey", ls="--", label="offline limit")
    ax.set_xlabel("throughput / offline limit (length-sorted batches of 32)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("one text per request, closed loop: 1, 8, 64 clients")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
