"""Real Ray Serve on loopback, real HTTP clients (httpx, tritonclient.http), real engine.

One Ray start for the whole session (dashboard off) and one deployment of a
small models.yaml: ``minilm`` (tight request limits), ``second`` (a tiny
queue, for overload), ``broken`` (a model_dir that does not exist). Results
are compared with ``Engine.embed`` of the same texts in this process. The
independence test, last in the file, adds a third model and scales
``second`` to two replicas while requests to ``minilm`` keep flowing.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml
from serving import cli_status

from textfleet.engine.errors import InputError, ModelDirError
from textfleet.serve.config import GATEWAY_APP, load_models, parse_model

TEXTS = ["The quick brown fox.", "Zürich café ☕ naïve", "", "日本語のテキスト", "a " * 300]
ATOL = 2e-5  # other batch shapes than the reference call: float reassociation only


def models_yaml(path: Path, model_dir: Path, port: int, *, scaled: bool = False) -> Path:
    """The test models.yaml; ``scaled`` is the edited version of the independence test."""
    lean = {"ray_actor_options": {"num_cpus": 0}}  # replicas fit on 2 cores
    models = [
        {
            "name": "minilm",
            "model_dir": str(model_dir),
            "threads": 1,
            "limits": {"max_texts": 8, "max_request_bytes": 16384},
            **lean,
        },
        {
            "name": "second",
            "model_dir": str(model_dir),
            "threads": 1,
            "batching": {"max_batch_tokens": 512, "max_queue_tokens": 1024},
            **lean,
        },
        {"name": "broken", "model_dir": str(path.parent / "no-such-model"), **lean},
    ]
    if scaled:
        models[1]["num_replicas"] = 2
        models.append({"name": "third", "model_dir": str(model_dir), "threads": 1, **lean})
    config = {"server": {"port": port}, "models": models}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    """The models of ``models_yaml`` deployed on the session's Ray Serve."""
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    port, metrics_port = ray_serve["port"], ray_serve["metrics_port"]
    path = models_yaml(tmp_path_factory.mktemp("serve") / "models.yaml", model_dir.path, port)
    models = load_models(path)
    deploy.apply(serve_config(models))
    states = deploy.wait([*models.names(), GATEWAY_APP], timeout_s=300)
    yield {
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
        "yaml": path,
        "model_dir": model_dir.path,
        "states": states,
        "ingress": ray_serve["ingress"],
    }


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        yield client


def v2_body(texts, **extra) -> bytes:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return orjson.dumps({"inputs": [inp], **extra})


def replica_actors(app: str) -> dict[str, str]:
    """Replica actor name -> actor ID of an application (from the GCS, no dashboard)."""
    import ray

    names = [n for n in ray.util.list_named_actors(all_namespaces=True) if isinstance(n, dict)]
    out = {}
    for entry in names:
        if entry["name"].startswith(f"SERVE_REPLICA::{app}#"):
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            out[entry["name"]] = actor._actor_id.hex()
    return out


# ---------------------------------------------------------------- deployment state


def test_each_model_is_its_own_application(served):
    states = {name: str(app.status.value) for name, app in served["states"].items()}
    assert states == {
        "minilm": "RUNNING",
        "second": "RUNNING",
        "broken": "DEPLOY_FAILED",
        GATEWAY_APP: "RUNNING",
    }


def test_missing_model_dir_fails_only_its_application_with_a_clear_message(served, http):
    from ray import serve

    app = serve.status().applications["broken"]
    message = app.deployments["ModelServer"].message
    assert "model 'broken': model_dir" in message and "does not exist" in message
    assert str(serve.status().applications["minilm"].status.value) == "RUNNING"
    r = http.post("/v1/embeddings", json={"model": "broken", "input": "x"})
    assert r.status_code == 503 and "model 'broken' is DEPLOY_FAILED" in r.text
    assert http.get("/v2/models/broken/ready").status_code == 503


def test_corrupt_model_dir_fails_loading_naming_model_and_path(model_dir, tmp_path):
    from textfleet.serve.server import load_engine

    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_dir.path, corrupt)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx graph")
    cfg = parse_model({"name": "bad", "model_dir": str(corrupt)})
    with pytest.raises(ModelDirError, match=rf"model 'bad': cannot load {corrupt}"):
        load_engine(cfg)


def test_ingress_is_haproxy_when_installed_unless_asked_otherwise(served):
    import os

    import psutil

    from textfleet.serve.deploy import INGRESS_ENV, resolve_ingress

    want = os.environ.get(INGRESS_ENV) or resolve_ingress("auto")[0]
    assert served["ingress"] == want
    listeners = {
        c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == served["port"]
    }
    names = {psutil.Process(pid).name() for pid in listeners if pid}
    # HAProxy listens on the HTTP port itself; otherwise Ray's proxy actor does.
    assert ("haproxy" in names) == (want == "haproxy"), names


def test_models_yaml_max_length_lowers_the_engine_limit(model_dir):
    from textfleet.serve.server import load_engine

    cfg = parse_model({"name": "short", "model_dir": str(model_dir.path), "max_length": 32})
    with load_engine(cfg) as engine:
        assert engine.max_length == 32
        assert engine.count_tokens(["word " * 100]) == [32]
    too_long = parse_model({"name": "long", "model_dir": str(model_dir.path), "max_length": 4096})
    with pytest.raises(ModelDirError, match=r"model 'long': .*max_length 4096 is above"):
        load_engine(too_long)


# ---------------------------------------------------------------- the real V2 client


def test_tritonclient_health_and_metadata(served):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{served['port']}")
    assert client.is_server_live()
    assert not client.is_server_ready()  # 'broken' failed: the server is not fully ready
    assert client.is_model_ready("minilm")
    assert client.is_model_ready("minilm", model_version="1")
    assert not client.is_model_ready("broken")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata("minilm")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_engine(served, engine, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{served['port']}")
    inp = triton.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
    out = triton.InferRequestedOutput("embedding", binary_data=binary)
    result = client.infer("minilm", [inp], outputs=[out], request_id="req-7")
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, engine.embed(TEXTS), atol=ATOL)
    assert result.get_response()["id"] == "req-7"
    client.close()


# ---------------------------------------------------------------- httpx: routes


def test_v2_json_infer_and_versions(http, engine):
    for path in ("/v2/models/minilm/infer", "/v2/models/minilm/versions/1/infer"):
        r = http.post(path, content=v2_body(TEXTS[:3], id="abc"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == "abc" and body["model_name"] == "minilm"
        out = body["outputs"][0]
        assert out["name"] == "embedding" and out["shape"] == [3, 384]
        got = np.asarray(out["data"], dtype=np.float32).reshape(3, 384)
        np.testing.assert_allclose(got, engine.embed(TEXTS[:3]), atol=ATOL)
    r = http.post("/v2/models/minilm/versions/9/infer", content=v2_body(["a"]))
    assert r.status_code == 404 and "no version '9'" in r.text


def test_server_routes(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["models"]["broken"] == "DEPLOY_FAILED"
    assert http.get("/v2").json()["name"] == "textfleet"
    assert http.get("/v2/models/minilm").json()["versions"] == ["1"]
    assert http.get("/v1/models/minilm").json() == {"name": "minilm", "ready": True}


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_openai_embeddings(http, engine, fmt):
    r = http.post(
        "/v1/embeddings", json={"model": "minilm", "input": TEXTS[:2], "encoding_format": fmt}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    rows = [d["embedding"] for d in body["data"]]
    if fmt == "base64":
        rows = [np.frombuffer(base64.b64decode(v), "<f4") for v in rows]
    np.testing.assert_allclose(np.asarray(rows, np.float32), engine.embed(TEXTS[:2]), atol=ATOL)
    assert body["usage"]["prompt_tokens"] == sum(engine.count_tokens(TEXTS[:2]))
    single = http.post("/v1/embeddings", json={"model": "minilm", "input": "one"}).json()
    assert len(single["data"]) == 1


def test_kserve_v1_predict(http, engine):
    r = http.post("/v1/models/minilm:predict", json={"instances": ["hi", {"text": "there"}]})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(["hi", "there"]), atol=ATOL)


# ---------------------------------------------------------------- httpx: errors


@pytest.mark.parametrize(
    "method, path, body, status, text",
    [
        ("POST", "/v2/models/nope/infer", v2_body(["a"]), 404, "unknown model 'nope'"),
        ("POST", "/v1/models/nope:predict", b'{"instances": ["a"]}', 404, "unknown model 'nope'"),
        ("POST", "/v1/embeddings", b'{"model": "nope", "input": "a"}', 404, "unknown model"),
        ("POST", "/v2/models/minilm/infer", b"{oops", 400, "body: malformed JSON"),
        ("POST", "/v1/embeddings", b"{oops", 400, "body: malformed JSON"),
        (
            "POST",
            "/v2/models/minilm/infer",
            orjson.dumps(
                {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
            ),
            400,
            "inputs[0].datatype: input 'text' must be BYTES, got FP32",
        ),
        (
            "POST",
            "/v2/models/minilm/infer",
            orjson.dumps(
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}
            ),
            400,
            "inputs[0].data: shape [2] needs 2 elements, got 1",
        ),
        ("POST", "/v2/models/minilm/infer", b'{"inputs": []}', 400, "inputs: expected a non-empty"),
        (
            "POST",
            "/v2/models/minilm/infer",
            orjson.dumps(
                {"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
            ),
            400,
            "inputs[0].name: unknown input 'txt'",
        ),
        (
            "POST",
            "/v2/models/minilm/infer",
            v2_body(["a"] * 9),
            413,
            "9 texts; the limit is 8 per request (limits.max_texts)",
        ),
        (
            "POST",
            "/v2/models/minilm/infer",
            v2_body(["x" * 20000]),
            413,
            "the limit is 16384 bytes (limits.max_request_bytes)",
        ),
        (
            "POST",
            "/v1/embeddings",
            b'{"model": "minilm", "input": ["a","a","a","a","a","a","a","a","a"]}',
            413,
            "limits.max_texts",
        ),
        ("GET", "/v2/models/minilm/infer", b"", 405, "takes POST, not GET"),
        ("GET", "/nowhere", b"", 404, "no route GET /nowhere"),
    ],
)
def test_errors_have_status_and_name_the_field(http, method, path, body, status, text):
    r = http.request(method, path, content=body or None)
    assert r.status_code == status, r.text
    assert text in r.text


def test_bad_input_never_takes_a_replica_down(served, http, engine):
    before = replica_actors("minilm")
    bad = [b"\xff\xfe", b"[]", b'{"inputs": [{"name": 1}]}', b'{"inputs": "x"}', b"null"]
    for body in bad * 5:
        assert http.post("/v2/models/minilm/infer", content=body).status_code == 400
    r = http.post("/v2/models/minilm/infer", content=v2_body(["still fine"]))
    assert r.status_code == 200
    assert replica_actors("minilm") == before


def test_overload_is_503_with_retry_after_and_loses_nothing_else(http, served, engine):
    """'second' queues at most 1024 tokens: a burst of long requests overflows it."""
    long_texts = ["lorem ipsum dolor sit amet " * 40] * 4

    async def burst():
        async with httpx.AsyncClient(base_url=served["url"], timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post("/v2/models/second/infer", content=v2_body(long_texts))
                    for _ in range(24)
                )
            )

    replies = asyncio.run(burst())
    statuses = sorted({r.status_code for r in replies})
    assert set(statuses) <= {200, 503}, [r.text for r in replies if r.status_code not in (200, 503)]
    rejected = [r for r in replies if r.status_code == 503]
    assert rejected, "24 requests of ~800 tokens never overflowed a 1024-token queue"
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
    for r in replies:
        if r.status_code == 200:
            assert r.json()["outputs"][0]["shape"] == [4, 384]


# ---------------------------------------------------------------- Python callers


def test_handle_embed_and_infer(served, engine):
    from ray import serve

    handle = serve.get_app_handle("minilm")

    async def call():
        return await handle.embed.remote(TEXTS[:2])

    got = asyncio.run(call())
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, engine.embed(TEXTS[:2]), atol=ATOL)

    request = {
        "id": "h1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}],
    }
    response = handle.infer.remote(request).result()
    assert response["id"] == "h1" and response["outputs"][0]["shape"] == [1, 384]
    np.testing.assert_allclose(
        np.asarray(response["outputs"][0]["data"], np.float32),
        engine.embed(["hello"])[0],
        atol=ATOL,
    )
    with pytest.raises(InputError, match="texts\\[1\\]: expected str"):
        handle.embed.remote(["ok", 3]).result()


# ---------------------------------------------------------------- metrics


def test_prometheus_metrics_per_model(served, http, engine):
    http.post("/v2/models/minilm/infer", content=v2_body(["metrics"]))
    http.post("/v2/models/minilm/infer", content=b"{bad")
    urgent = v2_body(["urgent metrics"], parameters={"priority": 0})
    assert http.post("/v2/models/minilm/infer", content=urgent).status_code == 200
    # The urgent request in its own class, apart from the default class's.
    by_class = [
        ("ray_textfleet_priority_requests_total{", ('priority="0"', 'outcome="ok"')),
        ("ray_textfleet_priority_latency_ms_count{", ('priority="0"',)),
        ("ray_textfleet_priority_requests_total{", ('priority="5"', 'outcome="ok"')),
    ]
    wanted = [
        "ray_textfleet_requests_total{",
        "ray_textfleet_request_latency_ms_bucket{",
        "ray_textfleet_priority_latency_ms_bucket{",
        "ray_textfleet_errors_total{",
        "ray_textfleet_texts_total{",
        "ray_textfleet_engine_batches_total{",
        "ray_textfleet_engine_padding_efficiency{",
        "ray_textfleet_engine_batch_size_bucket{",
    ]
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(served["metrics_url"], timeout=10).text
        lines = [ln for ln in text.splitlines() if 'model="minilm"' in ln]
        missing = [w for w in wanted if not any(ln.startswith(w) for ln in lines)]
        missing += [
            (w, labels)
            for w, labels in by_class
            if not any(ln.startswith(w) and all(x in ln for x in labels) for ln in lines)
        ]
        if not missing:
            break
        assert time.monotonic() < deadline, f"metrics never appeared: {missing}"
        time.sleep(2)
    ok = [
        ln
        for ln in lines
        if ln.startswith("ray_textfleet_requests_total{")
        and 'status="200"' in ln
        and 'protocol="v2"' in ln
    ]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1
    assert any('application="minilm"' in ln for ln in lines)


def test_status_command_shows_the_failure(served):
    """`textfleet status` (serve status without a dashboard) names the broken model's error."""
    import ray

    out = cli_status(ray.get_runtime_context().gcs_address)
    assert "minilm: RUNNING" in out and "broken: DEPLOY_FAILED" in out
    assert "model 'broken': model_dir" in out


# ---------------------------------------------------------------- independence (keep last)


def test_adding_and_scaling_models_leaves_the_others_running(served, http):
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    before = replica_actors("minilm")
    gateway_before = replica_actors(GATEWAY_APP)
    assert len(before) == 1
    failures, done, stop = [], [0], threading.Event()

    def traffic():
        with httpx.Client(base_url=served["url"], timeout=60) as client:
            while not stop.is_set():
                r = client.post("/v2/models/minilm/infer", content=v2_body(["keep going"]))
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:200]))
                done[0] += 1

    loop = threading.Thread(target=traffic)
    loop.start()
    try:
        path = models_yaml(served["yaml"], served["model_dir"], served["port"], scaled=True)
        deploy.apply(serve_config(load_models(path)))
        states = deploy.wait(["minilm", "second", "third"], timeout_s=300)
        assert {n: str(a.status.value) for n, a in states.items()} == {
            "minilm": "RUNNING",
            "second": "RUNNING",
            "third": "RUNNING",
        }
        deadline = time.monotonic() + 120
        while len(replica_actors("second")) != 2:
            assert time.monotonic() < deadline, "second never reached 2 replicas"
            time.sleep(1)
        time.sleep(1)  # a few more requests after the change settled
    finally:
        stop.set()
        loop.join()
    assert done[0] > 0 and failures == []
    assert replica_actors("minilm") == before
    assert replica_actors(GATEWAY_APP) == gateway_before
    assert http.post("/v2/models/third/infer", content=v2_body(["new"])).status_code == 200
