"""Quantize a staged model directory's graph, measured against its fp32 graph.

Called by ``export`` once the fp32 graph, tokenizer and config are written
into the staging folder. The fp32 graph is kept aside as the reference; the
quantized graph replaces it. With ``check`` (implied by ``keep_fp32="auto"``)
both run over the check texts (textfleet.models.quality) and the export is
refused, figures in the message, when the task's figure is below the threshold.

``keep_fp32``: N keeps the N most sensitive matmuls in fp32 (ranked by
textfleet.models.sensitivity on calibration texts); ``auto`` tries 0, 1, 2, 4, ...,
then bisects between the last count that failed and the first that passed,
and keeps the fewest that pass the check.

``smooth`` (an alpha in (0, 1)): before quantizing (and before ranking
sensitivity), the fp32 graph's LayerNorm outputs are smoothed on the
calibration texts (textfleet.models.smooth), an exact rewrite that moves their
outlier channels' range into the weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from textfleet.engine.model_dir import CONFIG_FILE, ONNX_FILE, TOKENIZER_FILE, ModelDir, ModelInfo
from textfleet.engine.quantization import QualityReport, Quantization
from textfleet.models.check_samples import sample_texts
from textfleet.models.quality import QualityError, check_items, measure
from textfleet.models.quantize import (
    QUANTIZATIONS,
    Feeds,
    Quantizer,
    check_keep_fp32,
    check_quantization,
    matmul_nodes,
    prepare_graph,
    workspace,
)
from textfleet.models.smooth import check_alpha, smooth_onnx

log = logging.getLogger(__name__)

# Texts run per matmul to rank sensitivity: enough to rank, few enough for ~100 matmuls.
SENSITIVITY_TEXTS = 16


def keep_counts(keep_fp32: str | int | None, nodes: int) -> list[int]:
    if keep_fp32 != "auto":
        return [min(int(keep_fp32 or 0), nodes)]
    counts, n = [0], 1
    while n < nodes:
        counts.append(n)
        n *= 2
    return [*counts, nodes]


def search_keep_count(attempt, counts: list[int]) -> tuple[int, QualityReport | None]:
    """The fewest fp32 matmuls among ``counts`` (ascending) whose attempt passes, refined by
    bisection between the last failing and the first passing count; the graph left in place
    is the chosen one. With one count, that count and its report, passed or not."""
    failed, passed = None, None
    for kept in counts:
        report = attempt(kept)
        if report is None or report.passed:
            passed = (kept, report)
            break
        failed = (kept, report)
    if passed is None:
        return failed
    if failed is None or report is None:
        return passed
    lo, hi = failed[0], passed[0]  # lo fails, hi passes
    last = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        report, last = attempt(mid), mid
        if report.passed:
            hi, passed = mid, (mid, report)
        else:
            lo = mid
    if last != passed[0]:
        attempt(passed[0])  # put the chosen graph back in place
    return passed


def staged_model_dir(path: Path, info: dict[str, Any]) -> ModelDir:
    """A ModelDir over a folder not yet sealed (no textfleet.json, no checksums)."""
    return ModelDir(path, ModelInfo(**info, checksums={ONNX_FILE: "unsealed"}))


def quantize_staged(
    staged: Path,
    info: dict[str, Any],
    mode: str,
    keep_fp32: str | int | None = None,
    check: bool = False,
    threshold: float | None = None,
    check_texts: list[str | os.PathLike] | None = None,
    threads: int | None = None,
    smooth: float | None = None,
    reduce_range: bool = False,
) -> dict[str, Any]:
    """Quantize ``staged``/model.onnx in place; return the ModelInfo fields to record
    (``quantization``, and ``quality`` when checked). Raises QualityError when the check
    fails (nothing is then left to seal)."""
    check_quantization(mode)
    keep_fp32 = check_keep_fp32(keep_fp32)
    smooth = check_alpha(smooth)
    method = QUANTIZATIONS[mode]
    check = check or keep_fp32 == "auto"
    task = info["task"]
    calibration, held_out, sample = sample_texts(check_texts)
    calibration_items = check_items(task, calibration)
    with workspace(staged) as work:
        reference = work / "fp32"
        reference.mkdir()
        os.replace(staged / ONNX_FILE, reference / ONNX_FILE)
        for name in (TOKENIZER_FILE, CONFIG_FILE):
            shutil.copyfile(staged / name, reference / name)
        ref_dir = staged_model_dir(reference, info)
        prepared = work / "prepared.onnx"
        prepare_graph(reference / ONNX_FILE, prepared)

        def feeds(items):
            return Feeds(staged / TOKENIZER_FILE, info["max_length"], info["inputs"], items)

        needs_calibration = method == "static" or keep_fp32 not in (None, 0) or smooth is not None
        calib = feeds(calibration_items) if needs_calibration else None
        if smooth is not None:
            smoothed = smooth_onnx(prepared, calib.feeds, smooth, threads)
            log.info("smoothed %d matmul inputs (alpha %s)", smoothed, smooth)
        quantizer = Quantizer(prepared, method, work, calib, reduce_range)
        nodes = matmul_nodes(prepared)
        ranking = []
        if keep_fp32 not in (None, 0):
            step = max(1, len(calibration_items) // SENSITIVITY_TEXTS)
            ranking = quantizer.sensitivity(feeds(calibration_items[::step]), threads)
            log.info("matmul sensitivity, worst first: %s", ranking[:8])

        def attempt(kept: int) -> QualityReport | None:
            quantizer.quantize(staged / ONNX_FILE, exclude=[n for n, _ in ranking[:kept]])
            if not check:
                return None
            report = measure(
                ref_dir, staged_model_dir(staged, info), held_out, sample, threshold, threads
            )
            log.info("%s keeping %d matmuls in fp32: %s", mode, kept, report)
            return report

        kept, report = search_keep_count(attempt, keep_counts(keep_fp32, len(nodes)))
        if report is not None and not report.passed:
            raise QualityError(report, task)
        excluded = [name for name, _ in ranking[:kept]]
    quantization = Quantization(
        method=method,
        keep_fp32=tuple(excluded),
        calibration_texts=len(calibration_items) if needs_calibration else 0,
        smooth=smooth,
        reduce_range=reduce_range,
    )
    return {"quantization": quantization, "quality": report}
