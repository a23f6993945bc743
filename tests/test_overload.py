"""Overload, dead replicas and slow clients against a real Ray Serve on loopback.

Every answer under a burst is a 200, a 503 with a Retry-After (refused at
once: it could not have finished before its deadline) or a 504; a burst of
heavy requests still completes a good share of them (the admitted ones) instead of
timing everything out. A replica killed with SIGKILL under load costs its
clients 503s, never a reset connection or a 500, and the model answers again
within 15 s. A configured model that is starting answers 503, never 404. A
client that sends half its headers is cut off within the header timeout.

One model (``burst``) on the session's Ray Serve; the counts are printed
(``pytest -s``) for the record.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import httpx
import pytest
from replica_kill import check_answers, kill_under_load, resets
from serving import apply_one_model, replica_pid, v2_body

from textfleet.serve.config import GATEWAY_APP

pytestmark = pytest.mark.slow

MODEL = "burst"
HEAVY_TEXT = "The committee reviewed the quarterly figures in detail. " * 40  # > max_length


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    """``burst`` deployed on the session's Ray Serve; while it starts, every answer
    for it (V2 through its route or the gateway, V1 through the gateway) is 503."""
    from textfleet.serve import deploy

    port = ray_serve["port"]
    url = f"http://127.0.0.1:{port}"
    apply_one_model(tmp_path_factory.mktemp("overload"), MODEL, model_dir.path, port)
    _gateway_config_applied(url, deadline_s=60)
    starting = _statuses_until_ready(url, deadline_s=240)
    deploy.wait([MODEL, GATEWAY_APP], timeout_s=60)
    return {"url": url, "port": port, "ingress": ray_serve["ingress"], "starting": starting}


def _gateway_config_applied(url: str, deadline_s: float) -> None:
    """Wait for the gateway to take this module's config (no API keys): an earlier
    module's gateway may still ask for its keys for a moment (401), which says
    nothing about how a starting model answers."""
    end = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < end:
            try:
                if client.get("/v2").status_code != 401:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"the gateway still asks for API keys after {deadline_s} s")


def _statuses_until_ready(url: str, deadline_s: float) -> Counter:
    """Poll the model while it starts; the statuses seen before its first 200."""
    seen: Counter = Counter()
    end = time.monotonic() + deadline_s
    paths = (f"/v2/models/{MODEL}/ready", f"/v1/models/{MODEL}")
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < end:
            for p in paths:
                try:
                    r = client.get(p)
                except httpx.TransportError as e:  # Serve's port not up yet
                    seen[type(e).__name__] += 1
                    continue
                seen[(p.split("/")[1], r.status_code)] += 1
                if r.status_code == 404:
                    seen[r.text[:120]] += 1
                if r.status_code == 503:
                    assert r.headers.get("retry-after"), (p, r.text)
            if all(client.get(p).status_code == 200 for p in paths):
                return seen
            time.sleep(0.1)
    raise TimeoutError(f"{MODEL} not ready after {deadline_s} s: {dict(seen)}")


async def _burst(url: str, bodies: list[bytes], headers: dict[str, str]) -> tuple[Counter, float]:
    """Send every body at once; count statuses (and transport errors by name)."""
    counts: Counter = Counter()
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    infer = f"/v2/models/{MODEL}/infer"
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(body: bytes) -> None:
            try:
                r = await client.post(infer, content=body, headers=headers)
            except httpx.TransportError as e:
                counts[type(e).__name__] += 1
                return
            counts[r.status_code] += 1
            if r.status_code == 503:
                counts["503 with Retry-After"] += bool(r.headers.get("retry-after"))
            said = f"said {r.status_code}"  # the first message of each status, for the record
            if r.status_code != 200 and not any(str(k).startswith(said) for k in counts):
                counts[f"{said}: {r.text[:300]}"] = 0

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return counts, time.perf_counter() - start


def _only_answers(counts: Counter) -> None:
    errors = {
        k: v for k, v in counts.items() if isinstance(k, str) and not k.startswith(("503", "said "))
    }
    assert not errors, f"transport errors: {counts}"
    assert {k for k in counts if isinstance(k, int)} <= {200, 503, 504}, counts
    assert counts["503 with Retry-After"] == counts[503], counts


def test_a_starting_model_answers_503_never_404(served):
    print(f"\nwhile starting ({served['ingress']}): {dict(served['starting'])}")
    assert not [k for k in served["starting"] if isinstance(k, tuple) and k[1] == 404]
    assert {k[1] for k in served["starting"] if isinstance(k, tuple)} <= {200, 503}


def test_burst_of_2000_short_requests(served):
    bodies = [v2_body([f"short request number {i}"]) for i in range(2000)]
    counts, took = asyncio.run(_burst(served["url"], bodies, {}))
    print(f"\n2000 short ({served['ingress']}): {dict(counts)} in {took:.1f} s")
    _only_answers(counts)
    assert counts[200] >= 1000, counts


def test_burst_of_300_heavy_requests_with_a_5s_deadline_completes_work(served):
    url, headers = served["url"], {"x-request-timeout": "5"}
    # The replica measures its pace on overlapping requests (serve/admission.py).
    # Admission may refuse the last of them: on one slow core its estimate (the
    # queue ahead plus a full batch of later arrivals) can pass the share of the
    # default 30 s it admits, and a client cannot ask for longer. That is not this
    # test: the pace is taken from what was answered.
    warm = [v2_body([HEAVY_TEXT] * 4) for _ in range(8)]
    paces = []
    for _ in range(3):
        counts, took = asyncio.run(_burst(url, warm, {}))
        _only_answers(counts)
        assert counts[200] >= len(warm) // 2, counts
        paces.append(4 * counts[200] / took)
    # What this replica computes of these texts in the deadline, at its best pace.
    capacity = max(paces) * 5
    bodies = [v2_body([HEAVY_TEXT]) for _ in range(300)]
    counts, took = asyncio.run(_burst(url, bodies, headers))
    print(
        f"\n300 heavy, 5 s deadline ({served['ingress']}): {dict(counts)} in {took:.1f} s; "
        f"the replica computes about {capacity:.0f} such texts in 5 s"
    )
    _only_answers(counts)
    # Goodput: the admitted requests finish (few 504s), and they are a real share
    # of what the replica can compute in the deadline (admission keeps headroom).
    assert counts[200] >= max(5, capacity / 3), counts
    assert counts[504] <= counts[200], counts
    assert took < 30, took


def test_a_killed_replica_costs_503s_not_resets_or_500s(served):
    counts, recovery = kill_under_load(served["url"], MODEL, replica_pid(MODEL))
    print(f"\nkill -9 under load ({served['ingress']}): {dict(counts)}; back after {recovery} s")
    reset = resets(counts)
    # Through the gateway (under Ray's proxy, the V1 route) a request is retried on
    # another replica: no reset. Under HAProxy the V1 route goes straight to the
    # replica like V2 (serve/haproxy_routes.py) and shares V2's fate.
    straight = ("/v2/", "/v1/") if served["ingress"] == "haproxy" else ("/v2/",)
    assert not [k for k in reset if not k[0].startswith(straight)], counts
    check_answers(counts, recovery)
    if reset:
        # HAProxy replays a request whose replica closed the connection (retry-on
        # empty-response), but not one whose replica's kernel reset it (the request
        # was still unread in the dead process's socket): on a keep-alive client
        # connection HAProxy then closes the client's connection without an
        # answer, unlogged. Measured: one reset in 67 kills under 8 clients.
        # ``server.replica_connections: per_request`` has none
        # (test_replica_connections.py).
        pytest.xfail(f"requests in flight on the killed replica were reset: {reset}")


def test_half_sent_headers_are_cut_off(served):
    if served["ingress"] != "haproxy":
        pytest.skip("Ray's proxy (uvicorn) has no request-header timeout")
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=30) as s:
        s.sendall(b"POST /v2/models/burst/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        start = time.monotonic()
        data = b""
        while chunk := s.recv(4096):  # until the server closes
            data += chunk
        took = time.monotonic() - start
    print(f"\nhalf-sent headers closed after {took:.1f} s: {data[:40]!r}")
    assert took < 12, took
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
