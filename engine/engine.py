"""Engine: one loaded model; texts in, one result row per text out, in input order.

Every call goes through one native scheduler (csrc/scheduler.h, driven by
engine/scheduler.py): texts are tokenized natively with the GIL released,
queued, and batched across all concurrent callers by the batch former
(oldest first, then similar lengths, under a padded token budget: padded cost
= rows x longest row, the work the model really does). One executor thread
runs the backend and the task head on each batch and hands every row back
to its request. ``embed`` (sync) and ``aembed`` (asyncio) share it, so the
engine is safe to call from many threads and tasks at once.

``plan_batches`` is the offline planner (all lengths known up front, sorted);
benchmarks use it as the compute limit to compare the scheduler against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from textfleet.engine import _native
from textfleet.engine.backends.base import Backend, create_backend, physical_cores
from textfleet.engine.batch import Batch
from textfleet.engine.config import BatchingConfig
from textfleet.engine.errors import EngineError, ModelDirError
from textfleet.engine.heads import HEADS
from textfleet.engine.model_dir import ModelDir, ModelInfo
from textfleet.engine.scheduler import Scheduler
from textfleet.engine.tasks.api import TaskMethods, TaskState
from textfleet.engine.tokenizer import Tokenizer, check_texts, default_threads

# Texts per request when embed() splits a large input, and how many such
# requests it keeps queued: enough for length-aware batches without filling
# the queue other callers share.
EMBED_CHUNK = 1024
EMBED_WINDOW = 2


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int
) -> list[np.ndarray]:
    """Split sequence indices into length-sorted batches, returned longest first.

    Batches are filled from the shortest sequence up: a batch closes before the
    next (longer) sequence would make ``rows x longest`` exceed
    ``max_batch_tokens`` or rows exceed ``max_batch_size``. Filling from the
    short end leaves the odd-sized batch at the long end, so a few outliers
    (long texts in a mostly short request) are padded among themselves rather
    than widening a full batch of short ones. A sequence longer than the budget
    gets a batch of one (it must run somewhere). Every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    ascending = lengths[order].tolist()  # Python ints: the loop below is scalar work
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        end = start + 1
        while (
            end < n
            and end - start < max_batch_size
            and (end - start + 1) * ascending[end] <= max_batch_tokens
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    batches.reverse()  # the widest batch first: a memory problem shows at once
    return batches


def default_workers(device: str) -> int:
    """Executor threads when ``BatchingConfig.workers`` is None: two on a CPU with
    cores to share (see the knob), one on a GPU (a second stream of batches there
    needs its own CUDA stream to overlap, which the backends do not use)."""
    return 2 if device == "cpu" and physical_cores() >= 2 else 1


def effective_max_length(model_limit: int, requested: int | None) -> int:
    """The model directory's ``max_length``, or a lower one asked for at load.

    Raising it is refused: the directory's limit is what the model was built
    for (position embeddings, the length it was trained and checked at).
    """
    if requested is None:
        return model_limit
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 4:
        raise ValueError(f"max_length must be an int >= 4, got {requested!r}")
    if requested > model_limit:
        raise ValueError(
            f"max_length {requested} is above the model directory's max_length {model_limit}; "
            "it can only be lowered"
        )
    return requested


class Engine(TaskMethods):
    """One model: tokenizer + backend + task head. Build with ``Engine.load``.

    ``embed`` serves embedding models; ``classify``, ``entities``, ``score``
    and ``rerank`` (engine/tasks/api.py) the other tasks. All go through
    ``_forward`` / ``_aforward``: one scheduler, one batching path.
    """

    def __init__(
        self,
        model_dir: ModelDir,
        tokenizer: Tokenizer,
        backend: Backend,
        batching: BatchingConfig,
    ):
        info = model_dir.info
        if info.task not in HEADS:
            raise ModelDirError(
                f"{model_dir.path}: task {info.task!r} has no head in this engine "
                f"(supported: {', '.join(HEADS)})"
            )
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.backend = backend
        self.batching = batching
        self.head = HEADS[info.task](info)
        self._task = TaskState.from_model_dir(model_dir)  # labels etc.: errors at load
        self._closed = False
        self._scheduler = self._start_scheduler()

    def _start_scheduler(self) -> Scheduler:
        cfg = self.batching
        knobs = _native.BatchKnobs(
            max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_ms=cfg.max_wait_ms,
            max_row_padding=cfg.max_row_padding,
            fairness=cfg.fairness,
        )
        encoder, pretokenize = self.tokenizer.native, None
        if encoder is None:  # Hugging Face fallback: tokenize in Python, queue the ids
            encoder = _native.PretokenizedEncoder(self.max_length, self.tokenizer.pad_id)
            pretokenize = self._pretokenize
        native = _native.Scheduler(
            encoder,
            knobs,
            max_queue_tokens=cfg.max_queue_tokens,
            tokenizer_threads=cfg.tokenizer_threads or default_threads(),
        )
        # Token classification rows are ragged ([tokens, labels] per text): keep a list.
        finalize = list if self.info.task == "token-classification" else np.stack
        return Scheduler(
            native,
            self._run_batch,
            finalize,
            pretokenize,
            name=self.info.name,
            workers=cfg.workers or 1,
        )

    def _pretokenize(self, texts: list[str], pairs: list[str] | None):
        encs = self.tokenizer.encode_batch(texts, pairs)
        return [e.ids for e in encs], [e.type_ids for e in encs]

    def _run_batch(self, batch: Batch):
        """Runs on the executor thread: backend + head, one row per sequence."""
        rows = self.head(self.backend.run(batch), batch)
        if len(rows) != batch.rows:  # every row must come back exactly once
            raise EngineError(f"head returned {len(rows)} rows for a batch of {batch.rows}")
        return rows

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | ModelDir,
        backend: str = "onnxruntime",
        device: str = "cpu",
        threads: int | None = None,
        batching: BatchingConfig | dict | None = None,
        max_length: int | None = None,
    ) -> Engine:
        """Open and validate the model directory, load the tokenizer and the backend.

        ``batching``: a ``BatchingConfig`` (used as is), a dict of knobs (over the
        model directory's defaults, see ``ModelInfo.batching``) or None (those defaults).
        ``max_length``: truncate inputs to fewer tokens than the directory's
        ``max_length`` (cheaper, bounded latency); None keeps the directory's.
        """
        md = model_dir if isinstance(model_dir, ModelDir) else ModelDir.open(model_dir)
        batching = resolve_batching(md.info.batching, batching)
        tokenizer = Tokenizer.from_file(
            md.tokenizer_path,
            max_length=effective_max_length(md.info.max_length, max_length),
            num_threads=batching.tokenizer_threads,
        )
        if batching.workers is None:
            batching = batching.model_copy(update={"workers": default_workers(device)})
        solo_threads = None
        if threads is None and batching.workers > 1 and device == "cpu":
            # Each worker's runs get its share of the cores; a lone text, while no
            # other worker computes, gets them all (see Batch.alone).
            solo_threads = physical_cores()
            threads = max(1, solo_threads // batching.workers)
        runtime = create_backend(
            backend, md, device=device, threads=threads, solo_threads=solo_threads
        )
        runtime.load()
        return cls(md, tokenizer, runtime, batching)

    @property
    def info(self) -> ModelInfo:
        return self.model_dir.info

    @property
    def max_length(self) -> int:
        """Tokens per sequence this engine keeps (special tokens included)."""
        return self.tokenizer.max_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], row i for texts[i].

        A non-str item raises TypeError naming its index; texts longer than
        ``max_length`` tokens are truncated.
        """
        self._require("embedding", "embed")
        texts = check_texts(texts, "texts")
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        return self._forward(texts)

    async def aembed(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """``embed`` for asyncio callers: the result is delivered on the caller's loop.

        ``timeout`` (seconds): past it the caller gets TimeoutError and the request's
        sequences not yet computed leave the queue. Overloaded when the queue is full.
        """
        self._require("embedding", "aembed")
        texts = check_texts(texts, "texts")
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        return await self._aforward(texts, None, timeout)

    async def aembed_with_usage(
        self, texts: Sequence[str], timeout: float | None = None
    ) -> tuple[np.ndarray, int]:
        """``aembed``, and the tokens the model computed for these texts (special
        tokens in, truncated at ``max_length``: OpenAI's ``usage.prompt_tokens``),
        counted from the request's own batches rather than by tokenizing again."""
        self._require("embedding", "aembed_with_usage")
        texts = check_texts(texts, "texts")
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32), 0
        self._check_open()
        return await self._scheduler.run_async_counted(texts, None, timeout)

    def _forward(self, texts: list[str], pairs: list[str] | None = None):
        """One head row per text (or pair), in input order, from a blocking caller.

        Rows are a float32 array [n, ...], or a list of arrays for token
        classification. Pairs are tokenized together, so both segments count
        toward the batch's token budget. A large input is queued in chunks
        (``EMBED_CHUNK`` texts, ``EMBED_WINDOW`` at a time) so it does not fill
        the queue that concurrent callers share.
        """
        self._check_open()
        if not texts:
            return []
        parts = self._scheduler.run_chunked(texts, pairs, chunk=EMBED_CHUNK, window=EMBED_WINDOW)
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)
        return [row for part in parts for row in part]

    async def _aforward(self, texts: list[str], pairs: list[str] | None, timeout: float | None):
        """``_forward`` for asyncio callers: one request, resolved on the caller's loop."""
        self._check_open()
        if not texts:
            return []
        return await self._scheduler.run_async(texts, pairs, timeout)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens in, truncated at max_length).

        Tokenizes again (at most max_length tokens of work per text); a request's
        own count comes with its result from ``aembed_with_usage``.
        """
        self._check_open()
        texts = check_texts(texts, "texts")
        if not texts:
            return []
        return self.tokenizer.tokenize(texts).lengths.tolist()

    def stats(self) -> dict:
        """Counters since load (see ``scheduler_stats``)."""
        return scheduler_stats(self._scheduler.stats())

    def health(self) -> bool:
        return not self._closed and self._scheduler.alive and self.backend.health()

    def close(self) -> None:
        """Stop the scheduler (waiting calls fail with EngineClosed) and release the
        backend. Further calls raise EngineError. Idempotent."""
        if not self._closed:
            self._closed = True
            self._scheduler.close(drain=False)
            self.backend.unload()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"engine for {self.info.name!r} is closed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Engine({self.info.name!r}, task={self.info.task!r}, backend={self.backend.name!r}, "
            f"device={self.backend.device!r}, tokenizer={self.tokenizer.backend!r})"
        )


def resolve_batching(
    defaults: BatchingConfig | None, given: BatchingConfig | dict | None
) -> BatchingConfig:
    """The knobs to use: a full ``BatchingConfig`` as given; a dict over the model
    directory's defaults, knob by knob; None: those defaults (or the global ones).
    An invalid knob raises pydantic's ValidationError naming it."""
    if isinstance(given, BatchingConfig):
        return given
    base = defaults.model_dump(exclude_unset=True) if defaults is not None else {}
    return BatchingConfig.model_validate({**base, **(given or {})})


def scheduler_stats(s: dict) -> dict:
    """``engine.stats()``: the native scheduler's counters, plus derived figures.

    Cumulative: requests, sequences, batches, real_tokens, padded_tokens,
    tokenize_s, compute_s, rejected, timed_out, cancelled, errors (requests that
    failed), failed_batches, dropped_sequences (never computed: cancelled or
    expired). Gauges: queue_sequences, queue_tokens, live_requests. Derived:
    padding_efficiency (real / padded tokens), padding_ratio (1 - efficiency),
    mean_batch_size. Histograms (``{"bounds", "counts", "sum", "count"}``, the
    last count is +Inf): batch_size, queue_wait_s (per sequence), compute_time_s
    (per batch).
    """
    real, padded, batches = s["real_tokens"], s["padded_tokens"], s["batches"]
    efficiency = real / padded if padded else 1.0
    return {
        "requests": s["requests"],
        "sequences": s["sequences"],
        "batches": batches,
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_efficiency": efficiency,
        "padding_ratio": 1.0 - efficiency,
        "mean_batch_size": s["batch_sequences"] / batches if batches else 0.0,
        "tokenize_s": s["tokenize_s"],
        "compute_s": s["compute_s"]["sum"],
        "rejected": s["rejected"] + s["rejected_too_large"],
        "timed_out": s["timeouts"],
        "cancelled": s["cancellations"],
        "errors": s["failed_requests"],
        "failed_batches": s["failed_batches"],
        "dropped_sequences": s["dropped_sequences"],
        "prefetched_batches": s["prefetched_batches"],
        "queue_sequences": s["queue_sequences"],
        "queue_tokens": s["queue_tokens"] + s["reserved_tokens"] + s["prefetched_tokens"],
        "live_requests": s["live_requests"],
        "batch_size": s["batch_size"],
        "queue_wait_s": s["queue_wait_s"],
        "compute_time_s": s["compute_s"],
    }
