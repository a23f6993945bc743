"""How closely a shadow's answer matches the primary's, row by row.

Pure numpy, no Ray. An answer is first put in a canonical form by what the
call returns (``canonical``): embeddings as a float array, classification as
(label, score) of each text's best label, token classification as each
text's set of exact (start, end, label) spans, pair scoring as the request's
scores. ``compare`` then gives per-row measures, named as the metrics are:

- embeddings: ``cosine``;
- classification: ``top1_agreement`` (1 or 0) and ``score_diff`` (absolute);
- token classification: ``span_precision``, ``span_recall``, ``span_f1`` of the
  shadow's spans against the primary's (a text where both find none scores 1);
- pair scoring: ``rank_correlation`` (Spearman, one per request of two or more
  pairs) and ``top1_agreement`` (the same best document).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

Canonical = tuple[str, Any]
"""(kind, rows): kind is "vectors", "labels", "spans" or "ranking": shapes of answers,
which tasks share."""


REPLY_METHODS = ("openai_embeddings", "v1_predict", "rerank_http")
"""Gateway calls whose answer is an encoded reply (JSON), decoded to compare."""


def canonical(method: str, result: Any) -> Canonical:
    """The canonical answer of a router-forwarded call (``method``: the ModelServer
    method; ``v2_infer``, ``infer`` and ``infer_arrays`` by their output names, the
    gateway's calls from their JSON replies)."""
    if method in REPLY_METHODS:
        return _from_reply(method, result)
    if method == "embed":
        return "vectors", np.asarray(result, dtype=np.float32)
    if method == "classify":
        return "labels", [(r[0].label, float(r[0].score)) for r in result]
    if method == "entities":
        return "spans", [{(e.start, e.end, e.label) for e in spans} for spans in result]
    if method == "score":
        return "ranking", np.asarray(result, dtype=np.float64)
    if method == "rerank":
        return "ranking", {int(r.index): float(r.score) for r in result}
    if method == "infer":
        result = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in result["outputs"]}
    if method in ("infer", "v2_infer", "infer_arrays"):
        return _from_outputs(result)
    raise ValueError(f"no comparison for {method!r}")


def _from_outputs(outputs: dict[str, np.ndarray]) -> Canonical:
    if "embedding" in outputs:
        return "vectors", np.asarray(outputs["embedding"], dtype=np.float32)
    if "label" in outputs:
        labels, scores = np.asarray(outputs["label"]), np.asarray(outputs["score"])
        if labels.ndim == 2:  # top_k > 1: best first
            labels, scores = labels[:, 0], scores[:, 0]
        return "labels", [(_text(x), float(s)) for x, s in zip(labels, scores, strict=True)]
    if "entities" in outputs:
        rows = [orjson.loads(x) for x in outputs["entities"]]
        return "spans", [{(e["start"], e["end"], e["label"]) for e in row} for row in rows]
    if "score" in outputs:
        return "ranking", np.asarray(outputs["score"], dtype=np.float64)
    raise ValueError(f"no comparison for outputs {sorted(outputs)}")


def _from_reply(method: str, reply: Any) -> Canonical:
    if reply.status != 200:
        raise ValueError(f"an error reply ({reply.status}) has nothing to compare")
    body = orjson.loads(reply.body)
    if method == "openai_embeddings":
        rows = sorted(body["data"], key=lambda d: d["index"])
        return "vectors", np.array([_vector(d["embedding"]) for d in rows], dtype=np.float32)
    if method == "rerank_http":
        return "ranking", {int(r["index"]): float(r["relevance_score"]) for r in body["results"]}
    preds = body["predictions"]
    if all(isinstance(p, dict) for p in preds) and preds:  # classification: the best label
        return "labels", [(str(p["label"]), float(p["score"])) for p in preds]
    if all(isinstance(p, int | float) for p in preds) and preds:  # pair scores
        return "ranking", np.asarray(preds, dtype=np.float64)
    if all(isinstance(p, list) and all(isinstance(e, dict) for e in p) for p in preds):
        return "spans", [{(e["start"], e["end"], e["label"]) for e in p} for p in preds]
    return "vectors", np.asarray(preds, dtype=np.float32)


def _vector(v: Any) -> np.ndarray:
    """An OpenAI embedding: a list of floats, or base64 of little-endian float32."""
    if isinstance(v, str):
        return np.frombuffer(base64.b64decode(v), dtype="<f4")
    return np.asarray(v, dtype=np.float32)


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def compare(primary: Canonical, shadow: Canonical) -> dict[str, list[float]]:
    """Per-row measures of ``shadow`` against ``primary`` (see the module's docstring)."""
    kind, a = primary
    kind_b, b = shadow
    if kind != kind_b:
        raise ValueError(f"a {kind} answer cannot be compared with a {kind_b} answer")
    if kind == "ranking":
        return _ranking(a, b)
    if len(a) != len(b):
        raise ValueError(f"the primary answered {len(a)} rows and the shadow {len(b)}")
    if kind == "vectors":
        return {"cosine": cosines(a, b)}
    if kind == "labels":
        return {
            "top1_agreement": [float(x[0] == y[0]) for x, y in zip(a, b, strict=True)],
            "score_diff": [abs(x[1] - y[1]) for x, y in zip(a, b, strict=True)],
        }
    out: dict[str, list[float]] = {"span_precision": [], "span_recall": [], "span_f1": []}
    for ref, got in zip(a, b, strict=True):
        p, r, f = span_prf(ref, got)
        out["span_precision"].append(p)
        out["span_recall"].append(r)
        out["span_f1"].append(f)
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embeddings of shape {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na > 0) & (nb > 0), dots / (na * nb), (na == nb).astype(np.float64))
    return [float(x) for x in np.clip(cos, -1.0, 1.0)]


def span_prf(ref: set, got: set) -> tuple[float, float, float]:
    """Precision, recall and F1 of exact spans ``got`` against ``ref``."""
    if not ref and not got:
        return 1.0, 1.0, 1.0
    hit = len(ref & got)
    p = hit / len(got) if got else 0.0
    r = hit / len(ref) if ref else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _ranking(a: Any, b: Any) -> dict[str, list[float]]:
    if isinstance(a, dict):  # rerank: scores by document index (top_k may cut either)
        common = sorted(set(a) & set(b))
        a, b = np.array([a[i] for i in common]), np.array([b[i] for i in common])
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the primary scored {a.size} pairs and the shadow {b.size}")
    if a.size == 0:
        return {}
    out = {"top1_agreement": [float(np.argmax(a) == np.argmax(b))]}
    if a.size >= 2:
        out["rank_correlation"] = [spearman(a, b)]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 1 when both are constant."""
    ra, rb = _ranks(a), _ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if denom == 0.0:
        return 1.0 if np.ptp(a) == np.ptp(b) == 0 else 0.0
    return float((da * db).sum() / denom)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # ties share the mean of their ranks
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks
