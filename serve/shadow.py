"""A versioned model's shadow: mirrored requests, bounded, compared, never returned.

The router hands a request to ``Shadow.mirror`` only once the primary's reply
is ready; the mirror runs as a task of its own and the router answers at once,
so the shadow can neither delay nor fail the primary. At most
``max_in_flight`` mirrors wait for the shadow at a time; past that a mirror is
dropped and counted, never queued. Each answer is compared with the primary's
(serve/compare.py) and counted as Prometheus metrics (serve/metrics.py,
``VersionMetrics``) and as running sums for ``textfleet status``; a sample is
written as JSON lines when ``record`` asks for it (input texts by SHA-256
unless ``record.texts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from textfleet.serve.compare import Canonical, canonical, compare
from textfleet.serve.metrics import VersionMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowPlan:
    """The router's user_config ``shadow``: which version, how much, what to record."""

    version: str
    percent: float = 100.0
    max_in_flight: int = 32
    record_path: str | None = None
    record_sample: float = 0.0
    record_texts: bool = False

    @classmethod
    def from_user_config(cls, obj: Any) -> ShadowPlan | None:
        if obj is None:
            return None
        record = obj.get("record") or {}
        return cls(
            version=str(obj["version"]),
            percent=float(obj.get("percent", 100.0)),
            max_in_flight=int(obj.get("max_in_flight", 32)),
            record_path=record.get("path"),
            record_sample=float(record.get("sample", 0.0)),
            record_texts=bool(record.get("texts", False)),
        )


@dataclass
class ShadowTally:
    """Running figures of one shadow version since the router replica started."""

    ok: int = 0
    errors: int = 0
    dropped: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, measures: dict[str, list[float]]) -> None:
        for name, values in measures.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(sum(values))
            self.rows[name] = self.rows.get(name, 0) + len(values)

    def summary(self) -> dict[str, Any]:
        means = {k: self.sums[k] / n for k, n in self.rows.items() if n}
        return {"ok": self.ok, "errors": self.errors, "dropped": self.dropped, "mean": means}


class Shadow:
    """Mirrors to the shadow version of one model (one per router replica)."""

    def __init__(self, model: str, metrics: VersionMetrics):
        self.model = model
        self.metrics = metrics
        self.plan: ShadowPlan | None = None
        self.in_flight = 0
        self.tallies: dict[str, ShadowTally] = {}
        self._tasks: set[asyncio.Task] = set()

    def configure(self, plan: ShadowPlan | None) -> None:
        """A new plan applies to the next requests; mirrors under way finish."""
        self.plan = plan

    def sampled(self) -> bool:
        """Whether this request is to be mirrored (decided before the primary runs,
        so that the primary keeps what the comparison needs)."""
        plan = self.plan
        return plan is not None and (plan.percent >= 100.0 or random.random() * 100 < plan.percent)

    def mirror(
        self,
        method: str,
        primary_version: str,
        primary_result: Any,
        run: Callable[[str], Awaitable[Any]],
        inputs: Callable[[], dict[str, list[str]]],
    ) -> None:
        """Start the mirror of an answered request: ``run(version)`` calls the shadow;
        ``inputs()`` gives the request's texts by input name (only when recorded)."""
        plan = self.plan
        if plan is None:
            return
        tally = self.tallies.setdefault(plan.version, ShadowTally())
        if self.in_flight >= plan.max_in_flight:
            tally.dropped += 1
            self.metrics.mirrors.inc(1, {"version": plan.version, "outcome": "dropped"})
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._run(plan, method, primary_version, primary_result, run, inputs, tally)
        )
        self._tasks.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _run(self, plan, method, primary_version, primary_result, run, inputs, tally):
        start = time.perf_counter()
        try:
            try:
                result = await run(plan.version)
                got = canonical(method, _answer(method, result))
            finally:
                self.in_flight -= 1
            self.metrics.latency.observe(
                (time.perf_counter() - start) * 1000.0, {"version": plan.version}
            )
            want = canonical(method, primary_result)
            measures = compare(want, got)
        except Exception as e:
            tally.errors += 1
            self.metrics.mirrors.inc(1, {"version": plan.version, "outcome": "error"})
            log.debug("shadow %r of model %r failed: %s", plan.version, self.model, e)
            return
        tally.ok += 1
        tally.add(measures)
        self.metrics.mirrors.inc(1, {"version": plan.version, "outcome": "ok"})
        for name, values in measures.items():
            tags = {"version": plan.version, "primary": primary_version, "measure": name}
            for value in values:
                self.metrics.agreement.observe(max(value, 0.0), tags)
        if plan.record_path and random.random() < plan.record_sample:
            line = self._record_line(plan, method, primary_version, want, got, measures, inputs)
            await asyncio.to_thread(_append, Path(plan.record_path), line)

    def _record_line(self, plan, method, primary_version, want, got, measures, inputs) -> bytes:
        texts = inputs()
        if not plan.record_texts:
            texts = {k: [_sha256(t) for t in v] for k, v in texts.items()}
        row = {
            "time": time.time(),
            "model": self.model,
            "primary": primary_version,
            "shadow": plan.version,
            "method": method,
            "inputs" if plan.record_texts else "inputs_sha256": texts,
            "primary_output": _jsonable(want),
            "shadow_output": _jsonable(got),
            "measures": measures,
        }
        return (
            orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"
        )

    def status(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "version": plan.version if plan else None,
            "percent": plan.percent if plan else 0.0,
            "in_flight": self.in_flight,
            "versions": {v: t.summary() for v, t in self.tallies.items()},
        }


def _answer(method: str, result: Any) -> Any:
    """The comparable part of a shadow's answer; an error reply raises."""
    if method != "v2_infer":
        return result
    reply, outputs = result
    if outputs is None:
        raise RuntimeError(f"the shadow answered {reply.status}: {reply.body[:200]!r}")
    return outputs


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
