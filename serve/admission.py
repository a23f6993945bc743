"""Admission: refuse at once a request that could not finish before its deadline.

A request queued behind more work than the engine computes before the
request's deadline times out anyway, after holding its place in the queue and
having part of its compute thrown away; under a burst every request ends up
like that and the server completes nothing. So a replica estimates, when a
request arrives, how long it would take to get its result: the tokens already
waiting (``EngineStats.queue_tokens``) plus its own, over the engine's
measured throughput. Past the deadline it answers 503 with a Retry-After that
says when the queue will have drained enough, and the engine keeps computing
requests that can still finish.

The throughput is measured, not configured (``ThroughputMeter``): an EWMA of
the tokens of requests that finished per second while the engine was busy.
Until a first sample nothing is refused, and a request that finds the queue
empty is always admitted: retrying it later would not help.

Request priority keeps headroom for urgent work: a request of class p may wait
only its class's share of the budget (``admission_share``: all of it for the
default class and the more urgent ones, ``BatchingConfig.least_urgent_queue_share``
of it for the least urgent), so a flood of low-priority requests stops being
admitted while the others still are, as the engine's own queue bound does per
class. The gate
reports every request's outcome and engine time by class (``Outcome``), for
the per-class metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from textfleet.engine import priority as classes
from textfleet.engine.errors import Overloaded

log = logging.getLogger(__name__)

HEADROOM = 0.7
"""Admit only when the estimated wait is within this share of the deadline: the
estimate ignores the HTTP hops, tokenization and other work competing for the cores."""

CHARS_PER_TOKEN = 4
"""Characters per WordPiece token of English text, for a request not yet tokenized
(CJK text has fewer: its cost is underestimated, never refused wrongly)."""

MAX_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class Decision:
    """Whether to take a request, and the wait it was judged by."""

    admit: bool
    wait_s: float
    """Estimated seconds until the request's result (0 when unknown)."""
    retry_after_s: float = 0.0
    """When refused: seconds until the queue has drained enough to admit it."""
    budget_s: float = 0.0
    """The most estimated wait admitted (0 when not judged)."""


Outcome = Callable[[int, str, float], None]
"""Told each request's priority class, its outcome and the seconds it spent in the
engine (0 when refused at the gate). Outcomes: ``ok``; ``shed_deadline`` (refused
here); ``shed_queue`` (the engine's queue bound for its class); ``timeout`` (its
deadline passed); ``cancelled`` (the caller left); ``error`` (anything else)."""


def estimate_tokens(texts: Iterable[str], max_length: int | None) -> int:
    """Tokens of texts not yet tokenized: each its special tokens plus a token per
    ``CHARS_PER_TOKEN`` characters, truncated at ``max_length`` (None: an engine that
    runs long texts in windows computes all of them)."""
    cap = max_length or sys.maxsize
    return sum(min(cap, 2 + len(t) // CHARS_PER_TOKEN) for t in texts)


def decide(
    queue_tokens: int,
    request_tokens: int,
    tokens_per_s: float | None,
    deadline_s: float | None,
    batch_tokens: int = 0,
    headroom: float = HEADROOM,
    share: float = 1.0,
) -> Decision:
    """Admit a request of ``request_tokens`` behind ``queue_tokens`` on an engine
    computing ``tokens_per_s`` in batches of up to ``batch_tokens``, given
    ``deadline_s`` to answer, when its class may wait ``share`` of the budget
    (``headroom`` of the deadline)? Pure.

    A request's rows come back only when the whole batch they joined is done,
    and behind a queue that batch is a full one: up to ``batch_tokens`` more
    work than the tokens ahead, which matters when one batch takes a good part
    of the deadline (long texts)."""
    if deadline_s is None or not tokens_per_s or tokens_per_s <= 0:
        return Decision(True, 0.0)
    work = queue_tokens + request_tokens + min(max(0, queue_tokens), batch_tokens)
    wait_s = work / tokens_per_s
    budget = deadline_s * headroom * share
    if queue_tokens <= 0 or wait_s <= budget:
        return Decision(True, wait_s, budget_s=budget)
    # The queue must shrink by what is over budget; it drains at tokens_per_s.
    retry = min(float(MAX_RETRY_AFTER_S), max(1.0, wait_s - budget))
    return Decision(False, wait_s, retry, budget)


class ThroughputMeter:
    """The engine's throughput in real tokens per second of a busy engine, from
    its own runs: the real tokens of the batches it computed and the seconds
    those runs took, divided among the workers computing side by side
    (``Engine.compute_totals``). Runs are timed on the wall clock, so whatever
    competes for the cores slows them and shows here.

    Samples span at least ``min_s`` of compute; the EWMA of tokens and of seconds
    are kept apart, so a slow sample (long texts, whose tokens cost more) weighs by
    its length. The first sample of a replica is skipped: it holds the one-time
    costs of a fresh process (first runs, page faults).

    Not measured from requests as they finish: they finish a batch at a time,
    and samples cut between two requests of one batch counted one request's
    tokens for the whole batch's time (a fresh replica refused most of a burst
    it could serve, judging "87 s of work queued" where a few seconds were).
    """

    def __init__(self, alpha: float = 0.3, min_s: float = 0.5, skip_first: bool = True):
        self.alpha = alpha
        self.min_s = min_s
        self._skip = skip_first
        self._avg_tokens: float | None = None
        self._avg_s = 0.0

    def observe(self, tokens: float, seconds: float) -> None:
        """``tokens`` computed in ``seconds`` of a busy engine."""
        if seconds < self.min_s or tokens <= 0:
            return
        if self._skip:
            self._skip = False
            return
        if self._avg_tokens is None:
            self._avg_tokens, self._avg_s = float(tokens), seconds
        else:
            self._avg_tokens += self.alpha * (tokens - self._avg_tokens)
            self._avg_s += self.alpha * (seconds - self._avg_s)

    @property
    def tokens_per_s(self) -> float | None:
        if self._avg_tokens is None or self._avg_s <= 0:
            return None
        return self._avg_tokens / self._avg_s


class AdmissionGate:
    """The engine as the task adapters see it, refusing what cannot meet its deadline.

    Wraps the async task methods (``aembed``, ``aclassify``, ``aentities``,
    ``ascore``, ``arerank``); everything else is the engine's own. A call
    without a timeout is never refused here (only by the queue bound).

    The work ahead of a new request is what the gate has admitted and not seen
    finish (its own estimate of each request's tokens), or the engine's queue
    if that says more: ``queue_tokens`` alone leaves out the batches being
    computed, up to ``max_batch_tokens`` per executor thread.

    ``on_outcome`` (optional) hears every request's class, outcome and engine time.
    """

    def __init__(self, engine: Any, on_outcome: Outcome | None = None):
        self._engine = engine
        self._on_outcome = on_outcome
        self.meter = ThroughputMeter()
        self.outstanding_tokens = 0
        # Compute totals where the current sample began (after a warmup, if any).
        self._sampled: tuple[int, float] = engine.compute_totals()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def check(
        self, texts: Iterable[str], deadline_s: float | None, priority: int | None = None
    ) -> tuple[Decision, int]:
        """The decision for ``texts`` of class ``priority`` (None: the default) and their
        estimated tokens; raises ``Overloaded`` (503 + Retry-After) if they would miss
        the deadline, or wait longer than their class's share of it."""
        windows = getattr(self._engine, "on_overflow", "truncate") == "window"
        tokens = estimate_tokens(_strings(texts), None if windows else self._engine.max_length)
        if deadline_s is None:
            return Decision(True, 0.0), tokens
        self._sample()
        stats = self._engine.stats()
        rate = self.meter.tokens_per_s
        ahead = max(stats.queue_tokens, self.outstanding_tokens)
        batching = self._engine.batching
        share = classes.admission_share(priority, batching)
        batch = batching.max_batch_tokens
        decision = decide(ahead, tokens, rate, deadline_s, batch_tokens=batch, share=share)
        if not decision.admit:
            klass = classes.DEFAULT if priority is None else priority
            raise Overloaded(
                f"overloaded: about {decision.wait_s:.1f} s of work is queued ahead of this "
                f"request; priority {klass} is admitted while that is at most "
                f"{decision.budget_s:.1f} s of its {deadline_s:g} s deadline; retry after "
                f"{math.ceil(decision.retry_after_s)} s",
                retry_after_s=decision.retry_after_s,
            )
        return decision, tokens

    async def _admit(
        self, texts: Any, deadline_s: float | None, method: str, *args: Any, **options: Any
    ):
        """``engine.<method>(*args, timeout=deadline_s, **options)`` once admitted, counted
        until done; its outcome reported by class."""
        priority = classes.check_priority(options.get("priority"))
        klass = classes.DEFAULT if priority is None else priority
        try:
            _, tokens = self.check(texts, deadline_s, priority)
        except Overloaded:
            self._report(klass, "shed_deadline", 0.0)
            raise
        self.outstanding_tokens += tokens
        start, outcome = time.perf_counter(), "error"
        try:
            result = await getattr(self._engine, method)(*args, timeout=deadline_s, **options)
            outcome = "ok"
            return result
        except Overloaded:
            outcome = "shed_queue"
            raise
        except TimeoutError:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.outstanding_tokens -= tokens
            self._sample()
            self._report(klass, outcome, time.perf_counter() - start)

    def _report(self, klass: int, outcome: str, seconds: float) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(klass, outcome, seconds)
        except Exception:  # metrics must never fail a request
            log.exception("reporting a request's outcome failed")

    def _sample(self) -> None:
        """Feed the meter the engine's runs since the last sample, once they add up
        to ``meter.min_s`` of compute per worker."""
        tokens, seconds = self._engine.compute_totals()
        workers = self._engine.batching.workers or 1
        t0, s0 = self._sampled
        busy_s = (seconds - s0) / workers
        if busy_s >= self.meter.min_s:
            self.meter.observe(tokens - t0, busy_s)
            self._sampled = (tokens, seconds)

    async def aembed(self, texts, timeout=None, **options):
        return await self._admit(texts, timeout, "aembed", texts, **options)

    async def aembed_with_usage(self, texts, timeout=None, **options):
        return await self._admit(texts, timeout, "aembed_with_usage", texts, **options)

    async def aclassify(self, texts, top_k=1, timeout=None, **options):
        return await self._admit(texts, timeout, "aclassify", texts, top_k, **options)

    async def aentities(self, texts, aggregation=None, timeout=None, **options):
        return await self._admit(texts, timeout, "aentities", texts, aggregation, **options)

    async def ascore(self, pairs, raw_scores=False, timeout=None, **options):
        texts = _pair_texts(pairs)
        return await self._admit(texts, timeout, "ascore", pairs, raw_scores, **options)

    async def arerank(
        self, query, documents, top_k=None, raw_scores=False, timeout=None, **options
    ):
        query_text = query if isinstance(query, str) else ""
        texts = [f"{query_text} {d}" for d in _strings(documents)]
        args = (query, documents, top_k, raw_scores)
        return await self._admit(texts, timeout, "arerank", *args, **options)


def _strings(items: Any) -> list[str]:
    """The str items of what a caller sent; the engine reports anything else."""
    if not isinstance(items, list | tuple):
        return []
    return [x for x in items if isinstance(x, str)]


def _pair_texts(pairs: Any) -> list[str]:
    out = []
    for p in pairs if isinstance(pairs, list | tuple) else ():
        if isinstance(p, list | tuple) and len(p) == 2:
            out.append(" ".join(_strings(p)))
    return out
