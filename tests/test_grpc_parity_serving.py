"""V2 gRPC reaches what V2 HTTP reaches, on a real Ray Serve, with ``tritonclient.grpc``.

One models.yaml: an embedder exported with Matryoshka widths and prompts
(``emb``), a versioned model (``mv``: two versions of MiniLM, an even split,
a sticky header), a graph over the embedder (``g``) and a pool with one member
(``intents/e1``). Every gRPC answer is compared with the same request over HTTP
(``tritonclient.http``): request parameters (priority, timeout, dimensions,
prompt_name) and their errors, then each kind of model, by its own application
and through the gateway.
"""

from __future__ import annotations

import numpy as np
import pytest
from serving import deploy_lean_models, linked_copy

from textfleet.serve.config import GATEWAY_APP

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox.", "Zürich café ☕ naïve", "日本語のテキスト"]
TEXT = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


@pytest.fixture(scope="module")
def served(ray_serve, prompted_dir, model_dir, tmp_path_factory):

    tmp = tmp_path_factory.mktemp("grpc-parity")
    root = tmp / "members"
    root.mkdir()
    linked_copy(model_dir.path, root / "e1")
    versions = [{"version": v, "model_dir": str(model_dir.path), "weight": 1} for v in ("1", "2")]
    models = [
        {"name": "emb", "model_dir": str(prompted_dir.path)},
        {"name": "mv", "versions": versions, "traffic": {"sticky_header": "x-session"}},
        {
            "name": "intents",
            "pool": {"model_root": str(root), "max_models_per_replica": 1},
            "warmup": False,
            "num_replicas": 1,
        },
    ]
    graph = {
        "name": "g",
        "inputs": TEXT,
        "steps": [{"name": "embed", "model": "emb", "inputs": {"text": "$input.text"}}],
        "outputs": {"embedding": "embed.embedding"},
    }
    deploy_lean_models(tmp, models, ray_serve["port"], graphs=[graph])
    return ray_serve


def app(name: str) -> dict[str, str]:
    return {"application": name}


def grpc_text(texts=TEXTS):
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput("text", [len(texts)], "BYTES")
    return [t.set_data_from_numpy(np.array(texts, dtype=object))]


def http_text(texts=TEXTS):
    import tritonclient.http as httpclient

    t = httpclient.InferInput("text", [len(texts)], "BYTES")
    return [t.set_data_from_numpy(np.array(texts, dtype=object))]


def failure(call) -> tuple[str, str]:
    """(status, message) of a call that must fail."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def same_embedding(got, want) -> None:
    g, w = got.as_numpy("embedding"), want.as_numpy("embedding")
    assert g.shape == w.shape and g.dtype == w.dtype == np.float32
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- request parameters


@pytest.mark.parametrize(
    "params",
    [
        {"dimensions": 64},
        {"prompt_name": "passage"},
        {"dimensions": 128, "prompt_name": "query"},
    ],
)
def test_embedding_parameters_equal_http(triton_grpc, triton_http, params):
    got = triton_grpc.infer("emb", grpc_text(), parameters=params, headers=app("emb"))
    want = triton_http.infer("emb", http_text(), parameters=params)
    same_embedding(got, want)
    if "dimensions" in params:
        assert got.as_numpy("embedding").shape == (len(TEXTS), params["dimensions"])
    # The parameters change the answer: not the plain embedding.
    plain = triton_grpc.infer("emb", grpc_text(), headers=app("emb")).as_numpy("embedding")
    assert plain.shape != got.as_numpy("embedding").shape or not np.allclose(
        plain, got.as_numpy("embedding"), atol=1e-4
    )


def test_priority_and_timeout_equal_http(triton_grpc, triton_http):
    """tritonclient's ``priority`` (uint64 over gRPC) and ``timeout`` (microseconds)."""
    gateway = app(GATEWAY_APP)
    for headers in (app("emb"), gateway):
        got = triton_grpc.infer("emb", grpc_text(), priority=1, timeout=30_000_000, headers=headers)
        want = triton_http.infer("emb", http_text(), priority=1, timeout=30_000_000)
        same_embedding(got, want)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"priority": 99}, "parameters.priority"),
        ({"timeout": -5}, "parameters.timeout"),
        ({"parameters": {"dimensions": 100}}, "dimensions"),
        ({"parameters": {"dimensions": "64"}}, "parameters.dimensions"),
        ({"parameters": {"prompt_name": "nope"}}, "prompt_name"),
        ({"parameters": {"prompt_name": 3}}, "parameters.prompt_name"),
    ],
)
def test_bad_parameters_are_invalid_argument_as_http_400(triton_grpc, triton_http, kwargs, names):
    for headers in (app("emb"), app(GATEWAY_APP)):
        code, message = failure(
            lambda h=headers: triton_grpc.infer("emb", grpc_text(), headers=h, **kwargs)
        )
        assert code == "StatusCode.INVALID_ARGUMENT", message
        assert message.startswith(names), message
        http_code, http_message = failure(lambda: triton_http.infer("emb", http_text(), **kwargs))
        assert http_code == "400" and http_message == message


def test_request_timeout_metadata_is_the_http_header(triton_grpc):
    code, message = failure(
        lambda: triton_grpc.infer(
            "emb", grpc_text(), headers=app("emb") | {"x-request-timeout": "soon"}
        )
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and message.startswith("x-request-timeout")
    got = triton_grpc.infer("emb", grpc_text(), headers=app("emb") | {"x-request-timeout": "30"})
    assert got.as_numpy("embedding").shape == (len(TEXTS), 384)


# ---------------------------------------------------------------- kinds of model


def test_versioned_model_equals_http(triton_grpc, triton_http):
    """The version the request names; else the plan's pick, the same for a sticky key
    over gRPC (metadata) as over HTTP (header); every answer names its version."""
    for headers in (app("mv"), app(GATEWAY_APP)):
        for version in ("1", "2"):
            got = triton_grpc.infer("mv", grpc_text(), model_version=version, headers=headers)
            want = triton_http.infer("mv", http_text(), model_version=version)
            assert got.get_response().model_version == version
            assert want.get_response()["model_version"] == version
            same_embedding(got, want)
        picked = {
            triton_grpc.infer("mv", grpc_text(), headers=headers).get_response().model_version
            for _ in range(12)
        }
        assert picked <= {"1", "2"} and picked
    # Sticky: a key's version over gRPC is the one HTTP gives it.
    sticky = {}
    for key in (f"user-{i}" for i in range(8)):
        got = triton_grpc.infer("mv", grpc_text(), headers=app("mv") | {"x-session": key})
        want = triton_http.infer("mv", http_text(), headers={"x-session": key})
        sticky[key] = got.get_response().model_version
        assert sticky[key] == want.get_response()["model_version"], key
        same_embedding(got, want)
    assert set(sticky.values()) == {"1", "2"}  # 8 keys over an even split: both
    # Metadata lists every version, as over HTTP; an unknown version is NOT_FOUND.
    meta = triton_grpc.get_model_metadata("mv", headers=app("mv"))
    over_http = triton_http.get_model_metadata("mv")["versions"]
    assert (meta.name, list(meta.versions)) == ("mv", over_http)
    assert list(meta.versions) == ["1", "2"]
    assert triton_grpc.is_model_ready("mv", headers=app("mv"))
    assert triton_grpc.is_model_ready("mv", "2", headers=app(GATEWAY_APP))
    code, message = failure(
        lambda: triton_grpc.infer("mv", grpc_text(), model_version="7", headers=app("mv"))
    )
    assert code == "StatusCode.NOT_FOUND" and "no version '7'" in message


def test_graph_equals_http(triton_grpc, triton_http):
    want = triton_http.infer("g", http_text())
    for headers in (app("g"), app(GATEWAY_APP)):
        got = triton_grpc.infer("g", grpc_text(), headers=headers)
        response = got.get_response()
        assert (response.model_name, response.model_version) == ("g", "1")
        same_embedding(got, want)
        # The step times travel as response parameters, as in the JSON response.
        assert set(response.parameters) == set(want.get_response()["parameters"])
        assert response.parameters["requests.embed"].int64_param == 1
        meta = triton_grpc.get_model_metadata("g", headers=headers)
        http_meta = triton_http.get_model_metadata("g")
        assert (meta.name, meta.platform) == (http_meta["name"], http_meta["platform"])
        assert [o.name for o in meta.outputs] == [o["name"] for o in http_meta["outputs"]]
        assert triton_grpc.is_model_ready("g", headers=headers)
    code, message = failure(
        lambda: triton_grpc.infer("g", grpc_text(), model_version="2", headers=app("g"))
    )
    assert code == "StatusCode.NOT_FOUND" and "no version '2'" in message


def test_pool_member_equals_http(triton_grpc, triton_http):
    want = triton_http.infer("intents/e1", http_text())
    assert want.get_response()["model_name"] == "intents/e1"
    for headers in (app("intents"), app(GATEWAY_APP)):
        got = triton_grpc.infer("intents/e1", grpc_text(), priority=2, headers=headers)
        assert got.get_response().model_name == "intents/e1"
        same_embedding(got, want)
        meta = triton_grpc.get_model_metadata("intents/e1", headers=headers)
        assert meta.name == "intents/e1"
        assert list(meta.versions) == triton_http.get_model_metadata("intents/e1")["versions"]
        assert triton_grpc.is_model_ready("intents/e1", headers=headers)
    for name in ("intents/nope", "intents"):
        code, message = failure(
            lambda n=name: triton_grpc.infer(n, grpc_text(), headers=app("intents"))
        )
        assert code == "StatusCode.NOT_FOUND", (name, message)
    code, _ = failure(
        lambda: triton_grpc.infer("intents/nope", grpc_text(), headers=app(GATEWAY_APP))
    )
    assert code == "StatusCode.NOT_FOUND"
