"""The embedding head: model outputs of one batch -> one pooled vector per sequence.

The graph of an embedding model returns the last hidden state, so pooling is
here and one ONNX file serves any pooling. Everything is vectorised numpy in
float32; padded positions never contribute (the attention mask decides).
The numerics follow sentence-transformers: the mean divides by the token
count clamped at 1e-9, max pooling fills padding with -1e9, and L2
normalisation divides by the norm clamped at 1e-12 (torch's F.normalize).

A backend may pool on its device instead (the torch backend on a GPU, where
copying the hidden state to the host costs more than the model): it then
returns ``POOLED`` with the same numerics, and the head passes it through.

A head is a small class built from the model directory's ``ModelInfo``; each
task's ``TaskSpec.head`` names its factory (engine/tasks/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from textfleet.engine.batch import Batch
    from textfleet.engine.model_dir import ModelInfo


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average of the token vectors where mask is 1. hidden [rows, width, dim]."""
    weights = mask.astype(np.float32)
    # One batched matmul ([rows, 1, width] @ [rows, width, dim]) instead of a
    # broadcast multiply that would materialise another [rows, width, dim] array.
    sums = np.matmul(weights[:, None, :], hidden)[:, 0, :]
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    return sums / counts


def cls_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The first token's vector ([CLS])."""
    return hidden[:, 0, :]


def max_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Element-wise max over real tokens."""
    masked = np.where(mask[:, :, None].astype(bool), hidden, np.float32(-1e9))
    return masked.max(axis=1)


POOLING = {"mean": mean_pool, "cls": cls_pool, "max": max_pool}

POOLED = "pooled"
"""Output name of vectors a backend already pooled, and L2-normalised when the model
directory says so, with the numerics above: float32 [rows, dim]."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


class EmbeddingHead:
    """Pooling (+ optional L2 normalisation): hidden state -> float32 [rows, dim]."""

    def __init__(self, pooling: str, normalize: bool, output: str):
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
        self.pooling = pooling
        self.normalize = normalize
        self.output = output
        self._pool = POOLING[pooling]

    @classmethod
    def from_info(cls, info: ModelInfo) -> EmbeddingHead:
        return cls(info.pooling or "mean", info.normalize, info.outputs[0])

    def __call__(self, outputs: dict[str, np.ndarray], batch: Batch) -> np.ndarray:
        if POOLED in outputs:
            return self._pooled(outputs[POOLED], batch)
        hidden = np.asarray(outputs[self.output], dtype=np.float32)
        if hidden.ndim != 3 or hidden.shape[:2] != batch.input_ids.shape:
            raise ValueError(
                f"output {self.output!r} has shape {hidden.shape}; expected "
                f"[{batch.rows}, {batch.width}, dim] for this batch"
            )
        pooled = self._pool(hidden, batch.attention_mask)
        if self.normalize:
            pooled = l2_normalize(pooled)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _pooled(self, pooled: np.ndarray, batch: Batch) -> np.ndarray:
        """A backend's ``POOLED`` output, checked and passed through."""
        if pooled.ndim != 2 or pooled.shape[0] != batch.rows:
            raise ValueError(
                f"output {POOLED!r} has shape {pooled.shape}; expected [{batch.rows}, dim] "
                "for this batch"
            )
        return np.ascontiguousarray(pooled, dtype=np.float32)
