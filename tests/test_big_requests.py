"""Huge requests cost what a long one does and leave nothing behind (real server, HTTP).

A 60 MB text is refused with 413 before its body is read; ten texts of almost
4 MB each (under the default 4 MiB body limit) are served, tokenized only up to
the model's max_length. Meanwhile a client sending small requests keeps its
latency, and afterwards the replica's memory is back near where it was.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import orjson
import psutil
import pytest
from serving import apply_one_model, raw_request, replica_pid

from textfleet.serve.config import GATEWAY_APP

pytestmark = pytest.mark.slow

MODEL = "big"
SMALL = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a cat"]}]}


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    from textfleet.serve import deploy

    port = ray_serve["port"]
    apply_one_model(tmp_path_factory.mktemp("big"), MODEL, model_dir.path, port)
    deploy.wait([MODEL, GATEWAY_APP], timeout_s=300)
    return {"url": f"http://127.0.0.1:{port}", "port": port}


def big_body(n_bytes: int) -> bytes:
    """A V2 request whose one text has about ``n_bytes`` bytes of real words."""
    words = b"The committee reviewed the quarterly figures in detail. "
    text = (words * (n_bytes // len(words) + 1))[:n_bytes]
    return orjson.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text.decode()]}]}
    )


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def small_latencies(url: str, stop: threading.Event) -> list[float]:
    """A client of its own (a thread, a connection): what a small request waits while
    the big ones are served, not what the sender of the big ones keeps busy."""
    out = []
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            start = time.perf_counter()
            r = client.post(url, json=SMALL)
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - start)
            time.sleep(0.01)
    return out


@pytest.mark.xfail(
    strict=False,
    reason="known gap: each 4 MB text costs what a 256-token text does, and on 2 cores a "
    "small request waits for the long batches computing when it arrives (it passes those "
    "still queued: batching.short_first): p99 99-191 ms in 26 runs of this load on a quiet "
    "machine (161-192 ms in arrival order), 460-580 ms measured before with other "
    "processes competing (target 200)",
)
def test_huge_texts_are_refused_or_bounded_and_leave_no_growth(served):
    url = f"{served['url']}/v2/models/{MODEL}/infer"
    pid = replica_pid(MODEL)
    four_mb = big_body(4_000_000)
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n"
    )

    async def run() -> tuple[list, list, float, list]:
        async with httpx.AsyncClient(timeout=60) as client:
            # Warm: every path has run once at its largest, so the baseline is a
            # replica in service, not one that never saw a long text.
            r = await client.post(
                url, content=four_mb, headers={"content-type": "application/json"}
            )
            assert r.status_code == 200, r.text[:200]
            for _ in range(5):
                await client.post(url, json=SMALL)
            await asyncio.sleep(1.0)
            base = rss_mib(pid)
            stop = threading.Event()
            smalls = asyncio.create_task(asyncio.to_thread(small_latencies, url, stop))
            await asyncio.sleep(0.5)
            status, _ = await asyncio.to_thread(
                raw_request, served["port"], head, [b'{"inputs": [{"data": ["' + b"a " * 1000]
            )
            big = [
                client.post(url, content=four_mb, headers={"content-type": "application/json"})
                for _ in range(10)
            ]
            replies = await asyncio.gather(*big)
            await asyncio.sleep(0.5)
            stop.set()
            latencies = await smalls
            return latencies, [status] + [r.status_code for r in replies], base, replies

    latencies, statuses, base, replies = asyncio.run(run())
    assert statuses == [413] + [200] * 10, statuses
    for r in replies:
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, 384]
        assert np.isfinite(out["data"]).all()
    p99 = float(np.percentile(latencies, 99))
    time.sleep(3.0)  # the engine gives memory back once quiet for a second (engine/memory.py)
    grown = rss_mib(pid) - base
    print(f"\nsmall requests during the big ones: {len(latencies)}, p99 {p99 * 1000:.0f} ms")
    print(f"replica RSS {base:.0f} MiB before, +{grown:.0f} MiB after")
    assert grown < 50
    assert p99 < 0.2, sorted(latencies)[-5:]
