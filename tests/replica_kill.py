"""Kill -9 a model's replica under steady load over real HTTP, and count what clients saw.

Eight closed-loop clients (six V2, two V1) post one text each; after two seconds
the replica gets SIGKILL, and the load goes on until a V2 request sent after the
kill has been answered 200 (by the restarted replica, or another one), then two
seconds more. Each client's outcome is counted: ``(route, status)``, ``(route,
"503 with Retry-After")``, a transport error as ``(path, exception name)`` with
the time since the kill, and any other status's body.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import httpx
import orjson
from serving import v2_body

TEXT = ["a steady stream of requests"]

BACK_WITHIN_S = 30
"""The model must answer again within the default request deadline (serve/config.py):
a request that arrived as its replica died is then answered before its deadline.
A restart is a new worker process importing the engine and loading the model: 7 s
on a quiet 2-core machine, 12 s with one core taken by another process."""

WAIT_S = 60
"""How long the load waits for the model to answer again: longer than the bound,
so a failure says how long the restart took."""


def kill_under_load(url: str, model: str, pid: int) -> tuple[Counter, float | None]:
    """The counts, and the seconds from the kill until a V2 request sent after it
    was answered 200 (None: none within ``WAIT_S``)."""
    v2, v1 = f"/v2/models/{model}/infer", f"/v1/models/{model}:predict"
    v1_body = orjson.dumps({"instances": TEXT})
    counts: Counter = Counter()
    killed_at: list[float] = []
    back_at: list[float] = []

    async def client_loop(client: httpx.AsyncClient, path: str, body: bytes, stop: float):
        while time.monotonic() < stop:
            sent = time.monotonic()
            try:
                r = await client.post(path, content=body)
            except httpx.TransportError as e:
                counts[(path, type(e).__name__)] += 1
                counts[(path, f"after {time.monotonic() - (killed_at or [0])[0]:.1f} s")] += 1
                continue
            counts[(path[:3], r.status_code)] += 1
            if r.status_code not in (200, 503):
                counts[(path, r.text[:100])] += 1
            if r.status_code == 503:
                counts[(path[:3], "503 with Retry-After")] += bool(r.headers.get("retry-after"))
                await asyncio.sleep(0.05)
            elif r.status_code == 200 and path == v2 and killed_at and sent > killed_at[0]:
                back_at.append(time.monotonic())  # answering again after the kill

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
            stop = time.monotonic() + WAIT_S + 10
            loops = [client_loop(client, v2, v2_body(TEXT), stop) for _ in range(6)]
            loops += [client_loop(client, v1, v1_body, stop) for _ in range(2)]
            tasks = [asyncio.ensure_future(c) for c in loops]
            await asyncio.sleep(2)
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())
            while not back_at and time.monotonic() < killed_at[0] + WAIT_S:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # keep the load on a little after recovery
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    return counts, (back_at[0] - killed_at[0] if back_at else None)


def resets(counts: Counter) -> dict:
    """The transport errors among the counts: connections closed without an answer."""
    return {k: v for k, v in counts.items() if str(k[1]).endswith("Error")}


def check_answers(counts: Counter, recovery: float | None) -> None:
    """No 500, only 200, 503 (each with a Retry-After) or 504, and the model back
    within ``BACK_WITHIN_S``."""
    assert not [k for k in counts if k[1] == 500], counts
    assert {k[1] for k in counts if isinstance(k[1], int)} <= {200, 503, 504}, counts
    for proto in ("/v2", "/v1"):
        assert counts[(proto, "503 with Retry-After")] == counts[(proto, 503)], counts
    assert recovery is not None and recovery < BACK_WITHIN_S, (recovery, counts)
