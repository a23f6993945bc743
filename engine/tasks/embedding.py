"""Sentence embeddings: texts in, one pooled float32 vector per text out.

The graph returns the last hidden state; pooling and normalisation are the
batch head's (engine/heads.py), so one graph serves any pooling.
"""

from __future__ import annotations

import numpy as np

from textfleet.engine.errors import InputError, short_repr
from textfleet.engine.heads import EmbeddingHead, l2_normalize
from textfleet.engine.tasks.spec import TaskSpec, TensorSpec
from textfleet.engine.windows import pool_windows


def hidden_size(config: dict, where: str) -> int:
    return int(config["hidden_size"])


def require_pooling(info) -> str | None:
    return None if info.pooling else "pooling is required for task 'embedding' (mean, cls or max)"


def _either(items: list) -> str:
    """``64, 128 or 384``."""
    items = [str(x) for x in items]
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1] if items else ""]))


def widths(info) -> list[int]:
    """The embedding widths a request may ask for: the declared Matryoshka ones and dim."""
    return [*info.matryoshka_dims, info.dim]


def check_dimensions(info, dimensions: int | None) -> int | None:
    """``dimensions`` if the model serves that width (None: the full width)."""
    if dimensions is None:
        return None
    allowed = widths(info)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions not in allowed:
        raise InputError(
            "dimensions",
            f"the model gives embeddings of {_either(allowed)} dimensions, "
            f"not {short_repr(dimensions)}"
            + ("" if info.matryoshka_dims else " (no Matryoshka widths declared at export)"),
        )
    return None if dimensions == info.dim else dimensions


def shorten(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The first ``dimensions`` components of each vector, re-normalised when the
    model normalises its embeddings (a Matryoshka embedding is the truncated vector)."""
    if dimensions is None:
        return vectors
    cut = np.ascontiguousarray(vectors[:, :dimensions])
    return l2_normalize(cut) if normalize else cut


def prompt_prefix(info, prompt_name: str | None) -> str:
    """The text to put before each input: the named prompt, else the model's default."""
    if prompt_name is None:
        return info.prompts.get(info.default_prompt_name, "") if info.default_prompt_name else ""
    if not isinstance(prompt_name, str) or prompt_name not in info.prompts:
        names = _either([repr(n) for n in info.prompts]) or "none (its source declared none)"
        raise InputError(
            "prompt_name",
            f"the model has no prompt {short_repr(prompt_name)}; its prompts: {names}",
        )
    return info.prompts[prompt_name]


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
    options=("pooling", "normalize", "matryoshka_dims", "prompts", "default_prompt_name"),
    check_info=require_pooling,
    pooled=True,
    join_windows=join_windows,
)
