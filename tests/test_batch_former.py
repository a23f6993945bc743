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
    """One sequence per length, in arrival order; each its own request unless given
    (then all arrive together, as a request's texts do)."""
    q = _native.BatchQueue()
    for i, length in enumerate(lengths):
        order, index = (i, 0) if request is None else (request, i)
        arrival = (0.001 * i if request is None else 0.0) if arrivals is None else arrivals[i]
        assert q.push(order, index, length, arrival)
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


# ---- priority classes ---------------------------------------------------------


def test_the_most_urgent_class_waiting_goes_first_and_alone():
    q = _native.BatchQueue()
    for order in range(4):  # a backlog of low priority, oldest first
        assert q.push(order, 0, 10, 0.01 * order, priority=9)
    q.push(4, 0, 10, 0.5, priority=0)
    q.push(5, 0, 12, 0.6, priority=0)
    q.push(6, 0, 10, 0.7, priority=5)
    knobs = Knobs(max_priority_wait_ms=1000, fairness=0.0)
    plans = drain(q, knobs, now=0.8)
    # Class 0, then 5, then 9; the low rows never share the urgent batch.
    assert [p.rows for p in plans] == [[(4, 0), (5, 0)], [(6, 0)], [(o, 0) for o in range(4)]]


def test_within_a_class_the_oldest_request_anchors_and_its_longest_row_first():
    q = _native.BatchQueue()
    q.push(0, 0, 5, 0.0, priority=2)
    q.push(1, 0, 300, 0.1, priority=2)  # a younger request of the same class
    q.push(1, 1, 40, 0.1, priority=2)
    q.push(2, 0, 300, 0.2, priority=7)
    knobs = Knobs(max_row_padding=0, max_priority_wait_ms=1000)
    plans = drain(q, knobs, now=0.3)
    assert [p.rows for p in plans] == [[(0, 0)], [(1, 0)], [(1, 1)], [(2, 0)]]


def test_a_request_due_first_anchors_before_older_ones():
    # Ten long requests, each due 90 ms after it arrived; a short one arriving 20 ms
    # later is due 7 ms after it: it goes first, then the long ones in order.
    q = _native.BatchQueue()
    for o in range(10):
        q.push(o, 0, 256, 0.0, overtake=0.090)
    q.push(10, 0, 5, 0.020, overtake=0.007)
    knobs = Knobs(max_batch_size=1)
    plans = drain(q, knobs, now=0.030)
    assert [p.rows[0][0] for p in plans] == [10, *range(10)]


def test_a_request_is_passed_over_only_by_those_due_before_it():
    q = _native.BatchQueue()
    q.push(0, 0, 256, 0.0, overtake=0.050)  # due at 50 ms
    q.push(1, 0, 5, 0.040, overtake=0.005)  # due at 45 ms: before it
    q.push(2, 0, 5, 0.060, overtake=0.005)  # due at 65 ms: after it
    plans = drain(q, Knobs(max_batch_size=1), now=0.070)
    assert [p.rows for p in plans] == [[(1, 0)], [(0, 0)], [(2, 0)]]


def test_an_aged_request_goes_first_whatever_is_due_before_it():
    q = _native.BatchQueue()
    q.push(0, 0, 256, 0.0, overtake=10.0)
    q.push(1, 0, 5, 0.5, overtake=0.0)
    knobs = Knobs(max_batch_size=1, max_priority_wait_ms=1000)
    assert q.plan(0.9, knobs).rows == [(1, 0)]
    assert q.plan(1.0, knobs).rows == [(0, 0)]  # it has waited max_priority_wait_ms
    # Priorities ignored (0): arrival order, allowances too.
    assert q.plan(0.6, Knobs(max_batch_size=1, max_priority_wait_ms=0)).rows == [(0, 0)]


def test_a_due_first_anchor_keeps_its_class_and_batches_by_length():
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0, priority=5, overtake=0.5)
    q.push(1, 0, 300, 0.01, priority=5, overtake=0.05)  # due first in class 5
    q.push(2, 0, 298, 0.0, priority=5, overtake=0.2)  # joins it by length
    q.push(3, 0, 300, 0.02, priority=7, overtake=0.0)  # less urgent: not even due first
    plan = q.plan(0.03, Knobs(max_row_padding=4, fairness=0.0))
    assert plan.rows == [(1, 0), (2, 0)]


def test_no_class_starves_an_aged_request_goes_first():
    # One urgent request arrives every 10 ms and one batch of one row runs every
    # 10 ms: the urgent class is never empty, yet the old low-priority request is
    # served as soon as it has waited max_priority_wait_ms.
    knobs = Knobs(max_batch_size=1, max_priority_wait_ms=200)
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0, priority=9)
    served_at = None
    for step in range(1, 40):
        now = 0.01 * step
        q.push(step, 0, 10, now, priority=0)
        plan = q.plan(now, knobs)
        q.take(plan)
        if plan.rows == [(0, 0)]:
            served_at = now
            break
        assert plan.rows[0][0] != 0
    assert served_at == pytest.approx(0.2)
    assert [o for o, _ in q.plan(served_at, knobs).rows] == [20]  # then the urgent again


def test_aged_rows_of_every_class_share_the_urgent_batch():
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0, priority=9)
    q.push(1, 0, 10, 0.1, priority=6)
    q.push(2, 0, 10, 0.3, priority=0)
    q.push(3, 0, 10, 0.35, priority=6)
    knobs = Knobs(max_priority_wait_ms=500, fairness=0.0)
    # Before anyone aged: the urgent one alone.
    assert q.plan(0.4, knobs).rows == [(2, 0)]
    # The two oldest aged; the youngest of class 6 has not yet.
    assert q.plan(0.62, knobs).rows == [(0, 0), (1, 0), (2, 0)]


def test_zero_max_priority_wait_ignores_priorities():
    q = queue_of([10, 10, 10])
    q.push(3, 0, 10, 0.5, priority=0)
    assert q.plan(0.6, Knobs(max_batch_size=2, fairness=0.0)).rows == [(3, 0)]
    knobs = Knobs(max_priority_wait_ms=0, max_batch_size=2, fairness=0.0)
    assert [p.rows for p in drain(q, knobs, now=0.6)] == [[(0, 0), (1, 0)], [(2, 0), (3, 0)]]


def test_priority_fill_takes_less_urgent_rows_that_do_not_widen_the_batch():
    q = _native.BatchQueue()
    q.push(0, 0, 30, 0.0, priority=9)
    q.push(1, 0, 20, 0.1, priority=9)
    q.push(2, 0, 12, 0.2, priority=9)
    q.push(3, 0, 2, 0.3, priority=9)  # 18 tokens of padding: over max_row_padding
    q.push(4, 0, 20, 0.4, priority=0)
    fill = Knobs(max_row_padding=16, priority_fill=True, fairness=0.0)
    plan = q.plan(0.5, fill)
    assert plan.rows == [(1, 0), (2, 0), (4, 0)] and plan.width == 20
    assert plan.real_tokens == 52
    assert q.plan(0.5, Knobs(max_row_padding=16, fairness=0.0)).rows == [(4, 0)]
    # The fill stops at the batch's limits like any row.
    assert q.plan(0.5, Knobs(max_row_padding=16, priority_fill=True, max_batch_size=2)).rows == [
        (1, 0),
        (4, 0),
    ]


def test_a_held_batch_wakes_when_the_oldest_ages():
    q = _native.BatchQueue()
    q.push(0, 0, 10, 0.0, priority=9)
    q.push(1, 0, 10, 0.05, priority=0)
    knobs = Knobs(max_wait_ms=500, max_priority_wait_ms=100)
    held = q.plan(0.06, knobs)
    assert held.rows == [(1, 0)] and not held.ready
    assert held.wake_at == pytest.approx(0.1)
    assert q.plan(0.1, knobs).rows == [(0, 0), (1, 0)]


@pytest.mark.parametrize("priority", [-1, 10, 1000])
def test_priorities_outside_the_range_are_refused(priority):
    q = _native.BatchQueue()
    with pytest.raises(ValueError, match=r"priority must be an integer in \[0, 9\].*got"):
        q.push(0, 0, 10, 0.0, priority=priority)
    assert len(q) == 0
    assert (_native.PRIORITY_MOST_URGENT, _native.PRIORITY_LEAST_URGENT) == (0, 9)
    assert _native.PRIORITY_DEFAULT == 5


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 512), min_size=1, max_size=80),
    gaps_ms=st.lists(st.integers(0, 50), min_size=80, max_size=80),
    priorities=st.lists(st.sampled_from([0, 3, 5, 9]), min_size=80, max_size=80),
    max_priority_wait_ms=st.sampled_from([0, 100, 1000, 100_000]),
    priority_fill=st.booleans(),
    max_batch_size=st.integers(1, 40),
    max_batch_tokens=st.integers(1, 6000),
    max_row_padding=st.integers(0, 300),
    fairness=st.sampled_from([0.0, 0.5, 0.7, 1.0]),
    overtakes_ms=st.lists(st.sampled_from([0, 0, 5, 40, 300]), min_size=80, max_size=80),
)
def test_plan_invariants(
    lengths,
    gaps_ms,
    priorities,
    overtakes_ms,
    max_priority_wait_ms,
    priority_fill,
    max_batch_size,
    max_batch_tokens,
    max_row_padding,
    fairness,
):
    knobs = Knobs(
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_row_padding=max_row_padding,
        fairness=fairness,
        max_priority_wait_ms=max_priority_wait_ms,
        priority_fill=priority_fill,
    )
    arrivals_ms = np.cumsum(gaps_ms[: len(lengths)]).tolist()  # whole ms: exact in ns
    now_ms = arrivals_ms[-1] + 10
    q = _native.BatchQueue()
    for o, length in enumerate(lengths):
        pushed = q.push(
            o, 0, length, arrivals_ms[o] / 1000, priority=priorities[o],
            overtake=overtakes_ms[o] / 1000,
        )  # fmt: skip
        assert pushed

    one_class = len(set(priorities[: len(lengths)])) == 1

    def class_of(o: int) -> int:  # the aged count as the most urgent class
        if one_class:  # ageing orders classes against each other, nothing else
            return 0
        return 0 if now_ms - arrivals_ms[o] >= max_priority_wait_ms else priorities[o]

    best = min(class_of(o) for o in range(len(lengths)))
    if now_ms - arrivals_ms[0] >= max_priority_wait_ms:  # the oldest has aged: it anchors
        anchor = 0
    else:  # the request due first in the most urgent class (ties: the older)
        due = {o: arrivals_ms[o] + overtakes_ms[o] for o in range(len(lengths))}
        anchor = min((due[o], o) for o in range(len(lengths)) if class_of(o) == best)[1]
    latest = (now_ms - fairness * (now_ms - arrivals_ms[anchor])) / 1000  # max_wait is 0
    arrivals = [a / 1000 for a in arrivals_ms]
    plan = q.plan(now_ms / 1000, knobs)
    rows = [o for o, _ in plan.rows]
    chosen = [lengths[o] for o in rows]
    assert anchor in rows and rows == sorted(rows)  # the anchor, in arrival order
    assert 1 <= len(rows) <= max_batch_size
    assert plan.width == max(chosen) and plan.real_tokens == sum(chosen)
    if len(rows) > 1:
        assert plan.padded_tokens <= max_batch_tokens
    # Every row added at most max_row_padding padded tokens.
    assert plan.padded_tokens - plan.real_tokens <= (len(rows) - 1) * max_row_padding
    # Fairness: the other rows waited long enough (1 us of rounding slack).
    assert all(arrivals[o] <= latest + 1e-6 for o in rows if o != anchor)
    # One class per batch; with priority_fill, other classes only where they fit
    # within the width the batch's own class set.
    own = [o for o in rows if class_of(o) == best]
    others = [o for o in rows if class_of(o) != best]
    assert not others or priority_fill
    assert all(lengths[o] <= max(lengths[k] for k in own) for o in others)
    # Closed: no eligible row of its class left behind could have joined within the limits.
    if len(rows) < max_batch_size and not others:
        for o, length in enumerate(lengths):
            if o in rows or class_of(o) != best or arrivals[o] > latest - 1e-6:
                continue
            width = max(plan.width, length)
            cost = width * (len(rows) + 1) - plan.padded_tokens - length
            fits = width * (len(rows) + 1) <= max_batch_tokens
            assert cost > max_row_padding or not fits
    # Taking batch after batch serves everything exactly once.
    served = [r for p in drain(q, knobs, now_ms / 1000) for r in p.rows]
    assert sorted(served) == [(i, 0) for i in range(len(lengths))]
