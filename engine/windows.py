"""Windows over a long text's tokens, and joining the rows of its windows back.

Pure numpy; ``engine/overflow.py`` decides when a text needs windows and
submits them, the task modules say how their rows join (``TaskSpec.join_windows``).

Token positions here count the text's own tokens (no special tokens): a window
``(start, end)`` holds tokens ``start..end-1``, and the model sees it with the
tokenizer's special tokens around it (``prefix`` before, ``suffix`` after).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Span = tuple[int, int]


def window_spans(n: int, size: int, stride: int) -> list[Span]:
    """Windows of ``size`` tokens over ``n`` tokens, consecutive ones sharing at least
    ``stride`` tokens: as few as that allows, every one full length and spread evenly
    (the first starts at the first token, the last ends at the last), so the overlaps
    are about equal and the end of a text has as much context as its start."""
    if size < 1 or not 0 <= stride < size:
        raise ValueError(f"need 0 <= stride < size, got stride {stride} and size {size}")
    if n <= size:
        return [(0, n)]
    gaps = -(-(n - size) // (size - stride))  # steps between starts, each <= size - stride
    return [(s, s + size) for s in (round(i * (n - size) / gaps) for i in range(gaps + 1))]


def owned_spans(spans: Sequence[Span]) -> list[Span]:
    """The tokens each window speaks for: every token once, from the window where it
    is farthest from an edge; the overlap of two windows is split at its middle."""
    cuts = [(spans[k + 1][0] + spans[k][1]) // 2 for k in range(len(spans) - 1)]
    bounds = [spans[0][0], *cuts, spans[-1][1]]
    return [(bounds[k], bounds[k + 1]) for k in range(len(spans))]


def merge_token_rows(
    rows: Sequence[np.ndarray], spans: Sequence[Span], prefix: int, suffix: int
) -> np.ndarray:
    """Per-token rows of the whole text, [prefix + n + suffix, ...], from its windows'
    rows (each [prefix + window tokens + suffix, ...]): each text token's row comes from
    the window that owns it, the special tokens' rows from the first and last window."""
    n = spans[-1][1]
    first, last = rows[0], rows[-1]
    out = np.empty((prefix + n + suffix, *first.shape[1:]), dtype=first.dtype)
    out[:prefix] = first[:prefix]
    out[prefix + n :] = last[len(last) - suffix :]
    for row, (start, _), (a, b) in zip(rows, spans, owned_spans(spans), strict=True):
        out[prefix + a : prefix + b] = row[prefix + a - start : prefix + b - start]
    return out


def pool_windows(vectors: np.ndarray, tokens: Sequence[int], normalize: bool) -> np.ndarray:
    """One vector from the windows' vectors [k, dim]: their mean weighted by each
    window's tokens, L2-normalised when the model normalises its embeddings. An
    approximation of the embedding of the whole text, which the model cannot compute."""
    weights = np.asarray(tokens, dtype=np.float64)
    mean = (weights[:, None] * np.asarray(vectors, dtype=np.float64)).sum(axis=0) / weights.sum()
    if normalize:
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return mean.astype(np.float32)
