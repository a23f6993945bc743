"""``textfleet import-onnx`` and ``textfleet predict``: the task models on the command line.

    textfleet import-onnx FOLDER -o DIR --task token-classification [--onnx-file onnx/model.onnx]
    textfleet predict DIR "text" ["text" ...]            classify / entities / embed
    textfleet predict DIR --query "q" "doc" ["doc" ...]  pair scoring: rerank the docs

Errors follow ``engine.cli``: one ``textfleet: error:`` line, status 2.
"""

from __future__ import annotations

import argparse

from engine.tasks import TASKS
from engine.tasks.entities import AGGREGATIONS


def add_task_commands(sub) -> None:
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

    p = sub.add_parser("predict", help="run any model directory on a few texts and print results")
    p.add_argument("model_dir", help="a directory written by `textfleet export` or import-onnx")
    p.add_argument("texts", nargs="+", help="texts (documents, with --query)")
    p.add_argument("--query", default=None, help="pair scoring: rerank TEXTS against this query")
    p.add_argument("--top-k", type=int, default=3, help="classification: labels per text")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None)
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or torch")
    p.set_defaults(func=cmd_predict)


def cmd_import_onnx(args: argparse.Namespace) -> int:
    from engine.cli import describe
    from engine.import_onnx import import_onnx

    md = import_onnx(
        args.folder, args.output, args.task, onnx_file=args.onnx_file, name=args.name,
        max_length=args.max_length, aggregation=args.aggregation, merge_gaps=args.merge_gaps,
        force=args.force,
    )  # fmt: skip
    print(describe(md, "imported"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from engine.engine import Engine

    with Engine.load(args.model_dir, backend=args.backend) as engine:
        task = engine.info.task
        print(repr(engine))
        if task == "pair-scoring":
            if args.query is None:
                raise ValueError("--query: a pair-scoring model reranks TEXTS against a query")
            for r in engine.rerank(args.query, args.texts):
                print(f"{r.score:8.4f}  [{r.index}] {_short(args.texts[r.index])}")
            return 0
        if args.query is not None:
            raise ValueError(f"--query applies to pair-scoring models, not {task!r}")
        if task == "embedding":
            vectors = engine.embed(args.texts)
            print(f"vectors: shape {vectors.shape} (use `textfleet embed` for similarities)")
            return 0
        results = (
            engine.classify(args.texts, top_k=args.top_k)
            if task == "classification"
            else engine.entities(args.texts, aggregation=args.aggregation)
        )
        for text, found in zip(args.texts, results, strict=True):
            print(_short(text))
            for item in found:
                print(f"    {item.as_dict()}")
    return 0


def _short(text: str) -> str:
    return text if len(text) <= 70 else text[:67] + "..."
