"""What ``textfleet.json`` records about a quantized or fused graph, and how close it
answers to the fp32 graph it was made from.

Written at export time (textfleet.models.quantize, textfleet.models.quality) and
only read afterwards: the engine runs a quantized graph exactly like an fp32
one; these records exist so that a user can see, before switching, what the
quantization costs on their task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from textfleet.engine.cpu_int8 import Int8Kernels

QuantMethod = Literal["dynamic", "static"]

# The one figure per task the quality check compares with its threshold.
HEADLINE_METRIC = {
    "embedding": "cosine_min",
    "classification": "top1_agreement",
    "token-classification": "span_f1",
    "pair-scoring": "rank_correlation",
}


class Quantization(BaseModel):
    """How the graph's matmuls were quantized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: QuantMethod
    """dynamic: int8 per-channel weights, uint8 activations quantized per run with one scale
    per tensor over the whole padded batch. static: int8 weights and activations (QDQ) with
    scales fixed by calibration, so a text's output does not depend on its batch."""
    keep_fp32: tuple[str, ...] = ()
    """Graph nodes left in fp32 because they were measured to be the most sensitive."""
    calibration_texts: int = Field(0, ge=0)
    """Texts the static scales (and the sensitivity ranking, the smoothing) were measured on."""
    smooth: float | None = None
    """SmoothQuant alpha: the LayerNorm outputs' channels were divided by per-channel
    factors (folded into the weights that read them) before quantizing; None: not smoothed."""
    reduce_range: bool = False
    """Weights quantized to 7 bits instead of 8: a little coarser, but their products'
    pairwise sums cannot saturate on x86 CPUs without VNNI (engine/cpu_int8.py)."""


class QualityFigures(BaseModel):
    """A quantized graph's answers against the fp32 graph's, over the check texts.
    Only the figures of the model's task are set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cosine_min: float | None = None
    """embedding: the lowest cosine between a text's vector and the reference's."""
    cosine_mean: float | None = None
    top1_agreement: float | None = None
    """classification: share of texts whose best label is the reference's."""
    span_f1: float | None = None
    """token-classification: F1 of the entity spans (exact start, end and label)."""
    rank_correlation: float | None = None
    """pair-scoring: Spearman correlation of the pair scores."""

    def headline(self, task: str) -> float:
        value = getattr(self, HEADLINE_METRIC[task])
        assert value is not None, f"no {HEADLINE_METRIC[task]} figure for task {task}"
        return value


class QualityReport(BaseModel):
    """The export's quality check (``textfleet export --quantize int8 --check``).

    The reference is the fp32 graph of the same export, each text run alone.
    ``alone``: the quantized graph, each text alone (a batch of 1). ``batched``: the
    quantized graph in padded batches of mixed lengths, as a busy server forms them.
    ``drift``: the quantized graph batched against itself alone: how much a text's
    answer depends on the texts it shares a batch with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    texts: int = Field(ge=1)
    """How many texts (pairs, for pair scoring) the figures are over."""
    sample: str
    """Where the texts came from."""
    metric: str
    """The figure compared with ``threshold``: the lower of its alone and batched values."""
    threshold: float
    passed: bool
    alone: QualityFigures
    batched: QualityFigures
    drift: QualityFigures
    cpu_int8: Int8Kernels | None = None
    """The int8 kernels of the CPU the figures were measured on (engine/cpu_int8.py):
    without VNNI an 8-bit graph answers further from fp32. None: not recorded."""
