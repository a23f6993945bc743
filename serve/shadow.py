"""A versioned model's shadow, on the router: which requests are mirrored, how many at
once, and the figures ``textfleet status`` prints.

The router hands a request to ``Shadow.mirror`` only once the primary's reply
is ready. The mirror is sent to the shadow version's replica with the
primary's answer beside it (a ``Mirror``, serve/shadow_replica.py), as a task
of its own, and the router answers at once, so the shadow can neither delay
nor fail the primary. The shadow's replica answers, compares (serve/compare.py),
counts the outcome, latency and agreement as Prometheus metrics
(serve/metrics.py, ``VersionMetrics``) and writes the sampled JSON lines; the
router awaits nothing of it on a request's path and gets back only a small
summary, added to its running sums when the task is done. At most
``max_in_flight`` mirrors are out at a time; past that a mirror is dropped and
counted here, never queued. A mirror that cannot reach the shadow (gone, failed
to start) is counted here as an error; the rest are counted by the shadow,
which counts a mirror it had no capacity for (its own deadline passed or its
queue was full: a shadow in the background computes only in the CPU the
primary leaves) as dropped too, not as its error.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from textfleet.serve.metrics import VersionMetrics
from textfleet.serve.shadow_replica import Mirror, MirrorSummary

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

    def add(self, summary: MirrorSummary) -> None:
        for name, total in summary.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.rows[name] = self.rows.get(name, 0) + summary.rows[name]

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
        send: Callable[[str, Mirror], Awaitable[MirrorSummary]],
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        primary_version: str,
        primary: Any,
    ) -> None:
        """Start the mirror of an answered request: ``send(version, mirror)`` hands it
        to the shadow's replica, which answers, compares and returns the summary."""
        plan = self.plan
        if plan is None:
            return
        tally = self.tallies.get(plan.version)
        if tally is None:
            tally = self.tallies[plan.version] = ShadowTally()
        if self.in_flight >= plan.max_in_flight:
            tally.dropped += 1
            self.metrics.mirrors.inc(1, {"version": plan.version, "outcome": "dropped"})
            return
        recorded = plan.record_path is not None and random.random() < plan.record_sample
        mirror = Mirror(
            method, args, kwargs, primary_version, primary,
            record_path=plan.record_path if recorded else None,
            record_texts=plan.record_texts,
        )  # fmt: skip
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(send(plan.version, mirror))
        self._tasks.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(partial(self._done, plan.version, tally))

    def _done(self, version: str, tally: ShadowTally, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        error = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if error is not None:  # the shadow was not reached (gone, failed to start, ...)
            tally.errors += 1
            self.metrics.mirrors.inc(1, {"version": version, "outcome": "error"})
            log.debug("shadow %r of model %r unreachable: %s", version, self.model, error)
            return
        # The shadow's replica counted this outcome in the metrics already.
        summary: MirrorSummary = task.result()
        if summary.ok:
            tally.ok += 1
            tally.add(summary)
        elif summary.dropped:
            tally.dropped += 1
        else:
            tally.errors += 1

    def status(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "version": plan.version if plan else None,
            "percent": plan.percent if plan else 0.0,
            "in_flight": self.in_flight,
            "versions": {v: t.summary() for v, t in self.tallies.items()},
        }
