"""``textfleet`` command line: export a model directory, embed a few texts.

    textfleet export SOURCE -o DIR [--task TASK] [--max-length N] [--safetensors] [--force]
    textfleet import-onnx FOLDER -o DIR --task TASK [--onnx-file F] [--merge-gaps]
    textfleet embed DIR "text" ["text" ...] [--backend onnxruntime] [--threads N]
    textfleet predict DIR "text" ... [--query Q] [--top-k K] [--aggregation A]

A user error (missing folder, folder without weights or tokenizer, unknown
task, broken model directory) prints one line ``textfleet: error: ...`` on
stderr and exits with status 2, like argparse's own usage errors; never a
traceback. Each subcommand is a small ``add_*`` + ``cmd_*`` pair so later
ones (config, serve) slot in beside them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.errors import EngineError

EXIT_USAGE = 2


def add_export(sub) -> None:
    from engine.export import TASK_SPECS
    from engine.tasks.entities import AGGREGATIONS

    p = sub.add_parser(
        "export", help="export a Hugging Face folder, package or recipe to a model directory"
    )
    p.add_argument(
        "source",
        help="a local Hugging Face model folder, an installed package shipping one, or a "
        "recipe name (categorium, rampart, minilm-cross-encoder; see models/recipes)",
    )
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument(
        "--task", default=None, help=f"one of: {', '.join(TASK_SPECS)} (default: embedding)"
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per sequence (default: the model's)"
    )
    p.add_argument("--safetensors", action="store_true", help="also keep the torch weights")
    p.add_argument("--name", default=None, help="model name (default: the source's)")
    p.add_argument(
        "--aggregation", choices=AGGREGATIONS, default=None,
        help="token-classification: default entity aggregation (simple)",
    )  # fmt: skip
    p.add_argument(
        "--merge-gaps", action="store_true",
        help="token-classification: merge same-type spans separated only by whitespace",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument(
        "--quantize", choices=["int8"], default=None, help="store a dynamically quantized graph"
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from models.recipes import RECIPES

    options = {
        "max_length": args.max_length, "force": args.force, "name": args.name,
        "aggregation": args.aggregation, "merge_gaps": args.merge_gaps,
        "quantize": args.quantize,
    }  # fmt: skip
    if args.source in RECIPES and not Path(args.source).exists():
        from models.recipes import build, prepare

        prepared = prepare(args.source)
        if args.task is not None and args.task != prepared.task:
            raise ValueError(
                f"--task {args.task}: recipe {args.source!r} makes a {prepared.task!r} model"
            )
        options = {k: v for k, v in options.items() if v not in (None, False) or k == "force"}
        md = build(prepared, args.output, **options)
    else:
        from engine.export import export

        task = args.task or "embedding"
        md = export(args.source, args.output, task=task, safetensors=args.safetensors, **options)
    print(describe(md, "exported"))
    return 0


def describe(md, verb: str) -> str:
    info = md.info
    extra = {
        "embedding": f"pooling {info.pooling}, normalize {info.normalize}",
        "token-classification": f"aggregation {info.aggregation}, merge_gaps {info.merge_gaps}",
    }.get(info.task, f"{info.dim} outputs")
    return (
        f"{verb} {info.name} -> {md.path}\n"
        f"  task {info.task}, dim {info.dim}, max_length {info.max_length}, {extra}, "
        f"opset {info.opset}"
    )


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed texts with a model directory and compare them")
    p.add_argument("model_dir", help="a directory written by `textfleet export`")
    p.add_argument("texts", nargs="+", help="texts to embed")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or torch")
    p.add_argument(
        "--threads", type=int, default=None, help="compute threads (default: physical cores)"
    )
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    from engine.engine import Engine

    with Engine.load(args.model_dir, backend=args.backend, threads=args.threads) as engine:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textfleet", description="Serve NLP models from a config file."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_export(sub)
    add_embed(sub)
    from engine.cli_tasks import add_task_commands  # import-onnx, predict

    add_task_commands(sub)
    from serve.cli import add_subcommands  # config, serve, status (the serving layer)

    add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return args.func(args)
    except (EngineError, OSError, ValueError) as e:
        # User errors: one line, no traceback. (EngineError covers ModelDirError,
        # ExportError, InputError; ValueError bad option values such as --backend.)
        print(f"textfleet: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
