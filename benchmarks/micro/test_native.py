"""Micro-benchmarks of the native hot paths (pytest-benchmark), on workload texts.

Not part of the test suite (pytest's testpaths is tests/); run them with

    .venv/bin/python -m pytest benchmarks/micro --benchmark-only

Sizes are small so the whole set takes seconds: one median-length text for
``encode``, a batch of 64 texts for ``pad_batch``, 32 length-sorted rows for
collation, a queue of 512 sequences for the batch former's ``plan``. The
tokenizer runs on one thread so the numbers do not depend on the core count.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import DEFAULT_PACKAGE, load_texts
from textfleet.engine import _native
from textfleet.engine.tokenizer import Tokenizer
from textfleet.models.source import resolve_source

TEXTS = 512
BATCH = 64
ROWS = 32


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return load_texts(TEXTS)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The default model's tokenizer.json, straight from its package (no export needed;
    scripts/setup.sh installs the package)."""
    folder, _ = resolve_source(DEFAULT_PACKAGE)
    tok = Tokenizer.from_file(folder / "tokenizer.json", max_length=512, num_threads=1)
    assert tok.backend == "native"
    return tok


@pytest.fixture(scope="module")
def lengths(tokenizer, texts) -> np.ndarray:
    return tokenizer.tokenize(texts).lengths


def test_encode_one_text(benchmark, tokenizer, texts, lengths):
    middle = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])
    enc = benchmark(tokenizer.encode, texts[middle])
    assert len(enc.ids) == lengths[middle]


def test_pad_batch(benchmark, tokenizer, texts):
    out = benchmark(tokenizer.pad_batch, texts[:BATCH])
    assert out["input_ids"].shape[0] == BATCH


def test_collate_sorted_rows(benchmark, tokenizer, texts):
    """``Tokenized.collate``: rows of length-neighbouring sequences into padded arrays."""
    seqs = tokenizer.tokenize(texts)
    rows = np.argsort(seqs.lengths, kind="stable")[len(texts) // 2 :][:ROWS]
    batch = benchmark(seqs.collate, rows)
    assert batch.rows == ROWS and batch.width == int(seqs.lengths[rows].max())


def test_scheduler_batch_round_trip(benchmark, tokenizer, texts):
    """``Scheduler.submit_tokens`` + ``next_batch``: queue, form and collate one batch."""
    encs = tokenizer.encode_batch(texts[:ROWS])
    ids = [e.ids for e in encs]
    knobs = _native.BatchKnobs(max_batch_size=ROWS, max_batch_tokens=ROWS * 512)
    encoder = _native.PretokenizedEncoder(512, tokenizer.pad_id)
    sched = _native.Scheduler(encoder, knobs, tokenizer_threads=1)
    request = iter(range(1, 10**9))

    def round_trip():
        sched.submit_tokens(next(request), ids)
        return sched.next_batch()

    try:
        batch = benchmark(round_trip)
    finally:
        sched.shutdown()
    assert batch.rows == ROWS


def test_batch_former_plan(benchmark, lengths):
    """``BatchQueue.plan`` over a queue of every workload sample, one request each."""
    queue = _native.BatchQueue()
    for order, length in enumerate(lengths.tolist()):
        queue.push(order, 0, length, 0.001 * order)
    knobs = _native.BatchKnobs(max_batch_size=32, max_batch_tokens=8192)
    plan = benchmark(queue.plan, 10.0, knobs)
    assert plan.ready and plan.rows[0] == (0, 0)
