"""GPU check: the torch backend on CUDA (float16) against raw torch and against float32.

On one CUDA GPU, in one run, over the workload's first ``--limit`` texts:

- embed (all-MiniLM-L6-v2): raw torch float16 on length-sorted batches of 32
  and 256, pre-tokenized (the compute limit); the engine's backend + head
  alone on the same batches of 256 (no scheduler); ``Engine.embed`` with the
  device's default batching, with two workers, and with the CPU batching knobs.
  Each: the first pass (new shapes: kernel setup) and the best of the warm
  passes; cosine to the float32 vectors;
- tasks: classification (categorium) and pair scoring (the MiniLM
  cross-encoder on pairs (text i, text i+1)): raw torch on sorted batches of
  256 vs the engine's task method (first pass and second); errors against
  float32;
- online: closed-loop asyncio clients (1, 8, 64), one text per request,
  ``Engine.aembed`` with the default batching.

float32 references are computed in the same run with onnxruntime on the CPU
(the exported graphs). Raw torch runs before any engine loads, since loading
the torch backend on CUDA turns cuDNN's attention off process-wide.

    .venv/bin/python -m benchmarks.gpu_check [--limit 8000]
    .venv/bin/python -m benchmarks.gpu_check --device cpu --limit 50   # dry run, float32

Writes benchmarks/results/gpu_check.{json,md} (a dry run: only
gpu_check_cpu.json). Without a visible CUDA GPU (and without ``--device cpu``)
it exits with a message and measures nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import RESULTS, ensure_model_dir, load_texts, machine_info, write_results
from benchmarks.tasks import RECIPES, call, inputs_for, model_dir
from textfleet.engine import Engine

N_REF = 256  # texts compared against float32
CPU_KNOBS = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_row_padding": 16}
VARIANTS = {"default batching": None, "default, workers 2": {"workers": 2}, "CPU knobs": CPU_KNOBS}
TASKS = ("classification", "pair-scoring")
ONLINE_SHARE = {1: 1 / 40, 8: 1 / 10, 64: 3 / 8}  # clients -> requests per workload text


def first_and_best(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> dict:
    """Seconds of the first call (new shapes), then the best of ``repeat`` more."""
    walls = []
    for _ in range(1 + repeat):
        t = time.perf_counter()
        fn()
        sync()
        walls.append(time.perf_counter() - t)
    return {"first_s": walls[0], "best_s": min(walls[1:])}


def rates(wall: dict, items: int) -> dict:
    return wall | {"first_per_s": items / wall["first_s"], "best_per_s": items / wall["best_s"]}


def sorted_batches(
    engine: Engine, task: str, texts: list[str], size: int
) -> tuple[list, np.ndarray]:
    """Length-sorted collated batches of ``size`` rows and the order they hold."""
    seqs = engine.tokenizer.tokenize(*inputs_for(task, texts))
    order = np.argsort(seqs.lengths, kind="stable")
    return [seqs.collate(order[s : s + size]) for s in range(0, len(order), size)], order


def stats_delta(before, after) -> dict:
    batches = after.batches - before.batches
    padded = after.padded_tokens - before.padded_tokens
    return {
        "batches": batches,
        "mean_batch_size": (after.sequences - before.sequences) / batches if batches else 0.0,
        "padding_efficiency": (after.real_tokens - before.real_tokens) / padded if padded else 1.0,
    }


def cosine(a: np.ndarray, b: np.ndarray) -> dict:
    c = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"cosine_min": float(c.min()), "cosine_mean": float(c.mean())}


class Device:
    """torch on the device under test: float16 on CUDA, float32 on the CPU (dry run)."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.name = name
        self.dtype = torch.float16 if name == "cuda" else torch.float32

    def sync(self) -> None:
        if self.name == "cuda":
            self.torch.cuda.synchronize()

    def cudnn_attention(self) -> bool:
        return self.name == "cuda" and self.torch.backends.cuda.cudnn_sdp_enabled()

    def raw_model(self, engine: Engine):
        """The model directory's weights as plain transformers would run them."""
        import transformers

        transformers.utils.logging.disable_progress_bar()
        auto = getattr(transformers, engine.task.auto_class)
        model = auto.from_pretrained(str(engine.model_dir.path), dtype=self.dtype)
        return model.to(self.name).eval()

    def raw_pass(self, model, batches: list, names: list[str], embed: bool) -> list[np.ndarray]:
        """Inputs to the device per batch; mean pooling + normalisation there for
        embeddings, logits otherwise; results back to the host."""
        torch, out = self.torch, []
        with torch.inference_mode():
            for b in batches:
                feeds = {n: torch.from_numpy(getattr(b, n)).to(self.name) for n in names}
                result = model(**feeds)
                if embed:
                    h = result.last_hidden_state
                    m = feeds["attention_mask"].unsqueeze(-1).to(h.dtype)
                    pooled = (h * m).sum(1, dtype=torch.float32) / m.sum(1).float().clamp(min=1e-9)
                    out.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
                else:
                    out.append(result.logits.float().cpu().numpy())
        self.sync()
        return out


def env_section(dev: Device) -> dict:
    import transformers

    env = machine_info() | {
        "torch": dev.torch.__version__,
        "torch_cuda": dev.torch.version.cuda,
        "transformers": transformers.__version__,
        "device": dev.name,
        "dtype": str(dev.dtype).removeprefix("torch."),
    }
    if dev.name == "cuda":
        props = dev.torch.cuda.get_device_properties(0)
        env |= {
            "gpu": props.name,
            "gpu_capability": list(dev.torch.cuda.get_device_capability(0)),
            "gpu_mem_gib": round(props.total_memory / 2**30, 1),
        }
    return env


def embed_section(dev: Device, md, texts: list[str], repeat: int) -> dict:
    n, ref_texts = len(texts), texts[:N_REF]
    with Engine.load(md) as cpu:  # onnxruntime, float32
        ref = cpu.embed(ref_texts)
        batches = {bs: sorted_batches(cpu, "embedding", texts, bs)[0] for bs in (32, 256)}
        ref_batches, order = sorted_batches(cpu, "embedding", ref_texts, 256)
        names = list(cpu.info.inputs)
        lengths = cpu.tokenizer.tokenize(texts).lengths
        model = dev.raw_model(cpu)
    res: dict = {"texts": n, "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max())}
    res["raw_cudnn_attention"] = dev.cudnn_attention()
    for bs, b in batches.items():
        wall = first_and_best(
            lambda m=model, b=b: dev.raw_pass(m, b, names, True), repeat, dev.sync
        )
        res[f"raw torch, sorted batches of {bs}"] = rates(wall, n)
    vectors = np.empty((len(ref_texts), ref.shape[1]), dtype=np.float32)
    vectors[order] = np.concatenate(dev.raw_pass(model, ref_batches, names, True))
    res["raw torch, sorted batches of 256"] |= cosine(vectors, ref)
    del model

    with Engine.load(md, backend="torch", device=dev.name) as eng:
        res["cudnn_attention_after_engine_load"] = dev.cudnn_attention()
        res["pool_on_device"] = eng.backend.pool_on_device
        res["width_multiple"] = eng.backend.width_multiple

        def backend_and_head(b=batches[256]):
            for x in b:
                eng.head(eng.backend.run(x), x)

        wall = first_and_best(backend_and_head, repeat, dev.sync)
        res["engine backend+head, sorted batches of 256"] = rates(wall, n)
    for label, knobs in VARIANTS.items():
        with Engine.load(md, backend="torch", device=dev.name, batching=knobs) as eng:
            before = eng.stats()
            wall = first_and_best(lambda e=eng: e.embed(texts), repeat, dev.sync)
            row = rates(wall, n) | stats_delta(before, eng.stats())
            row |= {"batching": eng.batching.model_dump()} | cosine(eng.embed(ref_texts), ref)
        res[f"Engine.embed, {label}"] = row
        print(f"embed [{label}]: {row['best_per_s']:,.0f} texts/s", flush=True)
    return res


def task_outputs(eng: Engine, task: str, texts: list[str]) -> dict[str, np.ndarray]:
    """Numbers to compare with float32: all labels' probabilities and the logits
    (classification), sigmoid scores and logits (pair scoring)."""
    if task == "classification":
        rows = eng.classify(texts, top_k=None)
        probs = [[x.score for x in sorted(r, key=lambda x: x.label)] for r in rows]
        return {"probs": np.array(probs), "logits": np.asarray(eng._forward(texts))}
    pairs = list(zip(*inputs_for(task, texts), strict=True))
    return {"scores": eng.score(pairs), "logits": eng.score(pairs, raw_scores=True)}


def errors(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    out = {f"max_abs_err_{k}": float(np.abs(got[k] - ref[k]).max()) for k in ref}
    out["max_abs_ref_logit"] = float(np.abs(ref["logits"]).max())
    if "probs" in ref:
        out["top1_agree"] = float(np.mean(got["probs"].argmax(1) == ref["probs"].argmax(1)))
    return out


def task_section(dev: Device, task: str, texts: list[str]) -> dict:
    md = model_dir(RECIPES[task])
    n = len(inputs_for(task, texts)[0])
    ref_texts = texts[: N_REF + 1]  # pair scoring: N_REF pairs
    with Engine.load(md) as cpu:  # onnxruntime, float32
        ref = task_outputs(cpu, task, ref_texts)
        batches, _ = sorted_batches(cpu, task, texts, 256)
        names = list(cpu.info.inputs)
        model = dev.raw_model(cpu)
    res: dict = {"model": RECIPES[task], "items": n}
    wall = first_and_best(lambda m=model: dev.raw_pass(m, batches, names, False), 1, dev.sync)
    res["raw torch, sorted batches of 256"] = rates(wall, n)
    del model
    with Engine.load(md, backend="torch", device=dev.name) as eng:
        before = eng.stats()
        wall = first_and_best(lambda: call(eng, task, texts), 1, dev.sync)
        res["engine, default batching"] = rates(wall, n) | stats_delta(before, eng.stats())
        res["errors_vs_fp32"] = errors(task_outputs(eng, task, ref_texts), ref)
    print(f"{task}: {res['engine, default batching']['best_per_s']:,.0f}/s", flush=True)
    return res


async def closed_loop(engine: Engine, texts: list[str], clients: int) -> dict:
    """``clients`` callers, each sending its next text as soon as the last came back."""
    latency = np.zeros(len(texts))
    todo = iter(range(len(texts)))

    async def client():
        for i in todo:
            t = time.perf_counter()
            await engine.aembed([texts[i]])
            latency[i] = time.perf_counter() - t

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t
    return {
        "requests": len(texts),
        "texts_per_s": len(texts) / wall,
        "p50_ms": float(np.percentile(latency, 50) * 1e3),
        "p99_ms": float(np.percentile(latency, 99) * 1e3),
    }


def online_section(dev: Device, md, texts: list[str]) -> dict:
    res: dict = {}
    with Engine.load(md, backend="torch", device=dev.name) as eng:
        asyncio.run(closed_loop(eng, texts[:64], 8))  # warm-up
        for clients, share in ONLINE_SHARE.items():
            sub = texts[: max(2 * clients, int(len(texts) * share))]
            before = eng.stats()
            row = asyncio.run(closed_loop(eng, sub, clients)) | stats_delta(before, eng.stats())
            res[str(clients)] = row
            print(f"online {clients} clients: {row['texts_per_s']:,.0f} texts/s", flush=True)
    return res


def cell(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else ""


def markdown(payload: dict) -> str:
    env = payload["env"]
    hw = env.get("gpu", f"CPU dry run ({env['cpu']})")
    lines = [
        f"# GPU check: torch backend, {env['dtype']}, {hw}",
        "",
        f"torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}, "
        f"Python {env['python']}, {env['logical_cores']} CPUs. Workload: the first "
        f"{payload['texts']} texts of `benchmarks/data/texts.jsonl.gz` ({payload['task_texts']} "
        'for the tasks). Rates in items/s; "first" is the first pass over new batch shapes, '
        f'"best" the best of {payload["repeat"]} warm passes.',
    ]
    e = payload.get("embed")
    if e:
        lines += [
            "",
            f"## Embedding, all-MiniLM-L6-v2 (tokens mean {e['tokens_mean']:.1f}, max "
            f"{e['tokens_max']})",
            "",
            f"cuDNN attention for raw torch: {e['raw_cudnn_attention']}; after the engine "
            f"loaded: {e['cudnn_attention_after_engine_load']}. Engine: pooling on the device "
            f"{e['pool_on_device']}, batch widths rounded to {e['width_multiple']}.",
            "",
            "| variant | first | best | best / raw 256 | mean batch | pad eff | cos min |",
            "|---|---|---|---|---|---|---|",
        ]
        limit = e["raw torch, sorted batches of 256"]["best_per_s"]
        for label, r in e.items():
            if isinstance(r, dict):
                lines.append(
                    f"| {label} | {r['first_per_s']:,.0f} | {r['best_per_s']:,.0f} | "
                    f"{r['best_per_s'] / limit:.2f} | {cell(r, 'mean_batch_size', '.1f')} | "
                    f"{cell(r, 'padding_efficiency', '.3f')} | {cell(r, 'cosine_min', '.6f')} |"
                )
    if payload.get("tasks"):
        lines += [
            "",
            "## Tasks (engine with the default batching)",
            "",
            "| task | model | items | raw 256 first | raw 256 second | engine first | "
            "engine second | mean batch | error vs float32 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for task, r in payload["tasks"].items():
            raw, eng = r["raw torch, sorted batches of 256"], r["engine, default batching"]
            errs = ", ".join(f"{k} {v:.3g}" for k, v in r["errors_vs_fp32"].items())
            lines.append(
                f"| {task} | {r['model']} | {r['items']} | {raw['first_per_s']:,.0f} | "
                f"{raw['best_per_s']:,.0f} | {eng['first_per_s']:,.0f} | {eng['best_per_s']:,.0f} "
                f"| {eng['mean_batch_size']:.1f} | {errs} |"
            )
    if payload.get("online"):
        lines += [
            "",
            "## Online: closed-loop clients, one text per request (`Engine.aembed`)",
            "",
            "| clients | requests | texts/s | p50 ms | p99 ms | mean batch | pad eff |",
            "|---|---|---|---|---|---|---|",
        ]
        for clients, r in payload["online"].items():
            lines.append(
                f"| {clients} | {r['requests']} | {r['texts_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['mean_batch_size']:.1f} | {r['padding_efficiency']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=8000, help="workload texts (embed, online)")
    p.add_argument("--task-limit", type=int, default=4000, help="workload texts per task")
    p.add_argument("--repeat", type=int, default=2, help="warm passes per embedding variant")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a float32 dry run of the same steps, where no GPU is")  # fmt: skip
    p.add_argument("--sections", nargs="+", choices=["embed", "tasks", "online"],
                   default=["embed", "tasks", "online"])  # fmt: skip
    args = p.parse_args(argv)
    dev = Device(args.device)
    if args.device == "cuda" and not dev.torch.cuda.is_available():
        sys.exit(
            f"no CUDA GPU visible to torch {dev.torch.__version__} (CUDA build: "
            f"{dev.torch.version.cuda}): run this on a machine with one, or pass --device cpu "
            "for a dry run"
        )
    texts = load_texts(args.limit)
    task_texts = texts[: args.task_limit]
    payload: dict = {
        "benchmark": "gpu_check",
        "texts": len(texts),
        "task_texts": len(task_texts),
        "repeat": args.repeat,
        "env": env_section(dev),
    }
    minilm = ensure_model_dir(safetensors=True)
    if "embed" in args.sections:
        payload["embed"] = embed_section(dev, minilm, texts, args.repeat)
    if "tasks" in args.sections:
        payload["tasks"] = {task: task_section(dev, task, task_texts) for task in TASKS}
    if "online" in args.sections:
        payload["online"] = online_section(dev, minilm, texts)
    report = markdown(payload)
    print(report)
    if args.device == "cpu":  # a dry run leaves the published GPU figures alone
        print(f"wrote {write_results('gpu_check_cpu', payload)}")
        return 0
    print(f"wrote {write_results('gpu_check', payload)}")
    (RESULTS / "gpu_check.md").write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
