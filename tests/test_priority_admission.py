"""Admission keeps headroom for urgent requests, and reports outcomes by class.

The queue bound per class runs on the native scheduler with no executor: nothing
leaves the queue, so what is admitted is decided by the bounds alone. The
deadline gate runs on a real engine, its meter fed a known pace, so its
judgement does not depend on this machine's speed. The per-class metrics a
replica exports are checked with a real server in tests/test_serve_http.py.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from textfleet.engine import _native
from textfleet.engine.config import BatchingConfig
from textfleet.engine.engine import Engine
from textfleet.engine.errors import Overloaded
from textfleet.engine.priority import admission_share, class_queue_tokens
from textfleet.serve.admission import HEADROOM, AdmissionGate, decide
from textfleet.serve.config import ConfigError, parse_model

BULK = "x" * 48  # 50 tokens with the byte encoder's [CLS] and [SEP]


def byte_scheduler(batching: BatchingConfig) -> _native.Scheduler:
    """A native scheduler with the classes' bounds an engine derives from ``batching``."""
    return _native.Scheduler(
        _native.ByteEncoder(512),
        _native.BatchKnobs(max_batch_tokens=batching.max_batch_tokens),
        max_queue_tokens=batching.max_queue_tokens,
        tokenizer_threads=1,
        class_queue_tokens=class_queue_tokens(batching),
    )


# ---------------------------------------------------------------- the shares


def test_shares_step_evenly_from_the_default_class_to_the_least_urgent_share():
    b = BatchingConfig(max_queue_tokens=9000, max_batch_tokens=900)
    assert b.least_urgent_queue_share == 0.5  # the documented default
    assert admission_share(9, b) == 0.5 and admission_share(7, b) == 0.75
    # Traffic naming no priority keeps the whole queue, as do the more urgent classes.
    assert admission_share(None, b) == admission_share(5, b) == admission_share(0, b) == 1.0
    assert class_queue_tokens(b) == [9000] * 6 + [7875, 6750, 5625, 4500]
    # Where the batch former ignores classes, an urgent request would gain nothing.
    ignored = BatchingConfig(max_queue_tokens=9000, max_batch_tokens=900, max_priority_wait_ms=0)
    assert class_queue_tokens(ignored) == [9000] * 10
    every = BatchingConfig(least_urgent_queue_share=1.0)
    assert class_queue_tokens(every) == [every.max_queue_tokens] * 10


@pytest.mark.parametrize("share", [0, -0.1, 1.5, "most"])
def test_the_share_is_a_batching_knob_checked_by_name(model_dir, share):
    entry = {"name": "m", "model_dir": str(model_dir.path)}
    assert parse_model(
        {**entry, "batching": {"least_urgent_queue_share": 0.25}}
    ).batching.least_urgent_queue_share == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="batching.least_urgent_queue_share"):
        parse_model({**entry, "batching": {"least_urgent_queue_share": share}})


# ---------------------------------------------------------------- the queue bound


def test_a_flood_of_bulk_requests_leaves_room_for_an_urgent_one():
    batching = BatchingConfig(max_queue_tokens=1000, max_batch_tokens=100)
    nat = byte_scheduler(batching)
    assert nat.class_queue_tokens == class_queue_tokens(batching)
    try:
        for rid in range(10):  # 10 x 50 tokens: all that priority 9 may fill (500)
            nat.submit(rid, [BULK], priority=9)
        with pytest.raises(_native.QueueFull) as refused:
            nat.submit(10, [BULK], priority=9)
        assert str(refused.value) == (
            "queue full for priority 9: 500 tokens waiting and 50 more for this request "
            "pass the 500 that priority 9 may fill (max_queue_tokens is 1000)"
        )
        nat.submit(11, ["is this urgent?"], priority=0)  # taken behind the flood
        with pytest.raises(_native.QueueFull, match="for priority 9: 517 tokens waiting"):
            nat.submit(12, [BULK], priority=9)  # a further bulk request is not
        nat.submit(13, [BULK])  # the default class (5) may fill the whole queue
        s = nat.stats()
        assert s.rejected == 2 and s.requests == 12
        assert s.queue_tokens + s.prefetched_tokens == 567
    finally:
        nat.shutdown()


@pytest.mark.parametrize("priority", [0, 5])
def test_the_default_and_more_urgent_classes_fill_the_whole_queue(priority):
    nat = byte_scheduler(BatchingConfig(max_queue_tokens=1000, max_batch_tokens=100))
    try:
        for rid in range(20):
            nat.submit(rid, [BULK], priority=priority)
        with pytest.raises(_native.QueueFull, match=f"pass the 1000 that priority {priority} "):
            nat.submit(20, ["x"], priority=priority)
    finally:
        nat.shutdown()


def test_a_request_that_finds_the_queue_empty_is_taken_whatever_its_class():
    nat = byte_scheduler(BatchingConfig(max_queue_tokens=1000, max_batch_tokens=100))
    try:
        nat.submit(1, ["y" * 298, "y" * 298], priority=9)  # 600 tokens, past its 500
        with pytest.raises(_native.QueueFull, match="priority 9"):
            nat.submit(2, ["y"], priority=9)
        with pytest.raises(_native.RequestTooLarge, match="max_queue_tokens"):
            nat.submit(3, ["y" * 500] * 3, priority=0)  # larger than the whole queue
    finally:
        nat.shutdown()


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([100] * 9, "one bound per priority class"),
        ([100] * 9 + [0], r"\[1, max_queue_tokens\]"),
        ([100] * 9 + [101], r"\[1, max_queue_tokens\]"),
    ],
)
def test_the_native_scheduler_checks_the_bounds(bounds, message):
    with pytest.raises(ValueError, match=message):
        _native.Scheduler(
            _native.ByteEncoder(512),
            _native.BatchKnobs(max_batch_tokens=100),
            max_queue_tokens=100,
            class_queue_tokens=bounds,
        )


def test_the_engine_runs_with_its_classes_bounds(model_dir):
    batching = {"max_queue_tokens": 90_000, "least_urgent_queue_share": 0.4}
    with Engine.load(model_dir, threads=1, batching=batching) as engine:
        bounds = engine._scheduler._native.class_queue_tokens  # what admission runs with
        assert bounds == class_queue_tokens(engine.batching)
        assert bounds[0] == 90_000 and bounds[9] == 36_000


# ---------------------------------------------------------------- the deadline gate


def test_decide_gives_each_class_its_share_of_the_budget():
    # 1000 tokens/s, 10 s deadline: 7 s of work for the most urgent class, 3.5 s at half.
    assert decide(5000, 0, 1000.0, 10.0, share=1.0).admit
    bulk = decide(5000, 0, 1000.0, 10.0, share=0.5)
    assert not bulk.admit and bulk.budget_s == pytest.approx(10.0 * HEADROOM * 0.5)
    assert bulk.retry_after_s == pytest.approx(5.0 - 3.5)
    assert decide(0, 10**6, 1000.0, 10.0, share=0.5).admit  # an empty queue always admits


def test_the_gate_takes_an_urgent_request_behind_bulk_work_it_sheds(model_dir):
    outcomes: list[tuple[int, str, float]] = []
    with Engine.load(model_dir, threads=1, batching={"workers": 1}) as engine:
        gate = AdmissionGate(engine, on_outcome=lambda *o: outcomes.append(o))
        gate.meter.observe(1000, 1.0)  # a fresh replica's first sample: skipped
        gate.meter.observe(1000, 1.0)  # 1000 tokens/s
        # As if bulk requests admitted earlier were still computing: about 2 s of work
        # ahead (1000 tokens, and a full batch of them), past what priority 9 may wait
        # under a 5 s deadline (5 x 0.7 x 0.5 = 1.75 s), within what priority 0 and the
        # default class may (3.5 s).
        gate.outstanding_tokens = 1000
        with pytest.raises(Overloaded) as shed:
            asyncio.run(gate.aembed(["more bulk"], timeout=5.0, priority=9))
        assert "priority 9 is admitted while that is at most 1.8 s of its 5 s deadline" in str(
            shed.value
        )
        assert shed.value.retry_after_s >= 1.0
        urgent = asyncio.run(gate.aembed(["is this urgent?"], timeout=5.0, priority=0))
        np.testing.assert_allclose(urgent, engine.embed(["is this urgent?"]), atol=1e-5)
        asyncio.run(gate.aembed(["no class named"], timeout=5.0))
        assert gate.outstanding_tokens == 1000  # what it admitted is counted out again
    assert [(p, outcome) for p, outcome, _ in outcomes] == [
        (9, "shed_deadline"),
        (0, "ok"),
        (5, "ok"),
    ]
    assert outcomes[0][2] == 0.0 and outcomes[1][2] > 0.0
