"""The ``textfleet`` command: the top layer, the one module that imports every other.

    textfleet export | import-onnx      write model directories   (textfleet/cli/build.py)
    textfleet embed | predict           run one on a few texts    (textfleet/cli/run.py)
    textfleet config | pack | serve | status   serve models.yaml  (textfleet/cli/serving.py)
    textfleet batch                     a model over a dataset    (textfleet/cli/batch.py)

A user error (missing folder, folder without weights or tokenizer, unknown
task, broken model directory, bad option value) prints one line
``textfleet: error: ...`` on stderr and exits with status 2, like argparse's
own usage errors; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from textfleet.cli import batch, build, run, serving
from textfleet.engine.errors import EngineError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textfleet", description="Serve NLP models from a config file."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build.add_export(sub)
    build.add_import_onnx(sub)
    run.add_embed(sub)
    run.add_predict(sub)
    serving.add_subcommands(sub)
    batch.add_batch(sub)
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
