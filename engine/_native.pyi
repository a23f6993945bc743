"""Type stubs of the compiled extension ``textfleet.engine._native`` (csrc/bind_*.cc)."""

from collections.abc import Sequence

import numpy as np

PRIORITY_MOST_URGENT: int
"""Request priority classes: lower is more urgent (csrc/batch_former.h)."""
PRIORITY_LEAST_URGENT: int
PRIORITY_DEFAULT: int

class Encoding:
    """One encoded text or pair (padding off); lists are built on access."""

    @property
    def ids(self) -> list[int]: ...
    @property
    def type_ids(self) -> list[int]: ...
    @property
    def attention_mask(self) -> list[int]: ...
    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(start, end) code point offsets into the input; (0, 0) for special tokens."""
    def __len__(self) -> int: ...

class Tokenized:
    """Token sequences held natively, padded on demand."""

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: tokens per sequence."""
    def __len__(self) -> int: ...
    def collate(
        self, indices: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids), int64 [rows, longest of rows]."""

TemplatePiece = tuple[str, list[int], int]

class WordPieceTokenizer:
    """BERT WordPiece tokenizer equal to HF tokenizers (built by engine/native_tokenizer.py)."""

    def __init__(
        self,
        *,
        vocab: list[tuple[str, int]],
        unk_id: int,
        continuing_subword_prefix: str,
        max_input_chars_per_word: int,
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: bool,
        lowercase: bool,
        added_tokens: list[tuple[str, int]],
        single: list[TemplatePiece],
        pair: list[TemplatePiece],
        max_length: int,
        pad_id: int,
        num_threads: int,
        scan_bytes: int = 0,
    ) -> None: ...
    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True
    ) -> Encoding: ...
    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
    ) -> list[Encoding]: ...
    def tokenize(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
    ) -> Tokenized: ...
    @property
    def max_length(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def num_threads(self) -> int: ...
    @property
    def scanned_bytes(self) -> int:
        """Bytes of input text normalized since construction (all threads)."""

# ---- scheduler (csrc/bind_scheduler.cc) -------------------------------------------

class QueueFull(Exception):
    """submit(): the queue bound is reached (engine.errors.Overloaded)."""

class RequestTooLarge(Exception):
    """submit(): the request alone exceeds max_queue_tokens (engine.errors.TooLarge)."""

class Histogram:
    """counts[i]: observations <= bounds[i]; the last count is the overflow. Read-only."""

    bounds: list[float]
    counts: list[int]
    sum: float
    count: int

class SchedulerStats:
    """The scheduler's counters, copied (csrc/sched_stats.h). Read-only."""

    requests: int
    sequences: int
    rejected: int
    rejected_too_large: int
    cancelled_requests: int
    expired_requests: int
    dropped_sequences: int
    tokenize_errors: int
    tokenize_s: float
    batches: int
    batch_sequences: int
    real_tokens: int
    padded_tokens: int
    prefetched_batches: int
    failed_batches: int
    ok_requests: int
    failed_requests: int
    timeouts: int
    cancellations: int
    queue_sequences: int
    queue_tokens: int
    reserved_tokens: int
    prefetched_tokens: int
    live_requests: int
    tokenize_tasks: int
    batch_size: Histogram
    queue_wait_s: Histogram
    compute_s: Histogram

class BatchKnobs:
    """Batch former knobs (see engine.config.BatchingConfig)."""

    def __init__(
        self,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 0.0,
        max_row_padding: int = 16,
        fairness: float = 0.7,
        max_priority_wait_ms: float = 1000.0,
        priority_fill: bool = False,
        short_first: float = 0.0,
    ) -> None: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_batch_tokens(self) -> int: ...
    @property
    def max_wait_ms(self) -> float: ...
    @property
    def max_row_padding(self) -> int: ...
    @property
    def fairness(self) -> float: ...
    @property
    def max_priority_wait_ms(self) -> float: ...
    @property
    def priority_fill(self) -> bool: ...
    @property
    def short_first(self) -> float: ...

class BatchPlan:
    """The batch BatchQueue.plan() would form now."""

    @property
    def rows(self) -> list[tuple[int, int]]:
        """(order, index) of each row, oldest first."""
    @property
    def width(self) -> int: ...
    @property
    def real_tokens(self) -> int: ...
    @property
    def padded_tokens(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def full(self) -> bool: ...
    @property
    def wake_at(self) -> float | None:
        """When max_wait makes a held batch ready (the caller's clock, seconds), or None."""

class BatchQueue:
    """The batch former's queue, driven by the caller's clock (for tests)."""

    def __init__(self) -> None: ...
    def push(
        self,
        order: int,
        index: int,
        length: int,
        arrival: float,
        priority: int = 5,
        overtake: float = 0.0,
    ) -> bool: ...
    def erase(self, order: int, index: int) -> int: ...
    def plan(self, now: float, knobs: BatchKnobs, parts: int = 1) -> BatchPlan: ...
    def take(self, plan: BatchPlan) -> None: ...
    def __len__(self) -> int: ...
    @property
    def tokens(self) -> int: ...

class SequenceEncoder:
    @property
    def max_length(self) -> int: ...
    @property
    def pad_id(self) -> int: ...

class ByteEncoder(SequenceEncoder):
    """Test encoder: one token per UTF-8 byte (+3) between [CLS]=1 and [SEP]=2."""

    def __init__(self, max_length: int = 512) -> None: ...

class PretokenizedEncoder(SequenceEncoder):
    """For a scheduler fed only by submit_tokens(): pad id and limits, no tokenizer."""

    def __init__(
        self, max_length: int, pad_id: int, special_single: int = 2, special_pair: int = 3
    ) -> None: ...

class NativeBatch:
    """A collated batch from Scheduler.next_batch()."""

    id: int
    rows: int
    width: int
    real_tokens: int
    max_queue_wait_s: float
    request_ids: list[int]
    indices: list[int]
    failures: list[tuple[int, str]]
    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids): int64 [rows, width] views, no copy."""

class Scheduler:
    """Thread-safe request queue, batch former and collator (csrc/scheduler.h)."""

    def __init__(
        self,
        encoder: WordPieceTokenizer | SequenceEncoder,
        knobs: BatchKnobs,
        max_queue_tokens: int = 1_000_000,
        tokenizer_threads: int = 1,
        inline_max_bytes: int = 4096,
        chunk_texts: int = 64,
        class_queue_tokens: Sequence[int] | None = None,
    ) -> None:
        """class_queue_tokens: per priority class (index: the class), the queued tokens
        past which its requests are refused (QueueFull), each in [1, max_queue_tokens];
        a request that finds the queue empty is always taken. None: max_queue_tokens."""
    def submit(
        self,
        id: int,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        timeout: float | None = None,
        priority: int = 5,
    ) -> None: ...
    def submit_tokens(
        self,
        id: int,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]] | None = None,
        timeout: float | None = None,
        priority: int = 5,
    ) -> None: ...
    def cancel(self, id: int, timed_out: bool = False) -> bool: ...
    def next_batch(self) -> NativeBatch | None: ...
    def shutdown(self, drain: bool = False) -> None: ...
    def record_compute(self, seconds: float, failed: bool, padded_tokens: int = 0) -> None: ...
    def record_outcomes(
        self, ok: int = 0, failed: int = 0, timeouts: int = 0, cancellations: int = 0
    ) -> None: ...
    def stats(self) -> SchedulerStats: ...
    @property
    def knobs(self) -> BatchKnobs: ...
    @property
    def class_queue_tokens(self) -> list[int]:
        """Per priority class, most urgent first: the queued tokens past which its
        requests are refused."""
