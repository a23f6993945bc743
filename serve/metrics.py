"""Per-model Prometheus metrics, exported through Ray's metrics agent.

Two sources: the serving layer counts requests itself (per protocol and
status, with a latency histogram), and a poller turns ``engine.stats()`` into
metrics every few seconds. Ray adds the application, deployment and replica
tags; we add ``model`` and ``version`` (the replica's ``ModelConfig.version``:
"1" for a model without versions), so a dashboard splits every figure by both
(serve/dashboards/textfleet.json). Ray prefixes every name with ``ray_`` and exports
counters with a ``_total`` suffix, e.g. ``ray_textfleet_requests_total``.

The engine's figures are read from ``EngineStats``'s fields, each named
``textfleet_engine_<field>`` and described by its help text, so a new field
there is exported without touching this file. Its metadata says the kind:

- counters (cumulative since load) become Prometheus counters, fed by their increase;
- gauges become gauges;
- histograms (``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``, the
  last one above every bound) become Prometheus histograms with the same
  bounds: each new observation is replayed at its bucket's midpoint, so bucket
  counts are exact and ``_sum`` is an estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ray.serve.metrics import Counter, Gauge, Histogram

from textfleet.engine.stats import EngineStats

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


# The tags every metric of a model's replica carries.
REPLICA_TAGS = ("model", "version")


class ModelMetrics:
    """The request-side metrics of one model's replica."""

    def __init__(self, model: str, version: str = "1"):
        tags = {"model": model, "version": version}
        self.requests = Counter(
            "textfleet_requests",
            description="Requests answered, by protocol and HTTP status.",
            tag_keys=(*REPLICA_TAGS, "protocol", "status"),
        )
        self.latency = Histogram(
            "textfleet_request_latency_ms",
            description="Time from a request reaching the replica to its reply, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=(*REPLICA_TAGS, "protocol"),
        )
        self.texts = Counter(
            "textfleet_texts", description="Texts (sequences) received.", tag_keys=REPLICA_TAGS
        )
        self.errors = Counter(
            "textfleet_errors",
            description="Requests that failed: bad input (4xx) or server errors (5xx).",
            tag_keys=(*REPLICA_TAGS, "kind"),
        )
        self.rejections = Counter(
            "textfleet_rejections",
            description="Requests answered 503: the engine's queue was full, or the "
            "request could not finish before its deadline.",
            tag_keys=REPLICA_TAGS,
        )
        # By request priority class (serve/admission.py reports them): the engine's
        # side of each request, so urgent traffic's latency and sheds show apart.
        self.class_requests = Counter(
            "textfleet_priority_requests",
            description="Requests by priority class (0 most urgent) and outcome: ok, "
            "shed_deadline (refused: it would wait longer than its class may), shed_queue "
            "(its class's share of the queue was full), timeout, cancelled, error.",
            tag_keys=(*REPLICA_TAGS, "priority", "outcome"),
        )
        self.class_latency = Histogram(
            "textfleet_priority_latency_ms",
            description="Time a request computed by the engine spent there (queued, "
            "then computed), by priority class, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=(*REPLICA_TAGS, "priority"),
        )
        for m in (
            self.requests,
            self.latency,
            self.texts,
            self.errors,
            self.rejections,
            self.class_requests,
            self.class_latency,
        ):
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

    def record_class(self, priority: int, outcome: str, engine_s: float) -> None:
        """One request's outcome in its priority class (``admission.Outcome``)."""
        klass = str(priority)
        self.class_requests.inc(1, {"priority": klass, "outcome": outcome})
        if outcome == "ok":
            self.class_latency.observe(engine_s * 1000.0, {"priority": klass})


def replay(
    bounds: Sequence[float], previous: Sequence[int], counts: Sequence[int]
) -> list[tuple[float, int]]:
    """(value, times) that reproduce the new observations of a bucketed histogram.

    The value is the middle of its bucket (half the first bound for the first,
    1.5x the last bound for the overflow bucket), so it lands in the same bucket.
    """
    out = []
    for i, n in enumerate(counts):
        new = int(n) - (int(previous[i]) if i < len(previous) else 0)
        if new <= 0:
            continue
        if i == 0:
            value = bounds[0] / 2
        elif i < len(bounds):
            value = (bounds[i - 1] + bounds[i]) / 2
        else:
            value = bounds[-1] * 1.5
        out.append((float(value), new))
    return out


class EngineStatsExporter:
    """Polls ``engine.stats()`` and mirrors it into Ray metrics (one per replica)."""

    def __init__(
        self,
        model: str,
        stats: Callable[[], EngineStats],
        *,
        version: str = "1",
        period_s: float = 2.0,
    ):
        self._model = model
        self._tags = {"model": model, "version": version}
        self._stats = stats
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._last_counts: dict[str, tuple[int, ...]] = {}
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
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
        stats = self._stats()
        for f in EngineStats.fields("counter"):
            value = float(getattr(stats, f.name))
            metric = self._metric(f, Counter)  # made at once: a counter at 0 is news too
            delta = value - self._last.get(f.name, 0.0)
            if delta > 0:
                metric.inc(delta)
            self._last[f.name] = value
        for f in EngineStats.fields("gauge"):
            self._metric(f, Gauge).set(float(getattr(stats, f.name)))
        for f in EngineStats.fields("histogram"):
            h = getattr(stats, f.name)
            metric = self._metric(f, Histogram, list(h.bounds))
            for value, times in replay(h.bounds, self._last_counts.get(f.name, ()), h.counts):
                for _ in range(times):
                    metric.observe(value)
            self._last_counts[f.name] = h.counts

    def _metric(self, f, kind: type, bounds: list[float] | None = None):
        m = self._metrics.get(f.name)
        if m is None:
            name, desc = f"textfleet_engine_{f.name}", f.metadata["help"]
            if kind is Histogram:
                m = Histogram(name, description=desc, boundaries=bounds, tag_keys=REPLICA_TAGS)
            else:
                m = kind(name, description=desc, tag_keys=REPLICA_TAGS)
            m.set_default_tags(dict(self._tags))
            self._metrics[f.name] = m
        return m


# Agreement measures lie in [0, 1] (a rank correlation may dip below 0: the first
# bucket); fine steps near 1, where a good shadow's values are.
AGREEMENT_BOUNDARIES = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0]


class VersionMetrics:
    """A versioned model's versions and shadow: the requests the router sent to each
    version, and the shadow's mirrors, latency and agreement with the primary
    (histogram ``_sum / _count`` is the mean). The router counts the mirrors it
    dropped or could not deliver; the shadow's replicas count the rest, with the
    latency and agreement they measured (serve/shadow_replica.py)."""

    def __init__(self, model: str):
        self.routed = Counter(
            "textfleet_version_requests",
            description="Requests a versioned model's router sent to each version.",
            tag_keys=("model", "version", "protocol"),
        )
        self.mirrors = Counter(
            "textfleet_shadow_requests",
            description="Mirrored requests by outcome: ok, error or dropped (past "
            "max_in_flight, or past the shadow's own deadline or queue bound).",
            tag_keys=("model", "version", "outcome"),
        )
        self.latency = Histogram(
            "textfleet_shadow_latency_ms",
            description="Time the shadow took to answer a mirrored request, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("model", "version"),
        )
        self.agreement = Histogram(
            "textfleet_shadow_agreement",
            description="Per-row agreement of the shadow with the primary, by measure "
            "(cosine, top1_agreement, score_diff, span_f1, rank_correlation, ...).",
            boundaries=AGREEMENT_BOUNDARIES,
            tag_keys=("model", "version", "primary", "measure"),
        )
        for m in (self.routed, self.mirrors, self.latency, self.agreement):
            m.set_default_tags({"model": model})
