"""From a chunk of input values to output columns, with one ``Engine``.

The model's task picks the output columns by the engine method that serves it
(``TaskSpec.methods``), so a new task needs one entry in ``OUTPUTS``. Every
input row gets one output row: a value that is not a string, or one the
engine refuses (``InputError``), gets its message in the ``error`` column and
nulls in the result columns; the rest of the chunk is computed as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from textfleet.engine.errors import InputError

ERROR = "error"
"""The column that holds why a row has no result (null when it has one)."""


@dataclass(frozen=True)
class Output:
    """What one engine method writes: its columns and how to compute them."""

    columns: dict[str, pa.DataType]
    compute: Callable[..., list[dict[str, Any]]]
    """``(engine, texts, pairs, options)`` -> one dict of column values per row."""
    pairs: bool = False
    """The method takes (text, pair) rows: ``--pair-column`` is required."""


def _embed(engine, texts, pairs, options) -> list[dict[str, Any]]:
    return [{"embedding": v} for v in engine.embed(texts)]


def _classify(engine, texts, pairs, options) -> list[dict[str, Any]]:
    found = engine.classify(texts, top_k=options.get("top_k", 1))
    return [{"labels": [r.label for r in row], "scores": [r.score for r in row]} for row in found]


def _entities(engine, texts, pairs, options) -> list[dict[str, Any]]:
    found = engine.entities(texts, aggregation=options.get("aggregation"))
    return [{"entities": json.dumps([e.as_dict() for e in row])} for row in found]


def _score(engine, texts, pairs, options) -> list[dict[str, Any]]:
    scores = engine.score(list(zip(texts, pairs, strict=True)))
    return [{"score": float(s)} for s in scores]


OUTPUTS: dict[str, Output] = {
    "embed": Output({"embedding": pa.list_(pa.float32())}, _embed),
    "classify": Output(
        {"labels": pa.list_(pa.string()), "scores": pa.list_(pa.float32())}, _classify
    ),
    "entities": Output({"entities": pa.string()}, _entities),  # JSON list of spans
    "score": Output({"score": pa.float32()}, _score, pairs=True),
}
"""Keyed by ``Engine`` method; a task uses the first of its ``methods`` listed here."""


def output_for(task) -> Output:
    for method in task.methods:
        if method in OUTPUTS:
            return OUTPUTS[method]
    raise ValueError(f"task {task.name!r}: no batch output for its methods {task.methods}")


def check_columns(task, pair_column: str | None) -> Output:
    """The task's output, once the pair column fits it (required for pairs, else refused)."""
    output = output_for(task)
    if output.pairs and pair_column is None:
        raise ValueError(
            f"--pair-column: task {task.name!r} scores (text, pair) rows; "
            "name the column of the second texts"
        )
    if not output.pairs and pair_column is not None:
        raise ValueError(f"--pair-column: task {task.name!r} takes single texts")
    return output


def _bad(value: Any, column: str) -> str | None:
    if isinstance(value, str):
        return None
    got = "null" if value is None else type(value).__name__
    return f"{column}: expected a string, got {got}"


class RowRunner:
    """Computes the output columns of chunks of rows with one engine."""

    def __init__(
        self,
        engine,
        column: str,
        pair_column: str | None = None,
        id_column: str | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.engine = engine
        self.output = check_columns(engine.task, pair_column)
        self.column, self.pair_column, self.id_column = column, pair_column, id_column
        self.options = options or {}

    @property
    def input_columns(self) -> list[str]:
        """The input columns a chunk must carry."""
        return [c for c in (self.id_column, self.column, self.pair_column) if c is not None]

    def schema(self, id_type: pa.DataType | None = None) -> pa.Schema:
        fields = [pa.field(self.id_column, id_type or pa.null())] if self.id_column else []
        fields += [pa.field(n, t) for n, t in self.output.columns.items()]
        return pa.schema([*fields, pa.field(ERROR, pa.string())])

    def results(self, texts: Sequence[Any], pairs: Sequence[Any] | None) -> list[dict[str, Any]]:
        """One dict per row: the output columns, or ``{"error": why}``."""
        out: list[dict[str, Any]] = [{} for _ in texts]
        good = []
        for i, text in enumerate(texts):
            why = _bad(text, self.column)
            if why is None and pairs is not None:
                why = _bad(pairs[i], self.pair_column)
            if why is None:
                good.append(i)
            else:
                out[i] = {ERROR: why}
        for i, row in zip(good, self._compute(texts, pairs, good), strict=True):
            out[i] = row
        return out

    def _compute(self, texts, pairs, rows: list[int]) -> list[dict[str, Any]]:
        if not rows:
            return []
        chunk = [texts[i] for i in rows]
        second = None if pairs is None else [pairs[i] for i in rows]
        try:
            return self.output.compute(self.engine, chunk, second, self.options)
        except InputError:
            if len(rows) == 1:
                raise
        # Some row was refused: run them one by one to find it, keep the others.
        found = []
        for i in rows:
            try:
                found.extend(self._compute(texts, pairs, [i]))
            except InputError as e:
                # The engine's field names the text in the one-row call (texts[0]): name
                # the column instead, the row is this row.
                found.append({ERROR: f"{self.column}: {e.message}"})
        return found

    def table(self, columns: dict[str, Sequence[Any]], ids: pa.Array | None = None) -> pa.Table:
        """The output table of one chunk of input columns (lists of values), in row order;
        ``ids``: the chunk's id column as read (its type kept)."""
        texts = columns[self.column]
        pairs = columns[self.pair_column] if self.pair_column else None
        found = self.results(texts, pairs)
        arrays = []
        if self.id_column:
            arrays.append(ids if ids is not None else pa.array(columns[self.id_column]))
        schema = self.schema(arrays[0].type if arrays else None)
        for name, kind in self.output.columns.items():
            values = [row.get(name) for row in found]
            if kind == pa.list_(pa.float32()):
                values = [None if v is None else np.asarray(v, np.float32) for v in values]
            arrays.append(pa.array(values, type=kind))
        arrays.append(pa.array([row.get(ERROR) for row in found], type=pa.string()))
        return pa.Table.from_arrays(arrays, schema=schema)
