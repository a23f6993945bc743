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

Before each concurrency level the offline compute limit is measured on the same
texts: tokenized ahead, sorted by length, batches of 32, backend + pooling only.
Ratios use the limit measured next to them, so a noisy spell on a shared
machine hits both. Reported per run: texts/s, ratio to the limit, p50 / p99
latency, padding efficiency (real / padded tokens) and mean batch size.

    python benchmarks/engine_online.py [--requests N] [--clients 1 8 64] [--int8 DIR]

Writes benchmarks/results/engine_online.{json,md,png} (``--name`` changes the stem).
``--peers-no-spin`` gives the peers textfleet's onnxruntime thread setting, so that
only the batching differs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    ensure_model_dir,
    load_texts,
    machine_info,
    table,
    write_results,
)
from benchmarks.http_peers import PlainEmbedder  # noqa: E402
from engine import Engine  # noqa: E402
from engine.backends.base import physical_cores  # noqa: E402

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

    def summary(self) -> dict:
        return {
            "padding_efficiency": self.real / self.padded if self.padded else 1.0,
            "mean_batch_size": self.rows / self.batches if self.batches else 0.0,
        }


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


async def closed_loop(call, texts: list[str], n_requests: int, clients: int) -> dict:
    """``clients`` callers, each sending its next request when the last one returned."""
    latencies = np.zeros(n_requests)
    next_request = iter(range(n_requests))

    async def client() -> None:
        for i in next_request:
            start = time.perf_counter()
            await call(texts[i % len(texts)])
            latencies[i] = time.perf_counter() - start

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "requests": n_requests,
        "seconds": wall,
        "texts_per_s": n_requests / wall,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "cpu_share": cpu / (wall * physical_cores()),
    }


def offline_limit(engine: Engine, texts: list[str], batch_size: int = 32) -> dict:
    """Tokenized ahead, length-sorted batches of 32: backend + pooling only."""
    seqs = engine.tokenizer.tokenize(texts)
    order = np.argsort(seqs.lengths, kind="stable")
    batches = [seqs.collate(order[s : s + batch_size]) for s in range(0, len(texts), batch_size)]
    start = time.perf_counter()
    for b in batches:
        engine.head(engine.backend.run(b), b)
    wall = time.perf_counter() - start
    real = sum(b.real_tokens for b in batches)
    padded = sum(b.padded_tokens for b in batches)
    return {
        "texts_per_s": len(texts) / wall,
        "seconds": wall,
        "padding_efficiency": real / padded,
        "mean_batch_size": len(texts) / len(batches),
    }


def run_variant(name, engine, embedder, lengths, texts, n, clients) -> dict:
    tally = Tally(lengths)
    if name == "textfleet":
        before = engine.stats()

        async def call(text):
            return (await engine.aembed([text]))[0]

        result = asyncio.run(closed_loop(call, texts, n, clients))
        after = engine.stats()
        real = after["real_tokens"] - before["real_tokens"]
        padded = after["padded_tokens"] - before["padded_tokens"]
        batches = after["batches"] - before["batches"]
        rows = after["sequences"] - before["sequences"]
        result.update(padding_efficiency=real / padded, mean_batch_size=rows / batches)
        return result
    if name == "lock":
        return {
            **asyncio.run(closed_loop(LockedOneAtATime(embedder, tally), texts, n, clients)),
            **tally.summary(),
        }

    async def with_batcher():
        batcher = HandWrittenBatcher(embedder, tally)
        try:
            return await closed_loop(batcher, texts, n, clients)
        finally:
            batcher.stop()

    return {**asyncio.run(with_batcher()), **tally.summary()}


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or physical_cores()
    model_dir = ensure_model_dir(args.model_dir)
    texts = load_texts(max(args.requests, args.requests_single))
    engine = Engine.load(model_dir, threads=threads)
    int8 = Engine.load(args.int8, threads=threads) if args.int8 else None
    embedder = PlainEmbedder(str(model_dir), threads)
    if args.peers_no_spin:
        stop_spinning(embedder, Path(model_dir), threads)
    lengths = dict(zip(texts, engine.count_tokens(texts), strict=True))
    warm_up(engine, embedder, texts)
    print(f"{len(texts)} texts, threads {threads}, load {machine_info()['loadavg_1m']:.1f}")
    runs = []
    for clients in args.clients:
        n = args.requests_single if clients == 1 else args.requests
        # The limit on the same texts at every level (more texts sort better).
        limit = offline_limit(engine, texts[: args.requests])
        runs.append({"variant": "offline limit", "clients": clients, **limit})
        for name in args.variants:
            r = run_variant(name, engine, embedder, lengths, texts, n, clients)
            runs.append({"variant": name, "clients": clients, **r})
            runs[-1]["ratio_vs_limit"] = r["texts_per_s"] / limit["texts_per_s"]
            print(row_text(runs[-1]), flush=True)
        if int8 is not None:
            limit8 = offline_limit(int8, texts[: args.requests])
            runs.append({"variant": "offline limit int8", "clients": clients, **limit8})
            r = run_variant("textfleet", int8, embedder, lengths, texts, n, clients)
            runs.append({"variant": "textfleet int8", "clients": clients, **r})
            runs[-1]["ratio_vs_limit"] = r["texts_per_s"] / limit["texts_per_s"]
            print(row_text(runs[-1]), flush=True)
    engine.close()
    if int8 is not None:
        int8.close()
    return report(args, threads, runs)


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
        f"{machine['cpu']}, {threads} onnxruntime threads, load average at the end "
        f"{machine['loadavg_1m']:.1f}. Ratios are against the offline limit measured "
        "right before each client count. Peers' onnxruntime threads "
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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        pts = [r for r in runs if r["variant"] == variant and "p99_ms" in r]
        if not pts:
            continue
        ax.plot([r["texts_per_s"] for r in pts], [r["p99_ms"] for r in pts], "o-", label=variant)
        for r in pts:
            ax.annotate(f"x{r['clients']}", (r["texts_per_s"], r["p99_ms"]), fontsize=8)
    limits = [r["texts_per_s"] for r in runs if r["variant"] == "offline limit"]
    if limits:
        ax.axvline(float(np.mean(limits)), color="grey", ls="--", label="offline limit")
    ax.set_xlabel("throughput (texts/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("one text per request, closed loop")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
