"""Token classification (NER, PII): per-token label probabilities -> entity spans.

The batch head keeps each row's real tokens (rows are ragged); grouping the
tokens into spans with the text's offsets is entities.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from textfleet.engine.tasks.classification import OutputHead, label_count, load_labels, softmax
from textfleet.engine.tasks.entities import Vocab
from textfleet.engine.tasks.spec import TaskSpec, TaskState, TensorSpec, per_text_lines
from textfleet.engine.windows import merge_token_rows

if TYPE_CHECKING:
    from textfleet.engine.batch import Batch
    from textfleet.engine.model_dir import ModelDir


class TokenProbsHead(OutputHead):
    """Per row, label probabilities [tokens, labels] of its real tokens."""

    def __call__(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = np.asarray(outputs[self.output], dtype=np.float32)
        if logits.shape != (batch.rows, batch.width, self.labels):
            raise ValueError(
                f"output {self.output!r} has shape {list(logits.shape)}; expected "
                f"[{batch.rows}, {batch.width}, {self.labels}] for this batch"
            )
        probs = softmax(logits)  # one vectorised pass for the whole batch
        lengths = batch.attention_mask.sum(axis=1).tolist()  # rows are right-padded
        return [probs[r, :n] for r, n in enumerate(lengths)]


def load_labels_and_vocab(md: ModelDir) -> TaskState:
    state = load_labels(md)
    return TaskState(state.labels, state.activation, Vocab.from_tokenizer_json(md.tokenizer_path))


def join_windows(rows, spans, prefix: int, suffix: int, info) -> np.ndarray:
    """Per-token probabilities of the whole text: each token's from the window where it
    has the most context on both sides, so a span is grouped once, over the whole text."""
    return merge_token_rows(rows, spans, prefix, suffix)


def predict(engine, texts, aggregation: str | None = None, **options) -> list[str]:
    return per_text_lines(texts, engine.entities(texts, aggregation=aggregation))


TASK = TaskSpec(
    name="token-classification",
    auto_class="AutoModelForTokenClassification",
    onnx_output="logits",
    output_rank=3,
    output_width=label_count,
    width_of="labels (config.json id2label)",
    head=TokenProbsHead.from_info,
    ragged=True,
    methods=("entities", "aentities"),
    v2_outputs=(TensorSpec("entities", "BYTES", (-1,)),),
    predict=predict,
    load_state=load_labels_and_vocab,
    options=("aggregation", "merge_gaps"),
    join_windows=join_windows,
    default_overflow="window",
)
