"""Engine: one loaded model; texts in, one result row per text out, in input order.

Every call goes through one native scheduler (csrc/scheduler.h, driven by
engine/scheduler.py): texts are tokenized natively with the GIL released,
queued, and batched across all concurrent callers by the batch former
(oldest first, then similar lengths, under a padded token budget: padded cost
= rows x longest row, the work the model really does). Executor threads
(``BatchingConfig.workers``) run the backend and the task head on each batch
and hand every row back to its request. ``embed`` (sync) and ``aembed`` (asyncio) share it, so the
engine is safe to call from many threads and tasks at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

import numpy as np

from textfleet.engine import _native
from textfleet.engine.backends.base import Backend, create_backend, physical_cores
from textfleet.engine.batch import Batch
from textfleet.engine.config import BatchingConfig, EngineConfig, device_batching
from textfleet.engine.cpu_int8 import warn_if_drifting
from textfleet.engine.errors import EngineError
from textfleet.engine.memory import IdleMemoryRelease
from textfleet.engine.model_dir import ModelDir, ModelInfo
from textfleet.engine.overflow import Overflow, WindowPlan
from textfleet.engine.priority import check_priority, class_queue_tokens
from textfleet.engine.scheduler import Scheduler
from textfleet.engine.stats import EngineStats
from textfleet.engine.tasks import embedding
from textfleet.engine.tasks.api import TaskMethods
from textfleet.engine.tasks.registry import get_task
from textfleet.engine.tokenizer import Tokenizer, check_texts, default_threads

# Characters of a request whose tokens an asyncio caller counts on its own loop
# (on_overflow error or window); a larger request is counted on a thread.
INLINE_PLAN_CHARS = 16_384

# Texts per request when embed() splits a large input, and how many such
# requests it keeps queued: enough for length-aware batches without filling
# the queue other callers share.
EMBED_CHUNK = 1024
EMBED_WINDOW = 2


def default_workers(device: str, threads: int | None = None) -> int:
    """Executor threads when ``BatchingConfig.workers`` is None: two on a CPU with
    cores to share (see the knob), one on a GPU (a second stream of batches there
    needs its own CUDA stream to overlap, which the backends do not use).

    ``threads`` set by hand are every run's: no more workers than the physical
    cores hold at that many threads each. Two workers on two 2-thread runs would
    keep three or four compute threads busy on two cores, and each run's
    fork-join steps would wait for whichever of its threads was preempted.
    """
    if device != "cpu":
        return 1
    cores = physical_cores()
    workers = 2 if cores >= 2 else 1
    if threads is not None:
        workers = min(workers, max(1, cores // threads))
    return workers


def effective_max_length(model_limit: int, requested: int | None) -> int:
    """The model directory's ``max_length``, or a lower one asked for at load.

    Raising it is refused: the directory's limit is what the model was built
    for (position embeddings, the length it was trained and checked at).
    """
    if requested is None:
        return model_limit
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
        config: EngineConfig | None = None,
    ):
        task = get_task(model_dir.info.task)  # ModelInfo validated the name
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.backend = backend
        self.batching = batching
        # The settings it runs with; batching as resolved (directory defaults, workers).
        # Recorded, not validated, when built by hand: a test's backend need not be registered.
        self.config = config or EngineConfig.model_construct(
            backend=backend.name, device=backend.device, batching=batching
        )
        self.task = task
        self.head = task.head(model_dir.info)
        self._task = task.load_state(model_dir)  # TaskState: labels etc., errors at load
        self._overflow = Overflow.for_engine(
            self.config, task, model_dir.info, tokenizer, model_dir.tokenizer_path,
            batching.tokenizer_threads,
        )  # fmt: skip
        self._closed = False
        self._scheduler = self._start_scheduler()
        self._memory = IdleMemoryRelease(
            activity=lambda: self._scheduler.stats().batches,
            busy=lambda: self._scheduler.busy,
            release=getattr(backend, "release_memory", lambda: None),
            name=model_dir.info.name,
        )

    def _start_scheduler(self) -> Scheduler:
        cfg = self.batching
        knobs = _native.BatchKnobs(
            max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_ms=cfg.max_wait_ms,
            max_row_padding=cfg.max_row_padding,
            fairness=cfg.fairness,
            max_priority_wait_ms=cfg.max_priority_wait_ms,
            priority_fill=cfg.priority_fill,
            short_first=cfg.short_first,
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
            class_queue_tokens=class_queue_tokens(cfg),
        )
        finalize = list if self.task.ragged else np.stack  # ragged: [tokens, labels] per text
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
        config: EngineConfig | dict | None = None,
        **overrides,
    ) -> Engine:
        """Open and validate the model directory, load the tokenizer and the backend.

        ``config``: an ``EngineConfig`` (or a dict of its fields); ``overrides``: any of
        its fields as keywords (``backend=``, ``device=``, ``threads=``, ``max_length=``,
        ``batching=``), laid over ``config``. Batching knobs given as a dict lay over the
        model directory's defaults (``ModelInfo.batching``) knob by knob, and those over
        the device's (bigger batches on a GPU); see ``resolve_config``. A bad setting
        raises pydantic's ValidationError naming it.
        """
        md = model_dir if isinstance(model_dir, ModelDir) else ModelDir.open(model_dir)
        config = resolve_config(config, overrides, md.info.batching)
        batching = config.batching
        tokenizer = Tokenizer.from_file(
            md.tokenizer_path,
            max_length=effective_max_length(md.info.max_length, config.max_length),
            num_threads=batching.tokenizer_threads,
        )
        if batching.workers is None:
            workers = default_workers(config.device, config.threads)
            batching = batching.model_copy(update={"workers": workers})
        threads, solo_threads = config.threads, None
        if threads is None and batching.workers > 1 and config.device == "cpu":
            # Each worker's runs get its share of the cores; a lone text, while no
            # other worker computes, gets them all (see Batch.alone).
            solo_threads = physical_cores()
            threads = max(1, solo_threads // batching.workers)
        runtime = create_backend(
            config.backend, md, device=config.device, threads=threads, solo_threads=solo_threads
        )
        runtime.load()
        if config.backend == "onnxruntime" and config.device == "cpu":
            warn_if_drifting(md.info)
        resolved = config.model_copy(update={"batching": batching})
        return cls(md, tokenizer, runtime, batching, resolved)

    @property
    def info(self) -> ModelInfo:
        return self.model_dir.info

    @property
    def max_length(self) -> int:
        """Tokens per sequence this engine keeps (special tokens included)."""
        return self.tokenizer.max_length

    def embed(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        priority: int | None = None,
    ) -> np.ndarray:
        """float32 [len(texts), dimensions or dim], row i for texts[i].

        ``dimensions``: one of the model's Matryoshka widths (``ModelInfo.matryoshka_dims``)
        or ``dim``: the first components, re-normalised when the model normalises; any
        other width is an InputError naming the allowed ones. ``prompt_name``: one of
        ``ModelInfo.prompts``, prepended to every text before tokenizing (None: the
        model's ``default_prompt_name``, if any). A non-str item raises InputError naming
        its index; a text longer than ``max_length`` tokens is handled as
        ``on_overflow`` says (truncated by default). ``priority``: the request's class,
        lower is more urgent (engine/priority.py; None: the default class), e.g. a
        bulk job's higher value so that interactive callers go first.
        """
        self._require("embed")
        texts, cut = self._embed_args(texts, dimensions, prompt_name)
        if not texts:
            return np.empty((0, cut or self.info.dim), dtype=np.float32)
        rows = self._forward(texts, priority=priority)
        return embedding.shorten(rows, cut, self.info.normalize)

    async def aembed(
        self,
        texts: Sequence[str],
        timeout: float | None = None,
        *,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        priority: int | None = None,
    ) -> np.ndarray:
        """``embed`` for asyncio callers: the result is delivered on the caller's loop.

        ``timeout`` (seconds): past it the caller gets TimeoutError and the request's
        sequences not yet computed leave the queue. Overloaded when the queue is full.
        """
        out, _ = await self._aembed(
            "aembed", texts, timeout,
            dimensions=dimensions, prompt_name=prompt_name, priority=priority,
        )  # fmt: skip
        return out

    async def aembed_with_usage(
        self,
        texts: Sequence[str],
        timeout: float | None = None,
        *,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        priority: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """``aembed``, and the tokens the model computed for these texts (special
        tokens and prompts in, truncated at ``max_length``, every window's tokens when
        a text ran in windows: OpenAI's ``usage.prompt_tokens``), counted from the
        request's own batches rather than by tokenizing again."""
        return await self._aembed(
            "aembed_with_usage", texts, timeout,
            dimensions=dimensions, prompt_name=prompt_name, priority=priority,
        )  # fmt: skip

    async def _aembed(self, method, texts, timeout, *, dimensions, prompt_name, priority):
        self._require(method)
        texts, cut = self._embed_args(texts, dimensions, prompt_name)
        if not texts:
            return np.empty((0, cut or self.info.dim), dtype=np.float32), 0
        rows, tokens = await self._aforward_counted(texts, None, timeout, priority)
        return embedding.shorten(rows, cut, self.info.normalize), tokens

    def _embed_args(self, texts, dimensions, prompt_name) -> tuple[list[str], int | None]:
        """The texts with the prompt before each, and the narrower width asked for
        (checked; None: the full width)."""
        texts = check_texts(texts, "texts")
        cut = embedding.check_dimensions(self.info, dimensions)
        prefix = embedding.prompt_prefix(self.info, prompt_name)
        return ([prefix + t for t in texts] if prefix else texts), cut

    def _forward(
        self, texts: list[str], pairs: list[str] | None = None, priority: int | None = None
    ):
        """One head row per text (or pair), in input order, from a blocking caller.

        Rows are a float32 array [n, ...], or a list of arrays for token
        classification. Pairs are tokenized together, so both segments count
        toward the batch's token budget. A large input is queued in chunks
        (``EMBED_CHUNK`` texts, ``EMBED_WINDOW`` at a time) so it does not fill
        the queue that concurrent callers share. ``priority``: every chunk's class.
        """
        self._check_open()
        check_priority(priority)
        if not texts:
            return []
        plan = self._overflow.plan(texts, pairs)
        work, pairs = (texts, pairs) if plan is None else (plan.sequences, None)
        parts = self._scheduler.run_chunked(
            work, pairs, chunk=EMBED_CHUNK, window=EMBED_WINDOW, priority=priority
        )
        if len(parts) == 1:
            rows = parts[0]
        elif isinstance(parts[0], np.ndarray):
            rows = np.concatenate(parts)
        else:
            rows = [row for part in parts for row in part]
        return rows if plan is None else self._join_windows(plan, rows)

    async def _aforward(
        self,
        texts: list[str],
        pairs: list[str] | None,
        timeout: float | None,
        priority: int | None = None,
    ):
        """``_forward`` for asyncio callers: one request, resolved on the caller's loop."""
        if not texts:
            self._check_open()
            return []
        rows, _ = await self._aforward_counted(texts, pairs, timeout, priority)
        return rows

    async def _aforward_counted(
        self, texts: list[str], pairs, timeout: float | None, priority: int | None = None
    ):
        """``_aforward``'s rows and the tokens the model computed for them."""
        self._check_open()
        check_priority(priority)  # before counting a large request's tokens
        plan = await self._aplan(texts, pairs)
        if plan is None:
            return await self._scheduler.run_async_counted(texts, pairs, timeout, priority)
        rows, tokens = await self._scheduler.run_async_counted(
            plan.sequences, None, timeout, priority
        )
        return self._join_windows(plan, rows), tokens

    async def _aplan(self, texts: list[str], pairs: list[str] | None) -> WindowPlan | None:
        """``Overflow.plan`` for asyncio callers: counting a large request's tokens (the
        whole text, unbounded) runs on a thread so the caller's loop keeps serving."""
        if self._overflow.mode == "truncate":
            return None
        chars = sum(map(len, texts)) + (sum(map(len, pairs)) if pairs else 0)
        if chars <= INLINE_PLAN_CHARS:
            return self._overflow.plan(texts, pairs)
        return await asyncio.to_thread(self._overflow.plan, texts, pairs)

    def _join_windows(self, plan: WindowPlan, rows):
        """Per text, one row again: long texts' windows joined by the task."""
        joined = self._overflow.join(plan, rows)
        return joined if self.task.ragged else np.stack(joined)

    @property
    def on_overflow(self) -> str:
        """What a text over ``max_length`` tokens gets: truncate, error or window."""
        return self._overflow.mode

    def warmup(self) -> dict[int, float]:
        """Run every path once per length bucket before real traffic: for widths of
        8, 16, 32, ... up to ``max_length`` tokens, one lone text (the lone-text
        session) and a batch of ``workers`` texts (split between the workers).
        Returns the seconds each width took. Synthetic texts of repeated words:
        what is warmed is the runtime at that shape, not any answer."""
        took: dict[int, float] = {}
        width = 8
        while True:
            width = min(width, self.max_length)
            text = " ".join(["word"] * max(1, width - 3))
            start = time.perf_counter()
            for rows in (1, max(2, self.batching.workers or 1)):
                texts = [text] * rows
                self._forward(texts, texts if self.task.pairs else None)
            took[width] = time.perf_counter() - start
            if width >= self.max_length:
                return took
            width *= 2

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees one sequence (special tokens in, truncated at
        max_length; a windowed text's windows hold more, see ``aembed_with_usage``).

        Tokenizes again (at most max_length tokens of work per text); a request's
        own count comes with its result from ``aembed_with_usage``.
        """
        self._check_open()
        texts = check_texts(texts, "texts")
        if not texts:
            return []
        return self.tokenizer.tokenize(texts).lengths.tolist()

    def compute_totals(self) -> tuple[int, float]:
        """Real tokens computed so far and the seconds their batches took, summed over
        the workers (what an admission gate measures the engine's pace from)."""
        return self._scheduler.compute_totals()

    def stats(self) -> EngineStats:
        """Counters since load, gauges of the queue now (see ``EngineStats``)."""
        return EngineStats.from_native(self._scheduler.stats())

    def health(self) -> bool:
        return not self._closed and self._scheduler.alive and self.backend.health()

    def close(self) -> None:
        """Stop the scheduler (waiting calls fail with EngineClosed) and release the
        backend. Further calls raise EngineError. Idempotent."""
        if not self._closed:
            self._closed = True
            self._memory.close()
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


def resolve_config(
    config: EngineConfig | dict | None, overrides: dict, batching_defaults: BatchingConfig | None
) -> EngineConfig:
    """``Engine.load``'s settings: ``overrides`` over ``config``, validated once.

    Batching: a ``BatchingConfig`` is used as is; a dict of knobs lays over the
    model directory's defaults knob by knob, and those over the device's
    (``device_batching``: a GPU's bigger batches); None takes the defaults. The
    result always has its batching resolved.
    """
    if isinstance(config, EngineConfig):
        fields = {name: getattr(config, name) for name in config.model_fields_set}
    else:
        fields = dict(config or {})
    fields.update(overrides)
    batching = fields.get("batching")
    if batching is not None and not isinstance(batching, dict):
        return EngineConfig.model_validate(fields)
    base = batching_defaults.model_dump(exclude_unset=True) if batching_defaults else {}
    knobs = {**base, **(batching or {})}
    config = EngineConfig.model_validate({**fields, "batching": knobs})  # checks the device
    device_knobs = device_batching(config.device)
    if not device_knobs:
        return config
    if "max_batch_tokens" in device_knobs:  # a queue bound set lower caps the batch budget
        budget = min(device_knobs["max_batch_tokens"], config.batching.max_queue_tokens)
        device_knobs["max_batch_tokens"] = budget
    return EngineConfig.model_validate({**fields, "batching": {**device_knobs, **knobs}})
