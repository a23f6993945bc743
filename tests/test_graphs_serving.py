"""Inference graphs on a real Ray Serve over real HTTP, against direct calls to their models.

One models.yaml: an embedder (``minilm``), a topic classifier (categorium,
``topics``), one token classifier under two names (``ner-a``, ``ner-b``: two
branches with answers that can be told apart only by the route) and a
cross-encoder (``ce``), with the three kinds of graph (tests/graph_configs.py)
a python step between two models (``clip-tag``, user code from
tests/hook_modules) and a few that fail on purpose. Every graph answer is compared with the same
models called directly on the same server: the graph adds routing, never
numbers of its own. The requests go through the session's ingress (HAProxy
when installed), so a graph's route is shown to be reachable through it.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import yaml
from graph_configs import clip_tag, enrich, search_rerank, topic_ner
from serving import deploy_lean_models, replica_pid

from textfleet.serve.config import GATEWAY_APP, load_models
from textfleet.serve.graph import GraphError

TEXTS = ["I live at 1234 Maplewood Avenue, Springfield.", "Zoë Ångström, 東京 🎉", "flights hotel"]


def _labels(categorium_dir) -> list[str]:
    config = json.loads((categorium_dir.path / "config.json").read_text(encoding="utf-8"))
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


@pytest.fixture(scope="module")
def served(
    ray_serve, model_dir, categorium_dir, token_model_dir, cross_encoder_dir, tmp_path_factory
):

    labels = _labels(categorium_dir)
    first_half = {label: "ner-a" for label in labels[: len(labels) // 2]}
    models = [
        {"name": "minilm", "model_dir": str(model_dir.path)},
        {"name": "topics", "model_dir": str(categorium_dir.path)},
        {"name": "ner-a", "model_dir": str(token_model_dir.path)},
        {"name": "ner-b", "model_dir": str(token_model_dir.path)},
        {"name": "ce", "model_dir": str(cross_encoder_dir.path)},
    ]
    bad_pii = {"parameters": {"aggregation": "bogus"}}
    enrich_bad = enrich()
    enrich_bad["name"] = "enrich-bad"
    enrich_bad["steps"][1] |= bad_pii
    tag_bad = {
        "name": "tag-bad",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "steps": [{"name": "tag", "model": "ner-a", "inputs": {"text": "$input.text"}, **bad_pii}],
        "outputs": {"entities": "tag.entities"},
    }
    graphs = [
        enrich(),
        topic_ner(first_half, default="ner-b"),
        topic_ner(first_half, default=None, name="topic-strict"),
        search_rerank(shortlist=5, k=3),
        enrich_bad,
        tag_bad,
        clip_tag(),
    ]
    folder = tmp_path_factory.mktemp("graphs")
    path, config = deploy_lean_models(folder, models, ray_serve["port"], graphs=graphs)
    with httpx.Client(base_url=f"http://127.0.0.1:{ray_serve['port']}", timeout=120) as http:
        yield {
            "http": http,
            "url": f"http://127.0.0.1:{ray_serve['port']}",
            "graphs": [g["name"] for g in graphs],
            "yaml": path,
            "config": config,
        }


def tensor(name: str, items: list[str]) -> dict:
    return {"name": name, "datatype": "BYTES", "shape": [len(items)], "data": items}


def infer(http, model: str, **inputs) -> httpx.Response:
    body = {"inputs": [tensor(n, v) for n, v in inputs.items()]}
    return http.post(f"/v2/models/{model}/infer", json=body)


DTYPES = {"BYTES": object, "FP32": np.float32, "INT64": np.int64}


def outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    assert r.status_code == 200, r.text
    out = {}
    for o in r.json()["outputs"]:
        dtype = DTYPES[o["datatype"]]
        out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def test_enrich_equals_direct_calls_to_both_models(served):
    http = served["http"]
    got = outputs(infer(http, "enrich", text=TEXTS))
    embedding = outputs(infer(http, "minilm", text=TEXTS))["embedding"]
    entities = outputs(infer(http, "ner-a", text=TEXTS))["entities"]
    assert got["embedding"].tobytes() == embedding.tobytes()  # bit for bit
    assert list(got["entities"]) == list(entities)
    params = infer(http, "enrich", text=TEXTS).json()["parameters"]
    assert params["step_ms.embed"] > 0 and params["step_ms.pii"] > 0 and params["graph_ms"] > 0


def test_topic_ner_routes_each_row_to_its_branch(served, workload_texts):
    http = served["http"]
    texts = [t[:200] for t in workload_texts[:200]]
    r = infer(http, "topic-ner", text=texts)
    got = outputs(r)
    topics = outputs(infer(http, "topics", text=texts))["label"]
    assert list(got["topic"]) == list(topics)
    branches = {}
    for i, route in enumerate(got["route"]):
        branches.setdefault(route, []).append(i)
    assert set(branches) == {"ner-a", "ner-b"}, "the sample must reach both branches"
    for model, rows in branches.items():
        direct = outputs(infer(http, model, text=[texts[i] for i in rows]))["entities"]
        assert [got["entities"][i] for i in rows] == list(direct)
    assert r.json()["parameters"]["requests.ner"] == 2  # one sub-request per branch

    strict = infer(http, "topic-strict", text=texts)
    assert strict.status_code == 422
    error = strict.json()["error"]
    assert error.startswith("graph 'topic-strict': step 'ner': no case for rows ")
    for i in branches["ner-b"][:5]:
        assert f"{i} ({topics[i]!r})" in error


def test_search_rerank_equals_a_numpy_reference(served, workload_texts):
    http = served["http"]
    query, docs = "cheap flights and hotels", [t[:300] for t in workload_texts[200:220]]
    got = outputs(infer(http, "search-rerank", query=[query], document=docs))
    q = outputs(infer(http, "minilm", text=[query]))["embedding"][0].astype(np.float64)
    d = outputs(infer(http, "minilm", text=docs))["embedding"].astype(np.float64)
    cosine = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    shortlist = np.argsort(-cosine, kind="stable")[:5]
    ce = infer(http, "ce", query=[query], document=[docs[i] for i in shortlist])
    scores = outputs(ce)["score"]
    ranked = np.argsort(-scores.astype(np.float64), kind="stable")[:3]
    assert got["index"].tolist() == shortlist[ranked].tolist()
    assert list(got["document"]) == [docs[i] for i in shortlist[ranked]]
    np.testing.assert_allclose(got["score"], scores[ranked], atol=1e-5)


def test_a_failed_optional_step_is_listed_and_a_failed_step_is_never_200(served):
    http = served["http"]
    r = infer(http, "enrich-bad", text=TEXTS)
    assert r.status_code == 200
    body = r.json()
    assert [o["name"] for o in body["outputs"]] == ["embedding"]
    assert body["parameters"]["failed_optional"] == "pii"
    assert body["parameters"]["error.pii"].startswith(
        "graph 'enrich-bad': step 'pii' (model 'ner-a'): aggregation: must be one of"
    )
    r = infer(http, "tag-bad", text=TEXTS)
    assert r.status_code == 400
    assert r.json()["error"].startswith("graph 'tag-bad': step 'tag' (model 'ner-a'): aggregation")


def test_the_request_timeout_is_the_whole_graphs(served):
    body = {"inputs": [tensor("text", TEXTS * 20)], "parameters": {"timeout": 1000}}
    r = served["http"].post("/v2/models/enrich/infer", json=body)
    assert r.status_code == 504
    assert r.json()["error"].startswith("graph 'enrich' did not finish within 0.001 s")


def test_metadata_ready_and_health_include_the_graphs(served):
    http = served["http"]
    md = http.get("/v2/models/search-rerank").json()
    assert md["platform"] == "textfleet_graph"
    assert md["inputs"] == [
        {"name": "query", "datatype": "BYTES", "shape": [1]},
        {"name": "document", "datatype": "BYTES", "shape": [-1]},
    ]
    assert md["outputs"] == [
        {"name": "document", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "index", "datatype": "INT64", "shape": [-1]},
    ]
    embedding = http.get("/v2/models/enrich").json()["outputs"][0]
    assert embedding == {"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}
    ready = http.get("/v2/models/enrich/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {
        "minilm": "RUNNING",
        "ner-a": "RUNNING",
    }
    health = http.get("/v2/health/ready").json()
    assert health["ready"] is True
    assert set(served["graphs"]) <= set(health["models"])
    unknown = http.post("/v2/models/nope/infer", json={"inputs": [tensor("text", TEXTS)]})
    assert unknown.status_code == 404 and "enrich" in unknown.json()["error"]
    # The shared routes are the models' own: a graph says so.
    r = http.post("/v1/embeddings", json={"model": "enrich", "input": TEXTS})
    assert r.status_code == 404 and "inference graph" in r.text


def test_python_handle_calls_equal_http(served):
    from ray import serve

    request = {"inputs": [tensor("text", TEXTS)]}
    got = serve.get_app_handle("enrich").infer.remote(request).result(timeout_s=60)
    direct = serve.get_app_handle("minilm").infer.remote(request).result(timeout_s=60)
    assert got["outputs"][0] == direct["outputs"][0]
    assert got["parameters"]["step_ms.embed"] > 0
    http_body = infer(served["http"], "enrich", text=TEXTS).json()
    assert got["outputs"][1] == http_body["outputs"][1]
    with pytest.raises(GraphError) as e:
        serve.get_app_handle("tag-bad").infer.remote(request).result(timeout_s=60)
    assert e.value.status == 400 and "step 'tag' (model 'ner-a')" in str(e.value)


def test_a_graph_steps_array_call_equals_the_models_v2_infer(served):
    """``infer_arrays`` (a graph step's call) answers as ``infer`` on the same model,
    bit for bit, through Ray's transport both ways; its errors are the model's own."""
    from ray import serve

    from textfleet.engine.errors import InputError
    from textfleet.serve.protocols import v2

    docs = ["cats purr", "dogs bark", "the stock market fell"]
    cases = [
        ("minilm", {"text": TEXTS}, {}),
        ("topics", {"text": TEXTS}, {"top_k": 2}),
        ("ner-a", {"text": TEXTS}, {"aggregation": "first"}),
        ("ce", {"query": ["pets"], "document": docs}, {"raw_scores": True}),
    ]
    for model, texts, params in cases:
        handle = serve.get_app_handle(model)
        request = {"inputs": [tensor(n, v) for n, v in texts.items()], "parameters": params}
        reply = handle.infer.remote(request).result(timeout_s=60)
        want = {o["name"]: v2.output_array(o) for o in reply["outputs"]}
        arrays = {n: np.array(v, dtype=object) for n, v in texts.items()}
        got = handle.infer_arrays.remote(arrays, params).result(timeout_s=60)
        assert list(got) == list(want), model
        for name, arr in want.items():
            assert (got[name].dtype, got[name].shape) == (arr.dtype, arr.shape), (model, name)
            if arr.dtype == object:
                assert got[name].tolist() == arr.tolist(), (model, name)
            else:
                assert got[name].tobytes() == arr.tobytes(), (model, name)  # bit for bit
    with pytest.raises(InputError, match="unknown input 'txt'"):
        arrays = {"txt": np.array(TEXTS, dtype=object)}
        serve.get_app_handle("minilm").infer_arrays.remote(arrays, {}).result(timeout_s=60)


def test_a_python_step_between_two_models_equals_its_code_on_direct_calls(served):
    http = served["http"]
    got = outputs(infer(http, "clip-tag", text=TEXTS))
    labels = outputs(infer(http, "topics", text=TEXTS))["label"]
    clipped = [f"{label}: {t[:12].lower()}" for label, t in zip(labels, TEXTS, strict=True)]
    assert list(got["clipped"]) == clipped
    assert got["length"].tolist() == [len(t) for t in TEXTS]
    assert list(got["entities"]) == list(outputs(infer(http, "ner-a", text=clipped))["entities"])
    md = http.get("/v2/models/clip-tag").json()
    assert {"name": "length", "datatype": "INT64", "shape": [-1]} in md["outputs"]
    r = infer(http, "clip-tag", text=["fine", "reject"])
    assert r.status_code == 400
    assert r.json()["error"] == (
        "graph 'clip-tag': step 'clip' (python 'sample_hooks:label_and_clip'): text[1]: "
        "'reject' is refused by the python step"
    )
    r = infer(http, "clip-tag", text=["crash"])
    assert r.status_code == 500
    assert r.json()["error"].startswith("graph 'clip-tag': step 'clip' (python ")


def test_a_python_step_that_cannot_be_imported_fails_only_its_graph(served):
    """Deploys one more graph whose python step names a missing module, then the
    module's config again (which removes it)."""
    from ray import serve

    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    missing = clip_tag(call="no_such_graph_module:clip") | {"name": "python-missing"}
    config = {**served["config"], "graphs": [*served["config"]["graphs"], missing]}
    path = served["yaml"].with_name("models-python-missing.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        deploy.apply(serve_config(load_models(path)))
        states = deploy.wait(["python-missing", "clip-tag"], timeout_s=300)
        assert str(states["python-missing"].status.value) == "DEPLOY_FAILED"
        assert str(states["clip-tag"].status.value) == "RUNNING"
        status = deploy.status_text()  # what `textfleet status` prints
        assert "python-missing: DEPLOY_FAILED" in status
        assert "No module named 'no_such_graph_module'" in status
        message = states["python-missing"].deployments["ModelServer"].message
        assert "graph 'python-missing': step 'clip': cannot import" in message
    finally:
        deploy.apply(serve_config(load_models(served["yaml"])))
        deadline = time.monotonic() + 120
        while "python-missing" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(1)
    assert outputs(infer(served["http"], "clip-tag", text=TEXTS))["length"].size == len(TEXTS)


def _pid(app: str) -> int | None:
    try:
        return replica_pid(app)
    except LookupError:  # between the old replica and the new
        return None


def test_redeploying_a_model_leaves_the_graph_running(served):
    """Last: it edits the module's models.yaml. The embedder's args change (its
    application is rebuilt, a new replica) while enrich requests flow: the graph's
    replica stays, and each request succeeds or gets a 503 naming the model."""
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    graph_pid, model_pid = _pid("enrich"), _pid("minilm")
    config = served["config"]
    config["models"][0] = {**config["models"][0], "threads": 2}
    served["yaml"].write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = load_models(served["yaml"])
    results, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=served["url"], timeout=60) as http:
            while not stop.is_set():
                r = infer(http, "enrich", text=["steady load"])
                results.append((r.status_code, r.text[:300]))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        deploy.apply(serve_config(loaded))
        deadline = time.monotonic() + 300
        while _pid("minilm") in (model_pid, None) and time.monotonic() < deadline:
            time.sleep(1)
        names = [*loaded.app_names(), GATEWAY_APP]
        deploy.wait(names, timeout_s=300)
        time.sleep(2)  # requests on the new replica too
    finally:
        stop.set()
        thread.join(60)
    assert _pid("minilm") not in (model_pid, None), "the model was not redeployed"
    assert _pid("enrich") == graph_pid, "the graph's replica was restarted"
    assert any(status == 200 for status, _ in results)
    failed = [(status, text) for status, text in results if status != 200]
    assert all(s == 503 and "model 'minilm'" in text for s, text in failed), failed[:5]
