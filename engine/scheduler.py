"""Python side of the native scheduler: the executor thread and the callers' futures.

The native ``Scheduler`` (csrc/scheduler.h) queues, batches and collates; this
module owns what needs Python:

- the executor threads (``workers``, one by default) that loop
  ``next_batch()`` (the GIL is released while they wait), run the model on
  the batch and hand every row back to its request by ``(request id,
  index)``. Several workers compute different batches side by side (each
  backend run single-threaded, say): no fork-join barrier inside a run for
  another process to stall on a small shared CPU;
- the callers' side: ``run_async`` resolves an asyncio future on the caller's
  own loop (``call_soon_threadsafe``), ``run_sync`` wakes a waiting thread.
  ``run_async_counted`` also gives the request's tokens, summed from the rows
  of its own batches (no second tokenization for a usage count).

Every request is resolved exactly once: whoever removes it from ``_pending``
(under ``_lock``) resolves it, be it the executor (result or batch failure), a
timeout, a cancellation or ``close``. A batch that raises fails exactly the
requests with rows in it; their other sequences are cancelled so nothing more
is computed for them, and the executor goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textfleet.engine import _native
from textfleet.engine.batch import Batch
from textfleet.engine.errors import EngineError, Overloaded, TooLarge
from textfleet.engine.priority import check_priority

log = logging.getLogger(__name__)

RunBatch = Callable[[Batch], Sequence[Any]]
"""Computes one batch: per-row outputs, ``len(outputs) == batch.rows``."""

Finalize = Callable[[list], Any]
"""Turns a request's rows (in input order) into its result."""

Pretokenize = Callable[[list[str], "list[str] | None"], tuple[list, list]]
"""Tokenizes in Python (the Hugging Face fallback): ``(ids, type_ids)`` per text."""


@dataclass(frozen=True)
class Sequences:
    """Sequences tokenized already (special tokens in), queued as they are instead of
    texts: the windows of long texts (engine/overflow.py). Sliced like a list of texts."""

    ids: list[list[int]]
    type_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> Sequences:
        return Sequences(self.ids[part], self.type_ids[part])


class EngineClosed(EngineError):
    """The engine was closed before this request was computed."""


class _Pending:
    """One submitted request until it is resolved."""

    __slots__ = ("rows", "left", "tokens", "loop", "future", "event", "value", "error")

    def __init__(self, n: int, loop=None, future=None):
        self.rows: list = [None] * n
        self.left = n
        self.tokens = 0  # real tokens of the rows delivered so far
        self.loop = loop  # set for asyncio callers
        self.future = future
        self.event = None if loop is not None else threading.Event()  # sync callers
        self.value = None
        self.error: BaseException | None = None


class Ticket:
    """A request submitted from a thread; ``result()`` waits for it."""

    __slots__ = ("_scheduler", "_rid", "_pending", "_timeout")

    def __init__(self, scheduler: Scheduler, rid: int, pending: _Pending, timeout):
        self._scheduler = scheduler
        self._rid = rid
        self._pending = pending
        self._timeout = timeout

    def result(self):
        """The result; TimeoutError once the request's timeout has passed."""
        p, timeout = self._pending, self._timeout
        if not p.event.wait(timeout) and self._scheduler._abandon(self._rid, timed_out=True):
            raise TimeoutError(f"request timed out after {timeout} s")
        p.event.wait()  # resolved meanwhile: the result is being set
        if p.error is not None:
            raise p.error
        return p.value

    def cancel(self) -> bool:
        """Stop waiting; False if it was resolved already."""
        return self._scheduler._abandon(self._rid, timed_out=False)


def _settle_many(items) -> None:
    """Runs on a caller's loop: resolve the futures that are still waiting
    (with ``(result, tokens)``, see ``Scheduler.run_async_counted``)."""
    for future, value, error in items:
        if future.done():  # timed out or cancelled meanwhile
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Scheduler:
    """Submits requests to a native scheduler and runs its batches on ``workers`` threads."""

    def __init__(
        self,
        native: _native.Scheduler,
        run_batch: RunBatch,
        finalize: Finalize = np.stack,
        pretokenize: Pretokenize | None = None,
        name: str = "engine",
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._native = native
        self._run_batch = run_batch
        self._finalize = finalize
        self._pretokenize = pretokenize
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self._running = workers  # executors still looping; the last one out fails the rest
        self._computing = 0  # executors inside a backend run
        self._computed_tokens = 0  # real tokens of the batches computed (compute_totals)
        self._compute_s = 0.0
        self._threads = [
            threading.Thread(
                target=self._executor, name=f"textfleet-executor-{name}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # ---- callers ---------------------------------------------------------------

    async def run_async(
        self,
        texts: list[str] | Sequences,
        pairs=None,
        timeout: float | None = None,
        priority: int | None = None,
    ):
        """The request's result; raises TimeoutError, Overloaded, TooLarge or the batch error.

        ``priority``: its class (engine/priority.py: lower is more urgent; None: the
        default class); out of range is an InputError."""
        result, _ = await self.run_async_counted(texts, pairs, timeout, priority)
        return result

    async def run_async_counted(
        self,
        texts: list[str] | Sequences,
        pairs=None,
        timeout: float | None = None,
        priority: int | None = None,
    ) -> tuple[Any, int]:
        """``run_async``'s result and the request's tokens: the real (unpadded) tokens
        of its rows as the model computed them, special tokens in, truncated."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = _Pending(len(texts), loop, future)
        rid = self._submit(texts, pairs, timeout, pending, priority)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire_async, rid, future, timeout)
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up: compute nothing more for it
            self._abandon(rid, timed_out=False)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def submit(
        self,
        texts: list[str] | Sequences,
        pairs=None,
        timeout: float | None = None,
        priority: int | None = None,
    ) -> Ticket:
        """Queue a request for a thread to wait on (``Ticket.result()``)."""
        pending = _Pending(len(texts))
        rid = self._submit(texts, pairs, timeout, pending, priority)
        return Ticket(self, rid, pending, timeout)

    def run_sync(
        self,
        texts: list[str] | Sequences,
        pairs=None,
        timeout: float | None = None,
        priority: int | None = None,
    ):
        """``run_async``, blocking the calling thread."""
        return self.submit(texts, pairs, timeout, priority).result()

    def run_chunked(
        self,
        texts: list[str] | Sequences,
        pairs=None,
        chunk: int = 1024,
        window: int = 2,
        priority: int | None = None,
    ):
        """Results of consecutive chunks of a large input, each its own request.

        At most ``window`` chunks wait in the queue at a time. A chunk larger than
        the whole queue bound is halved until it fits (TooLarge only for a single
        text); when other callers filled the queue, the oldest chunk is awaited.
        """
        results: list = []
        waiting: collections.deque[Ticket] = collections.deque()
        start, size = 0, chunk
        try:
            while start < len(texts):
                end = min(len(texts), start + size)
                try:
                    part = None if pairs is None else pairs[start:end]
                    waiting.append(self.submit(texts[start:end], part, priority=priority))
                except TooLarge:
                    if end - start == 1:
                        raise
                    size = (end - start) // 2
                    continue
                except Overloaded:
                    if not waiting:
                        raise
                    results.append(waiting.popleft().result())
                    continue
                start = end
                while len(waiting) >= window:
                    results.append(waiting.popleft().result())
            while waiting:
                results.append(waiting.popleft().result())
        except BaseException:
            for ticket in waiting:  # nobody will read them: compute nothing more
                ticket.cancel()
            raise
        return results

    def _submit(self, texts, pairs, timeout, pending: _Pending, priority: int | None) -> int:
        if not texts:
            raise ValueError("texts must not be empty")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        priority = check_priority(priority)
        if priority is None:
            priority = _native.PRIORITY_DEFAULT
        rid = next(self._ids)
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._pending[rid] = pending
        try:
            if isinstance(texts, Sequences):
                self._native.submit_tokens(rid, texts.ids, texts.type_ids, timeout, priority)
            elif self._pretokenize is None:
                self._native.submit(rid, texts, pairs, timeout, priority)
            else:
                ids, type_ids = self._pretokenize(texts, pairs)
                self._native.submit_tokens(rid, ids, type_ids, timeout, priority)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(rid, None)
            raise self._map_submit_error(exc) from exc
        return rid

    def _map_submit_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, _native.QueueFull):
            return Overloaded(str(exc), retry_after_s=self._retry_after())
        if isinstance(exc, _native.RequestTooLarge):
            return TooLarge("texts", str(exc))
        return exc

    def _retry_after(self) -> float:
        """About how long the queue takes to drain, from the measured compute rate."""
        s = self._native.stats()
        per_token = s.compute_s.sum / max(1, s.padded_tokens)
        return float(min(30.0, max(0.1, s.queue_tokens * per_token)))

    def _expire_async(self, rid: int, future: asyncio.Future, timeout: float) -> None:
        if not future.done() and self._abandon(rid, timed_out=True):
            future.set_exception(TimeoutError(f"request timed out after {timeout} s"))

    def _abandon(self, rid: int, timed_out: bool) -> bool:
        """Stop waiting for a request; False if it was resolved already."""
        with self._lock:
            if self._pending.pop(rid, None) is None:
                return False
        self._native.cancel(rid, timed_out=timed_out)
        if timed_out:  # the caller raises after this returns
            self._native.record_outcomes(timeouts=1)
        else:
            self._native.record_outcomes(cancellations=1)
        return True

    # ---- executor ----------------------------------------------------------------

    def _executor(self) -> None:
        try:
            while (nb := self._native.next_batch()) is not None:
                if nb.failures:
                    self._fail({rid: RuntimeError(msg) for rid, msg in nb.failures})
                if nb.rows:
                    self._run_one(nb)
        except BaseException:  # a bug here must not leave callers waiting forever
            log.exception("scheduler executor stopped")
            self._native.shutdown(drain=False)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:  # others may still be computing a drained batch until then
            self._fail_all(EngineClosed("the engine is closed"))

    def _run_one(self, nb) -> None:
        # A lone row while no other worker computes (one text at a quiet time):
        # the backend may run it on all the cores instead of one worker's share.
        with self._lock:
            alone = self._computing == 0 and nb.rows == 1
            self._computing += 1
        start = time.perf_counter()
        error: Exception | None = None
        try:
            batch = Batch(*nb.arrays, alone=alone)
            out = self._run_batch(batch)
            if len(out) != nb.rows:
                raise RuntimeError(f"the model returned {len(out)} rows for a batch of {nb.rows}")
        except Exception as exc:
            error = exc
        finally:
            # Before the results go out: a caller's next request, sent the moment
            # it has this one's result, must see this worker as free.
            with self._lock:
                self._computing -= 1
        seconds = time.perf_counter() - start
        self._native.record_compute(seconds, error is not None, nb.rows * nb.width)
        if error is None:
            with self._lock:
                self._computed_tokens += nb.real_tokens
                self._compute_s += seconds
        if error is not None:
            log.warning("batch %d of %d rows failed: %r", nb.id, nb.rows, error)
            self._fail(dict.fromkeys(nb.request_ids, error))
            return
        self._deliver(nb.request_ids, nb.indices, out, batch.attention_mask.sum(axis=1).tolist())

    def _deliver(self, rids: list[int], indices: list[int], out, lengths: list[int]) -> None:
        done: list[_Pending] = []
        with self._lock:
            pending = self._pending
            for i, (rid, index) in enumerate(zip(rids, indices, strict=True)):
                p = pending.get(rid)
                if p is None:  # timed out or cancelled while it computed
                    continue
                p.rows[index] = out[i]
                p.tokens += lengths[i]
                p.left -= 1
                if p.left == 0:
                    del pending[rid]
                    done.append(p)
        failed = 0
        for p in done:
            try:
                p.value = self._finalize(p.rows)
            except Exception as exc:
                p.error, failed = exc, failed + 1
            p.rows = None
        if done:  # counted before callers wake, so they see their own request in stats()
            self._native.record_outcomes(ok=len(done) - failed, failed=failed)
        self._resolve(done)

    def _fail(self, errors: dict[int, BaseException]) -> None:
        """Fail these requests and cancel what is left of them."""
        done: list[_Pending] = []
        with self._lock:
            for rid, exc in errors.items():
                p = self._pending.pop(rid, None)
                if p is not None:
                    p.error = exc
                    done.append(p)
        for rid in errors:
            self._native.cancel(rid)
        if done:
            self._native.record_outcomes(failed=len(done))
        self._resolve(done)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self._closed = True
            rids = list(self._pending)
        self._fail(dict.fromkeys(rids, exc))

    @staticmethod
    def _resolve(done: list[_Pending]) -> None:
        by_loop: dict[Any, list] = {}
        for p in done:
            if p.loop is None:
                p.event.set()
            else:
                by_loop.setdefault(p.loop, []).append((p.future, (p.value, p.tokens), p.error))
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_many, items)

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests submitted and not resolved yet."""
        with self._lock:
            return len(self._pending)

    def stats(self) -> _native.SchedulerStats:
        return self._native.stats()

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop: queued requests are computed first if drain, else fail with EngineClosed."""
        with self._lock:
            self._closed = True
        self._native.shutdown(drain=drain)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)

    def compute_totals(self) -> tuple[int, float]:
        """Real tokens of the batches computed so far, and the seconds those runs took
        (summed over the workers): the engine's pace, from its own runs."""
        with self._lock:
            return self._computed_tokens, self._compute_s

    @property
    def busy(self) -> bool:
        """A request is waiting for its results, or a batch is computing."""
        with self._lock:
            return bool(self._pending) or self._computing > 0

    @property
    def alive(self) -> bool:
        """Every executor thread is still looping."""
        return all(thread.is_alive() for thread in self._threads)
