"""Sequence classification head: logits -> probabilities -> top-k labels.

Pure numpy. The activation is chosen from the model's config exactly as
transformers' text-classification pipeline chooses it, so a model gives the
same scores here as there: ``regression`` -> none, multi-label or a single
logit -> sigmoid, otherwise softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from textfleet.engine.errors import InputError, ModelDirError
from textfleet.engine.tasks.results import LabelScore

ACTIVATIONS = ("softmax", "sigmoid", "none")


def labels_from_config(config: Mapping, where: str = "config.json") -> list[str]:
    """Label names indexed by class id, from ``id2label`` (keys may be str, as JSON has them).

    A classifier whose labels are missing or have gaps cannot name its outputs,
    so that is a model-directory error naming the missing ids.
    """
    raw = config.get("id2label")
    if not raw:
        raise ModelDirError(f"{where}: id2label is missing; a classifier needs its label names")
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelDirError(f"{where}: id2label must map integer ids to names ({e})") from None
    n = max(by_id) + 1
    missing = sorted(set(range(n)) - set(by_id))
    if missing or min(by_id) < 0:
        raise ModelDirError(f"{where}: id2label has no name for ids {missing[:10]} (of 0..{n - 1})")
    declared = config.get("num_labels")
    if declared is not None and int(declared) != n:
        raise ModelDirError(f"{where}: num_labels is {declared} but id2label names {n} labels")
    return [by_id[i] for i in range(n)]


def activation_for(config: Mapping) -> str:
    """The activation transformers' pipeline applies for this config."""
    problem = config.get("problem_type")
    n = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or n == 1:
        return "sigmoid"
    return "softmax"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; shifted by the max so large logits cannot overflow."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    # Split by sign so exp never overflows (a float32 warning would be an error in tests).
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        return softmax(logits)
    if activation == "sigmoid":
        return sigmoid(logits)
    if activation == "none":
        return np.asarray(logits, dtype=np.float32)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_top_k(top_k: int | None) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise InputError("top_k", f"must be an integer >= 1 or None, got {top_k!r}")
    if top_k < 1:
        raise InputError("top_k", f"must be >= 1, got {top_k}")
    return int(top_k)


def top_k_labels(
    scores: np.ndarray, labels: Sequence[str], top_k: int | None = 1
) -> list[list[LabelScore]]:
    """Per row, the ``top_k`` best labels (all when None), best first.

    Ties keep class-id order (a stable sort), as the pipeline's stable
    ``sorted(..., reverse=True)`` does.
    """
    top_k = check_top_k(top_k)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be [n, {len(labels)}], got {list(scores.shape)}")
    k = scores.shape[1] if top_k is None else min(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(scores, order, axis=1)
    return [
        [
            LabelScore(labels[j], float(s))
            for j, s in zip(row_ids.tolist(), row_s.tolist(), strict=True)
        ]
        for row_ids, row_s in zip(order, picked, strict=True)
    ]
