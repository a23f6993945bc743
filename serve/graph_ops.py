"""The built-in ``op:`` steps of an inference graph: ``top_k`` and ``gather``.

An op runs inside the graph's replica on arrays the earlier steps returned
(numpy, no model call). Each op declares what it takes and gives, so that a
graph's config is checked before anything is deployed:

- ``top_k`` ``by: cosine``: inputs ``query`` (one embedding row) and
  ``candidates`` (n rows); ``by: score``: input ``score`` (n scores). Outputs
  ``index`` (INT64, the best ``k`` rows, best first; ties keep the earlier row)
  and ``score`` (FP32, their cosine or score).
- ``gather``: inputs ``values`` (any tensor) and ``index`` (INT64); output
  ``values``: the rows of ``values`` at ``index``, in that order.

A new op is one ``Op`` entry in ``OPS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from textfleet.engine.errors import InputError

FLOATS = frozenset({"FP16", "FP32", "FP64"})
INTEGERS = frozenset({"INT32", "INT64", "UINT32", "UINT64"})
SAME_AS_VALUES = "values"
"""An output datatype that is the datatype of the op's ``values`` input."""


@dataclass(frozen=True)
class Op:
    """One built-in op: its settings, its inputs and outputs, and what it computes."""

    name: str
    settings: dict[str, tuple[Any, ...] | type]
    """Step fields it requires: a tuple of allowed values, or a type (``k``: int)."""
    inputs: Callable[[Any], dict[str, frozenset[str] | None]]
    """``step`` -> input name -> accepted datatypes (None: any)."""
    outputs: dict[str, str]
    """Output name -> datatype (``SAME_AS_VALUES``: the ``values`` input's)."""
    run: Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]
    """``(step, inputs)`` -> outputs; an InputError for inputs of the wrong shape."""


def _top_k_inputs(step: Any) -> dict[str, frozenset[str] | None]:
    if step.by == "cosine":
        return {"query": FLOATS, "candidates": FLOATS}
    return {"score": FLOATS}


def _top_k(step: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if step.by == "cosine":
        scores = cosine(_rows(inputs["query"], "query"), _rows(inputs["candidates"], "candidates"))
    else:
        scores = np.asarray(inputs["score"], dtype=np.float64)
        if scores.ndim != 1:
            raise InputError("score", f"expected one score per row, got shape {list(scores.shape)}")
    index = best(scores, step.k)
    return {"index": index, "score": scores[index].astype(np.float32)}


def cosine(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine of one query row with each candidate row (float64, one per candidate)."""
    if query.shape[0] != 1:
        raise InputError("query", f"top_k by cosine takes one query row, got {query.shape[0]}")
    if candidates.shape[1] != query.shape[1]:
        raise InputError(
            "candidates",
            f"rows of width {candidates.shape[1]}, the query's is {query.shape[1]}",
        )
    q = query[0].astype(np.float64)
    c = candidates.astype(np.float64)
    norms = np.linalg.norm(c, axis=1) * np.linalg.norm(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, c @ q / norms, 0.0)


def best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties keep the earlier row."""
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def _rows(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(name, f"expected rows of vectors, got shape {list(arr.shape)}")
    return arr


def _gather(step: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values, index = inputs["values"], np.asarray(inputs["index"])
    if index.ndim != 1:
        raise InputError("index", f"expected one index per row, got shape {list(index.shape)}")
    if values.ndim == 0 or (index.size and (index.min() < 0 or index.max() >= len(values))):
        raise InputError("index", f"indices outside the {len(values)} rows of values")
    return {"values": values[index]}


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "top_k",
            {"by": ("cosine", "score"), "k": int},
            _top_k_inputs,
            {"index": "INT64", "score": "FP32"},
            _top_k,
        ),
        Op(
            "gather",
            {},
            lambda step: {"values": None, "index": INTEGERS},
            {"values": SAME_AS_VALUES},
            _gather,
        ),
    )
}

OP_SETTINGS = ("by", "k")
"""The step fields only ops read; every op names those it requires in ``settings``."""


def check_settings(step: Any) -> str | None:
    """What is wrong with an op step's settings (missing, foreign, out of range), or None."""
    op = OPS[step.op]
    for name, allowed in op.settings.items():
        value = getattr(step, name)
        if value is None:
            choices = f" ({', '.join(allowed)})" if isinstance(allowed, tuple) else ""
            return f"op {op.name} needs {name}{choices}"
        if isinstance(allowed, tuple) and value not in allowed:
            return f"op {op.name}: {name} must be one of {', '.join(allowed)}, got {value!r}"
    foreign = [n for n in OP_SETTINGS if n not in op.settings and getattr(step, n) is not None]
    if foreign:
        return f"op {op.name} takes no {', '.join(foreign)}"
    return None


def output_types(step: Any, input_types: dict[str, str]) -> dict[str, str]:
    """The datatype of each output of an op step, given its inputs' datatypes."""
    return {
        name: input_types["values"] if dt == SAME_AS_VALUES else dt
        for name, dt in OPS[step.op].outputs.items()
    }


def run(step: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return OPS[step.op].run(step, inputs)
