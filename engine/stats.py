"""``Engine.stats()``: one typed snapshot of the scheduler's counters.

Built in one place (``EngineStats.from_native``) from the native scheduler's
``SchedulerStats`` (csrc/sched_stats.h). Every field says in its metadata
what kind of figure it is, so readers (serve/metrics.py's exporter, JSON
output) iterate the fields instead of keeping a list of names: a new figure
is one field here and one line in ``from_native``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["counter", "gauge", "histogram"]


def _field(kind: Kind, help: str) -> Any:
    return dataclasses.field(metadata={"kind": kind, "help": help})


def counter(help: str) -> Any:
    """A figure that only grows from load on (a Prometheus counter)."""
    return _field("counter", help)


def gauge(help: str) -> Any:
    """A figure that goes up and down (a Prometheus gauge)."""
    return _field("gauge", help)


def histogram(help: str) -> Any:
    """A bucketed distribution (a ``Histogram``)."""
    return _field("histogram", help)


@dataclass(frozen=True)
class Histogram:
    """Observations by bucket: ``counts[i]`` of them <= ``bounds[i]`` (and above the
    bound before it); the last count, one more than the bounds, is the +Inf bucket."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    @classmethod
    def from_native(cls, h: Any) -> Histogram:
        return cls(tuple(h.bounds), tuple(h.counts), float(h.sum), int(h.count))

    def as_dict(self) -> dict[str, Any]:
        return {
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "sum": self.sum,
            "count": self.count,
        }


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine loaded, gauges of its queue now, and derived figures."""

    requests: int = counter("Requests admitted.")
    sequences: int = counter("Texts (or pairs) admitted.")
    batches: int = counter("Batches handed to the backend.")
    real_tokens: int = counter("Tokens computed, padding left out.")
    padded_tokens: int = counter("Tokens computed, padding included (rows x longest row).")
    tokenize_s: float = counter("Thread-seconds spent tokenizing.")
    compute_s: float = counter("Seconds the backend and heads spent on batches.")
    rejected: int = counter("Requests refused: the queue was full, or they could never fit it.")
    timed_out: int = counter("Requests whose caller's timeout passed first.")
    cancelled: int = counter("Requests their caller gave up on.")
    errors: int = counter("Requests that failed.")
    failed_batches: int = counter("Batches whose backend or head raised.")
    dropped_sequences: int = counter("Sequences never computed: their request expired or left.")
    prefetched_batches: int = counter("Batches collated while the backend computed another.")
    queue_sequences: int = gauge("Sequences waiting for a batch.")
    queue_tokens: int = gauge("Tokens admitted, not yet computed (queued, tokenizing, prefetched).")
    live_requests: int = gauge("Requests admitted and not yet resolved.")
    padding_efficiency: float = gauge("real_tokens / padded_tokens (1 before any batch).")
    padding_ratio: float = gauge("1 - padding_efficiency: the share of compute spent on padding.")
    mean_batch_size: float = gauge("Sequences per batch, on average.")
    batch_size: Histogram = histogram("Sequences per batch.")
    queue_wait_s: Histogram = histogram("Seconds from submission to a batch, per sequence.")
    compute_time_s: Histogram = histogram("Seconds of compute, per batch.")

    @classmethod
    def from_native(cls, s: Any) -> EngineStats:
        """From the native scheduler's ``SchedulerStats``: the one place its names and
        ours meet."""
        efficiency = s.real_tokens / s.padded_tokens if s.padded_tokens else 1.0
        return cls(
            requests=s.requests,
            sequences=s.sequences,
            batches=s.batches,
            real_tokens=s.real_tokens,
            padded_tokens=s.padded_tokens,
            tokenize_s=s.tokenize_s,
            compute_s=s.compute_s.sum,
            rejected=s.rejected + s.rejected_too_large,
            timed_out=s.timeouts,
            cancelled=s.cancellations,
            errors=s.failed_requests,
            failed_batches=s.failed_batches,
            dropped_sequences=s.dropped_sequences,
            prefetched_batches=s.prefetched_batches,
            queue_sequences=s.queue_sequences,
            queue_tokens=s.queue_tokens + s.reserved_tokens + s.prefetched_tokens,
            live_requests=s.live_requests,
            padding_efficiency=efficiency,
            padding_ratio=1.0 - efficiency,
            mean_batch_size=s.batch_sequences / s.batches if s.batches else 0.0,
            batch_size=Histogram.from_native(s.batch_size),
            queue_wait_s=Histogram.from_native(s.queue_wait_s),
            compute_time_s=Histogram.from_native(s.compute_s),
        )

    @staticmethod
    def fields(kind: Kind) -> list[dataclasses.Field]:
        """The fields of one kind, in declaration order."""
        return [f for f in dataclasses.fields(EngineStats) if f.metadata["kind"] == kind]

    def as_dict(self) -> dict[str, Any]:
        """For JSON output: numbers as they are, histograms as
        ``{"bounds", "counts", "sum", "count"}``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.as_dict() if isinstance(value, Histogram) else value
        return out
