"""Request priority end to end: the engine serves an urgent request ahead of a
backlog, and every protocol checks ``priority`` and hands it on.

The batch former's policy itself (classes, ageing, filling) is tested with a
fake clock in tests/test_batch_former.py; here the real engine and model run.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest

from textfleet.engine import _native
from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError
from textfleet.serve.config import ConfigError, parse_model
from textfleet.serve.protocols import openai, rerank, v2
from textfleet.serve.protocols.common import error_reply
from textfleet.serve.tasks import adapter_for

BACKLOG = 48


@pytest.fixture(scope="module")
def one_worker(model_dir):
    # One executor and small batches: the order batches run in is the order the
    # batch former picks, one after another; within a class, arrival order (a short
    # request would otherwise also pass long ones of its own class: short_first).
    batching = {"workers": 1, "max_batch_size": 2, "short_first": 0.0}
    with Engine.load(model_dir, threads=1, batching=batching) as engine:
        yield engine


def completion_order(engine: Engine, backlog: list[str], last: str, priority: int | None):
    """Queue the backlog at priority 9, then ``last`` at ``priority``; how many backlog
    requests finished before ``last`` did, and its vector."""

    async def main():
        done: list[str] = []
        lows = []
        for text in backlog:
            task = asyncio.ensure_future(engine.aembed([text], priority=9))
            task.add_done_callback(lambda _: done.append("low"))
            lows.append(task)
        await asyncio.sleep(0)  # every backlog request is submitted
        latecomer = asyncio.ensure_future(engine.aembed([last], priority=priority))
        latecomer.add_done_callback(lambda _: done.append("last"))
        await asyncio.gather(latecomer, *lows)
        return done.index("last"), latecomer.result()

    return asyncio.run(main())


def test_an_urgent_request_overtakes_a_backlog_of_low_priority_ones(one_worker):
    eng = one_worker
    words = "a long and winding text about nothing much " * 12
    backlog = [f"request {i}: {words}" for i in range(BACKLOG)]
    urgent = "how long do cats sleep"
    before, vector = completion_order(eng, backlog, urgent, priority=0)
    # Only what was computing or collated ahead when it arrived ran first (a batch or
    # two of two rows), give or take the batches run while the backlog was queued.
    assert before <= BACKLOG // 4, f"{before} of {BACKLOG} backlog requests finished first"
    np.testing.assert_allclose(vector, eng.embed([urgent]), atol=1e-5)
    # The same request at the backlog's priority waits its turn behind all of it.
    before, _ = completion_order(eng, backlog, urgent, priority=9)
    assert before >= BACKLOG - 2


@pytest.mark.parametrize("value", [-1, 10, 2.5, "0", True])
def test_the_engine_checks_priority(one_worker, value):
    with pytest.raises(InputError) as err:
        asyncio.run(one_worker.aembed(["x"], priority=value))
    assert err.value.field == "priority"
    assert "from 0 (most urgent) to 9 (least urgent; 5 when not given)" in str(err.value)
    with pytest.raises(InputError, match="priority"):
        one_worker.embed(["x"], priority=value)


def test_a_batch_collated_ahead_goes_back_for_a_more_urgent_request():
    knobs = _native.BatchKnobs(max_batch_size=4, fairness=0.0)
    nat = _native.Scheduler(_native.ByteEncoder(512), knobs, tokenizer_threads=1)
    nat.submit(1, ["a"] * 4, priority=9)
    first = nat.next_batch()  # the executor is now "computing" it
    nat.submit(2, ["b"] * 4, priority=9)  # a full batch: a worker collates it ahead
    deadline = time.monotonic() + 10
    while nat.stats().prefetched_tokens == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert nat.stats().queue_sequences == 0  # all of it in the batch collated ahead
    nat.submit(3, ["urgent"], priority=0)
    second, third = nat.next_batch(), nat.next_batch()
    assert first.request_ids == [1] * 4
    assert second.request_ids == [3] and third.request_ids == [2] * 4
    assert sorted(third.indices) == [0, 1, 2, 3]
    ids = third.arrays[0]
    assert (ids[:, :3] == [1, ord("b") + 3, 2]).all()  # the rows' own tokens, back from the queue
    nat.shutdown()


# ---------------------------------------------------------------- protocols


def v2_body(parameters: dict) -> bytes:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]
    return orjson.dumps({"inputs": inputs, "parameters": parameters})


@pytest.mark.parametrize("value", [-1, 10, 1.0, "1", True, [0], {"level": 1}])
def test_a_v2_priority_out_of_range_or_not_an_integer_is_400(value):
    with pytest.raises(InputError) as err:
        v2.parse_infer_request(v2_body({"priority": value}))
    assert err.value.field == "parameters.priority"
    reply = error_reply(err.value)
    assert reply.status == 400
    message = orjson.loads(reply.body)["error"]
    assert message.startswith("parameters.priority: expected an integer from 0 (most urgent)")


def test_a_v2_priority_reaches_the_request_not_the_model_parameters():
    req = v2.parse_infer_request(v2_body({"priority": 1, "top_k": 2}))
    assert req.priority == 1 and req.parameters == {"top_k": 2}
    assert v2.parse_infer_request(v2_body({})).priority is None


def test_openai_and_rerank_bodies_take_priority_too():
    body = {"model": "m", "input": ["a"], "priority": 0}
    assert openai.parse_embeddings_request(body, 8).priority == 0
    assert openai.parse_embeddings_request({**body, "priority": None}, 8).priority is None
    with pytest.raises(InputError, match=r"^priority: expected an integer"):
        openai.parse_embeddings_request({**body, "priority": 11}, 8)
    rr = {"model": "m", "query": "q", "documents": ["d"], "priority": 7}
    assert rerank.parse_rerank_request(rr, 8).priority == 7
    with pytest.raises(InputError, match="priority"):
        rerank.parse_rerank_request({**rr, "priority": "high"}, 8)


def test_the_adapter_hands_priority_to_the_engine(one_worker, model_dir):
    adapter = adapter_for(one_worker, parse_model({"name": "m", "model_dir": str(model_dir.path)}))
    texts = ["cats sleep a lot", "dogs too"]
    expected = one_worker.embed(texts)
    req = v2.infer_request_from_dict(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}],
            "parameters": {"priority": 0},
        }
    )
    np.testing.assert_allclose(asyncio.run(adapter.infer(req))["embedding"], expected, atol=1e-5)
    got = asyncio.run(adapter.embed(texts, priority=9))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(InputError) as err:  # a handle keyword out of range
        asyncio.run(adapter.embed(texts, priority=42))
    assert err.value.field == "priority"


def test_the_ageing_bound_and_the_fill_are_batching_knobs(model_dir):
    knobs = {"max_priority_wait_ms": 250, "priority_fill": True}
    entry = {"name": "m", "model_dir": str(model_dir.path)}
    cfg = parse_model({**entry, "batching": knobs})
    assert cfg.batching.max_priority_wait_ms == 250 and cfg.batching.priority_fill
    with pytest.raises(ConfigError, match="batching.max_priority_wait_ms"):
        parse_model({**entry, "batching": {"max_priority_wait_ms": -1}})
    with Engine.load(model_dir, threads=1, batching=knobs) as engine:
        native = engine._scheduler._native.knobs  # what the batch former runs with
        assert native.max_priority_wait_ms == pytest.approx(250) and native.priority_fill
