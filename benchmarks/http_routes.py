"""textfleet's routes side by side in one run: V2 against OpenAI and rerank, shared and per model.

Used by benchmarks/http_load.py for each textfleet system (one server, one
ingress). Every route gets the same request mix (1-4 texts per request; for
the reranker the same texts as documents, under a query cut from the first):

- ``v2``: ``POST /v2/models/<embedder>/infer``;
- ``openai``: ``POST /v1/embeddings``, the model named in the body (most OpenAI clients);
- ``openai-model``: ``POST /v2/models/<embedder>/v1/embeddings`` (an SDK's per-model
  ``base_url``);
- ``v2-pairs``: ``POST /v2/models/<reranker>/infer`` (query and documents as V2 tensors);
- ``rerank``: ``POST /v1/rerank``, the model named in the body;
- ``rerank-model``: ``POST /v2/models/<reranker>/v1/rerank``.

Differences of a millisecond or two at one client are smaller than the
machine's drift over a minute, so the routes take turns: each level runs in
``rounds`` rounds, every route once per round for its share of the requests
and seconds, and a route's figures are those of all its rounds together.
"""

from __future__ import annotations

import asyncio

import orjson

from benchmarks.loadgen import LevelResult, Request, make_request, run_level

EMBEDDING_ROUTES = ("v2", "openai", "openai-model")
RERANK_ROUTES = ("v2-pairs", "rerank", "rerank-model")
ROUTES = EMBEDDING_ROUTES + RERANK_ROUTES

LABELS = {
    "v2": "V2 infer",
    "openai": "OpenAI /v1/embeddings (model in the body)",
    "openai-model": "OpenAI per-model base_url",
    "v2-pairs": "V2 infer, pair scoring",
    "rerank": "/v1/rerank (model in the body)",
    "rerank-model": "rerank per-model path",
}


def _post(host: str, port: int, path: str, obj: dict, n_texts: int) -> Request:
    body = orjson.dumps(obj)
    return Request(make_request(host, port, "POST", path, body), body, n_texts)


def _query(texts: list[str]) -> str:
    return texts[0][:80]


def route_requests(
    route: str, mix: list[list[str]], host: str, port: int, embedder: str, reranker: str
) -> list[Request]:
    """The request mix spelled for ``route``; texts counted are texts embedded or documents."""
    out = []
    for texts in mix:
        n = len(texts)
        if route == "v2":
            inp = {"name": "text", "datatype": "BYTES", "shape": [n], "data": texts}
            out.append(_post(host, port, f"/v2/models/{embedder}/infer", {"inputs": [inp]}, n))
        elif route in ("openai", "openai-model"):
            path = "/v1/embeddings" if route == "openai" else f"/v2/models/{embedder}/v1/embeddings"
            out.append(_post(host, port, path, {"model": embedder, "input": texts}, n))
        elif route == "v2-pairs":
            inputs = [
                {"name": "query", "datatype": "BYTES", "shape": [1], "data": [_query(texts)]},
                {"name": "document", "datatype": "BYTES", "shape": [n], "data": texts},
            ]
            out.append(_post(host, port, f"/v2/models/{reranker}/infer", {"inputs": inputs}, n))
        elif route in ("rerank", "rerank-model"):
            path = "/v1/rerank" if route == "rerank" else f"/v2/models/{reranker}/v1/rerank"
            body = {"model": reranker, "query": _query(texts), "documents": texts}
            out.append(_post(host, port, path, body, n))
        else:
            raise ValueError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")
    return out


def _merge(parts: list[LevelResult]) -> LevelResult:
    merged = LevelResult(parts[0].clients)
    for p in parts:
        merged.requests += p.requests
        merged.texts += p.texts
        merged.errors += p.errors
        merged.wall_s += p.wall_s
        merged.latencies_ms += p.latencies_ms
        for status, count in p.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    return merged


def compare_routes(
    requests: dict[str, list[Request]],
    host: str,
    port: int,
    levels: list[int],
    max_requests: int,
    max_seconds: float,
    rounds: int,
) -> dict[str, list[dict]]:
    """Route -> one summary per level (LevelResult.summary), the routes taking turns."""
    for reqs in requests.values():  # warm up every path and connection pool
        asyncio.run(run_level(host, port, reqs, 4, 40, 30.0))
    out: dict[str, list[dict]] = {route: [] for route in requests}
    for clients in levels:
        parts: dict[str, list[LevelResult]] = {route: [] for route in requests}
        for _ in range(rounds):
            for route, reqs in requests.items():
                share = max(1, max_requests // rounds)
                res = asyncio.run(run_level(host, port, reqs, clients, share, max_seconds / rounds))
                parts[route].append(res)
        for route, results in parts.items():
            row = _merge(results).summary()
            out[route].append(row)
            print(
                f"  {LABELS[route]:42s} {clients:3d} clients: {row['texts_per_s']:7.1f} texts/s  "
                f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                f"errors {row['errors']}",
                flush=True,
            )
    return out
