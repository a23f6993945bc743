"""The V2 gRPC endpoint against a real Ray Serve on loopback, with ``tritonclient.grpc``.

One model per task (embedding, classification, token classification, pair
scoring) on the session's Ray Serve (conftest ``ray_serve``: Serve's gRPC port
is fixed when it starts, so the session starts it on a free port). Each gRPC
call names its model's application in the ``application`` metadata, as Ray
Serve routes gRPC, or the gateway's (``textfleet-gateway``), which forwards by
the request's model name. Every infer is compared with the same request over
HTTP (``tritonclient.http``); errors with their gRPC status codes; server and
model metadata with the HTTP metadata.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from serving import deploy_lean_models

pytestmark = pytest.mark.slow

TEXTS = ["I live at 1234 Maplewood Avenue, Springfield.", "Zoë Ångström, 東京 🎉", "flights hotel"]
DOCS = ["cats purr on the sofa", "dogs bark at night", "the stock market fell"]
MAX_TEXTS = 32

# model -> (inputs as (name, texts), outputs, request parameters)
CASES = {
    "minilm": ([("text", TEXTS)], ["embedding"], {}),
    "topics": ([("text", TEXTS)], ["label", "score"], {"top_k": 2}),
    "ner": ([("text", TEXTS)], ["entities"], {}),
    "ce": ([("query", ["what purrs?"]), ("document", DOCS)], ["score"], {}),
}


@pytest.fixture(scope="module")
def served(
    ray_serve, model_dir, categorium_dir, token_model_dir, cross_encoder_dir, tmp_path_factory
):
    # minilm's queue holds little, so that a burst overloads it (UNAVAILABLE); one
    # request of up to MAX_TEXTS short texts still fits.
    small_queue = {"max_batch_tokens": 1024, "max_queue_tokens": 1024}
    models = [
        {"name": "minilm", "model_dir": str(model_dir.path), "batching": small_queue}
        | {"limits": {"max_texts": MAX_TEXTS}},
        {"name": "topics", "model_dir": str(categorium_dir.path), "task": "classification"},
        {"name": "ner", "model_dir": str(token_model_dir.path)},
        {"name": "ce", "model_dir": str(cross_encoder_dir.path), "task": "pair-scoring"},
    ]
    deploy_lean_models(tmp_path_factory.mktemp("grpc-serve"), models, ray_serve["port"])
    return ray_serve


def app(name: str) -> dict[str, str]:
    """The metadata that routes a call to the model's application."""
    return {"application": name}


def grpc_inputs(inputs):
    import tritonclient.grpc as grpcclient

    return [
        grpcclient.InferInput(name, [len(items)], "BYTES").set_data_from_numpy(
            np.array(items, dtype=object)
        )
        for name, items in inputs
    ]


def http_inputs(inputs):
    import tritonclient.http as httpclient

    return [
        httpclient.InferInput(name, [len(items)], "BYTES").set_data_from_numpy(
            np.array(items, dtype=object)
        )
        for name, items in inputs
    ]


def status_of(call) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return f"{info.value.status()}: {info.value.message()}"


# ---------------------------------------------------------------- infer


@pytest.mark.parametrize("model", list(CASES))
def test_infer_equals_http_infer(triton_grpc, triton_http, model):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    inputs, outputs, params = CASES[model]
    got = triton_grpc.infer(
        model,
        grpc_inputs(inputs),
        outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
        parameters=params or None,
        headers=app(model),
        request_id="r-1",
    )
    want = triton_http.infer(
        model,
        http_inputs(inputs),
        outputs=[httpclient.InferRequestedOutput(n) for n in outputs],
        parameters=params or None,
    )
    response = got.get_response()
    assert (response.model_name, response.id) == (model, "r-1")
    assert [o.name for o in response.outputs] == outputs
    for name in outputs:
        g, w = got.as_numpy(name), want.as_numpy(name)
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if name == "entities":  # JSON spans: offsets and labels exact, scores as floats
            for gs, ws in zip(g, w, strict=True):
                _same_spans(json.loads(gs), json.loads(ws))
        elif g.dtype == object:
            assert g.tolist() == w.tolist(), name
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)


def _same_spans(got: list[dict], want: list[dict]) -> None:
    strip = [{k: v for k, v in s.items() if k != "score"} for s in got]
    assert strip == [{k: v for k, v in s.items() if k != "score"} for s in want]
    np.testing.assert_allclose([s["score"] for s in got], [s["score"] for s in want], atol=1e-5)


def test_typed_contents_equal_raw_contents(triton_grpc, served):
    """``contents.bytes_contents`` (the typed form) gives what raw contents give."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    raw = triton_grpc.infer("minilm", grpc_inputs([("text", TEXTS)]), headers=app("minilm"))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="text",
        datatype="BYTES",
        shape=[len(TEXTS)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in TEXTS]),
    )
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc_port']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(
            pb.ModelInferRequest(model_name="minilm", inputs=[tensor]),
            metadata=(("application", "minilm"),),
            timeout=60,
        )
    (out,) = reply.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("embedding", "FP32", [3, 384])
    typed = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(3, 384)
    np.testing.assert_allclose(typed, raw.as_numpy("embedding"), rtol=1e-5, atol=1e-6)


def test_the_gateway_routes_by_model_name(triton_grpc):
    """``application: textfleet-gateway`` reaches every model by the name in the request."""
    from textfleet.serve.config import GATEWAY_APP

    gateway = app(GATEWAY_APP)
    for model, (inputs, outputs, params) in CASES.items():
        direct = triton_grpc.infer(model, grpc_inputs(inputs), parameters=params or None,
                              headers=app(model))  # fmt: skip
        routed = triton_grpc.infer(model, grpc_inputs(inputs), parameters=params or None,
                              headers=gateway)  # fmt: skip
        assert routed.get_response().model_name == model
        for name in outputs:
            g, w = routed.as_numpy(name), direct.as_numpy(name)
            if g.dtype == object:
                assert g.tolist() == w.tolist(), (model, name)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert triton_grpc.is_model_ready(model, headers=gateway)
        assert triton_grpc.get_model_metadata(model, headers=gateway).name == model
    assert triton_grpc.is_server_live(headers=gateway)
    assert triton_grpc.is_server_ready(headers=gateway)
    assert triton_grpc.get_server_metadata(headers=gateway).name == "textfleet"
    texts = grpc_inputs([("text", TEXTS)])
    unknown = status_of(lambda: triton_grpc.infer("nope", texts, headers=gateway))
    assert unknown.startswith("StatusCode.NOT_FOUND: unknown model 'nope'")
    misnamed = grpc_inputs([("txt", TEXTS)])
    bad = status_of(lambda: triton_grpc.infer("minilm", misnamed, headers=gateway))
    assert bad.startswith("StatusCode.INVALID_ARGUMENT: inputs[0].name")


# ---------------------------------------------------------------- metadata, ready


def test_server_live_ready_and_metadata(triton_grpc, triton_http):
    assert triton_grpc.is_server_live(headers=app("minilm"))
    assert triton_grpc.is_server_ready(headers=app("topics"))
    meta = triton_grpc.get_server_metadata(headers=app("ner"))
    want = triton_http.get_server_metadata()
    assert (meta.name, meta.version, list(meta.extensions)) == (
        want["name"],
        want["version"],
        want["extensions"],
    )


@pytest.mark.parametrize("model", list(CASES))
def test_model_ready_and_metadata_equal_http(triton_grpc, triton_http, model):
    assert triton_grpc.is_model_ready(model, headers=app(model))
    meta = triton_grpc.get_model_metadata(model, headers=app(model))
    want = triton_http.get_model_metadata(model)

    def tensors(ts):
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

    assert (meta.name, list(meta.versions), meta.platform) == (
        want["name"],
        want["versions"],
        want["platform"],
    )
    assert tensors(meta.inputs) == want["inputs"]
    assert tensors(meta.outputs) == want["outputs"]


# ---------------------------------------------------------------- errors


def test_bad_inputs_are_invalid_argument(triton_grpc):
    import tritonclient.grpc as grpcclient

    wrong_name = grpc_inputs([("txt", TEXTS)])
    got = status_of(lambda: triton_grpc.infer("minilm", wrong_name, headers=app("minilm")))
    assert got.startswith("StatusCode.INVALID_ARGUMENT: inputs[0].name: unknown input 'txt'")
    numbers = grpcclient.InferInput("text", [2], "FP32").set_data_from_numpy(
        np.zeros(2, np.float32)
    )
    assert "must be BYTES" in status_of(
        lambda: triton_grpc.infer("minilm", [numbers], headers=app("minilm"))
    )
    too_many = grpc_inputs([("text", ["a"] * (MAX_TEXTS + 1))])
    message = status_of(lambda: triton_grpc.infer("minilm", too_many, headers=app("minilm")))
    assert message.startswith("StatusCode.INVALID_ARGUMENT") and "limits.max_texts" in message
    top_k = status_of(
        lambda: triton_grpc.infer(
            "topics",
            grpc_inputs([("text", TEXTS)]),
            parameters={"top_k": "two"},
            headers=app("topics"),
        )
    )
    assert top_k.startswith("StatusCode.INVALID_ARGUMENT: parameters.top_k")


def test_bad_raw_contents_are_invalid_argument(served):
    """What tritonclient never sends: raw contents that do not match the inputs."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    cases = {
        "raw_input_contents: 2 entries for 1 inputs": [b"\x01\x00\x00\x00a", b""],
        "ends inside a length prefix": [b"\x05\x00"],
        "not valid UTF-8": [b"\x01\x00\x00\x00\xff"],
    }
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc_port']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for expected, raw in cases.items():
            request = pb.ModelInferRequest(
                model_name="minilm", inputs=[tensor], raw_input_contents=raw
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=(("application", "minilm"),), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
            assert expected in info.value.details()


def test_unknown_models_and_versions_are_not_found(triton_grpc):
    texts = grpc_inputs([("text", TEXTS)])
    # The metadata chose minilm's application; the request names another model.
    wrong = status_of(lambda: triton_grpc.infer("topics", texts, headers=app("minilm")))
    assert wrong.startswith("StatusCode.NOT_FOUND") and "application" in wrong
    # No application of that name: Ray Serve's own answer.
    assert status_of(lambda: triton_grpc.infer("nope", texts, headers=app("nope"))).startswith(
        "StatusCode.NOT_FOUND"
    )
    version = status_of(
        lambda: triton_grpc.infer("minilm", texts, model_version="7", headers=app("minilm"))
    )
    assert version.startswith("StatusCode.NOT_FOUND") and "no version '7'" in version
    got = status_of(lambda: triton_grpc.get_model_metadata("topics", headers=app("minilm")))
    assert got.startswith("StatusCode.NOT_FOUND")


def test_overload_is_unavailable(triton_grpc):
    """A burst past minilm's small queue: each call succeeds or is refused UNAVAILABLE."""
    from tritonclient.utils import InferenceServerException

    # About half the queue each: two wait, the rest are refused until they drain.
    texts = grpc_inputs([("text", [f"request {i}: " + TEXTS[0] * 2 for i in range(16)])])

    def call(_):
        try:
            triton_grpc.infer("minilm", texts, headers=app("minilm"), client_timeout=120)
            return "OK"
        except InferenceServerException as e:
            return e.status()

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(call, range(64)))
    print({c: codes.count(c) for c in set(codes)})
    assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}, codes
    assert "StatusCode.UNAVAILABLE" in codes and "OK" in codes
