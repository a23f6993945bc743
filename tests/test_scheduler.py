"""The native scheduler and its Python executor, with the byte encoder.

``_native.ByteEncoder`` gives one token per UTF-8 byte between [CLS]=1 and
[SEP]=2, so lengths and ids are known exactly; the "model" here returns each
row's real ids, so every result can be checked against its own text.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time

import numpy as np
import pytest

from textfleet.engine import _native
from textfleet.engine.batch import Batch
from textfleet.engine.errors import Overloaded, TooLarge
from textfleet.engine.scheduler import EngineClosed, Scheduler


def byte_ids(text: str, pair: str | None = None, max_length: int = 512) -> list[int]:
    a = [b + 3 for b in text.encode()]
    b = [] if pair is None else [x + 3 for x in pair.encode()]
    room = max_length - (2 if pair is None else 3)
    while len(a) + len(b) > room:
        (a if len(a) >= len(b) else b).pop()
    return [1, *a, 2] + ([] if pair is None else [*b, 2])


def native(max_length=512, threads=1, **knobs):
    queue_tokens = knobs.pop("max_queue_tokens", 1_000_000)
    inline = knobs.pop("inline_max_bytes", 4096)
    return _native.Scheduler(
        _native.ByteEncoder(max_length),
        _native.BatchKnobs(**knobs),
        max_queue_tokens=queue_tokens,
        tokenizer_threads=threads,
        inline_max_bytes=inline,
        chunk_texts=16,
    )


def real_ids(batch: Batch) -> list[np.ndarray]:
    """The model of these tests: each row's real ids, as one float vector."""
    lengths = batch.attention_mask.sum(axis=1)
    return [batch.input_ids[r, : lengths[r]].astype(np.float64) for r in range(batch.rows)]


def test_collation_pads_and_masks_every_row():
    nat = native()
    nat.submit(1, ["hello", "hi"], pairs=["x", "yz"])
    b = nat.next_batch()
    ids, mask, types = b.arrays
    assert ids.dtype == np.int64 and ids.shape == (2, b.width) and b.request_ids == [1, 1]
    for r, (text, pair) in enumerate([("hello", "x"), ("hi", "yz")]):
        want = byte_ids(text, pair)
        assert ids[r, : len(want)].tolist() == want and (ids[r, len(want) :] == 0).all()
        assert mask[r].tolist() == [1] * len(want) + [0] * (b.width - len(want))
        assert types[r, : len(want)].tolist() == [0] * (len(text) + 2) + [1] * (len(pair) + 1)
    assert b.real_tokens == int(mask.sum())


def test_arrays_keep_the_batch_alive_without_copying():
    nat = native()
    nat.submit(1, ["abc"])
    ids, mask, _ = nat.next_batch().arrays
    gc.collect()
    assert ids.base is not None and not ids.flags.owndata
    assert ids[0].tolist() == byte_ids("abc") and mask.sum() == 5


def test_large_request_is_split_across_batches_and_reassembled_in_order():
    texts = [("w" * (i % 37)) + str(i) for i in range(300)]
    nat = native(threads=2, max_batch_size=8, inline_max_bytes=64)
    nat.submit(5, texts)
    rows = {}
    while len(rows) < len(texts):
        b = nat.next_batch()
        assert b.rows <= 8 and set(b.request_ids) == {5}
        ids, mask, _ = b.arrays
        for r, index in enumerate(b.indices):
            assert index not in rows
            rows[index] = ids[r, : mask[r].sum()].tolist()
    assert [rows[i] for i in range(len(texts))] == [byte_ids(t) for t in texts]
    assert nat.stats().live_requests == 0


def test_queue_bound_rejects_at_once():
    nat = native(max_queue_tokens=100, max_batch_tokens=100)
    nat.submit(1, ["x" * 40])  # 42 tokens
    nat.submit(2, ["x" * 40])  # 84
    with pytest.raises(_native.QueueFull, match="max_queue_tokens is 100"):
        nat.submit(3, ["x" * 20])  # 84 + 22 > 100
    nat.submit(4, ["x" * 14])  # 84 + 16 == 100 fits
    with pytest.raises(_native.RequestTooLarge, match="max_queue_tokens"):
        nat.submit(5, ["x" * 200])
    s = nat.stats()
    assert (s.rejected, s.rejected_too_large) == (1, 1)
    assert s.queue_tokens + s.prefetched_tokens == 100
    nat.next_batch()
    nat.submit(6, ["x" * 20])  # room again once a batch left the queue


def test_large_requests_are_admitted_against_an_upper_bound():
    nat = native(max_length=64, max_queue_tokens=200, max_batch_tokens=64, inline_max_bytes=10)
    nat.submit(1, ["y" * 100])  # bound min(100 + 2, 64) = 64
    nat.submit(2, ["y" * 100, "y" * 100])  # 192 reserved or queued
    with pytest.raises(_native.QueueFull):
        nat.submit(3, ["y" * 11])


def test_cancel_removes_queued_sequences():
    nat = native()
    nat.submit(1, ["aaa", "bbb"])
    nat.submit(2, ["ccc"])
    assert nat.cancel(1) and not nat.cancel(1) and not nat.cancel(99)
    b = nat.next_batch()
    assert b.request_ids == [2]
    s = nat.stats()
    assert s.dropped_sequences == 2 and s.cancelled_requests == 1
    assert s.live_requests == 0 and s.queue_sequences == 0


def test_expired_requests_are_never_computed():
    nat = native()
    nat.submit(1, ["late"], timeout=0.001)
    time.sleep(0.01)
    nat.submit(2, ["on time"], timeout=60)
    assert nat.next_batch().request_ids == [2]
    s = nat.stats()
    assert s.expired_requests == 1 and s.dropped_sequences == 1


def test_full_batch_is_prefetched_and_cancelled_rows_are_dropped_from_it():
    # fairness 0: requests 2 and 3 form a full batch as soon as both are queued.
    nat = native(threads=1, max_batch_size=4, fairness=0.0)
    nat.submit(1, ["a"] * 4)
    first = nat.next_batch()  # the executor is now "computing" it
    before = nat.stats().prefetched_batches  # 0 or 1: the first may have been too
    nat.submit(2, ["b"] * 2)
    nat.submit(3, ["c"] * 2)  # a full batch of 4: a worker collates it ahead
    deadline = time.monotonic() + 10
    while nat.stats().queue_sequences and time.monotonic() < deadline:
        time.sleep(0.001)
    assert nat.stats().queue_sequences == 0  # taken into the prefetched batch
    nat.cancel(2)
    second = nat.next_batch()
    assert first.request_ids == [1] * 4 and second.request_ids == [3, 3]
    s = nat.stats()
    assert s.prefetched_batches == before + 1 and s.dropped_sequences == 2


def test_shutdown_with_drain_delivers_the_queue_first():
    nat = native(max_batch_size=2)
    nat.submit(1, ["a", "b", "c"])
    nat.shutdown(drain=True)
    with pytest.raises(RuntimeError, match="shut down"):
        nat.submit(2, ["d"])
    got = []
    while (b := nat.next_batch()) is not None:
        got += b.indices
    assert sorted(got) == [0, 1, 2]


def test_idle_executor_takes_a_lone_request_at_once():
    nat = native(max_wait_ms=0)
    got = []
    t = threading.Thread(target=lambda: got.append(nat.next_batch()))
    t.start()
    time.sleep(0.01)  # the executor waits, with no timer
    nat.submit(1, ["lonely"])
    t.join(10)
    assert got and got[0].request_ids == [1]


def dispatch_order(nat, rows: int) -> list[int]:
    """The request ids of the rows handed out, in order, until ``rows`` have been."""
    out: list[int] = []
    while len(out) < rows:
        out.extend(nat.next_batch().request_ids)
    return out


def long_then_short(nat) -> list[int]:
    """Three long requests, then a one-word one just after; the order of their rows.
    No padding allowed, so the short row is never batched with long ones; and no
    batch is full, so none is collated ahead of the short one's arrival."""
    for i in range(3):
        nat.submit(i, ["x" * 200])
    nat.submit(9, ["a"])
    return dispatch_order(nat, 4)


def test_a_short_request_goes_before_long_ones_queued_just_before_it():
    nat = native(max_row_padding=0, short_first=1.0)
    # The measured rate: 1 ms per token, so a 200-token text has an allowance of
    # about 0.2 s and a one-word one of 20 ms.
    nat.record_compute(1.0, False, padded_tokens=1000)
    assert long_then_short(nat) == [9, 0, 1, 2]


def test_arrival_order_until_a_rate_is_measured_or_when_turned_off():
    assert long_then_short(native(max_row_padding=0, short_first=1.0)) == [0, 1, 2, 9]
    nat = native(max_row_padding=0, short_first=0.0)
    nat.record_compute(0.1, False, padded_tokens=1000)
    assert long_then_short(nat) == [0, 1, 2, 9]
    # A failed batch teaches no rate.
    nat = native(max_row_padding=0, short_first=1.0)
    nat.record_compute(0.1, True, padded_tokens=1000)
    assert long_then_short(nat) == [0, 1, 2, 9]


def test_a_long_request_is_passed_over_only_within_its_allowance():
    nat = native(max_row_padding=0, short_first=1.0)
    nat.record_compute(0.001, False, padded_tokens=1000)  # 1 us per token: ~0.2 ms allowance
    nat.submit(0, ["x" * 200])
    time.sleep(0.01)  # past the long one's allowance
    nat.submit(9, ["a"])
    assert dispatch_order(nat, 2) == [0, 9]


# ---- the Python executor --------------------------------------------------------


@pytest.fixture
def sched():
    s = Scheduler(native(threads=2, max_batch_size=8, inline_max_bytes=256), real_ids, list)
    yield s
    s.close()


def test_sync_results_match_every_text(sched):
    texts = [f"text {i} " + "z" * (i % 50) for i in range(200)]
    out = sched.run_sync(texts)
    assert [r.tolist() for r in out] == [byte_ids(t) for t in texts]


def test_many_threads_and_tasks_each_get_their_own_results(sched):
    errors = []

    def worker(k):
        for j in range(30):
            texts = [f"t{k}-{j}-{m}" * (1 + (k + m) % 7) for m in range(1 + j % 4)]
            got = sched.run_sync(texts)
            if [r.tolist() for r in got] != [byte_ids(t) for t in texts]:
                errors.append((k, j))

    async def clients():
        async def one(k):
            for j in range(20):
                text = f"async {k} {j} " * (1 + k % 5)
                (got,) = await sched.run_async([text])
                assert got.tolist() == byte_ids(text)

        await asyncio.gather(*(one(k) for k in range(32)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    asyncio.run(clients())
    for t in threads:
        t.join()
    assert not errors
    s = sched.stats()
    assert sched.pending == 0 and s.live_requests == 0 and s.queue_sequences == 0
    assert s.ok_requests == s.requests == 6 * 30 + 32 * 20


def test_a_failing_batch_fails_only_its_requests():
    def flaky(batch: Batch):
        if (batch.input_ids == ord("!") + 3).any():
            raise ValueError("poisoned batch")
        return real_ids(batch)

    nat = native(max_batch_size=1)  # one row per batch: failures stay isolated
    s = Scheduler(nat, flaky, list)
    try:

        async def main():
            texts = ["fine", "bad!", "also fine", "!", "ok"]
            return await asyncio.gather(*(s.run_async([t]) for t in texts), return_exceptions=True)

        results = asyncio.run(main())
        assert [type(r).__name__ for r in results] == ["list", "ValueError"] * 2 + ["list"]
        assert s.run_sync(["still serving"])[0].tolist() == byte_ids("still serving")
        st = s.stats()
        assert st.failed_batches == 2 and st.failed_requests == 2
    finally:
        s.close()


def test_failure_cancels_the_rest_of_a_split_request():
    calls = []

    def fail_first(batch: Batch):
        calls.append(batch.rows)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_ids(batch)

    gate = threading.Event()
    s = Scheduler(native(max_batch_size=2), lambda b: (gate.wait(), fail_first(b))[1], list)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            threading.Timer(0.05, gate.set).start()
            s.run_sync(["a", "b", "c", "d", "e"])
        assert s.run_sync(["z"])[0].tolist() == byte_ids("z")  # the executor moved on
        st = s.stats()
        # c, d, e were never computed: the next batch run is z's alone.
        assert calls == [2, 1] and st.dropped_sequences == 3 and st.live_requests == 0
    finally:
        s.close()


def test_wrong_row_count_from_the_model_fails_the_batch():
    s = Scheduler(native(), lambda b: real_ids(b)[:-1], list)
    try:
        with pytest.raises(RuntimeError, match="returned 1 rows for a batch of 2"):
            s.run_sync(["a", "b"])
    finally:
        s.close()


def test_overload_maps_to_engine_error():
    gate = threading.Event()
    nat = native(max_queue_tokens=40, max_batch_tokens=40)
    s = Scheduler(nat, lambda b: (gate.wait(), real_ids(b))[1], list)
    try:
        threading.Thread(target=s.run_sync, args=(["x" * 30],)).start()  # computing
        time.sleep(0.05)
        threading.Thread(target=s.run_sync, args=(["x" * 30],)).start()  # queued: 32
        time.sleep(0.05)
        with pytest.raises(Overloaded) as e:
            s.run_sync(["x" * 10])
        assert e.value.retry_after_s > 0
        with pytest.raises(TooLarge):
            s.run_sync(["x" * 100])
    finally:
        gate.set()
        s.close(drain=True)


def test_timeouts_and_cancellation_resolve_exactly_once():
    gate = threading.Event()
    s = Scheduler(native(max_batch_size=1), lambda b: (gate.wait(), real_ids(b))[1], list)
    try:

        async def main():
            first = asyncio.ensure_future(s.run_async(["busy"]))  # holds the executor
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await s.run_async(["waits too long"], timeout=0.05)
            victim = asyncio.ensure_future(s.run_async(["cancelled"]))
            await asyncio.sleep(0.01)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            gate.set()
            return await first

        assert asyncio.run(main())[0].tolist() == byte_ids("busy")
        with pytest.raises(TimeoutError):
            gate.clear()
            threading.Timer(0.2, gate.set).start()
            s.run_sync(["held"], timeout=0.1)
        st = s.stats()
        assert st.timeouts == 1 + 1 and st.cancellations == 1
        assert st.dropped_sequences >= 2  # neither was ever computed
    finally:
        gate.set()
        s.close()


def test_close_fails_waiting_requests():
    gate = threading.Event()
    s = Scheduler(native(max_batch_size=1), lambda b: (gate.wait(), real_ids(b))[1], list)
    results = []
    t = threading.Thread(target=lambda: results.append(_catch(s.run_sync, ["a"])))
    t2 = threading.Thread(target=lambda: results.append(_catch(s.run_sync, ["b"])))
    t.start()
    time.sleep(0.05)
    t2.start()
    time.sleep(0.05)
    s._native.shutdown(drain=False)
    gate.set()
    t.join(10)
    t2.join(10)
    s.close()
    assert sorted(type(r).__name__ for r in results) == ["EngineClosed", "list"]
    with pytest.raises(EngineClosed):
        s.run_sync(["after"])


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def test_no_leak_over_100k_short_requests():
    """Memory and queue sizes come back to baseline after 100k submissions."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    s = Scheduler(native(threads=1, max_batch_size=32), real_ids, list)

    async def clients(n_requests, concurrency=64):
        counter = iter(range(n_requests))

        async def client():
            for i in counter:
                text = f"short {i % 1000}"
                if i % 97 == 0:  # some time out or get cancelled on the way
                    task = asyncio.ensure_future(s.run_async([text], timeout=30))
                    await asyncio.sleep(0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    continue
                (got,) = await s.run_async([text], timeout=30)
                assert got[0] == 1 and got[-1] == 2

        await asyncio.gather(*(client() for _ in range(concurrency)))

    try:
        asyncio.run(clients(10_000))  # warm up allocators and caches
        gc.collect()
        rss0 = proc.memory_info().rss
        asyncio.run(clients(100_000))
        gc.collect()
        grown = proc.memory_info().rss - rss0
        st = s.stats()
        assert s.pending == 0
        assert (st.live_requests, st.queue_sequences, st.queue_tokens) == (0, 0, 0)
        assert (st.reserved_tokens, st.prefetched_tokens, st.tokenize_tasks) == (0, 0, 0)
        assert st.requests == 110_000
        assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
    finally:
        s.close()


def test_workers_compute_side_by_side_and_split_work_that_arrives_idle():
    gate, seen, lock = threading.Event(), [], threading.Lock()

    def model(batch: Batch):
        with lock:
            seen.append((batch.rows, batch.alone))
        gate.wait()
        return real_ids(batch)

    s = Scheduler(native(max_batch_size=32), model, list, workers=2)
    time.sleep(0.2)  # both workers waiting in next_batch()
    try:
        # Four texts while both workers idle: two batches of two, computed at once.
        ticket = s.submit(["aa", "bb", "cc", "dd"])
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(seen) == [(2, False), (2, False)]
        gate.set()
        assert [r.tolist() for r in ticket.result()] == [
            byte_ids(t) for t in ["aa", "bb", "cc", "dd"]
        ]
        # One text with nothing else computing: alone (the backend may use every core).
        seen.clear()
        s.run_sync(["solo"])
        assert seen == [(1, True)]
        # One text while another batch computes: not alone.
        gate.clear()
        seen.clear()
        first = s.submit(["long " * 20])
        while not seen:
            time.sleep(0.01)
        second = s.submit(["x"])
        while len(seen) < 2:
            time.sleep(0.01)
        assert seen == [(1, True), (1, False)]
        gate.set()
        first.result(), second.result()
        assert s.alive
    finally:
        gate.set()
        s.close()
    assert not s.alive


def test_drain_with_workers_delivers_batches_still_computing():
    gate = threading.Event()
    s = Scheduler(
        native(max_batch_size=1), lambda b: (gate.wait(), real_ids(b))[1], list, workers=2
    )
    tickets = [s.submit([t]) for t in ("one", "two", "three")]
    time.sleep(0.05)
    closer = threading.Thread(target=s.close, kwargs={"drain": True})
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(10)
    assert [t.result()[0].tolist() for t in tickets] == [
        byte_ids(x) for x in ("one", "two", "three")
    ]
