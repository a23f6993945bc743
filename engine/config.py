"""Typed configuration shared by the engine and the serving layer.

Every model is one pydantic schema with ``extra="forbid"``, so a misspelt knob
is an error that names it instead of being ignored.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from textfleet.engine.backends import BACKENDS

BackendName = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]

_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def cuda_index(device: str) -> int | None:
    """The GPU ordinal of a valid device string: None for ``cpu``, 0 for ``cuda``."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise ValueError(f"got {device!r}; expected 'cpu', 'cuda' or 'cuda:<index>'")
    if device == "cpu":
        return None
    return int(match.group(1) or 0)


class BatchingConfig(BaseModel):
    """Dynamic batching knobs of one engine (see the scheduler in docs/ARCHITECTURE.md).
    The defaults suit a CPU; an engine on a GPU starts from ``GPU_BATCHING`` instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most sequences in one batch."""

    max_batch_tokens: int = Field(8192, ge=1)
    """Most padded tokens in one batch: rows x longest row. Padded cost, not real tokens,
    is what the model computes, so this is the budget that bounds a batch's latency."""

    max_row_padding: int = Field(16, ge=0)
    """Most padding tokens one sequence may add to a batch: its own padding, or the extra
    width it forces on the rows already in. Beyond this, running it in another batch
    costs less than the padding would: about the per-batch overhead in tokens (measured
    ~20 for MiniLM on 2 CPU cores: a run costs ~3.8 ms + 0.17 ms per token), large on a
    GPU where a bigger batch is almost free (``GPU_BATCHING``)."""

    fairness: float = Field(0.7, ge=0.0, le=1.0)
    """A batch's other rows must have waited at least this fraction of its oldest row's
    wait (beyond max_wait_ms). Picking rows by length lets short texts overtake a text of
    awkward length under load; this bounds the overtaking, keeping p99 latency near a
    FIFO's. 0: rows by length only; 1: no overtaking across requests."""

    short_first: float = Field(1.0, ge=0.0, le=1000.0)
    """Shorter requests first, within a bound. Each request is due at its arrival plus
    ``short_first`` x its estimated compute time (its tokens at the rate measured on
    the batches computed so far), and batches start from the request due first. So a
    one-sentence request that arrives behind a few long documents is served before
    them instead of waiting for all of them, while a long request is passed over only
    by requests due before it, those that arrive within about ``short_first`` x its
    own compute time after it, and by none once it has waited ``max_priority_wait_ms``.
    0: arrival order."""

    max_wait_ms: float = Field(0.0, ge=0.0, le=10_000.0)
    """Opt-in hold for fuller batches. 0 (the CPU default): an idle executor takes
    whatever is queued at once; batches grow only while it is busy."""

    max_priority_wait_ms: float = Field(1000.0, ge=0.0, le=600_000.0)
    """No-starvation bound of request priority classes (``priority``: lower is more
    urgent): the batch former serves the most urgent class waiting, and a request that
    has waited this long counts as the most urgent class, so a low-priority request
    waits about this long at most before it competes in arrival order again. 0:
    priorities are ignored (arrival order only)."""

    priority_fill: bool = False
    """Let rows of less urgent classes fill the free rows of a batch, up to its width
    (never widening it). Off: a batch holds one class, since on a CPU every row added
    lengthens the batch and so delays the urgent rows in it. On a GPU, where a batch's
    time grows little with its rows, turning it on keeps the other classes' throughput
    while urgent requests keep arriving."""

    max_queue_tokens: int = Field(1_000_000, ge=1)
    """Bound on tokens waiting in the queue; past it, submissions fail with Overloaded."""

    least_urgent_queue_share: float = Field(0.5, gt=0.0, le=1.0)
    """Headroom for urgent requests: the share of the queue that requests of the least
    urgent class (``priority`` 9) may fill. The default class (5) and the more urgent
    ones may fill all of ``max_queue_tokens``, classes 6 to 8 even steps between
    (0.5: 88%, 75%, 63%), so while low-priority requests flood the engine, the others
    are still taken; traffic that names no priority is admitted as before.
    A serving replica's admission gate applies the same shares to the wait a request's
    deadline allows (serve/admission.py). 1: every class may fill the whole queue.
    Not applied when ``max_priority_wait_ms`` is 0 (priorities ignored)."""

    workers: int | None = Field(None, ge=1, le=64)
    """Batches computed at the same time, each on its own executor thread; None: 2 on
    a CPU with at least 2 cores, else 1, and no more than the physical cores hold at
    ``EngineConfig.threads`` each when those are set. With more than one, the
    backend's threads default to cores / workers, and a batch formed while other
    workers are idle is split between them. On a small CPU shared with a server's
    other processes, single-threaded runs side by side lose nothing when one
    thread is preempted, where a multi-threaded run waits at every op for its
    slowest thread (measured on 2 cores behind Ray Serve: +40% texts/s at 64
    clients). The price: one lone text runs on cores / workers threads (1.5x the
    latency in process on 2 cores); set 1 when single-text latency matters more
    than throughput."""

    tokenizer_threads: int | None = Field(None, ge=1, le=256)
    """Native threads that tokenize submitted texts; None: all cores."""

    @model_validator(mode="after")
    def _budget_fits_one_sequence(self) -> BatchingConfig:
        if self.max_queue_tokens < self.max_batch_tokens:
            raise ValueError(
                f"max_queue_tokens ({self.max_queue_tokens}) must be >= max_batch_tokens "
                f"({self.max_batch_tokens}), or no full batch could ever be queued"
            )
        return self


GPU_BATCHING = {"max_batch_size": 256, "max_batch_tokens": 65536, "max_row_padding": 128}
"""The knobs a model on a GPU starts from, in place of BatchingConfig's CPU-tuned
defaults. There a batch's time grows far less than its rows until batches are large
(batches of 256 sequences ran several times the texts/s of batches of 32 on one
GPU), and the fixed cost of a batch (kernel launches, copies, Python) is worth
thousands of tokens of compute, so batches are bigger and a row may add more
padding than on a CPU before a separate batch would be cheaper."""


def device_batching(device: str) -> dict[str, int]:
    """Batching knobs that differ from BatchingConfig's defaults on this device: those of
    ``GPU_BATCHING`` on a CUDA device, none on the CPU. The model directory's defaults
    and the caller's knobs are laid over them (``engine.resolve_config``)."""
    return {} if cuda_index(device) is None else dict(GPU_BATCHING)


OverflowMode = Literal["truncate", "error", "window"]


class WindowConfig(BaseModel):
    """How ``on_overflow: window`` cuts a long text into windows of ``max_length`` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stride: int | None = Field(None, ge=0)
    """Tokens each window shares with the one before it (Hugging Face's meaning of
    stride), so a token near a window's edge is also seen with context on both
    sides; None: a quarter of a window. Must be less than a window's text tokens
    (``max_length`` less the special tokens), checked at load."""


class EngineConfig(BaseModel):
    """How ``Engine.load`` runs a model directory; a models.yaml model entry holds the
    same fields, so an entry that validates is one the engine loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendName = "onnxruntime"
    """Inference backend (engine/backends): ``onnxruntime`` runs the ONNX graph, ``torch``
    the safetensors weights (export with --safetensors)."""

    device: str = "cpu"
    """``cpu``, ``cuda`` (the first visible GPU) or ``cuda:<index>``."""

    threads: int | None = Field(None, ge=1)
    """Intra-op threads of the backend (of each run, when ``batching.workers`` compute
    side by side); None: the physical cores, shared among the workers on a CPU."""

    max_length: int | None = Field(None, ge=4, le=8192)
    """Truncate inputs to this many tokens (special tokens included); None: the model
    directory's limit, which this may lower but not raise."""

    on_overflow: OverflowMode | None = None
    """What a text longer than ``max_length`` tokens gets: ``truncate`` (its first
    ``max_length`` tokens), ``error`` (the request fails, 413, naming the text) or
    ``window`` (the model runs on overlapping windows over the whole text and the
    task joins them: embeddings and token classification). None: the task's
    default (``window`` for token classification, else ``truncate``)."""

    window: WindowConfig | None = None
    """Window settings of ``on_overflow: window``; None: the defaults."""

    batching: BatchingConfig | None = None
    """Dynamic batching knobs; None: the model directory's defaults (``ModelInfo.batching``),
    else the device's (``device_batching``: bigger batches on a GPU), else the global
    ones. A dict of knobs lays over those knob by knob; a ``BatchingConfig`` is used as is."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        cuda_index(v)
        return v
