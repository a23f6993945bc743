"""How closely a quantized graph answers like the fp32 graph, per task.

Both graphs run through the Engine, the path that serves them, and the
figures compare what a user gets: vectors (cosine), best labels (top-1
agreement), entity spans (F1 over exact start, end and label), pair scores
(Spearman rank correlation).

Why each text also runs alone: dynamic int8 quantizes a matmul's input with
one scale for the whole padded batch, so a text's answer depends on the
texts batched with it. The reference is fp32 with each text alone; the
quantized graph is measured alone and in padded batches of mixed lengths
(padding allowed without limit, a server's worst case), and batched against
itself alone (``drift``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textfleet.engine.cpu_int8 import int8_kernels
from textfleet.engine.model_dir import ModelDir
from textfleet.engine.quantization import HEADLINE_METRIC, QualityFigures, QualityReport
from textfleet.engine.tasks.registry import get_task
from textfleet.models.check_samples import text_pairs

# Batches of every length mixed: the most padding, hence the widest activation ranges.
MIXED_BATCHING = {"max_batch_size": 32, "max_row_padding": 1_000_000, "workers": 1}

DEFAULT_THRESHOLDS = {
    "embedding": 0.99,
    "classification": 0.98,
    "token-classification": 0.98,
    "pair-scoring": 0.98,
}


class QualityError(Exception):
    """The quantized graph answers too differently from fp32; carries the report."""

    def __init__(self, report: QualityReport, task: str):
        self.report = report
        super().__init__(
            f"quality check failed: {report.metric} {report_headline(report, task):.4f} "
            f"< threshold {report.threshold} (fp32 reference; {format_report(report)})"
        )


def report_headline(report: QualityReport, task: str) -> float:
    return min(report.alone.headline(task), report.batched.headline(task))


def format_report(report: QualityReport) -> str:
    parts = []
    for name in ("alone", "batched", "drift"):
        figures = getattr(report, name).model_dump(exclude_none=True)
        parts.append(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return f"{report.texts} texts of {report.sample}; " + "; ".join(parts)


# ---------------------------------------------------------------- per task: outputs


def _embed(engine, items):
    return engine.embed(items)


def _classify(engine, items):
    return [r[0].label for r in engine.classify(items, top_k=1)]


def _entities(engine, items):
    return [{(e.start, e.end, e.label) for e in spans} for spans in engine.entities(items)]


def _score(engine, items):
    return engine.score(items, raw_scores=True)


RUNNERS: dict[str, Callable] = {
    "embedding": _embed,
    "classification": _classify,
    "token-classification": _entities,
    "pair-scoring": _score,
}


def run_alone(engine, task: str, items: Sequence) -> list:
    """Each item in a batch of its own."""
    run = RUNNERS[task]
    return [run(engine, [item])[0] for item in items]


def run_batched(engine, task: str, items: Sequence) -> list:
    return list(RUNNERS[task](engine, list(items)))


# ---------------------------------------------------------------- per task: figures


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def span_f1(ref: list[set], got: list[set]) -> float:
    """Micro F1 of predicted spans against the reference's (1.0 when both have none)."""
    tp = sum(len(r & g) for r, g in zip(ref, got, strict=True))
    n_ref, n_got = sum(map(len, ref)), sum(map(len, got))
    if n_ref == n_got == 0:
        return 1.0
    return 2 * tp / (n_ref + n_got)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        r = (np.bincount(inverse, weights=r) / counts)[inverse]
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def figures(task: str, ref: list, got: list) -> QualityFigures:
    """The figures of the task's kind of answer (from its TaskSpec): pooled vectors,
    per-token spans, pair scores, else labels."""
    spec = get_task(task)
    if spec.pooled:
        cos = cosines(ref, got)
        return QualityFigures(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()))
    if spec.ragged:
        return QualityFigures(span_f1=span_f1(ref, got))
    if spec.pairs:
        return QualityFigures(rank_correlation=spearman(np.asarray(ref), np.asarray(got)))
    agree = np.mean([r == g for r, g in zip(ref, got, strict=True)])
    return QualityFigures(top1_agreement=float(agree))


# ---------------------------------------------------------------- the check


def check_items(task: str, texts: list[str]) -> list:
    return text_pairs(texts) if get_task(task).pairs else texts


def measure(
    reference: ModelDir,
    candidate: ModelDir,
    texts: list[str],
    sample: str,
    threshold: float | None = None,
    threads: int | None = None,
) -> QualityReport:
    """Run both model directories over ``texts`` and compare (see the module docstring)."""
    from textfleet.engine.engine import Engine

    task = reference.info.task
    threshold = DEFAULT_THRESHOLDS[task] if threshold is None else threshold
    items = check_items(task, texts)
    opts = {"batching": MIXED_BATCHING, "threads": threads}
    with Engine.load(reference, **opts) as ref_engine:
        ref = run_alone(ref_engine, task, items)
    with Engine.load(candidate, **opts) as engine:
        alone = run_alone(engine, task, items)
        batched = run_batched(engine, task, items)
    report = QualityReport(
        texts=len(items),
        sample=sample,
        metric=HEADLINE_METRIC[task],
        threshold=threshold,
        passed=True,
        alone=figures(task, ref, alone),
        batched=figures(task, ref, batched),
        drift=figures(task, alone, batched),
        cpu_int8=int8_kernels(),
    )
    return report.model_copy(update={"passed": report_headline(report, task) >= threshold})
