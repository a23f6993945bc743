"""Pair scoring (cross-encoder) head and reranking order. Pure numpy.

A cross-encoder has one output logit per (query, document) pair. Like
sentence-transformers' ``CrossEncoder.predict`` and TEI's ``/rerank`` we
report ``sigmoid(logit)`` by default (a relevance in 0..1); ``raw_scores``
gives the logit itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textfleet.engine.errors import InputError, short_repr
from textfleet.engine.tasks.classification import sigmoid
from textfleet.engine.tasks.results import Ranked


def pair_scores(logits: np.ndarray, raw_scores: bool = False) -> np.ndarray:
    """float32 [n] scores from [n, 1] (or [n]) logits."""
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"a pair-scoring model must give one logit per pair, got {list(x.shape)}")
    return x if raw_scores else sigmoid(x)


def check_pairs(pairs: Sequence) -> tuple[list[str], list[str]]:
    """Split ``[(a, b), ...]`` into two lists; a pair with a missing side names its index."""
    if isinstance(pairs, str | bytes):
        raise InputError("pairs", "must be a list of [text, text] pairs, not a single string")
    firsts: list[str] = []
    seconds: list[str] = []
    for i, p in enumerate(pairs):
        if isinstance(p, str | bytes) or not isinstance(p, Sequence) or len(p) != 2:
            raise InputError(f"pairs[{i}]", f"must be a [text, text] pair, got {_brief(p)}")
        for side, t in enumerate(p):
            if not isinstance(t, str):
                raise InputError(f"pairs[{i}][{side}]", f"must be str, got {type(t).__name__}")
        firsts.append(p[0])
        seconds.append(p[1])
    return firsts, seconds


def check_rerank(query: str, documents: Sequence[str]) -> list[str]:
    if not isinstance(query, str):
        raise InputError("query", f"must be str, got {type(query).__name__}")
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise InputError("documents", "must be a list of str")
    if len(documents) == 0:
        raise InputError("documents", "must hold at least one document, got an empty list")
    for i, d in enumerate(documents):
        if not isinstance(d, str):
            raise InputError(f"documents[{i}]", f"must be str, got {type(d).__name__}")
    return list(documents)


def rank(scores: np.ndarray, top_k: int | None = None) -> list[Ranked]:
    """Documents best first; ties keep request order. ``top_k`` None: all."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError("top_k", f"must be an integer >= 1 or None, got {short_repr(top_k)}")
    s = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-s, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [Ranked(int(i), float(s[i])) for i in order]


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
