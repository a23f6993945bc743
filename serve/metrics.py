"""Per-model Prometheus metrics, exported through Ray's metrics agent.

Two sources: the serving layer counts requests itself (per protocol and
status, with a latency histogram), and a poller turns ``engine.stats()`` into
metrics every few seconds. Ray adds the application, deployment and replica
tags; we add ``model``. Ray prefixes every name with ``ray_`` and exports
counters with a ``_total`` suffix, e.g. ``ray_textfleet_requests_total``.

``engine.stats()`` is read generically so the scheduler can grow new figures
without touching this file: a flat or nested dict of numbers. Cumulative
figures (the engine's counters below, or any key ending in ``_total``) are
exported as Prometheus counters by their increase, every other number as a
gauge, all named ``textfleet_engine_<key>``. Two derived gauges,
``textfleet_engine_padding_efficiency`` and ``textfleet_engine_mean_batch_size``,
come from the counters when the engine reports them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
_SAFE = re.compile(r"[^a-zA-Z0-9_]")

# engine.stats() counters that only ever grow (Engine.Stats.FIELDS).
CUMULATIVE = {
    "requests",
    "sequences",
    "batches",
    "real_tokens",
    "padded_tokens",
    "tokenize_s",
    "compute_s",
    "rejected",
    "timed_out",
    "cancelled",
}


class ModelMetrics:
    """The request-side metrics of one model's replica."""

    def __init__(self, model: str):
        tags = {"model": model}
        self.requests = Counter(
            "textfleet_requests",
            description="Requests answered, by protocol and HTTP status.",
            tag_keys=("model", "protocol", "status"),
        )
        self.latency = Histogram(
            "textfleet_request_latency_ms",
            description="Time from a request reaching the replica to its reply, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("model", "protocol"),
        )
        self.texts = Counter(
            "textfleet_texts", description="Texts (sequences) received.", tag_keys=("model",)
        )
        self.errors = Counter(
            "textfleet_errors",
            description="Requests that failed: bad input (4xx) or server errors (5xx).",
            tag_keys=("model", "kind"),
        )
        self.rejections = Counter(
            "textfleet_rejections",
            description="Requests refused because the engine's queue was full (503).",
            tag_keys=("model",),
        )
        for m in (self.requests, self.latency, self.texts, self.errors, self.rejections):
            m.set_default_tags(dict(tags))  # Ray adds its tags to the dict it gets

    def record(self, protocol: str, status: int, latency_s: float, n_texts: int) -> None:
        self.requests.inc(1, {"protocol": protocol, "status": str(status)})
        self.latency.observe(latency_s * 1000.0, {"protocol": protocol})
        if n_texts:
            self.texts.inc(n_texts)
        if status == 503:
            self.rejections.inc(1)
        if status >= 400:
            self.errors.inc(1, {"kind": "client" if status < 500 else "server"})


def flatten_stats(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict of numbers -> ``{"a_b": 1.0}``; other values are dropped."""
    flat: dict[str, float] = {}
    for k, v in stats.items():
        key = _SAFE.sub("_", f"{prefix}{k}")
        if isinstance(v, dict):
            flat.update(flatten_stats(v, key + "_"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            flat[key] = float(v)
    return flat


def is_cumulative(key: str) -> bool:
    return key.endswith("_total") or key in CUMULATIVE


def derived(flat: dict[str, float]) -> dict[str, float]:
    """Padding efficiency and mean batch size from the engine's counters, if present."""
    base = {k.removesuffix("_total"): v for k, v in flat.items()}
    out = {}
    real, padded = base.get("real_tokens"), base.get("padded_tokens")
    if real is not None and padded:
        out["padding_efficiency"] = real / padded
    seqs, batches = base.get("sequences"), base.get("batches")
    if seqs is not None and batches:
        out["mean_batch_size"] = seqs / batches
    return out


class EngineStatsExporter:
    """Polls ``engine.stats()`` and mirrors it into Ray metrics (one per replica)."""

    def __init__(self, model: str, stats: Callable[[], dict[str, Any]], period_s: float = 2.0):
        self._model = model
        self._stats = stats
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._metrics: dict[str, Counter | Gauge] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start polling on the running loop; idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                self.export_once()
            except Exception:  # metrics must never take the replica down
                log.exception("exporting engine stats of model %r failed", self._model)
            await asyncio.sleep(self._period_s)

    def export_once(self) -> None:
        flat = flatten_stats(self._stats() or {})
        for key, value in flat.items():
            if is_cumulative(key):
                delta = value - self._last.get(key, 0.0)
                if delta > 0:
                    self._metric(key, Counter).inc(delta)
                self._last[key] = value
            else:
                self._metric(key, Gauge).set(value)
        for key, value in derived(flat).items():
            self._metric(key, Gauge).set(value)

    def _metric(self, key: str, kind: type) -> Counter | Gauge:
        m = self._metrics.get(key)
        if m is None:
            name = "textfleet_engine_" + key.removesuffix("_total")
            m = kind(name, description=f"engine.stats()['{key}']", tag_keys=("model",))
            m.set_default_tags({"model": self._model})
            self._metrics[key] = m
        return m
