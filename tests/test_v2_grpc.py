"""V2 gRPC protos <-> the internal V2 request, without Ray (serve/protocols/v2_grpc.py).

A ``ModelInferRequest`` must become the request its JSON twin becomes, through
the same checks; outputs must decode with tritonclient's own decoders; errors
must carry their HTTP meaning as gRPC codes.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from textfleet.engine.errors import InputError, Overloaded, TooLarge
from textfleet.serve.protocols import v2, v2_grpc
from textfleet.serve.protocols.common import NotFound, Unauthorized, Unavailable

TEXTS = ["hello", "Zoë Ångström, 東京 🎉", ""]


def raw_texts(texts: list[str]) -> bytes:
    """A BYTES tensor as tritonclient lays it out: uint32 LE length, then the bytes."""
    return serialize_byte_tensor(np.array(texts, dtype=object)).item()


def text_tensor(n: int, name: str = "text", **kw) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[n], **kw)


def test_raw_and_typed_contents_give_the_json_request():
    json_req = v2.infer_request_from_dict(
        {
            "id": "a",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}],
            "outputs": [{"name": "embedding"}],
            "parameters": {"top_k": 2, "raw_scores": True, "timeout": 5_000_000, "x": "y"},
        }
    )
    params = {
        "top_k": pb.InferParameter(int64_param=2),
        "raw_scores": pb.InferParameter(bool_param=True),
        "timeout": pb.InferParameter(int64_param=5_000_000),
        "x": pb.InferParameter(string_param="y"),
    }
    outputs = [pb.ModelInferRequest.InferRequestedOutputTensor(name="embedding")]
    raw = pb.ModelInferRequest(
        id="a",
        inputs=[text_tensor(3)],
        raw_input_contents=[raw_texts(TEXTS)],
        parameters=params,
        outputs=outputs,
    )
    typed = pb.ModelInferRequest(
        id="a",
        inputs=[
            text_tensor(
                3, contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in TEXTS])
            )
        ],
        parameters=params,
        outputs=outputs,
    )
    for proto in (raw, typed):
        req = v2_grpc.infer_request(proto)
        assert v2.texts_input(req, "text", 10) == TEXTS
        assert (req.id, req.outputs, req.timeout_s) == (json_req.id, json_req.outputs, 5.0)
        assert req.parameters == json_req.parameters == {"top_k": 2, "raw_scores": True, "x": "y"}


def test_two_inputs_split_the_raw_contents_in_order():
    proto = pb.ModelInferRequest(
        inputs=[text_tensor(1, "query"), text_tensor(2, "document")],
        raw_input_contents=[raw_texts(["q"]), raw_texts(["d1", "d2"])],
    )
    req = v2_grpc.infer_request(proto)
    assert v2.texts_input(req, "query", 10) == ["q"]
    assert v2.texts_input(req, "document", 10) == ["d1", "d2"]


@pytest.mark.parametrize(
    ("proto", "field", "message"),
    [
        (
            pb.ModelInferRequest(inputs=[text_tensor(1)], raw_input_contents=[b"", b""]),
            "raw_input_contents",
            "2 entries for 1 inputs",
        ),
        (
            pb.ModelInferRequest(
                inputs=[text_tensor(1, contents=pb.InferTensorContents(bytes_contents=[b"a"]))],
                raw_input_contents=[raw_texts(["a"])],
            ),
            "inputs[0].contents",
            "send one or the other",
        ),
        (pb.ModelInferRequest(), "inputs", "non-empty array"),
        (
            pb.ModelInferRequest(
                inputs=[pb.ModelInferRequest.InferInputTensor(name="t", datatype="STR", shape=[1])]
            ),
            "inputs[0].datatype",
            "unknown datatype 'STR'",
        ),
    ],
)
def test_malformed_requests_name_the_field(proto, field, message):
    with pytest.raises(InputError) as info:
        v2_grpc.infer_request(proto)
    assert info.value.field == field and message in str(info.value)


def test_raw_contents_checked_as_the_binary_extension():
    bad = pb.ModelInferRequest(
        inputs=[text_tensor(1)], raw_input_contents=[b"\x01\x00\x00\x00\xff"]
    )
    with pytest.raises(InputError, match="not valid UTF-8"):
        v2.texts_input(v2_grpc.infer_request(bad), "text", 10)


def test_response_decodes_with_tritonclient():
    req = v2.infer_request_from_dict(
        {
            "id": "r",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}],
        }
    )
    labels = np.array([b"POSITIVE", "négatif".encode()], dtype=object)
    scores = np.array([[0.5, 0.25], [1.0, -2.0]], dtype=np.float32)
    reply = v2_grpc.infer_response("m", "1", req, {"label": labels, "score": scores})
    assert (reply.model_name, reply.model_version, reply.id) == ("m", "1", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("label", "BYTES", [2]),
        ("score", "FP32", [2, 2]),
    ]
    assert deserialize_bytes_tensor(reply.raw_output_contents[0]).tolist() == labels.tolist()
    got = np.frombuffer(reply.raw_output_contents[1], dtype="<f4").reshape(2, 2)
    np.testing.assert_array_equal(got, scores)
    # Requested outputs: only those, in the requested order.
    req = v2.infer_request_from_dict(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "outputs": [{"name": "score"}],
        }
    )
    reply = v2_grpc.infer_response("m", "1", req, {"label": labels, "score": scores})
    assert [o.name for o in reply.outputs] == ["score"] and not reply.id


def test_metadata_protos():
    from textfleet.engine.tasks.spec import TensorSpec

    meta = v2_grpc.model_metadata(
        "m", "1", "textfleet_onnx", (TensorSpec("text", "BYTES", (-1,)),),
        (TensorSpec("embedding", "FP32", (-1, 384)),),
    )  # fmt: skip
    assert (meta.name, list(meta.versions), meta.platform) == ("m", ["1"], "textfleet_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("embedding", "FP32", [-1, 384])
    ]
    server = v2_grpc.server_metadata("0.1.0")
    assert (server.name, server.version) == ("textfleet", "0.1.0")


def test_check_model():
    v2_grpc.check_model("m", "", "m", "1")
    v2_grpc.check_model("m", "1", "m", "1")
    with pytest.raises(NotFound, match="application: <model name>"):
        v2_grpc.check_model("other", "", "m", "1")
    with pytest.raises(NotFound, match="no version '2'"):
        v2_grpc.check_model("m", "2", "m", "1")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InputError("inputs", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (TooLarge("texts", "too many"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthorized("Authorization", "no key"), grpc.StatusCode.UNAUTHENTICATED),
        (NotFound("no model"), grpc.StatusCode.NOT_FOUND),
        (Overloaded("queue full"), grpc.StatusCode.UNAVAILABLE),
        (Unavailable("starting"), grpc.StatusCode.UNAVAILABLE),
        (TimeoutError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_grpc_codes(exc, code):
    got, message, _ = v2_grpc.status(exc)
    assert got == code
    assert "secret internals" not in message  # internals are logged, not sent


def test_messages_cross_ray_by_reference():
    """Ray pickles the protos between proxy, gateway and replica (cloudpickle)."""
    import pickle

    from ray import cloudpickle

    req = pb.ModelInferRequest(model_name="m", inputs=[text_tensor(1)], raw_input_contents=[b"x"])
    req.parameters["top_k"].int64_param = 2
    for module in (pickle, cloudpickle):
        assert module.loads(module.dumps(req)) == req
        answer = pb.ModelMetadataResponse(outputs=[{"name": "embedding", "shape": [-1, 384]}])
        assert module.loads(module.dumps(answer)) == answer


def _proto_with(params: dict[str, pb.InferParameter]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[text_tensor(1)], raw_input_contents=[raw_texts(["a"])], parameters=params
    )


def test_scheduling_and_embedding_parameters_are_the_json_ones():
    """``priority`` as tritonclient sends it (uint64), ``timeout`` (int64 microseconds),
    ``dimensions`` and ``prompt_name``: the request the JSON body gives."""
    json_req = v2.infer_request_from_dict(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "parameters": {
                "priority": 2, "timeout": 250_000, "dimensions": 64, "prompt_name": "passage",
            },
        }
    )  # fmt: skip
    req = v2_grpc.infer_request(
        _proto_with(
            {
                "priority": pb.InferParameter(uint64_param=2),
                "timeout": pb.InferParameter(int64_param=250_000),
                "dimensions": pb.InferParameter(int64_param=64),
                "prompt_name": pb.InferParameter(string_param="passage"),
            }
        )
    )
    assert (req.priority, req.timeout_s, req.parameters) == (
        json_req.priority,
        json_req.timeout_s,
        json_req.parameters,
    )
    assert (req.priority, req.timeout_s) == (2, 0.25)
    assert req.parameters == {"dimensions": 64, "prompt_name": "passage"}


@pytest.mark.parametrize(
    ("name", "param", "field"),
    [
        ("priority", pb.InferParameter(uint64_param=99), "parameters.priority"),
        ("priority", pb.InferParameter(string_param="high"), "parameters.priority"),
        ("priority", pb.InferParameter(bool_param=True), "parameters.priority"),
        ("timeout", pb.InferParameter(int64_param=-5), "parameters.timeout"),
        ("timeout", pb.InferParameter(string_param="1s"), "parameters.timeout"),
    ],
)
def test_bad_scheduling_parameters_fail_as_in_json(name, param, field):
    """The same InputError (field and message) as the JSON request with that value."""
    value = getattr(param, param.WhichOneof("parameter_choice"))
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
        "parameters": {name: value},
    }
    with pytest.raises(InputError) as want:
        v2.infer_request_from_dict(body)
    with pytest.raises(InputError) as got:
        v2_grpc.infer_request(_proto_with({name: param}))
    assert got.value.field == want.value.field == field
    assert str(got.value) == str(want.value)


def test_response_parameters_round_trip():
    """A graph's response ``parameters`` (floats, counts, text) as proto parameters."""
    req = v2.infer_request_from_dict(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    )
    params = {"graph_ms": 1.5, "requests.embed": 2, "failed_optional": "pii", "cached": False}
    reply = v2_grpc.infer_response("g", "1", req, {"score": np.zeros(1, np.float32)}, params)
    assert v2_grpc.parameters(reply.parameters) == params
    assert reply.parameters["requests.embed"].WhichOneof("parameter_choice") == "int64_param"
    assert reply.parameters["graph_ms"].WhichOneof("parameter_choice") == "double_param"


def test_http_statuses_map_to_grpc_codes():
    assert v2_grpc.code_for(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert v2_grpc.code_for(503) == grpc.StatusCode.UNAVAILABLE
    assert v2_grpc.code_for(502) == grpc.StatusCode.INTERNAL
