"""Long inputs, Matryoshka widths and prompts through real Ray Serve: V2 and OpenAI
over HTTP, and handle calls, compared with engines of the same settings in this
process.

Three models: the rampart tagger at ``max_length`` 64 (windows by default), the
prompted MiniLM export at 32 tokens with ``on_overflow: window``, and the plain
MiniLM at 16 tokens with ``on_overflow: error``.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import orjson
import pytest
from conftest import PROMPTS
from serving import deploy_lean_models

from textfleet.engine.engine import Engine
from textfleet.engine.errors import TooLarge

ADDRESS = "He lives at 42 Maplewood Avenue, Springfield."
LONG = " ".join(["The quarterly report covers growth in several regions."] * 12)
TAGGED = f"{LONG} {ADDRESS} {LONG}"
SETTINGS = {
    "pii": {"max_length": 64},
    "emb": {"max_length": 32, "on_overflow": "window", "window": {"stride": 8}},
    "strict": {"max_length": 16, "on_overflow": "error"},
}


@pytest.fixture(scope="module")
def dirs(rampart_dir, prompted_dir, model_dir):
    return {"pii": rampart_dir, "emb": prompted_dir, "strict": model_dir}


@pytest.fixture(scope="module")
def served(ray_serve, dirs, tmp_path_factory):
    port = ray_serve["port"]
    models = [{"name": n, "model_dir": str(md.path), **SETTINGS[n]} for n, md in dirs.items()]
    deploy_lean_models(tmp_path_factory.mktemp("long-serve"), models, port)
    yield {"port": port, "url": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def engines(dirs):
    engines = {name: Engine.load(md, threads=1, **SETTINGS[name]) for name, md in dirs.items()}
    yield engines
    for e in engines.values():
        e.close()


def v2_texts(texts: list[str], **parameters) -> dict:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    return body | ({"parameters": parameters} if parameters else {})


def test_v2_entities_of_a_long_text_come_from_windows(http, engines):
    r = http.post("/v2/models/pii/infer", json=v2_texts([TAGGED, ADDRESS]))
    assert r.status_code == 200, r.text
    spans = [orjson.loads(x) for x in r.json()["outputs"][0]["data"]]
    expected = engines["pii"].entities([TAGGED, ADDRESS])
    assert spans == [[e.as_dict() for e in found] for found in expected]
    assert [s["text"] for s in spans[0]] == ["42", "Maplewood Avenue", "Springfield"]
    assert TAGGED[spans[0][0]["start"] :].startswith("42 Maplewood")  # offsets into the text


def test_openai_windows_dimensions_prompt_and_usage(http, engines):
    body = {"model": "emb", "input": [LONG, "short"], "dimensions": 64, "prompt_name": "passage"}
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    got = np.array([d["embedding"] for d in data["data"]], np.float32)
    expected, tokens = asyncio.run(
        engines["emb"].aembed_with_usage([LONG, "short"], dimensions=64, prompt_name="passage")
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert data["usage"]["prompt_tokens"] == tokens
    assert tokens > 32 + len(engines["emb"].tokenizer.encode("passage: short").ids)  # windows
    r = http.post("/v1/embeddings", json={**body, "dimensions": 100})
    assert r.status_code == 400 and "64, 128, 256 or 384 dimensions" in r.text
    r = http.post("/v1/embeddings", json={**body, "prompt_name": "doc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_name"


def test_v2_parameters_and_metadata(http, engines):
    r = http.post("/v2/models/emb/infer", json=v2_texts(["a"], dimensions=128, prompt_name="query"))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 128]
    np.testing.assert_allclose(
        out["data"], engines["emb"].embed(["a"], dimensions=128)[0], atol=1e-5
    )
    meta = http.get("/v2/models/emb").json()
    assert meta["parameters"]["dimensions"] == [64, 128, 256, 384]
    assert meta["parameters"]["prompts"] == PROMPTS
    assert meta["parameters"]["on_overflow"] == "window"
    assert http.get("/v2/models/strict").json()["parameters"]["on_overflow"] == "error"


def test_error_is_413_naming_the_text_its_tokens_and_the_limit(http):
    r = http.post("/v2/models/strict/infer", json=v2_texts(["fine", LONG]))
    assert r.status_code == 413
    assert re.search(r"texts\[1\]: has \d+ tokens; the model takes at most 16", r.text), r.text
    r = http.post("/v1/embeddings", json={"model": "strict", "input": [LONG]})
    assert r.status_code == 413 and "texts[0]" in r.text and "at most 16" in r.text


def test_handle_calls(served, engines):
    from ray import serve

    async def calls():
        pii, emb = serve.get_app_handle("pii"), serve.get_app_handle("emb")
        return await asyncio.gather(
            pii.entities.remote([TAGGED]),
            emb.embed.remote([LONG, "b"], dimensions=256, prompt_name="passage"),
        )

    spans, vectors = asyncio.run(calls())
    assert spans == engines["pii"].entities([TAGGED])
    expected = engines["emb"].embed([LONG, "b"], dimensions=256, prompt_name="passage")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    with pytest.raises(TooLarge, match=r"texts\[0\]: has \d+ tokens"):
        serve.get_app_handle("strict").embed.remote([LONG]).result()
