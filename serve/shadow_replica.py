"""A mirrored request on the shadow's replica: answered, compared, counted, recorded.

A versioned model's router (serve/shadow.py) sends each mirrored request to
the shadow version's replica as a ``Mirror``: the call, with the primary's
answer beside it. The replica answers the call as it answers any (its own
request metrics count it), puts both answers in their canonical form,
compares them row by row (serve/compare.py), observes the outcome, the
shadow's latency and the agreement as the versioned model's metrics
(``VersionMetrics``: the same names and labels wherever they are observed),
writes the sampled JSON line, and returns only a ``MirrorSummary`` that the
router adds to the figures ``textfleet status`` prints.

Decoding and comparing both answers thus happen in the shadow's process, at
its CPU priority (serve/cpu_priority.py), rather than on the router's event
loop, which every request of the model passes through.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from textfleet.serve.compare import Canonical, canonical, compare
from textfleet.serve.metrics import VersionMetrics
from textfleet.serve.protocols import v2
from textfleet.serve.protocols.common import dumps, error_status, loads

log = logging.getLogger(__name__)

NO_CAPACITY = (503, 504)
"""Statuses of a mirror the shadow had no capacity for, by a method call's exception
(``error_status``: overloaded, unavailable, its deadline) or a V2 reply alike: the
mirror is dropped, not the shadow's error."""


@dataclass(frozen=True)
class Mirror:
    """One mirrored request, as the router sends it to the shadow."""

    method: str
    """The ``ModelServer`` method the primary answered (``v2_infer``, ``embed``, ...)."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    primary_version: str
    primary: Any
    """The primary's answer as that method returns it (``v2_infer``: its output arrays)."""
    record_path: str | None = None
    """Set when this pair is sampled for the record: the JSONL file to append to."""
    record_texts: bool = False
    """Write the input texts in the record; otherwise their SHA-256 digests."""


@dataclass(frozen=True)
class MirrorSummary:
    """What the router learns of a mirror: ok or not, and per measure the sum of the
    row values and the number of rows (a mean over many mirrors is sums / rows)."""

    ok: bool
    sums: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dropped: bool = False
    """Not computed for want of capacity: the shadow's own deadline passed or its queue
    was full (a shadow in the background gets only the CPU the primary leaves)."""


class ShadowComparer:
    """The shadow side of one model's mirrors (one per shadow replica)."""

    def __init__(self, model: str, version: str):
        self.model = model
        self.version = version
        self.metrics = VersionMetrics(model)

    async def run(self, server: Any, mirror: Mirror) -> MirrorSummary:
        """Answer ``mirror`` with ``server`` (this replica's ``ModelServer``) and compare.
        Never raises: a failure is counted as the mirror's error."""
        method, version = mirror.method, self.version
        kwargs = dict(mirror.kwargs, keep_outputs=True) if method == "v2_infer" else mirror.kwargs
        start = time.perf_counter()
        try:
            result = await getattr(server, method)(*mirror.args, **kwargs)
            got = canonical(method, _answer(method, result))
            took_ms = (time.perf_counter() - start) * 1000.0
            self.metrics.latency.observe(took_ms, {"version": version})
            want = canonical(method, mirror.primary)
            measures = compare(want, got)
        except Exception as e:
            if isinstance(e, _NoCapacity) or error_status(e) in NO_CAPACITY:
                self.metrics.mirrors.inc(1, {"version": version, "outcome": "dropped"})
                log.debug("shadow %r of model %r had no capacity: %s", version, self.model, e)
                return MirrorSummary(ok=False, dropped=True)
            self.metrics.mirrors.inc(1, {"version": version, "outcome": "error"})
            log.debug("shadow %r of model %r failed: %s", version, self.model, e)
            return MirrorSummary(ok=False)
        self.metrics.mirrors.inc(1, {"version": version, "outcome": "ok"})
        for name, values in measures.items():
            tags = {"version": version, "primary": mirror.primary_version, "measure": name}
            for value in values:
                self.metrics.agreement.observe(max(value, 0.0), tags)
        if mirror.record_path:
            try:
                line = self._record_line(mirror, want, got, measures)
                await asyncio.to_thread(_append, Path(mirror.record_path), line)
            except Exception as e:  # the record is a sample: a write failure costs one line
                log.warning("shadow %r of model %r: cannot record: %s", version, self.model, e)
        return MirrorSummary(
            ok=True,
            sums={k: float(sum(v)) for k, v in measures.items()},
            rows={k: len(v) for k, v in measures.items()},
        )

    def _record_line(self, mirror: Mirror, want, got, measures) -> bytes:
        texts = request_texts(mirror.method, mirror.args, mirror.kwargs)
        if not mirror.record_texts:
            texts = {k: [_sha256(t) for t in v] for k, v in texts.items()}
        row = {
            "time": time.time(),
            "model": self.model,
            "primary": mirror.primary_version,
            "shadow": self.version,
            "method": mirror.method,
            "inputs" if mirror.record_texts else "inputs_sha256": texts,
            "primary_output": _jsonable(want),
            "shadow_output": _jsonable(got),
            "measures": measures,
        }
        return (
            orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"
        )


# ---------------------------------------------------------------- the request's texts


def request_texts(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, list[str]]:
    """The texts of a mirrored call by input name (for the record only)."""
    if method == "v2_infer":
        return _named_texts(v2.parse_infer_request(args[0], kwargs.get("header_length")))
    if method in ("v1_predict", "openai_embeddings", "rerank_http"):
        return _body_texts(args[0])
    if method in ("embed", "classify", "entities"):
        return {"text": list(args[0])}
    if method == "score":
        return {"query": [p[0] for p in args[0]], "document": [p[1] for p in args[0]]}
    if method == "rerank":
        return {"query": [args[0]], "document": list(args[1])}
    if method == "infer":
        return _named_texts(v2.infer_request_from_dict(args[0]))
    if method == "infer_arrays":
        return _named_texts(v2.infer_request_from_arrays(*args, **kwargs))
    raise ValueError(f"no texts for {method!r}")


def _body_texts(body: bytes) -> dict[str, list[str]]:
    """The texts of a gateway body (OpenAI ``input``, V1 ``instances``, rerank
    ``query`` and ``documents``)."""
    obj = loads(body)
    out: dict[str, list[str]] = {}
    for key in ("input", "instances", "query", "documents", "texts"):
        value = obj.get(key) if isinstance(obj, dict) else None
        if value is not None:
            items = value if isinstance(value, list) else [value]
            out[key] = [x if isinstance(x, str) else dumps(x).decode() for x in items]
    return out


def _named_texts(req: v2.InferRequest) -> dict[str, list[str]]:
    out = {}
    for t in req.inputs:
        if t.datatype == "BYTES":
            out[t.name] = v2.texts_input(req, t.name, 1_000_000)
    return out


# ---------------------------------------------------------------- answers


def _answer(method: str, result: Any) -> Any:
    """The comparable part of the shadow's answer; an error reply raises."""
    if method != "v2_infer":
        return result
    reply, outputs = result
    if outputs is None:
        error = _NoCapacity if reply.status in NO_CAPACITY else RuntimeError
        raise error(f"the shadow answered {reply.status}: {reply.body[:200]!r}")
    return outputs


class _NoCapacity(Exception):
    """A V2 reply in ``NO_CAPACITY``."""


def _jsonable(answer: Canonical) -> Any:
    kind, rows = answer
    if kind == "spans":
        return [sorted(list(s) for s in row) for row in rows]
    if isinstance(rows, np.ndarray):
        return rows.tolist()
    return rows


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _append(path: Path, line: bytes) -> None:
    with open(path, "ab") as f:
        f.write(line)
