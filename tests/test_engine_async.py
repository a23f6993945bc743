"""Engine on the scheduler: many callers at once, asyncio, timeouts, overload, failures.

Results are compared with cosine >= 0.99999, not bitwise: a text's vector
depends slightly on the batch it ran in (its width sets the padding, and
onnxruntime's kernels change their reduction order with the shape), so the
same text alone and in a batch of 32 can differ in the last bit (about 3e-8
here), while the tokens, mask and model are identical.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from textfleet.engine import Engine
from textfleet.engine.errors import EngineError, Overloaded, TooLarge
from textfleet.engine.scheduler import EngineClosed

COSINE = 0.99999


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def texts(workload_texts) -> list[str]:
    rng = np.random.default_rng(5)
    return [workload_texts[i] for i in rng.choice(len(workload_texts), 240, replace=False)]


@pytest.fixture(scope="module")
def reference(engine, texts) -> np.ndarray:
    return engine.embed(texts)


def test_many_threads_and_tasks_get_their_own_vectors(engine, texts, reference):
    """Sync callers on 4 threads and 48 asyncio tasks on two loops, all at once."""
    mismatches: list[str] = []
    lock = threading.Lock()

    def check(who: str, idx: list[int], got: np.ndarray) -> None:
        assert got.shape == (len(idx), engine.info.dim) and got.dtype == np.float32
        worst = float(cosine(got, reference[idx]).min())
        if worst < COSINE:
            with lock:
                mismatches.append(f"{who} {idx}: cosine {worst}")

    def sync_caller(k: int) -> None:
        for j in range(6):
            idx = [(k * 31 + j * 7 + m) % len(texts) for m in range(1 + (j % 3) * 4)]
            check(f"thread {k}", idx, engine.embed([texts[i] for i in idx]))

    async def async_callers(offset: int) -> None:
        async def one(k: int) -> None:
            for j in range(5):
                i = (offset + k * 5 + j) % len(texts)
                check(f"task {k}", [i], await engine.aembed([texts[i]], timeout=600))

        await asyncio.gather(*(one(k) for k in range(24)))

    threads = [threading.Thread(target=sync_caller, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=asyncio.run, args=(async_callers(o),)) for o in (0, 120)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches, mismatches[:5]
    stats = engine.stats()
    assert stats.queue_sequences == stats.live_requests == 0
    assert stats.mean_batch_size > 1  # concurrent callers were batched together


@pytest.fixture
def small_engine(model_dir):
    eng = Engine.load(
        model_dir,
        threads=1,
        batching={"max_batch_size": 8, "max_batch_tokens": 2048, "max_queue_tokens": 20_000},
    )
    yield eng
    eng.close()


def test_timeout_and_cancellation_leave_the_queue(small_engine, texts):
    eng = small_engine

    async def main():
        busy = asyncio.ensure_future(eng.aembed(texts[:120]))  # older: computed first
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await eng.aembed(["too late for me"], timeout=0.01)
        victim = asyncio.ensure_future(eng.aembed(["cancelled before it ran"]))
        await asyncio.sleep(0.01)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return await busy

    out = asyncio.run(main())
    assert out.shape == (120, eng.info.dim)
    stats = eng.stats()
    assert stats.timed_out == 1 and stats.cancelled == 1
    assert stats.dropped_sequences == 2  # neither was ever computed
    assert stats.sequences - stats.dropped_sequences == 120


def test_overload_is_immediate_and_names_the_bound(small_engine, texts):
    eng = small_engine

    async def main():
        busy = asyncio.ensure_future(eng.aembed(texts[:100]))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="max_queue_tokens") as e:
            await asyncio.gather(*(eng.aembed([t]) for t in texts * 4))
        assert e.value.retry_after_s > 0
        with pytest.raises(TooLarge, match="max_queue_tokens"):
            await eng.aembed(["word " * 300] * 100)  # 100 x max_length > 20k
        await busy

    asyncio.run(main())
    assert eng.stats().rejected >= 2
    assert eng.embed(["still serving"]).shape == (1, eng.info.dim)


def test_large_sync_input_is_chunked_within_the_bound(small_engine, engine, texts):
    got = small_engine.embed(texts)  # admitted against up to ~36k tokens: split in two
    assert cosine(got, engine.embed(texts)).min() >= COSINE
    assert small_engine.stats().requests > 1


class FaultyBackend:
    """The real backend, failing every batch that holds a given token id (fault injection)."""

    def __init__(self, backend, poison_id: int):
        self._backend, self._poison = backend, poison_id

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def run(self, batch):
        if (batch.input_ids == self._poison).any():
            raise RuntimeError("injected backend failure")
        return self._backend.run(batch)


def test_backend_failure_fails_only_that_batch(model_dir):
    eng = Engine.load(model_dir, threads=1, batching={"max_batch_size": 1})
    try:
        poison = eng.tokenizer.encode("zebra").ids[1]
        eng.backend = FaultyBackend(eng.backend, poison)
        texts = ["a horse", "a zebra", "a cat", "zebra crossing", "a dog"]

        async def main():
            return await asyncio.gather(*(eng.aembed([t]) for t in texts), return_exceptions=True)

        results = asyncio.run(main())
        failed = [t for t, r in zip(texts, results, strict=True) if isinstance(r, Exception)]
        assert failed == ["a zebra", "zebra crossing"]
        errors = [str(r) for r in results if isinstance(r, Exception)]
        assert errors == ["injected backend failure"] * 2
        assert eng.embed(["the engine keeps serving"]).shape == (1, eng.info.dim)
        stats = eng.stats()
        assert stats.failed_batches == 2 and stats.errors == 2
    finally:
        eng.close()


def test_close_fails_waiting_callers(model_dir, texts):
    eng = Engine.load(model_dir, threads=1)

    async def main():
        waiting = asyncio.ensure_future(eng.aembed(texts[:200]))
        await asyncio.sleep(0.05)
        eng.close()
        with pytest.raises(EngineClosed):
            await waiting

    asyncio.run(main())
    with pytest.raises(EngineError, match="closed"):
        asyncio.run(eng.aembed(["x"]))


def test_huggingface_tokenizer_fallback_feeds_the_scheduler(model_dir, engine, texts):
    """A tokenizer the native core cannot reproduce is tokenized in Python, then queued."""
    from textfleet.engine.backends.base import create_backend
    from textfleet.engine.config import BatchingConfig
    from textfleet.engine.tokenizer import HFTokenizer, Tokenizer

    tok = Tokenizer(HFTokenizer(model_dir.tokenizer_path, model_dir.info.max_length, 1))
    backend = create_backend("onnxruntime", model_dir, threads=1)
    backend.load()
    with Engine(model_dir, tok, backend, BatchingConfig()) as eng:
        assert eng.tokenizer.backend == "huggingface" and eng.tokenizer.native is None
        got = eng.embed(texts[:40])

        async def one_by_one():
            return await asyncio.gather(*(eng.aembed([t]) for t in texts[:8]))

        singles = np.concatenate(asyncio.run(one_by_one()))
    ref = engine.embed(texts[:40])
    assert cosine(got, ref).min() >= COSINE and cosine(singles, ref[:8]).min() >= COSINE


def test_batching_knobs_come_from_the_model_dir_and_the_caller(model_dir, tmp_path):
    import json
    import shutil

    from pydantic import ValidationError

    from textfleet.engine.backends.base import physical_cores
    from textfleet.engine.config import BatchingConfig
    from textfleet.engine.engine import default_workers

    local = tmp_path / "model"
    shutil.copytree(model_dir.path, local)
    info = json.loads((local / "textfleet.json").read_text())
    info["batching"] = {"max_batch_size": 8, "max_row_padding": 64}
    (local / "textfleet.json").write_text(json.dumps(info))
    with Engine.load(local, threads=1) as eng:
        assert (eng.batching.max_batch_size, eng.batching.max_row_padding) == (8, 64)
    with Engine.load(local, threads=1, batching={"max_batch_size": 4}) as eng:
        assert (eng.batching.max_batch_size, eng.batching.max_row_padding) == (4, 64)
    with Engine.load(local, threads=1, batching=BatchingConfig()) as eng:
        # workers None resolves at load (2 on a CPU with 2+ cores); the rest as given.
        assert eng.batching == BatchingConfig(workers=default_workers("cpu"))
    with Engine.load(local, threads=1, batching={"workers": 1}) as eng:
        assert eng.batching.workers == 1
    # Threads set by hand are each run's: as many as the cores leave room for one worker.
    cores = physical_cores()
    with Engine.load(local, threads=cores) as eng:
        assert (eng.batching.workers, eng.backend.threads) == (1, cores)
    with pytest.raises(ValidationError, match="max_batch_size"):
        Engine.load(local, threads=1, batching={"max_batch_size": 0})
    with pytest.raises(ValidationError, match="max_wait_msec"):
        Engine.load(local, threads=1, batching={"max_wait_msec": 5})
