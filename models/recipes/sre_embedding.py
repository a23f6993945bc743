"""Recipe: ``sre-embedding-model`` 1.0.0, a fine-tuned all-MiniLM-L6-v2.

The package (Apache-2.0) ships a sentence-transformers folder in
``sre_embedding_model/model_weights/``: the same shape as all-MiniLM-L6-v2
(6 layers, 384 wide, mean pooling, normalized) with other weights. Nothing to
convert; the folder exports as it is. Useful as a real next version of the
default model (a canary whose answers differ). Its files are located with
``importlib.util.find_spec``, never imported.

    python -m textfleet.models.recipes.sre_embedding -o artifacts/models/sre-embedding
"""

from __future__ import annotations

import sys

from textfleet.models.recipes.common import Prepared, package_dir, package_version

PACKAGE = "sre_embedding_model"
PIP_NAME = "sre-embedding-model"


def prepare() -> Prepared:
    folder = package_dir(PACKAGE, PIP_NAME) / "model_weights"
    return Prepared(
        folder, "hf-folder", "embedding", "sre-embedding",
        f"{PIP_NAME}=={package_version(PIP_NAME)}", options={"license": "Apache-2.0"},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from textfleet.models.recipes import recipe_main

    return recipe_main(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
