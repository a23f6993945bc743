"""Engine: one loaded model; texts in, one result row per text out, in input order.

``embed`` tokenizes all texts once (natively, GIL released), plans
length-sorted batches under the token budget (padded cost = rows x longest
row, the work the model really does), collates each batch natively into a
``Batch``, runs the backend, pools with the task head and writes each row
back to its input position. Sorting by length is what keeps padding, and so
wasted compute, near zero on mixed-length inputs.

``aembed`` runs ``embed`` in a worker thread until the native scheduler
(dynamic batching across concurrent requests) replaces it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from engine.backends.base import Backend, create_backend
from engine.config import BatchingConfig
from engine.errors import EngineError, ModelDirError
from engine.heads import HEADS
from engine.model_dir import ModelDir, ModelInfo
from engine.tasks.api import TaskMethods, TaskState
from engine.tokenizer import Tokenizer, check_texts


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int
) -> list[np.ndarray]:
    """Split sequence indices into length-sorted batches.

    Longest first; a batch closes before the next sequence would make
    ``rows x longest`` exceed ``max_batch_tokens`` or rows exceed
    ``max_batch_size``. A sequence longer than the budget on its own gets a
    batch of one (it must run somewhere). Every index appears exactly once.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_batch_size, max_batch_tokens // longest, n - start))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class Stats:
    """Counters of one engine, safe to update from several threads."""

    FIELDS = (
        "requests",
        "sequences",
        "batches",
        "real_tokens",
        "padded_tokens",
        "tokenize_s",
        "compute_s",
    )

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(self.FIELDS, 0)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._values[k] += v

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out = dict(self._values)
        out["padding_ratio"] = (
            1.0 - out["real_tokens"] / out["padded_tokens"] if out["padded_tokens"] else 0.0
        )
        return out


class Engine(TaskMethods):
    """One model: tokenizer + backend + task head. Build with ``Engine.load``.

    ``embed`` serves embedding models; ``classify``, ``entities``, ``score``
    and ``rerank`` (engine/tasks/api.py) the other tasks, all through
    ``_forward``: one tokenize -> batch -> run -> head path.
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
        self._stats = Stats()
        self._closed = False

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | ModelDir,
        backend: str = "onnxruntime",
        device: str = "cpu",
        threads: int | None = None,
        batching: BatchingConfig | dict | None = None,
    ) -> Engine:
        """Open and validate the model directory, load the tokenizer and the backend."""
        md = model_dir if isinstance(model_dir, ModelDir) else ModelDir.open(model_dir)
        if batching is None:
            batching = BatchingConfig()
        elif isinstance(batching, dict):
            batching = BatchingConfig.model_validate(batching)
        tokenizer = Tokenizer.from_file(
            md.tokenizer_path, max_length=md.info.max_length, num_threads=batching.tokenizer_threads
        )
        runtime = create_backend(backend, md, device=device, threads=threads)
        runtime.load()
        return cls(md, tokenizer, runtime, batching)

    @property
    def info(self) -> ModelInfo:
        return self.model_dir.info

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], row i for texts[i].

        A non-str item raises TypeError naming its index; texts longer than
        ``info.max_length`` tokens are truncated.
        """
        self._require("embedding", "embed")
        texts = check_texts(texts, "texts")
        rows = self._forward(texts)
        return rows if len(texts) else np.empty((0, self.info.dim), dtype=np.float32)

    def _forward(self, texts: list[str], pairs: list[str] | None = None):
        """One head row per text (or pair), in input order.

        Rows are a float32 array [n, ...] when every row has one shape, else a
        list (token classification: one [tokens, labels] array per text).
        Pairs are tokenized together, so both segments count toward the
        batch's token budget.
        """
        self._check_open()
        self._stats.add(requests=1, sequences=len(texts))
        if not texts:
            return []
        t0 = time.perf_counter()
        seqs = self.tokenizer.tokenize(texts, pairs)
        self._stats.add(tokenize_s=time.perf_counter() - t0)
        cfg = self.batching
        out = None
        for idx in plan_batches(seqs.lengths, cfg.max_batch_size, cfg.max_batch_tokens):
            rows = self._run(seqs.collate(idx))
            if out is None:  # shaped by the first batch: an array, or a list for ragged rows
                shape = (len(texts), *rows.shape[1:]) if isinstance(rows, np.ndarray) else None
                out = np.empty(shape, np.float32) if shape else [None] * len(texts)
            if isinstance(out, np.ndarray):
                out[idx] = rows
            else:
                for i, row in zip(idx.tolist(), rows, strict=True):
                    out[i] = row
        return out

    def _run(self, batch):
        t0 = time.perf_counter()
        outputs = self.backend.run(batch)
        compute = time.perf_counter() - t0
        rows = self.head(outputs, batch)
        if len(rows) != batch.rows:  # every row must come back exactly once
            raise EngineError(f"head returned {len(rows)} rows for a batch of {batch.rows}")
        self._stats.add(
            batches=1,
            real_tokens=batch.real_tokens,
            padded_tokens=batch.padded_tokens,
            compute_s=compute,
        )
        return rows

    async def aembed(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """``embed`` off the event loop. On timeout the caller gets TimeoutError at once
        (the running batch still finishes in its thread; the scheduler will cancel queued work)."""
        return await asyncio.wait_for(asyncio.to_thread(self.embed, texts), timeout)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens in, truncated at max_length)."""
        self._check_open()
        texts = check_texts(texts, "texts")
        if not texts:
            return []
        return self.tokenizer.tokenize(texts).lengths.tolist()

    def stats(self) -> dict:
        """Counters since load: requests, sequences, batches, real and padded tokens, seconds."""
        return self._stats.snapshot()

    def health(self) -> bool:
        return not self._closed and self.backend.health()

    def close(self) -> None:
        """Release the backend. Further calls raise EngineError. Idempotent."""
        if not self._closed:
            self._closed = True
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
