"""``textfleet export`` and ``textfleet import-onnx``: write model directories.

    textfleet export SOURCE -o DIR [--task TASK] [--max-length N] [--safetensors] [--force]
    textfleet import-onnx FOLDER -o DIR --task TASK [--onnx-file F] [--merge-gaps]

The build-time commands: they import the exporters (textfleet.models), which
the serving path never does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textfleet.engine.tasks.entities import AGGREGATIONS
from textfleet.engine.tasks.registry import DEFAULT_TASK, TASKS, get_task


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a Hugging Face folder, package or recipe to a model directory"
    )
    p.add_argument(
        "source",
        help="a local Hugging Face model folder, an installed package shipping one, or a "
        "recipe name (categorium, rampart, ms-marco-minilm-l12, minilm-cross-encoder; "
        "see models/recipes)",
    )
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument(
        "--task", default=None, help=f"one of: {', '.join(TASKS)} (default: {DEFAULT_TASK})"
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
    p.add_argument(
        "--matryoshka-dims", type=widths, default=None, metavar="D,D,...",
        help="embedding: narrower widths the model was trained to be cut to (e.g. 64,128,256); "
        "requests may ask for them with `dimensions`",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument(
        "--quantize", choices=["int8"], default=None,
        help="store a dynamically quantized graph (recipe ms-marco-minilm-l12: keep the "
        "packaged int8 graph; faster, but scores move with what a pair is batched with)",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)


def widths(value: str) -> list[int]:
    """``64,128,256`` -> [64, 128, 256]."""
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        message = f"expected widths like 64,128,256, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None


def cmd_export(args: argparse.Namespace) -> int:
    from textfleet.models.recipes import RECIPES, recipe_options

    options = {
        "max_length": args.max_length, "force": args.force, "name": args.name,
        "aggregation": args.aggregation, "merge_gaps": args.merge_gaps,
        "quantize": args.quantize, "matryoshka_dims": args.matryoshka_dims,
    }  # fmt: skip
    if args.source in RECIPES and not Path(args.source).exists():
        from textfleet.models.recipes import build, prepare

        # Options the recipe takes itself (ms-marco-minilm-l12's quantize: keep the
        # packaged int8 graph) go to its preparation, the rest to the exporter.
        own = {k: options.pop(k) for k in recipe_options(args.source) if options.get(k)}
        prepared = prepare(args.source, **own)
        if args.task is not None and args.task != prepared.task:
            raise ValueError(
                f"--task {args.task}: recipe {args.source!r} makes a {prepared.task!r} model"
            )
        options = {k: v for k, v in options.items() if v not in (None, False) or k == "force"}
        md = build(prepared, args.output, **options)
    else:
        from textfleet.models.export import export

        task = args.task or DEFAULT_TASK
        md = export(args.source, args.output, task=task, safetensors=args.safetensors, **options)
    print(describe(md, "exported"))
    return 0


def describe(md, verb: str) -> str:
    info = md.info
    options = get_task(info.task).options
    extra = ", ".join(f"{o} {getattr(info, o)}" for o in options) or f"{info.dim} outputs"
    return (
        f"{verb} {info.name} -> {md.path}\n"
        f"  task {info.task}, dim {info.dim}, max_length {info.max_length}, {extra}, "
        f"opset {info.opset}"
    )


def add_import_onnx(sub) -> None:
    p = sub.add_parser(
        "import-onnx", help="make a model directory from a folder holding ONNX + tokenizer + config"
    )
    p.add_argument("folder", help="folder with a .onnx graph, tokenizer.json and config.json")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--task", required=True, choices=TASKS, help="what the model does")
    p.add_argument("--onnx-file", default=None, help="the graph, relative to FOLDER (if several)")
    p.add_argument("--name", default=None, help="model name (default: the folder's)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None)
    p.add_argument("--merge-gaps", action="store_true", help="see `textfleet export --help`")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.set_defaults(func=cmd_import_onnx)


def cmd_import_onnx(args: argparse.Namespace) -> int:
    from textfleet.models.import_onnx import import_onnx

    md = import_onnx(
        args.folder, args.output, args.task, onnx_file=args.onnx_file, name=args.name,
        max_length=args.max_length, aggregation=args.aggregation, merge_gaps=args.merge_gaps,
        force=args.force,
    )  # fmt: skip
    print(describe(md, "imported"))
    return 0
