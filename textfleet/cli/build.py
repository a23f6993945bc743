"""``textfleet export`` and ``textfleet import-onnx``: write model directories.

    textfleet export SOURCE -o DIR [--task TASK] [--max-length N] [--safetensors] [--force]
        [--fuse] [--quantize int8|int8-static [--keep-fp32 auto|N] [--check ...]]
    textfleet import-onnx FOLDER -o DIR --task TASK [--onnx-file F] [--merge-gaps]

The build-time commands: they import the exporters (textfleet.models), which
the serving path never does.
"""

from __future__ import annotations

import argparse
import sys
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
    add_graph_options(p)
    p.set_defaults(func=cmd_export)


# Exit status of an export refused by its quality check (2 is a usage error).
EXIT_QUALITY = 3


def widths(value: str) -> list[int]:
    """``64,128,256`` -> [64, 128, 256]."""
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        message = f"expected widths like 64,128,256, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None


def keep_count(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a count >= 0, got {value!r}")
    return n


def add_graph_options(p) -> None:
    g = p.add_argument_group("graph: fusions, int8 and its quality check (models/README.md)")
    g.add_argument(
        "--fuse", action="store_true",
        help="apply onnxruntime's transformer fusions (checked equal to the unfused graph)",
    )  # fmt: skip
    g.add_argument(
        "--quantize", choices=["int8", "int8-static"], default=None,
        help="int8: dynamic (per-channel int8 weights, activations scaled per batch); "
        "int8-static: activation scales calibrated on sample texts (QDQ), batch-independent "
        "(recipe ms-marco-minilm-l12: int8 keeps its packaged int8 graph)",
    )  # fmt: skip
    g.add_argument(
        "--keep-fp32", type=keep_count, default=None, metavar="auto|N",
        help="leave the N matmuls measured most sensitive in fp32; auto: the fewest that "
        "pass the quality check (implies --check)",
    )  # fmt: skip
    g.add_argument(
        "--smooth", type=float, nargs="?", const=0.5, default=None, metavar="ALPHA",
        help="before quantizing, SmoothQuant the LayerNorm outputs (an exact fp32 rewrite "
        "that moves their outlier channels' range into the weights; alpha 0.5 if not given, "
        "fitted on the calibration texts). MiniLM, cosine min on 2,000 workload texts / the "
        "multilingual sample: int8 0.976 / 0.976, smoothed 0.985 / 0.986, smoothed with "
        "--keep-fp32 4 0.991 / 0.991",
    )  # fmt: skip
    g.add_argument(
        "--reduce-range", action="store_true",
        help="quantize weights to 7 bits: for x86 CPUs without VNNI, whose int8 kernels "
        "saturate on 8-bit weights (MiniLM smoothed, cosine min batched on such a CPU: "
        "0.958 with 8 bits, 0.984 with 7)",
    )  # fmt: skip
    g.add_argument(
        "--check", action="store_true",
        help="measure the int8 graph against fp32 (alone and batched), record the figures in "
        "textfleet.json, refuse the export (exit 3) below --check-threshold",
    )  # fmt: skip
    g.add_argument(
        "--check-threshold", type=float, default=None, metavar="X",
        help="lowest acceptable value of the task's figure: embedding cosine_min (default "
        "0.99), classification top1_agreement (0.98), token-classification span_f1 (0.98), "
        "pair-scoring rank_correlation (0.98)",
    )  # fmt: skip
    g.add_argument(
        "--check-texts", action="append", default=None, metavar="FILE",
        help="texts to calibrate and check on, one per line or JSON lines with 'text' "
        "(repeatable; even lines calibrate, odd lines check; default: models/samples/)",
    )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    options = {
        "max_length": args.max_length, "force": args.force, "name": args.name,
        "aggregation": args.aggregation, "merge_gaps": args.merge_gaps,
        "quantize": args.quantize, "keep_fp32": args.keep_fp32, "check": args.check,
        "check_threshold": args.check_threshold, "check_texts": args.check_texts,
        "fuse": args.fuse, "matryoshka_dims": args.matryoshka_dims, "smooth": args.smooth,
        "reduce_range": args.reduce_range,
    }  # fmt: skip
    from textfleet.models.quality import QualityError, format_report

    try:
        md = export_source(args, options)
    except QualityError as e:
        print(f"textfleet: export refused: {e}", file=sys.stderr)
        return EXIT_QUALITY
    print(describe(md, "exported"))
    if md.info.quality is not None:
        print(f"  quality vs fp32: {format_report(md.info.quality)}")
    return 0


def export_source(args: argparse.Namespace, options: dict):
    from textfleet.models.recipes import RECIPES, recipe_options

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
        return build(prepared, args.output, **options)
    from textfleet.models.export import export

    task = args.task or DEFAULT_TASK
    return export(args.source, args.output, task=task, safetensors=args.safetensors, **options)


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
