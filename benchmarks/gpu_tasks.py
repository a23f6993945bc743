"""GPU check for the task models: torch fp16 (and onnxruntime CUDA if installed) vs CPU.

Run on a machine with a CUDA GPU, after the model directories exist
(``textfleet export categorium|rampart|minilm-cross-encoder -o artifacts/models/NAME``):

    python -m benchmarks.gpu_tasks [--limit 4000]

For each model with torch weights: outputs of the torch backend on ``cuda``
(float16) against onnxruntime on CPU (float32) over 256 texts (max abs error
of probabilities / sigmoid scores; identical top labels), then throughput of
the Engine's task method on cuda vs raw torch fp16 on length-sorted batches
of 32 (the compute limit), side by side. If onnxruntime has the CUDA
execution provider, the onnxruntime backend on cuda is timed too (the rampart
model, ONNX only, runs there and nowhere else on the GPU).

Writes benchmarks/results/gpu_tasks.json. Nothing here runs without a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_texts, machine_info, table, write_results
from benchmarks.tasks import RECIPES, call, inputs_for, model_dir
from textfleet.engine import Engine


def outputs(engine: Engine, task: str, texts: list[str]) -> np.ndarray:
    """Comparable numbers per task: all label probabilities / per-token maxima / scores."""
    if task == "classification":
        rows = engine.classify(texts, top_k=None)
        return np.array([[x.score for x in sorted(r, key=lambda x: x.label)] for r in rows])
    if task == "pair-scoring":
        return engine.score(list(zip(*inputs_for(task, texts), strict=True)))
    spans = engine.entities(texts, aggregation="none")
    return np.array([e.score for s in spans for e in s])


def raw_torch_rate(md: Path, task: str, texts: list[str]) -> float:
    """Items/s of the bare fp16 torch model on length-sorted batches of 32, pre-tokenized."""
    import torch
    import transformers

    engine = Engine.load(md, threads=1)
    seqs = engine.tokenizer.tokenize(*inputs_for(task, texts))
    order = np.argsort(seqs.lengths, kind="stable")
    batches = [seqs.collate(order[s : s + 32]) for s in range(0, len(order), 32)]
    auto = getattr(transformers, engine.task.auto_class)
    model = auto.from_pretrained(str(md), dtype=torch.float16).to("cuda").eval()
    names = engine.info.inputs
    feeds = [{n: torch.from_numpy(getattr(b, n)).to("cuda") for n in names} for b in batches]
    with torch.inference_mode():
        for f in feeds[:3]:
            model(**f)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for f in feeds:
            model(**f).logits.float().cpu()
        torch.cuda.synchronize()
    return len(order) / (time.perf_counter() - t0)


def engine_rate(md: Path, task: str, texts: list[str], backend: str) -> float:
    with Engine.load(md, backend=backend, device="cuda") as engine:
        call(engine, task, texts[:256])
        t0 = time.perf_counter()
        call(engine, task, texts)
        return len(inputs_for(task, texts)[0]) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    import onnxruntime as ort
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=4000)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch: nothing to check")
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    texts = load_texts(args.limit)
    results, rows = {}, []
    for task, recipe in RECIPES.items():
        md = model_dir(recipe)
        r: dict = {"model": recipe}
        if (md / "model.safetensors").is_file():
            with Engine.load(md) as cpu, Engine.load(md, backend="torch", device="cuda") as gpu:
                ref, got = outputs(cpu, task, texts[:256]), outputs(gpu, task, texts[:256])
            r["max_abs_err_fp16"] = (
                float(np.abs(ref - got).max()) if ref.shape == got.shape else None
            )
            r["raw_torch_fp16_per_s"] = raw_torch_rate(md, task, texts)
            r["engine_torch_fp16_per_s"] = engine_rate(md, task, texts, "torch")
            r["engine_vs_raw"] = r["engine_torch_fp16_per_s"] / r["raw_torch_fp16_per_s"]
        if ort_cuda:
            r["engine_ort_cuda_per_s"] = engine_rate(md, task, texts, "onnxruntime")
        results[task] = r
        rows.append([task, recipe, *(r.get(k, "n/a") for k in (
            "max_abs_err_fp16", "raw_torch_fp16_per_s", "engine_torch_fp16_per_s",
            "engine_vs_raw", "engine_ort_cuda_per_s",
        ))])  # fmt: skip
        print(rows[-1], flush=True)
    heads = ["task", "model", "fp16 err", "raw torch/s", "engine torch/s", "vs raw", "ort cuda/s"]
    print(table(rows, heads))
    payload = {
        "benchmark": "gpu_tasks",
        "texts": len(texts),
        "gpu": torch.cuda.get_device_name(0),
        "machine": machine_info(),
        "tasks": results,
    }
    print(f"wrote {write_results('gpu_tasks', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
