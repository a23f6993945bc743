"""Sentence embeddings: texts in, one pooled float32 vector per text out.

The graph returns the last hidden state; pooling and normalisation are the
batch head's (engine/heads.py), so one graph serves any pooling.
"""

from __future__ import annotations

import numpy as np

from textfleet.engine.heads import EmbeddingHead
from textfleet.engine.tasks.spec import TaskSpec, TensorSpec
from textfleet.engine.windows import pool_windows


def hidden_size(config: dict, where: str) -> int:
    return int(config["hidden_size"])


def require_pooling(info) -> str | None:
    return None if info.pooling else "pooling is required for task 'embedding' (mean, cls or max)"


def join_windows(rows, spans, prefix: int, suffix: int, info) -> np.ndarray:
    """The windows' vectors averaged, weighted by the tokens each window computed."""
    tokens = [prefix + (end - start) + suffix for start, end in spans]
    return pool_windows(np.stack(rows), tokens, info.normalize)


def predict(engine, texts, **options) -> list[str]:
    vectors = engine.embed(texts)
    return [f"vectors: shape {vectors.shape} (use `textfleet embed` for similarities)"]


TASK = TaskSpec(
    name="embedding",
    auto_class="AutoModel",
    onnx_output="last_hidden_state",
    output_rank=3,
    output_width=hidden_size,
    width_of=None,
    head=EmbeddingHead.from_info,
    methods=("embed", "aembed", "aembed_with_usage"),
    v2_outputs=(TensorSpec("embedding", "FP32", (-1, "dim")),),
    predict=predict,
    options=("pooling", "normalize"),
    check_info=require_pooling,
    pooled=True,
    join_windows=join_windows,
)
