"""OpenAI, rerank and KServe V1 below a model's own prefix, and the shared routes
on the fast path, against a real Ray Serve on loopback with API keys on.

One deployment (this module's models.yaml): ``minilm`` (embedding; 8 texts and
16 KiB a request) and ``ce`` (a cross-encoder; 8 texts, 32 KiB). The same
request to a shared route (``/v1/embeddings``, ``/v1/rerank``,
``/v1/models/<name>:predict``) and to its path below the model's prefix
(``/v2/models/<name>/v1/...``) must get the same answer, good or bad, and the
numbers must equal V2's for the same texts. Under HAProxy the shared routes
must reach the replica without the gateway (HAProxy's own request counters say
so); names that are not a served model still reach the gateway, which answers
as before. scripts/test.sh runs this module under both ingresses.
"""

from __future__ import annotations

import base64
import os

import httpx
import numpy as np
import orjson
import pytest
import yaml

from textfleet.serve.config import GATEWAY_APP, load_models

KEYS_ENV = "TEXTFLEET_TEST_API_KEYS"
KEY = "tf-model-routes-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["The quick brown fox.", "Zürich café ☕ naïve", "", "a " * 300]
DOCS = ["cats purr on the sofa", "dogs bark at night", "the stock market fell"]
ATOL = 2e-5  # other batch shapes than the reference call: float reassociation only

OA, RR = "/v1/embeddings", "/v1/rerank"
OA_MINI, RR_CE = "/v2/models/minilm/v1/embeddings", "/v2/models/ce/v1/rerank"
V1, V1_MINI = "/v1/models/minilm:predict", "/v2/models/minilm/v1/models/minilm:predict"


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, cross_encoder_dir, tmp_path_factory):
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    port = ray_serve["port"]
    lean = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}
    models = [
        {
            "name": "minilm",
            "model_dir": str(model_dir.path),
            "limits": {"max_texts": 8, "max_request_bytes": 16384},
        },
        {
            "name": "ce",
            "model_dir": str(cross_encoder_dir.path),
            "limits": {"max_texts": 8, "max_request_bytes": 32768},
        },
    ]
    config = {
        "server": {"port": port, "api_keys": {"env": KEYS_ENV}},
        "models": [m | lean for m in models],
    }
    path = tmp_path_factory.mktemp("model-routes") / "models.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ[KEYS_ENV] = KEY
    try:
        loaded = load_models(path)
        generated = serve_config(loaded)
    finally:
        del os.environ[KEYS_ENV]
    deploy.apply(generated)
    states = deploy.wait([*loaded.names(), GATEWAY_APP], timeout_s=300)
    assert {n: str(s.status.value) for n, s in states.items()} == dict.fromkeys(
        [*loaded.names(), GATEWAY_APP], "RUNNING"
    )
    return {"url": f"http://127.0.0.1:{port}", "ingress": ray_serve["ingress"]}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60, headers=AUTH) as client:
        yield client


def v2_embeddings(http, texts: list[str]) -> np.ndarray:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    r = http.post("/v2/models/minilm/infer", json={"inputs": [inp]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def embeddings_of(body: dict) -> np.ndarray:
    rows = [d["embedding"] for d in body["data"]]
    if rows and isinstance(rows[0], str):  # encoding_format base64
        rows = [np.frombuffer(base64.b64decode(v), "<f4") for v in rows]
    return np.asarray(rows, np.float32)


# ---------------------------------------------------------------- same answers


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_openai_embeddings_per_model_equal_the_shared_route_and_v2(http, fmt):
    body = {"model": "minilm", "input": TEXTS, "encoding_format": fmt}
    shared, mine = http.post(OA, json=body), http.post(OA_MINI, json=body)
    assert shared.status_code == mine.status_code == 200, (shared.text, mine.text)
    a, b = shared.json(), mine.json()
    np.testing.assert_allclose(embeddings_of(a), embeddings_of(b), atol=ATOL)
    np.testing.assert_allclose(embeddings_of(b), v2_embeddings(http, TEXTS), atol=ATOL)
    for d in (a, b):
        d["data"] = [{k: v for k, v in row.items() if k != "embedding"} for row in d["data"]]
    assert a == b  # model, usage, indices


def test_an_openai_sdk_style_base_url_per_model(http, served):
    """What an OpenAI SDK does with ``base_url``: POST ``{base_url}/embeddings``."""
    base = f"{served['url']}/v2/models/minilm/v1"
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as sdk:
        r = sdk.post("/embeddings", json={"model": "minilm", "input": "hello"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(embeddings_of(r.json()), v2_embeddings(http, ["hello"]), atol=ATOL)


def test_the_openai_sdk_per_model_and_shared(http, served):
    import openai
    want = v2_embeddings(http, TEXTS[:2])
    for base in (f"{served['url']}/v2/models/minilm/v1", f"{served['url']}/v1"):
        client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
        got = client.embeddings.create(model="minilm", input=TEXTS[:2])
        np.testing.assert_allclose([d.embedding for d in got.data], want, atol=ATOL)


def test_rerank_per_model_equals_the_shared_route_and_v2(http):
    body = {"model": "ce", "query": "pets", "documents": DOCS, "return_documents": True}
    shared, mine = http.post(RR, json=body), http.post(RR_CE, json=body)
    assert shared.status_code == mine.status_code == 200, (shared.text, mine.text)
    a, b = shared.json()["results"], mine.json()["results"]
    assert [(x["index"], x["document"]) for x in a] == [(x["index"], x["document"]) for x in b]
    inputs = [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["pets"]},
        {"name": "document", "datatype": "BYTES", "shape": [3], "data": DOCS},
    ]
    r = http.post("/v2/models/ce/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    scores = r.json()["outputs"][0]["data"]
    for results in (a, b):
        got = [x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])]
        np.testing.assert_allclose(got, scores, atol=ATOL)


def test_v1_predict_per_model_equals_the_shared_route_and_v2(http):
    body = {"instances": ["hi", {"text": "there"}]}
    shared, mine = http.post(V1, json=body), http.post(V1_MINI, json=body)
    assert shared.status_code == mine.status_code == 200, (shared.text, mine.text)
    want = v2_embeddings(http, ["hi", "there"])
    for r in (shared, mine):
        np.testing.assert_allclose(np.asarray(r.json()["predictions"]), want, atol=ATOL)


# ---------------------------------------------------------------- same refusals

OA_BODY = orjson.dumps({"model": "minilm", "input": ["a"]})
RR_BODY = orjson.dumps({"model": "ce", "query": "q", "documents": ["d"]})
V1_BODY = orjson.dumps({"instances": ["a"]})
TEXT_PLAIN = {"Content-Type": "text/plain"}

# (id, shared path, per-model path, body, extra headers, status)
REFUSALS = [
    ("oa-no-key", OA, OA_MINI, OA_BODY, {"Authorization": ""}, 401),
    (
        "oa-wrong-key",
        OA,
        OA_MINI,
        OA_BODY,
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        401,
    ),
    ("oa-text-plain", OA, OA_MINI, OA_BODY, TEXT_PLAIN, 415),
    ("oa-gzip", OA, OA_MINI, OA_BODY, {"Content-Encoding": "gzip"}, 415),
    ("oa-malformed", OA, OA_MINI, b'{"model": "minilm", oops', {}, 400),
    ("oa-too-many", OA, OA_MINI, orjson.dumps({"model": "minilm", "input": ["a"] * 9}), {}, 413),
    (
        "oa-over-limit",
        OA,
        OA_MINI,
        orjson.dumps({"model": "minilm", "input": ["x" * 20000]}),
        {},
        413,
    ),
    (
        "oa-dimensions",
        OA,
        OA_MINI,
        orjson.dumps({"model": "minilm", "input": "a", "dimensions": 3}),
        {},
        400,
    ),
    ("oa-bad-timeout", OA, OA_MINI, OA_BODY, {"X-Request-Timeout": "soon"}, 400),
    (
        "oa-wrong-task",
        OA,
        "/v2/models/ce/v1/embeddings",
        orjson.dumps({"model": "ce", "input": "a"}),
        {},
        400,
    ),
    ("rr-no-key", RR, RR_CE, RR_BODY, {"Authorization": ""}, 401),
    ("rr-text-plain", RR, RR_CE, RR_BODY, TEXT_PLAIN, 415),
    (
        "rr-top-n",
        RR,
        RR_CE,
        orjson.dumps({"model": "ce", "query": "q", "documents": ["d"], "top_n": 0}),
        {},
        400,
    ),
    (
        "rr-too-many",
        RR,
        RR_CE,
        orjson.dumps({"model": "ce", "query": "q", "documents": ["d"] * 9}),
        {},
        413,
    ),
    ("v1-no-key", V1, V1_MINI, V1_BODY, {"Authorization": ""}, 401),
    ("v1-text-plain", V1, V1_MINI, V1_BODY, TEXT_PLAIN, 415),
    ("v1-no-instances", V1, V1_MINI, b'{"data": 1}', {}, 400),
    ("v1-too-many", V1, V1_MINI, orjson.dumps({"instances": ["a"] * 9}), {}, 413),
]


@pytest.mark.parametrize(
    "shared, mine, body, headers, status", [pytest.param(*c[1:], id=c[0]) for c in REFUSALS]
)
def test_refusals_per_model_equal_the_shared_routes(http, shared, mine, body, headers, status):
    a = http.post(shared, content=body, headers=headers)
    b = http.post(mine, content=body, headers=headers)
    assert a.status_code == b.status_code == status, (a.text, b.text)
    assert a.json() == b.json()
    for header in ("www-authenticate", "retry-after"):
        assert a.headers.get(header) == b.headers.get(header)


def test_the_body_must_name_the_model_of_the_path(http):
    for model in ("ce", "../x", "minilm/../ce", "MINILM"):
        r = http.post(OA_MINI, json={"model": model, "input": "a"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "model" and "this path is model 'minilm'" in error["message"]
    r = http.post(RR_CE, json={"model": "minilm", "query": "q", "documents": ["d"]})
    assert r.status_code == 400 and "this path is model 'ce'" in r.json()["error"]
    r = http.post("/v2/models/minilm/v1/models/ce:predict", content=V1_BODY)
    assert r.status_code == 404, r.text


def test_per_model_routes_take_post_only(http):
    for path in (OA_MINI, RR_CE, V1_MINI):
        r = http.get(path)
        assert r.status_code == 405 and "takes POST, not GET" in r.json()["error"], r.text


# ---------------------------------------------------------------- names that are no model


@pytest.mark.parametrize(
    "model", ["nope", "../x", "..", "a/b", "%2e%2e", "minilm/../ce", "../../v2/health/live"]
)
def test_a_name_that_is_no_served_model_is_the_gateways_404(http, model):
    for path in (OA, RR):
        r = http.post(path, json={"model": model, "input": "a", "query": "q", "documents": ["d"]})
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "unknown model" in message and "served models: ce, minilm" in message


@pytest.mark.parametrize(
    "path", ["/v1/models/nope:predict", "/v1/models/..%2Fce:predict", "/v1/models/%2e%2e:predict"]
)
def test_v1_paths_that_are_no_served_model_are_404(http, path):
    r = http.post(path, content=V1_BODY)
    assert r.status_code == 404, r.text


def test_a_body_naming_the_model_twice_is_refused_or_routed_by_the_last(http):
    """HAProxy routes on the first ``model``, the replica reads the last: they
    disagree, and the replica refuses (400). Through the gateway both read the
    last (``ce``, not an embedding model): 400 too."""
    r = http.post(OA, content=b'{"model": "minilm", "model": "ce", "input": "a"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


# ---------------------------------------------------------------- the fast path


def haproxy_requests() -> dict[str, int]:
    """HAProxy's total HTTP requests per backend, from its stats page (CSV)."""
    port = os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]  # picked by start_ray (network.py)
    text = httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=10)
    lines = text.text.lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {r["pxname"]: int(r["req_tot"] or 0) for r in rows if r["svname"] == "BACKEND"}


def test_shared_routes_skip_the_gateway_under_haproxy(http, served):
    if served["ingress"] != "haproxy":
        pytest.skip("under Ray's proxy the shared routes go through the gateway")
    gateway = next(name for name in haproxy_requests() if GATEWAY_APP in name)
    for _ in range(3):  # HAProxy may reload (replicas coming and going): settle first
        before = haproxy_requests()
        for _ in range(5):
            assert http.post(OA, content=OA_BODY).status_code == 200
            assert http.post(RR, content=RR_BODY).status_code == 200
            assert http.post(V1, content=V1_BODY).status_code == 200
        after = haproxy_requests()
        if after.get(gateway, 0) >= before.get(gateway, 0):
            break
    assert after[gateway] == before[gateway], (before, after)
    minilm = next(name for name in after if name.endswith("-minilm"))
    ce = next(name for name in after if name.endswith("-ce"))
    assert after[minilm] - before[minilm] == 10 and after[ce] - before[ce] == 5, (before, after)
