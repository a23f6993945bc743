"""``textfleet embed`` and ``textfleet predict``: run a model directory on a few texts.

textfleet embed DIR "text" ["text" ...] [--backend onnxruntime] [--device cpu] [--threads N]
textfleet predict DIR "text" ["text" ...]            classify / entities / embed
textfleet predict DIR --query "q" "doc" ["doc" ...]  pair scoring: rerank the docs
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from textfleet.engine.backends import BACKENDS
from textfleet.engine.tasks.entities import AGGREGATIONS
from textfleet.engine.tasks.registry import TASKS


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed texts with a model directory and compare them")
    p.add_argument("model_dir", help="a directory written by `textfleet export`")
    p.add_argument("texts", nargs="+", help="texts to embed")
    add_engine_options(p)
    p.set_defaults(func=cmd_embed)


def add_engine_options(p) -> None:
    """Engine settings (``EngineConfig``'s fields); unset ones keep the engine's defaults."""
    p.add_argument("--backend", choices=list(BACKENDS), default=None, help="default onnxruntime")
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:<index>")
    p.add_argument(
        "--threads", type=int, default=None, help="compute threads (default: physical cores)"
    )


def engine_options(args: argparse.Namespace) -> dict:
    names = ("backend", "device", "threads")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_embed(args: argparse.Namespace) -> int:
    from textfleet.engine.engine import Engine

    with Engine.load(args.model_dir, **engine_options(args)) as engine:
        vectors = engine.embed(args.texts)
        tokens = engine.count_tokens(args.texts)
        print(f"{engine!r}")
    print(f"vectors: shape {vectors.shape}, dtype {vectors.dtype}")
    print(format_similarities(args.texts, vectors, tokens))
    return 0


def format_similarities(texts: Sequence[str], vectors: np.ndarray, tokens: Sequence[int]) -> str:
    """A numbered list of the texts and their pairwise cosine similarity matrix."""
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    unit = vectors / norms
    sims = unit @ unit.T
    lines = [
        f"[{i}] ({n} tokens) {t if len(t) <= 70 else t[:67] + '...'}"
        for i, (t, n) in enumerate(zip(texts, tokens, strict=True))
    ]
    lines.append("cosine similarity:")
    lines.append("      " + "".join(f"{f'[{j}]':>8}" for j in range(len(texts))))
    for i, row in enumerate(sims):
        lines.append(f"{f'[{i}]':>6}" + "".join(f"{v:8.4f}" for v in row))
    return "\n".join(lines)


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run any model directory on a few texts and print results")
    p.add_argument("model_dir", help="a directory written by `textfleet export` or import-onnx")
    p.add_argument("texts", nargs="+", help="texts (documents, with --query)")
    p.add_argument("--query", default=None, help="pair scoring: rerank TEXTS against this query")
    p.add_argument("--top-k", type=int, default=3, help="classification: labels per text")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None)
    add_engine_options(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from textfleet.engine.engine import Engine

    with Engine.load(args.model_dir, **engine_options(args)) as engine:
        print(repr(engine))
        if args.query is not None and not engine.task.pairs:
            pairs = ", ".join(t.name for t in TASKS.values() if t.pairs)
            raise ValueError(f"--query applies to {pairs} models, not {engine.info.task!r}")
        options = {"query": args.query, "top_k": args.top_k, "aggregation": args.aggregation}
        for line in engine.task.predict(engine, args.texts, **options):
            print(line)
    return 0
