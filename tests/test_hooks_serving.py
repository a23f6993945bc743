"""Hooks on real Ray Serve: the replicas import tests/hook_modules/sample_hooks.py from
their PYTHONPATH (conftest.py), as a user's replicas import a user's hooks.

``hooked`` lowercases its texts and puts a prefix before them (it refuses "reject" and
fails on "crash") and adds a ``norm`` output; ``hook-missing`` names a module no replica
can import. Results are compared with ``Engine.embed`` of the texts so changed, in this
process.
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest
import yaml
from serving import cli_status

from textfleet.serve.config import GATEWAY_APP, load_models

TEXTS = ["The Quick Brown FOX.", "Zürich CAFÉ ☕", "ÉCOLE Normale"]
ATOL = 2e-5  # other batch shapes than the reference call: float reassociation only
NORM = {"name": "norm", "datatype": "FP32", "shape": [-1]}
PREFIX = "note: "  # the model is uncased: lowercasing alone would change nothing


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    lean = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}
    hooks = {
        "preprocess": {"call": "sample_hooks:picky", "args": {"prefix": PREFIX}},
        "postprocess": {"call": "sample_hooks:AddNorm", "outputs": [NORM]},
    }
    models = [
        {"name": "hooked", "model_dir": str(model_dir.path), "hooks": hooks, **lean},
        {
            "name": "hook-missing",
            "model_dir": str(model_dir.path),
            "hooks": {"preprocess": {"call": "no_such_hooks_module:lowercase"}},
            **lean,
        },
    ]
    path = tmp_path_factory.mktemp("hooks") / "models.yaml"
    port = ray_serve["port"]
    path.write_text(yaml.safe_dump({"server": {"port": port}, "models": models}, sort_keys=False))
    loaded = load_models(path)
    deploy.apply(serve_config(loaded))
    deploy.wait([*loaded.names(), GATEWAY_APP], timeout_s=300)
    return {"url": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def want(engine):
    return engine.embed([PREFIX + t.lower() for t in TEXTS])


def v2_body(texts) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def test_v2_metadata_and_response_carry_the_added_output(http, want):
    meta = http.get("/v2/models/hooked").json()
    assert meta["outputs"][-1] == NORM
    r = http.post("/v2/models/hooked/infer", json=v2_body(TEXTS))
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    emb = np.array(out["embedding"]["data"], np.float32).reshape(out["embedding"]["shape"])
    np.testing.assert_allclose(emb, want, atol=ATOL)
    assert out["norm"]["shape"] == [len(TEXTS)]
    np.testing.assert_allclose(out["norm"]["data"], np.linalg.norm(emb, axis=1), atol=1e-5)


@pytest.mark.parametrize(
    "path", ["/v1/models/hooked:predict", "/v2/models/hooked/v1/models/hooked:predict"]
)
def test_v1_requests_pass_through_the_hooks(http, want, path):
    r = http.post(path, json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"]), want, atol=ATOL)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v2/models/hooked/v1/embeddings"])
def test_openai_requests_pass_through_the_hooks(http, want, path):
    r = http.post(path, json={"model": "hooked", "input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_handle_calls_pass_through_the_hooks(served, want):
    from ray import serve

    handle = serve.get_app_handle("hooked")
    np.testing.assert_allclose(handle.embed.remote(TEXTS).result(), want, atol=ATOL)
    out = handle.infer.remote(v2_body(TEXTS)).result()
    assert [o["name"] for o in out["outputs"]] == ["embedding", "norm"]


def test_a_hooks_input_error_is_400_and_a_crash_500_naming_the_hook(http):
    r = http.post("/v2/models/hooked/infer", json=v2_body(["fine", "reject"]))
    assert r.status_code == 400 and "'reject' is refused" in r.json()["error"]
    named = "preprocess hook 'sample_hooks:picky' raised RuntimeError"
    r = http.post("/v2/models/hooked/infer", json=v2_body(["crash"]))
    assert r.status_code == 500 and named in r.json()["error"]
    r = http.post("/v1/embeddings", json={"model": "hooked", "input": ["crash"]})
    assert r.status_code == 500 and named in orjson.dumps(r.json()).decode()


def test_a_missing_hook_module_fails_only_its_application(served, http):
    import ray
    from ray import serve

    apps = serve.status().applications
    assert str(apps["hooked"].status.value) == "RUNNING"
    assert str(apps["hook-missing"].status.value) == "DEPLOY_FAILED"
    message = apps["hook-missing"].deployments["ModelServer"].message
    assert "model 'hook-missing': preprocess hook: cannot import" in message
    assert "No module named 'no_such_hooks_module'" in message
    assert http.get("/v2/models/hook-missing/ready").status_code == 503
    address = ray.get_runtime_context().gcs_address
    out = cli_status(address)
    assert "hook-missing: DEPLOY_FAILED" in out and "No module named 'no_such_hooks_module'" in out
