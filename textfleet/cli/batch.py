"""``textfleet batch``: one model over a dataset, written to a directory of part files.

    textfleet batch MODEL --input data.jsonl|.csv|.parquet --output out.parquet|out.jsonl
        [--column text] [--pair-column C] [--id-column id] [--task TASK] [--config models.yaml]
        [--address HEAD:PORT | --ray] [--concurrency N] [--actor-cpus N] [--batch-size N]
        [--rows-per-part N]

MODEL is a model directory, or with ``--config`` the name of a model in that
models.yaml (its model_dir and engine settings). Without ``--address``/``--ray``
it runs in this process (textfleet/batch/local.py); with them on Ray Data
(textfleet/batch/ray_data.py). Rows that fail carry an ``error`` and are
counted at the end; the exit status is 0 either way (1 with ``--strict``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textfleet.cli.run import add_engine_options, engine_options
from textfleet.engine.tasks.entities import AGGREGATIONS
from textfleet.engine.tasks.registry import TASKS, get_task

ENGINE_FIELDS = ("backend", "device", "threads", "max_length", "on_overflow", "window", "batching")


def add_batch(sub) -> None:
    p = sub.add_parser("batch", help="run a model over a dataset file into part files")
    p.add_argument("model", help="a model directory, or a model's name with --config")
    p.add_argument("--input", required=True, help="a .jsonl (.jsonl.gz), .csv or .parquet file")
    p.add_argument(
        "--output", required=True,
        help="directory of part files to write; its suffix picks the format (.parquet, .jsonl)",
    )  # fmt: skip
    p.add_argument("--column", default="text", help="the column of texts (default: text)")
    p.add_argument(
        "--pair-column", default=None,
        help="pair scoring: the column of the second texts (documents)",
    )  # fmt: skip
    p.add_argument("--id-column", default=None, help="a column copied to the output with each row")
    p.add_argument(
        "--task", choices=list(TASKS), default=None,
        help="the task the model must have (default: the model directory's)",
    )  # fmt: skip
    p.add_argument("--config", default=None, help="models.yaml naming MODEL")
    p.add_argument("--top-k", type=int, default=1, help="classification: labels per row")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None)
    ray = p.add_argument_group("Ray Data (textfleet/batch/ray_data.py)")
    ray.add_argument("--address", default=None, help="a Ray cluster's HEAD:PORT (or 'auto')")
    ray.add_argument("--ray", action="store_true", help="run on Ray Data with a local Ray")
    ray.add_argument(
        "--concurrency", type=int, default=1, help="engine actors (replicas) on Ray Data"
    )
    ray.add_argument(
        "--actor-cpus", type=int, default=None,
        help="CPUs each actor reserves and its engine's threads (e.g. a node's cores: "
        "one replica per node); default: 1 reserved, the engine's own threads",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=512, help="rows handed to an engine at once")
    p.add_argument(
        "--rows-per-part", type=int, default=10_000,
        help="rows per output part file (local runs; a rerun skips parts already written)",
    )  # fmt: skip
    p.add_argument("--strict", action="store_true", help="exit 1 when any row has an error")
    add_engine_options(p)
    p.set_defaults(func=cmd_batch)


def resolve_model(args: argparse.Namespace) -> tuple[Path, dict]:
    """The model directory and engine settings: the argument, or its models.yaml entry,
    with the command line's engine options laid over the entry's."""
    if args.config is None:
        return Path(args.model), engine_options(args)
    from textfleet.serve.config import load_models

    try:
        entry = load_models(args.config).model(args.model)
    except KeyError as e:
        raise ValueError(f"--config {args.config}: {e.args[0]}") from None
    if entry.model_uri is not None or entry.model_dir is None:
        raise ValueError(
            f"--config {args.config}: model {args.model!r} has no local model_dir "
            "(batch runs read the directory itself, not a model_uri or versions)"
        )
    settings = entry.model_dump(include=set(ENGINE_FIELDS), exclude_none=True)
    return Path(entry.model_dir), {**settings, **engine_options(args)}


def check_task(task: str | None, info) -> None:
    if task is not None and info.task != task:
        raise ValueError(f"--task {task}: model {info.name!r} has task {info.task!r}")


def cmd_batch(args: argparse.Namespace) -> int:
    from textfleet.batch.rows import RowRunner, check_columns
    from textfleet.engine.engine import Engine
    from textfleet.engine.model_dir import ModelDir

    for name in ("batch_size", "rows_per_part", "concurrency", "top_k", "actor_cpus"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model_dir, settings = resolve_model(args)
    runner_args = {
        "column": args.column,
        "pair_column": args.pair_column,
        "id_column": args.id_column,
        "options": {"top_k": args.top_k, "aggregation": args.aggregation},
    }
    if args.address is None and not args.ray:
        from textfleet.batch.local import run_local

        with Engine.load(model_dir, settings) as engine:
            check_task(args.task, engine.info)
            summary = run_local(
                RowRunner(engine, **runner_args), args.input, args.output,
                batch_size=args.batch_size, rows_per_part=args.rows_per_part,
            )  # fmt: skip
    else:
        from textfleet.batch.ray_data import run_ray

        info = ModelDir.open(model_dir).info  # checked here, before any actor loads it
        check_task(args.task, info)
        check_columns(get_task(info.task), args.pair_column)
        columns = [c for c in (args.id_column, args.column, args.pair_column) if c]
        summary = run_ray(
            model_dir, settings, runner_args, args.input, args.output,
            concurrency=args.concurrency, actor_cpus=args.actor_cpus, batch_size=args.batch_size,
            address=args.address, input_columns=columns,
        )  # fmt: skip
    print(f"batch: {summary.line()} -> {args.output}", file=sys.stderr)
    return 1 if args.strict and summary.errors else 0
