"""Per-task serving adapters with real engines, no Ray: V2 shapes, V1 predictions, rerank.

What each task puts on the wire (documented in serve/tasks.py):

- classification: ``label`` BYTES [n] + ``score`` FP32 [n]; ``top_k`` > 1: [n, k];
- token-classification: ``entities`` BYTES [n], each a JSON array of spans;
- pair-scoring: ``query`` ([n] or [1]) + ``document`` [n] BYTES -> ``score`` FP32 [n];
  ``/v1/rerank`` with Cohere or TEI bodies.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError
from textfleet.serve.config import parse_model
from textfleet.serve.protocols import v2
from textfleet.serve.tasks import adapter_for

TEXTS = ["I live at 1234 Maplewood Avenue, Springfield.", "Zoë Ångström, 東京 🎉", "flights hotel"]


def run(coro):
    return asyncio.run(coro)


def make_adapter(md, name: str):
    engine = Engine.load(md, threads=1)
    return adapter_for(engine, parse_model({"name": name, "model_dir": str(md.path)}))


@pytest.fixture(scope="module")
def classifier(categorium_dir):
    adapter = make_adapter(categorium_dir, "topics")
    yield adapter
    adapter.engine.close()


@pytest.fixture(scope="module")
def tagger(rampart_dir):
    adapter = make_adapter(rampart_dir, "pii")
    yield adapter
    adapter.engine.close()


@pytest.fixture(scope="module")
def scorer(cross_encoder_dir):
    adapter = make_adapter(cross_encoder_dir, "ce")
    yield adapter
    adapter.engine.close()


def bytes_input(name: str, items: list[str]) -> dict:
    return {"name": name, "datatype": "BYTES", "shape": [len(items)], "data": items}


def infer(adapter, inputs: list[dict], **parameters) -> dict:
    req = v2.infer_request_from_dict({"inputs": inputs, "parameters": parameters})
    outputs = run(adapter.infer(req))
    return {o["name"]: o for o in v2.infer_response_dict("m", "1", req, outputs)["outputs"]}


def test_metadata_tensors_per_task(classifier, tagger, scorer):
    def names(specs):
        return [(s.name, s.datatype, s.shape) for s in specs]

    assert names(classifier.inputs) == [("text", "BYTES", (-1,))]
    assert names(classifier.outputs) == [("label", "BYTES", (-1,)), ("score", "FP32", (-1,))]
    assert names(tagger.outputs) == [("entities", "BYTES", (-1,))]
    assert names(scorer.inputs) == [("query", "BYTES", (-1,)), ("document", "BYTES", (-1,))]
    assert names(scorer.outputs) == [("score", "FP32", (-1,))]


def test_classification_v2_top1_and_topk(classifier):
    want = classifier.engine.classify(TEXTS, top_k=3)
    out = infer(classifier, [bytes_input("text", TEXTS)])
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [3]
    assert out["label"]["data"] == [r[0].label for r in want]
    np.testing.assert_allclose(out["score"]["data"], [r[0].score for r in want], rtol=1e-6)
    out = infer(classifier, [bytes_input("text", TEXTS)], top_k=3)
    assert out["label"]["shape"] == [3, 3] and out["score"]["shape"] == [3, 3]
    assert out["label"]["data"] == [x.label for r in want for x in r]
    with pytest.raises(InputError, match="parameters.top_k"):
        infer(classifier, [bytes_input("text", TEXTS)], top_k="3")


def test_classification_v1_and_handle(classifier):
    preds = run(classifier.v1_predictions(TEXTS))
    assert preds == [r[0].as_dict() for r in classifier.engine.classify(TEXTS)]
    got = run(classifier.classify(TEXTS, top_k=2))
    assert [len(r) for r in got] == [2, 2, 2]
    with pytest.raises(InputError, match="score needs a model of task 'pair-scoring'"):
        run(classifier.score([("q", "d")]))


def test_token_classification_json_in_bytes(tagger):
    want = [[e.as_dict() for e in s] for s in tagger.engine.entities(TEXTS)]
    out = infer(tagger, [bytes_input("text", TEXTS)])
    assert out["entities"]["datatype"] == "BYTES" and out["entities"]["shape"] == [3]
    assert [orjson.loads(x) for x in out["entities"]["data"]] == want
    assert {"label": "STREET_NAME", "text": "Maplewood Avenue"}.items() <= want[0][1].items()
    out = infer(tagger, [bytes_input("text", TEXTS)], aggregation="first")
    assert len(out["entities"]["data"]) == 3
    with pytest.raises(InputError, match="aggregation"):
        infer(tagger, [bytes_input("text", TEXTS)], aggregation="mean")
    assert run(tagger.v1_predictions(TEXTS)) == want


def test_pair_scoring_v2_broadcast_query_and_errors(scorer):
    docs = ["cats purr", "dogs bark", "the stock market fell"]
    want = scorer.engine.score([("pets", d) for d in docs])
    out = infer(scorer, [bytes_input("query", ["pets"]), bytes_input("document", docs)])
    assert out["score"]["datatype"] == "FP32" and out["score"]["shape"] == [3]
    np.testing.assert_allclose(out["score"]["data"], want, rtol=1e-6)
    raw = infer(
        scorer, [bytes_input("query", ["pets"] * 3), bytes_input("document", docs)], raw_scores=True
    )
    np.testing.assert_allclose(1 / (1 + np.exp(-np.array(raw["score"]["data"]))), want, rtol=1e-5)
    with pytest.raises(InputError, match="query has 2 elements and document 3"):
        infer(scorer, [bytes_input("query", ["a", "b"]), bytes_input("document", docs)])
    with pytest.raises(InputError, match="missing input 'query'"):
        infer(scorer, [bytes_input("document", docs)])


def test_pair_scoring_v1_and_rerank(scorer):
    preds = run(scorer.v1_predictions([{"query": "q", "document": "d"}, ["q", "e"]]))
    np.testing.assert_allclose(preds, scorer.engine.score([("q", "d"), ("q", "e")]), rtol=1e-6)
    with pytest.raises(InputError, match=r"instances\[0\]"):
        run(scorer.v1_predictions([{"query": "q"}]))
    docs = ["cats purr", "dogs bark", "stocks fell"]
    reply = run(
        scorer.rerank_http(
            {
                "model": "ce",
                "query": "pets",
                "documents": docs,
                "top_n": 2,
                "return_documents": True,
            }
        )
    )
    body = orjson.loads(reply.body)
    ranked = scorer.engine.rerank("pets", docs, top_k=2)
    assert body["model"] == "ce" and [r["index"] for r in body["results"]] == [
        r.index for r in ranked
    ]
    assert body["results"][0]["document"] == {"text": docs[ranked[0].index]}
    with pytest.raises(InputError, match="documents: no texts"):
        run(scorer.rerank_http({"model": "ce", "query": "q", "documents": []}))


# ---------------------------------------------------------------- arrays (graph steps)


@pytest.fixture(scope="module")
def embedder(model_dir):
    adapter = make_adapter(model_dir, "minilm")
    yield adapter
    adapter.engine.close()


def objects(items: list[str]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def json_form(inputs: dict[str, np.ndarray], parameters: dict) -> dict:
    """The V2 JSON request of named arrays (what a graph step sent before arrays)."""
    tensors = [
        {"name": n, "datatype": v2.datatype_of(a), "shape": list(a.shape), "data": a.tolist()}
        for n, a in inputs.items()
    ]
    return {"inputs": tensors, "parameters": parameters}


DOCS = ["cats purr", "dogs bark", "the stock market fell"]
ARRAY_CASES = [
    ("embedder", {"text": TEXTS}, {}),
    ("embedder", {"text": TEXTS}, {"priority": 1, "timeout": 30_000_000}),
    ("classifier", {"text": TEXTS}, {}),
    ("classifier", {"text": TEXTS}, {"top_k": 3, "priority": 9}),
    ("tagger", {"text": TEXTS}, {"aggregation": "first"}),
    ("scorer", {"query": ["pets"], "document": DOCS}, {"raw_scores": True}),
]


@pytest.mark.parametrize("which, texts, parameters", ARRAY_CASES)
def test_arrays_request_answers_as_the_v2_dict_bit_for_bit(request, which, texts, parameters):
    adapter = request.getfixturevalue(which)
    inputs = {name: objects(items) for name, items in texts.items()}
    want_req = v2.infer_request_from_dict(json_form(inputs, parameters))
    got_req = v2.infer_request_from_arrays(inputs, parameters)
    assert got_req == want_req  # the same request, so the same checks and engine call
    reply = v2.infer_response_dict("m", "1", want_req, run(adapter.infer(want_req)))
    want = {o["name"]: v2.output_array(o) for o in reply["outputs"]}
    got = v2.output_arrays(run(adapter.infer(got_req)))
    assert list(got) == list(want)
    for name, arr in want.items():
        assert (got[name].dtype, got[name].shape) == (arr.dtype, arr.shape), name
        if arr.dtype == object:  # BYTES: str, as the JSON form gives them back
            assert all(type(x) is str for x in got[name].ravel())
            assert got[name].tolist() == arr.tolist()
        else:
            assert got[name].tobytes() == arr.tobytes()  # bit for bit


@pytest.mark.parametrize(
    "inputs, parameters",
    [
        ({"txt": objects(TEXTS)}, {}),
        ({"text": objects(["x"] * 1025)}, {}),
        ({"text": objects([])}, {}),
        ({"text": np.zeros(3, dtype=np.float32)}, {}),
        ({"text": objects(TEXTS).reshape(3, 1, 1)}, {}),
        ({"text": objects(TEXTS)}, {"priority": 12}),
        ({"text": objects(TEXTS)}, {"timeout": 0}),
        ({"text": objects(TEXTS)}, {"top_k": "2"}),
    ],
)
def test_arrays_request_is_refused_as_the_v2_dict(classifier, inputs, parameters):
    with pytest.raises(InputError) as want:
        run(classifier.infer(v2.infer_request_from_dict(json_form(inputs, parameters))))
    with pytest.raises(InputError) as got:
        run(classifier.infer(v2.infer_request_from_arrays(inputs, parameters)))
    assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
