"""Engine heads of the non-embedding tasks: one batch's outputs -> one item per row.

They do only what needs the batch (its shape, its attention mask); what
needs the whole request (top-k labels, entity spans with the text's offsets,
ranking) runs after the rows are back in input order (engine/tasks/api.py).
"""

from __future__ import annotations

import numpy as np

from textfleet.engine.batch import Batch
from textfleet.engine.model_dir import ModelInfo
from textfleet.engine.tasks.classification import softmax


def _output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(outputs[name], dtype=np.float32)


class LogitsHead:
    """Sequence classification and pair scoring: logits float32 [rows, labels]."""

    def __init__(self, output: str, labels: int):
        self.output = output
        self.labels = labels

    @classmethod
    def from_info(cls, info: ModelInfo) -> LogitsHead:
        return cls(info.outputs[0], info.dim)

    def __call__(self, outputs: dict[str, np.ndarray], batch: Batch) -> np.ndarray:
        logits = _output(outputs, self.output)
        if logits.shape != (batch.rows, self.labels):
            raise ValueError(
                f"output {self.output!r} has shape {list(logits.shape)}; expected "
                f"[{batch.rows}, {self.labels}] for this batch"
            )
        return logits


class TokenProbsHead:
    """Token classification: per row, label probabilities [tokens, labels] of its real tokens."""

    def __init__(self, output: str, labels: int):
        self.output = output
        self.labels = labels

    @classmethod
    def from_info(cls, info: ModelInfo) -> TokenProbsHead:
        return cls(info.outputs[0], info.dim)

    def __call__(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = _output(outputs, self.output)
        if logits.shape != (batch.rows, batch.width, self.labels):
            raise ValueError(
                f"output {self.output!r} has shape {list(logits.shape)}; expected "
                f"[{batch.rows}, {batch.width}, {self.labels}] for this batch"
            )
        probs = softmax(logits)  # one vectorised pass for the whole batch
        lengths = batch.attention_mask.sum(axis=1).tolist()  # rows are right-padded
        return [probs[r, :n] for r, n in enumerate(lengths)]


TASK_HEADS = {
    "classification": LogitsHead.from_info,
    "pair-scoring": LogitsHead.from_info,
    "token-classification": TokenProbsHead.from_info,
}
