"""The task models served by real Ray Serve on loopback, real clients.

One deployment of a models.yaml with a classifier (categorium), a PII tagger
(rampart), a cross-encoder with float weights (``ce``: MiniLM under a seeded
head) and the default reranker (``rr``: ms-marco-MiniLM-L-12-v2, int8): V2
metadata and infer with tritonclient.http (binary and JSON tensors), KServe V1
predict and ``POST /v1/rerank`` with httpx, and the Python handle calls.
Results are compared with the engines of the same model directories in this
process. The int8 reranker's scores depend on batch composition
(tests/test_reranker.py), so ``rr`` is checked on what its replies must hold
(order, top_n, fields) and on passages whose ranking is clear, and the exact
comparisons use ``ce``.

Ray and Serve come from the session's ``ray_serve`` fixture (conftest.py);
this module applies its own models.yaml on the shared HTTP port.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
import yaml
from rerank_pairs import RANKING

from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError
from textfleet.serve.config import GATEWAY_APP, load_models

TEXTS = ["I live at 1234 Maplewood Avenue, Springfield.", "Zoë Ångström, 東京 🎉", "flights hotel"]
DOCS = ["cats purr on the sofa", "dogs bark at night", "the stock market fell"]


@pytest.fixture(scope="module")
def served(
    ray_serve, categorium_dir, rampart_dir, cross_encoder_dir, reranker_dir, tmp_path_factory
):
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    port = ray_serve["port"]
    lean = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}
    models = [
        {"name": "topics", "model_dir": str(categorium_dir.path), "task": "classification"},
        {"name": "pii", "model_dir": str(rampart_dir.path), "task": "token-classification"},
        {"name": "ce", "model_dir": str(cross_encoder_dir.path), "task": "pair-scoring"},
        {"name": "rr", "model_dir": str(reranker_dir.path), "task": "pair-scoring"},
    ]
    path = tmp_path_factory.mktemp("tasks-serve") / "models.yaml"
    config = {"server": {"port": port}, "models": [m | lean for m in models]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = load_models(path)
    deploy.apply(serve_config(loaded))
    states = deploy.wait([*loaded.names(), GATEWAY_APP], timeout_s=300)
    assert {n: str(s.status.value) for n, s in states.items()} == dict.fromkeys(
        [*loaded.names(), GATEWAY_APP], "RUNNING"
    )
    yield {"port": port, "url": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def engines(categorium_dir, rampart_dir, cross_encoder_dir):
    engines = {
        name: Engine.load(md, threads=1)
        for name, md in (
            ("topics", categorium_dir),
            ("pii", rampart_dir),
            ("ce", cross_encoder_dir),
        )
    }
    yield engines
    for e in engines.values():
        e.close()


def bytes_input(name: str, items: list[str], binary: bool):
    import tritonclient.http as triton

    inp = triton.InferInput(name, [len(items)], "BYTES")
    inp.set_data_from_numpy(np.array(items, dtype=object), binary_data=binary)
    return inp


def test_metadata_per_task(triton_http):
    assert triton_http.is_server_ready()
    assert triton_http.get_model_metadata("topics")["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
    ]
    assert triton_http.get_model_metadata("pii")["outputs"] == [
        {"name": "entities", "datatype": "BYTES", "shape": [-1]}
    ]
    ce_inputs = triton_http.get_model_metadata("ce")["inputs"]
    assert [i["name"] for i in ce_inputs] == ["query", "document"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_classification(triton_http, engines, binary):
    import tritonclient.http as httpclient

    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score")]
    result = triton_http.infer("topics", [bytes_input("text", TEXTS, binary)], outputs=outputs)
    want = engines["topics"].classify(TEXTS)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [r[0].label for r in want]  # JSON mode gives str, binary mode bytes
    np.testing.assert_allclose(result.as_numpy("score"), [r[0].score for r in want], atol=1e-5)
    texts = [bytes_input("text", TEXTS, binary)]
    top3 = triton_http.infer("topics", texts, parameters={"top_k": 3})
    assert top3.as_numpy("label").shape == (3, 3) and top3.as_numpy("score").dtype == np.float32


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_entities(triton_http, engines, binary):
    result = triton_http.infer("pii", [bytes_input("text", TEXTS, binary)])
    got = [orjson.loads(x) for x in result.as_numpy("entities")]
    assert got == [[e.as_dict() for e in s] for s in engines["pii"].entities(TEXTS)]
    for text, spans in zip(TEXTS, got, strict=True):
        assert all(text[s["start"] : s["end"]] == s["text"] for s in spans)


def test_tritonclient_pair_scores(triton_http, engines):
    inputs = [bytes_input("query", ["pets"], True), bytes_input("document", DOCS, True)]
    result = triton_http.infer("ce", inputs)
    want = engines["ce"].score([("pets", d) for d in DOCS])
    np.testing.assert_allclose(result.as_numpy("score"), want, atol=1e-5)


def test_kserve_v1_per_task(http, engines):
    r = http.post("/v1/models/topics:predict", json={"instances": TEXTS})
    assert r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] == [
        x[0].label for x in engines["topics"].classify(TEXTS)
    ]
    r = http.post("/v1/models/pii:predict", json={"instances": [{"text": TEXTS[0]}]})
    assert r.status_code == 200 and r.json()["predictions"][0][1]["label"] == "STREET_NAME"
    r = http.post("/v1/models/ce:predict", json={"instances": [{"query": "q", "document": "d"}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_rerank_route(http, engines):
    body = {"model": "ce", "query": "pets", "documents": DOCS, "top_n": 2, "return_documents": True}
    r = http.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    ranked = engines["ce"].rerank("pets", DOCS, top_k=2)
    results = r.json()["results"]
    assert [x["index"] for x in results] == [x.index for x in ranked]
    np.testing.assert_allclose(
        [x["relevance_score"] for x in results], [x.score for x in ranked], atol=1e-5
    )
    assert results[0]["document"]["text"] == DOCS[ranked[0].index]
    tei = http.post("/v1/rerank", json={"model": "ce", "query": "pets", "texts": DOCS}).json()
    assert [x["index"] for x in tei] == [x.index for x in engines["ce"].rerank("pets", DOCS)]


def rerank(http, **body) -> dict | list:
    r = http.post("/v1/rerank", json={"model": "rr", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_rerank_like_cohere(http):
    """Cohere: results best first as {index, relevance_score}; ``document`` {"text"} only
    with return_documents; top_n keeps the best n, all when absent or larger."""
    for query, docs in RANKING:
        body = rerank(http, query=query, documents=docs)
        assert body["model"] == "rr" and len(body["results"]) == len(docs)
        assert all(set(x) == {"index", "relevance_score"} for x in body["results"])
        scores = [x["relevance_score"] for x in body["results"]]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert sorted(x["index"] for x in body["results"]) == list(range(len(docs)))
        assert body["results"][0]["index"] == 0, (query, body)
    query, docs = RANKING[1]
    top = rerank(
        http, query=query, documents=[{"text": d} for d in docs], top_n=2, return_documents=True
    )["results"]
    assert len(top) == 2 and top[0]["index"] == 0
    assert [x["document"] for x in top] == [{"text": docs[x["index"]]} for x in top]
    assert len(rerank(http, query=query, documents=docs, top_n=10)["results"]) == len(docs)


def test_rerank_like_tei(http):
    """TEI: a bare array best first, {index, score}, ``text`` only with return_text;
    sigmoid scores unless raw_scores."""
    query, docs = RANKING[0]
    plain = rerank(http, query=query, texts=docs)
    assert [set(x) for x in plain] == [{"index", "score"}] * len(docs)
    assert plain[0]["index"] == 0 and all(0 < x["score"] < 1 for x in plain)
    raw = rerank(http, query=query, texts=docs, raw_scores=True, return_text=True)
    assert [x["text"] for x in raw] == [docs[x["index"]] for x in raw]
    assert raw[0]["index"] == 0 and raw[0]["score"] > 5 and raw[-1]["score"] < -5


@pytest.mark.parametrize(
    "body, status, text",
    [
        (
            {"model": "topics", "query": "q", "documents": ["d"]},
            400,
            "needs a model of task 'pair-scoring'",
        ),
        ({"model": "nope", "query": "q", "documents": ["d"]}, 404, "unknown model 'nope'"),
        ({"model": "ce", "query": "q", "documents": []}, 400, "documents: no texts"),
        ({"model": "ce", "documents": ["d"]}, 400, "query: expected a string"),
        ({"query": "q", "documents": ["d"]}, 400, "model: missing"),
    ],
)
def test_rerank_errors(http, body, status, text):
    r = http.post("/v1/rerank", json=body)
    assert r.status_code == status and text in r.text, r.text


def test_v2_errors_per_task(http):
    bad_pair = {"inputs": [{"name": "document", "datatype": "BYTES", "shape": [1], "data": ["d"]}]}
    r = http.post("/v2/models/ce/infer", json=bad_pair)
    assert r.status_code == 400 and "missing input 'query'" in r.text
    bad_agg = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
        "parameters": {"aggregation": "mean"},
    }
    r = http.post("/v2/models/pii/infer", json=bad_agg)
    assert r.status_code == 400 and "aggregation" in r.text
    r = http.post("/v1/embeddings", json={"model": "topics", "input": "x"})
    assert r.status_code == 400 and "needs a model of task 'embedding'" in r.text


def test_handle_calls(served, engines):
    from ray import serve

    async def calls():
        topics, pii, ce = (serve.get_app_handle(n) for n in ("topics", "pii", "ce"))
        return await asyncio.gather(
            topics.classify.remote(TEXTS, 2),
            pii.entities.remote(TEXTS),
            ce.score.remote([("pets", d) for d in DOCS]),
            ce.rerank.remote("pets", DOCS, 1),
        )

    labels, spans, scores, top = asyncio.run(calls())
    assert labels == engines["topics"].classify(TEXTS, top_k=2)
    assert spans == engines["pii"].entities(TEXTS)
    np.testing.assert_allclose(scores, engines["ce"].score([("pets", d) for d in DOCS]), atol=1e-5)
    assert top[0].index == engines["ce"].rerank("pets", DOCS)[0].index
    with pytest.raises(InputError, match="documents: no texts"):
        serve.get_app_handle("ce").rerank.remote("q", []).result()
