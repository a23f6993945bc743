"""Sequence classification: logits -> probabilities -> top-k labels.

Pure numpy, and the task's ``TaskSpec``. The activation is chosen from the model's config exactly as
transformers' text-classification pipeline chooses it, so a model gives the
same scores here as there: ``regression`` -> none, multi-label or a single
logit -> sigmoid, otherwise softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from textfleet.engine.errors import InputError, ModelDirError, short_repr
from textfleet.engine.tasks.results import LabelScore
from textfleet.engine.tasks.spec import TaskSpec, TaskState, TensorSpec, per_text_lines

if TYPE_CHECKING:
    from textfleet.engine.batch import Batch
    from textfleet.engine.model_dir import ModelDir, ModelInfo

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
        raise InputError("top_k", f"must be an integer >= 1 or None, got {short_repr(top_k)}")
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


def label_count(config: Mapping, where: str) -> int:
    return len(labels_from_config(config, where))


def load_labels(md: ModelDir) -> TaskState:
    """The label names and activation; the labels must match the model's output width."""
    config = md.config()
    labels = labels_from_config(config, str(md.config_path))
    if len(labels) != md.info.dim:
        raise ModelDirError(
            f"{md.config_path}: names {len(labels)} labels but the model outputs {md.info.dim}"
        )
    return TaskState(labels, activation_for(config))


class OutputHead:
    """A head reading the graph's first output, ``labels`` values per row (or token)."""

    def __init__(self, output: str, labels: int):
        self.output = output
        self.labels = labels

    @classmethod
    def from_info(cls, info: ModelInfo):
        return cls(info.outputs[0], info.dim)


class LogitsHead(OutputHead):
    """Sequence classification and pair scoring: logits float32 [rows, labels]."""

    def __call__(self, outputs: dict[str, np.ndarray], batch: Batch) -> np.ndarray:
        logits = np.asarray(outputs[self.output], dtype=np.float32)
        if logits.shape != (batch.rows, self.labels):
            raise ValueError(
                f"output {self.output!r} has shape {list(logits.shape)}; expected "
                f"[{batch.rows}, {self.labels}] for this batch"
            )
        return logits


def predict(engine, texts, top_k: int | None = 3, **options) -> list[str]:
    return per_text_lines(texts, engine.classify(texts, top_k=top_k))


TASK = TaskSpec(
    name="classification",
    auto_class="AutoModelForSequenceClassification",
    onnx_output="logits",
    output_rank=2,
    output_width=label_count,
    width_of="labels (config.json id2label)",
    head=LogitsHead.from_info,
    methods=("classify", "aclassify"),
    v2_outputs=(TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))),
    predict=predict,
    load_state=load_labels,
)
