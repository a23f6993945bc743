"""Pair scoring (cross-encoder): one relevance per (query, document) pair, and reranking.

A cross-encoder is a sequence classifier with one label, fed both texts as
one sequence; scoring.py turns its logit into a score and ranks documents.
"""

from __future__ import annotations

from collections.abc import Mapping

from textfleet.engine.errors import ModelDirError
from textfleet.engine.tasks.classification import LogitsHead
from textfleet.engine.tasks.spec import TaskSpec, TensorSpec, short


def one_logit(config: Mapping, where: str) -> int:
    n = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    if n != 1:
        raise ModelDirError(
            f"{where}: a pair-scoring (cross-encoder) model has one label, "
            f"this one has {n}; export it with --task classification"
        )
    return 1


def check_dim(info) -> str | None:
    if info.dim != 1:
        return f"a pair-scoring model outputs one logit (dim 1), got dim {info.dim}"
    return None


def predict(engine, texts, query: str | None = None, **options) -> list[str]:
    if query is None:
        raise ValueError("--query: a pair-scoring model reranks TEXTS against a query")
    ranked = engine.rerank(query, texts)
    return [f"{r.score:8.4f}  [{r.index}] {short(texts[r.index])}" for r in ranked]


TASK = TaskSpec(
    name="pair-scoring",
    auto_class="AutoModelForSequenceClassification",
    onnx_output="logits",
    output_rank=2,
    output_width=one_logit,
    width_of="logit",
    head=LogitsHead.from_info,
    pairs=True,
    methods=("score", "rerank", "ascore", "arerank"),
    v2_inputs=(TensorSpec("query", "BYTES", (-1,)), TensorSpec("document", "BYTES", (-1,))),
    v2_outputs=(TensorSpec("score", "FP32", (-1,)),),
    predict=predict,
    check_info=check_dim,
)
