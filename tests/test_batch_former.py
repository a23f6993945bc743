"""The batch former as a pure function of (queue, clock, knobs), with a fake clock.

``_native.BatchQueue`` is the very queue and policy the scheduler runs; here
the test owns the clock (seconds as floats) and the queue state.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textfleet.engine import _native

Knobs = _native.BatchKnobs


def queue_of(lengths, arrivals=None, request=None):
    """One sequence per length, in arrival order; each its own request unless given."""
    q = _native.BatchQueue()
    for i, length in enumerate(lengths):
        order, index = (i, 0) if request is None else (request, i)
        assert q.push(order, index, length, 0.001 * i if arrivals is None else arrivals[i])
    return q


def drain(q, knobs, now=0.0):
    """Take batches until empty; the list of their plans."""
    plans = []
    while len(q):
        plan = q.plan(now, knobs)
        assert plan.ready and plan.rows
        q.take(plan)
        plans.append(plan)
    return plans


def test_empty_queue_plans_nothing():
    plan = _native.BatchQueue().plan(0.0, Knobs())
    assert plan.rows == [] and not plan.ready and plan.wake_at is None


def test_oldest_is_always_first_even_when_its_length_is_odd():
    # The oldest is long; twenty short ones queued after it must not pass it.
    q = queue_of([200] + [10] * 20)
    plan = q.plan(1.0, Knobs(max_batch_size=8, max_row_padding=32))
    assert plan.rows[0] == (0, 0)
    assert plan.width == 200 and len(plan.rows) == 1  # short rows would waste 190 each


def test_rows_are_chosen_by_length_near_the_oldest():
    lengths = [20, 200, 22, 190, 19, 60, 21, 195, 18]
    plan = queue_of(lengths).plan(0.0, Knobs(max_batch_size=32, max_row_padding=8))
    assert sorted(lengths[o] for o, _ in plan.rows) == [18, 19, 20, 21, 22]
    assert plan.width == 22 and plan.real_tokens == 100


def test_max_batch_size_closes_the_batch():
    q = queue_of([10] * 50)
    plan = q.plan(0.0, Knobs(max_batch_size=16))
    assert len(plan.rows) == 16 and plan.full
    assert [o for o, _ in plan.rows] == list(range(16))  # equal lengths: oldest first


def test_token_budget_counts_padded_tokens():
    # 8 rows of 100 fit 800 padded tokens; a ninth would need 900.
    q = queue_of([100] * 20)
    plan = q.plan(0.0, Knobs(max_batch_size=64, max_batch_tokens=850))
    assert len(plan.rows) == 8 and plan.padded_tokens == 800 and plan.full


def test_a_longer_row_over_budget_leaves_room_for_shorter_ones():
    # Oldest 50; a 90 would make 2 x 90 > 160; the 40 still fits (3 x 50 = 150).
    q = queue_of([50, 90, 40])
    plan = q.plan(0.0, Knobs(max_batch_tokens=160, max_row_padding=1000))
    assert sorted(o for o, _ in plan.rows) == [0, 2] and plan.width == 50
    assert not plan.full  # a row of <= 50 tokens could still join (3 x 50 <= 160)


def test_oldest_alone_over_budget_still_runs():
    plan = queue_of([300, 10]).plan(0.0, Knobs(max_batch_tokens=256))
    assert plan.rows == [(0, 0)] and plan.ready and plan.full


def test_fairness_keeps_young_rows_out_of_a_backlogged_batch():
    # The oldest waited 1 s: with fairness 0.7 a row must have waited >= 0.7 s.
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0)
    q.push(0, 1, 10, 0.0)  # same request as the oldest: always eligible
    q.push(1, 0, 10, 0.2)  # waited 0.8 s
    q.push(2, 0, 10, 0.9)  # waited 0.1 s: may not overtake others yet
    plan = q.plan(1.0, Knobs(fairness=0.7))
    assert plan.rows == [(0, 0), (0, 1), (1, 0)]
    assert q.plan(1.0, Knobs(fairness=0.0)).rows == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert q.plan(1.0, Knobs(fairness=1.0)).rows == [(0, 0), (0, 1)]


def test_fairness_counts_only_the_wait_beyond_max_wait():
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0)
    q.push(1, 0, 10, 0.6)  # waited 0.4 s
    q.push(2, 0, 10, 0.95)
    # Held 1.0 - 0.5 = 0.5 s past max_wait: rows must have waited >= 0.35 s.
    plan = q.plan(1.0, Knobs(max_wait_ms=500, fairness=0.7))
    assert plan.rows == [(0, 0), (1, 0)]
    # Not yet past max_wait: nothing is held back for fairness.
    assert len(q.plan(0.4, Knobs(max_wait_ms=500, fairness=0.7)).rows) == 3


def test_max_wait_zero_forms_at_once():
    plan = queue_of([10]).plan(0.0, Knobs(max_wait_ms=0))
    assert plan.ready and plan.wake_at is None


def test_max_wait_holds_a_batch_that_can_grow_until_the_oldest_waited():
    knobs = Knobs(max_batch_size=4, max_wait_ms=5)
    q = queue_of([10, 10], arrivals=[1.000, 1.002])
    held = q.plan(1.003, knobs)
    assert not held.ready and held.wake_at == pytest.approx(1.005)
    assert q.plan(1.0049, knobs).ready is False
    assert q.plan(1.005, knobs).ready
    # A full batch does not wait.
    q.push(2, 0, 10, 1.003)
    q.push(3, 0, 10, 1.003)
    full = q.plan(1.003, knobs)
    assert full.full and full.ready


def test_idle_executors_share_a_ready_batch():
    lengths = [20, 200, 22, 190, 19, 60, 21, 195, 18]
    knobs = Knobs(max_batch_size=32, max_row_padding=8)
    q = queue_of(lengths)
    whole = q.plan(0.0, knobs)
    assert len(whole.rows) == 5
    half = q.plan(0.0, knobs, parts=2)
    # The oldest and the rows nearest it in length: ceil(5 / 2) of them.
    assert half.rows[0] == (0, 0) and len(half.rows) == 3
    assert sorted(lengths[o] for o, _ in half.rows) == [19, 20, 21]
    assert half.width == 21 and half.real_tokens == 60 and half.full == whole.full
    q.take(half)
    left = sorted(lengths[o] for plan in drain(q, knobs) for o, _ in plan.rows)
    assert left == [18, 22, 60, 190, 195, 200]
    # One row is never split, and parts larger than the rows leave one each.
    assert len(queue_of([50]).plan(0.0, knobs, parts=4).rows) == 1
    assert len(queue_of([10] * 3).plan(0.0, knobs, parts=8).rows) == 1


def test_a_held_batch_is_not_split():
    knobs = Knobs(max_batch_size=4, max_wait_ms=5)
    q = queue_of([10, 10], arrivals=[1.000, 1.002])
    held = q.plan(1.003, knobs, parts=2)
    assert not held.ready and len(held.rows) == 2


def test_starvation_freedom_and_every_sequence_served_once():
    lengths = [5, 250, 7, 9, 240, 30, 31, 6, 128, 129, 8, 300, 4] * 5
    q = queue_of(lengths)
    plans = drain(q, Knobs(max_batch_size=8, max_batch_tokens=1024, max_row_padding=16))
    served = [row for p in plans for row in p.rows]
    assert sorted(served) == [(i, 0) for i in range(len(lengths))]
    # Each batch starts with the oldest still waiting: first rows increase.
    firsts = [p.rows[0][0] for p in plans]
    assert firsts == sorted(firsts)
    # ... so sequence k is served by batch k at the latest (bounded wait).
    for b, plan in enumerate(plans):
        assert all(b <= order for order, _ in plan.rows)


def test_request_rows_stay_in_index_order_and_split_across_batches():
    q = queue_of([12, 40, 13, 41, 12, 39, 14], request=7)
    plans = drain(q, Knobs(max_batch_size=3, max_row_padding=4))
    assert len(plans) > 1
    for p in plans:
        assert [i for _, i in p.rows] == sorted(i for _, i in p.rows)
    assert sorted(i for p in plans for _, i in p.rows) == list(range(7))


def test_a_request_runs_its_longest_rows_first():
    # Rows of one request arrived together and are answered together, so the
    # order among them is free: longest first leaves the short batches for the
    # end, where they even out the workers instead of one long batch last.
    lengths = [12, 200, 13, 41, 190, 39, 14, 195, 40, 11]
    plans = drain(queue_of(lengths, request=3), Knobs(max_batch_size=3, max_row_padding=16))
    assert [p.width for p in plans] == [200, 41, 14, 11]
    assert sorted(lengths[i] for _, i in plans[0].rows) == [190, 195, 200]
    # An older request still comes first, however short its rows.
    q = queue_of([5, 6], request=1)
    q.push(2, 0, 300, 0.5)
    assert q.plan(1.0, Knobs(max_row_padding=0)).rows == [(1, 1)]


def test_cancelled_sequences_leave_the_plan():
    q = queue_of([10, 10, 10])
    assert q.erase(0, 0) == 10 and q.erase(0, 0) == -1
    plan = q.plan(0.0, Knobs())
    assert plan.rows == [(1, 0), (2, 0)] and q.tokens == 20


def test_duplicate_push_is_refused():
    q = _native.BatchQueue()
    assert q.push(1, 0, 10, 0.0) and not q.push(1, 0, 11, 0.0)
    assert len(q) == 1 and q.tokens == 10


def test_plan_is_pure():
    q = queue_of([10, 30, 12, 11])
    a, b = q.plan(0.0, Knobs()), q.plan(0.0, Knobs())
    assert a.rows == b.rows and len(q) == 4


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 512), min_size=1, max_size=80),
    gaps=st.lists(st.floats(0, 0.05), min_size=80, max_size=80),
    max_batch_size=st.integers(1, 40),
    max_batch_tokens=st.integers(1, 6000),
    max_row_padding=st.integers(0, 300),
    fairness=st.sampled_from([0.0, 0.5, 0.7, 1.0]),
)
def test_plan_invariants(
    lengths, gaps, max_batch_size, max_batch_tokens, max_row_padding, fairness
):
    knobs = Knobs(
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_row_padding=max_row_padding,
        fairness=fairness,
    )
    arrivals = np.cumsum(gaps[: len(lengths)]).tolist()
    now = arrivals[-1] + 0.01
    latest = now - fairness * (now - arrivals[0])  # max_wait is 0
    q = queue_of(lengths, arrivals)
    plan = q.plan(now, knobs)
    rows = [o for o, _ in plan.rows]
    chosen = [lengths[o] for o in rows]
    assert rows[0] == 0 and rows == sorted(rows)  # the oldest, then arrival order
    assert 1 <= len(rows) <= max_batch_size
    assert plan.width == max(chosen) and plan.real_tokens == sum(chosen)
    if len(rows) > 1:
        assert plan.padded_tokens <= max_batch_tokens
    # Every row added at most max_row_padding padded tokens.
    assert plan.padded_tokens - plan.real_tokens <= (len(rows) - 1) * max_row_padding
    # Fairness: the other rows waited long enough (1 us of rounding slack).
    assert all(arrivals[o] <= latest + 1e-6 for o in rows[1:])
    # Closed: no eligible sequence left behind could have joined within the limits.
    if len(rows) < max_batch_size:
        for o, length in enumerate(lengths):
            if o in rows or arrivals[o] > latest - 1e-6:
                continue
            width = max(plan.width, length)
            cost = width * (len(rows) + 1) - plan.padded_tokens - length
            fits = width * (len(rows) + 1) <= max_batch_tokens
            assert cost > max_row_padding or not fits
    # Taking batch after batch serves everything exactly once.
    served = [r for p in drain(q, knobs, now) for r in p.rows]
    assert sorted(served) == [(i, 0) for i in range(len(lengths))]
