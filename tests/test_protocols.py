"""Protocol adapters as pure functions: V2 (JSON and binary), KServe V1, OpenAI.

Requests with the binary tensor extension are built, and responses decoded,
by tritonclient's own code, the client our users run.
"""

from __future__ import annotations

import base64
import dataclasses
import struct

import numpy as np
import orjson
import pytest
from tritonclient.http import (
    InferenceServerClient,
    InferInput,
    InferRequestedOutput,
    InferResult,
)

from textfleet.engine.errors import InputError, ModelDirError, Overloaded, TooLarge
from textfleet.engine.stats import EngineStats
from textfleet.serve.metrics import EngineStatsExporter
from textfleet.serve.protocols import openai, v1, v2
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    TensorSpec,
    Unavailable,
    error_reply,
)

TEXTS = ["hello world", "Zürich café ☕", "", "日本語のテキスト"]
SPECS = (TensorSpec("text", "BYTES", (-1,)),)


def triton_request(texts, binary=True, outputs=None, request_id="", parameters=None):
    """A V2 request body exactly as tritonclient.http sends it."""
    inp = InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    body, json_size = InferenceServerClient.generate_request_body(
        [inp], outputs=outputs, request_id=request_id, parameters=parameters
    )
    return body, json_size


def json_request(**fields):
    req = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    req["inputs"][0].update(fields)
    return orjson.dumps(req)


# ---------------------------------------------------------------- V2 requests


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_texts_from_tritonclient_requests(binary):
    body, json_size = triton_request(TEXTS, binary=binary, request_id="r-1")
    req = v2.parse_infer_request(body, json_size)
    v2.check_input_names(req, SPECS)
    assert v2.texts_input(req, "text", max_texts=10) == TEXTS
    assert req.id == "r-1"
    assert req.binary_output is True  # tritonclient asks for binary outputs by default


def test_v2_nested_json_data_with_shape_n_by_1():
    body = orjson.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["x"], ["y"]]}]}
    )
    assert v2.texts_input(v2.parse_infer_request(body), "text", 10) == ["x", "y"]


def test_v2_parameters_pass_through_and_timeout_in_microseconds():
    body = orjson.dumps(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "parameters": {"timeout": 2_500_000, "top_k": 3, "binary_data_output": False},
        }
    )
    req = v2.parse_infer_request(body)
    assert req.timeout_s == 2.5
    assert req.parameters == {"top_k": 3}
    assert req.binary_output is False


@pytest.mark.parametrize(
    "body, field, text",
    [
        (b"{not json", "body", "malformed JSON"),
        (b"[1, 2]", "body", "expected a JSON object, got array"),
        (b'{"inputs": []}', "inputs", "non-empty array"),
        (json_request(datatype="FP32"), "inputs[0].datatype", "must be BYTES, got FP32"),
        (json_request(datatype="STRING"), "inputs[0].datatype", "unknown datatype 'STRING'"),
        (json_request(shape=[2, 3]), "inputs[0].shape", "shape [n] or [n, 1], got [2, 3]"),
        (json_request(shape=[-1]), "inputs[0].shape", "non-negative integers"),
        (json_request(shape=[3]), "inputs[0].data", "shape [3] needs 3 elements, got 2"),
        (json_request(data=["a", 7]), "inputs[0].data[1]", "expected a string, got number"),
        (json_request(data="ab"), "inputs[0].data", "expected an array, got string"),
        (json_request(name="txt"), "inputs[0].name", "unknown input 'txt'; this model takes: text"),
        (json_request(data=None), "inputs[0].data", "expected an array, got null"),
        (json_request(shape=[0], data=[]), "inputs[0].shape", "no texts"),
    ],
)
def test_v2_bad_requests_name_the_field(body, field, text):
    with pytest.raises(InputError) as err:
        req = v2.parse_infer_request(body)
        v2.check_input_names(req, SPECS)
        v2.texts_input(req, "text", max_texts=10)
    assert err.value.field == field
    assert text in str(err.value)
    assert error_reply(err.value).status == 400


def test_v2_missing_input_is_named():
    body = orjson.dumps(
        {"inputs": [{"name": "other", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    )
    with pytest.raises(InputError, match="missing input 'text'"):
        v2.texts_input(v2.parse_infer_request(body), "text", 10)


def test_v2_too_many_texts_is_413():
    body, n = triton_request(["a"] * 11)
    with pytest.raises(TooLarge) as err:
        v2.texts_input(v2.parse_infer_request(body, n), "text", max_texts=10)
    assert "11 texts; the limit is 10" in str(err.value)
    assert error_reply(err.value).status == 413


def test_v2_binary_framing_errors():
    body, n = triton_request(["abc", "de"])
    with pytest.raises(InputError, match="Inference-Header-Content-Length"):
        v2.parse_infer_request(body, len(body) + 1)
    with pytest.raises(InputError, match="binary_data_size"):
        v2.parse_infer_request(body[:-1], n)  # truncated tensor bytes
    with pytest.raises(InputError, match="belong to no input"):
        v2.parse_infer_request(body + b"xx", n)
    bad = body[:n] + struct.pack("<I", 3) + b"\xff\xfea" + struct.pack("<I", 2) + b"de"
    with pytest.raises(InputError, match=r"inputs\[0\].data\[0\]: not valid UTF-8"):
        v2.texts_input(v2.parse_infer_request(bad, n), "text", 10)
    lying = body[:n] + struct.pack("<I", 99) + body[n + 4 :]
    with pytest.raises(InputError, match="runs past the tensor end"):
        v2.texts_input(v2.parse_infer_request(lying, n), "text", 10)


# ---------------------------------------------------------------- V2 responses


def embeddings(n=3, dim=5):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_response_decodes_with_tritonclient(binary):
    emb = embeddings()
    outputs = [InferRequestedOutput("embedding", binary_data=binary)]
    body, n = triton_request(["a", "b", "c"], outputs=outputs, request_id="42")
    req = v2.parse_infer_request(body, n)
    reply = v2.infer_response("m", "1", req, {"embedding": emb})
    header_length = dict(reply.headers).get("Inference-Header-Content-Length")
    assert (header_length is not None) == binary
    result = InferResult.from_response_body(
        reply.body, header_length=None if header_length is None else int(header_length)
    )
    np.testing.assert_array_equal(result.as_numpy("embedding"), emb)  # exact, JSON too
    resp = result.get_response()
    assert resp["id"] == "42" and resp["model_name"] == "m" and resp["model_version"] == "1"


def test_v2_bytes_outputs_json_and_binary():
    labels = np.array(["positive", "négatif"], dtype=object)
    body, n = triton_request(["a", "b"])  # tritonclient default: binary outputs
    reply = v2.infer_response("m", "1", v2.parse_infer_request(body, n), {"label": labels})
    hl = int(dict(reply.headers)["Inference-Header-Content-Length"])
    got = InferResult.from_response_body(reply.body, header_length=hl).as_numpy("label")
    assert [x.decode() for x in got] == list(labels)
    req = v2.infer_request_from_dict(orjson.loads(json_request()))
    assert v2.infer_response_dict("m", "1", req, {"label": labels})["outputs"][0]["data"] == list(
        labels
    )


def test_v2_unknown_requested_output_is_400():
    body, n = triton_request(["a"], outputs=[InferRequestedOutput("logits")])
    req = v2.parse_infer_request(body, n)
    with pytest.raises(InputError, match=r"unknown output 'logits'; this model gives: embedding"):
        v2.infer_response("m", "1", req, {"embedding": embeddings(1)})


def test_v2_response_dict_for_python_callers():
    req = v2.infer_request_from_dict(orjson.loads(json_request()))
    emb = embeddings(2)
    d = v2.infer_response_dict("m", "1", req, {"embedding": emb})
    out = d["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 5]
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32).reshape(2, 5), emb)
    orjson.dumps(d)  # plain JSON types only


def test_v2_metadata_and_versions():
    meta = v2.model_metadata(
        "m", "3", "textfleet_onnxruntime", SPECS, (TensorSpec("e", "FP32", (-1, 4)),)
    )
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["shape"] == [-1, 4] and meta["versions"] == ["3"]
    assert v2.split_version("/versions/3/infer", "3", "m") == "/infer"
    assert v2.split_version("/versions/3", "3", "m") == ""
    assert v2.split_version("/ready", "3", "m") == "/ready"
    with pytest.raises(NotFound, match="model 'm' has no version '2'; versions: 3"):
        v2.split_version("/versions/2/infer", "3", "m")
    assert v2.server_metadata("0.1.0")["extensions"] == ["binary_tensor_data"]


# ---------------------------------------------------------------- KServe V1


def test_v1_instances_strings_or_objects():
    assert v1.parse_predict(b'{"instances": ["a", {"text": "b"}]}') == ["a", {"text": "b"}]
    assert v1.parse_predict(b'{"inputs": ["a"]}') == ["a"]
    assert v1.texts_from_instances(["a", {"text": "b"}], 10) == ["a", "b"]
    reply = v1.predict_reply([np.array([1.0, 2.0], dtype=np.float32)])
    assert orjson.loads(reply.body) == {"predictions": [[1.0, 2.0]]}


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{}", "instances"),
        (b'{"instances": "a"}', "instances"),
        (b'{"instances": [1]}', "instances[0]"),
        (b'{"instances": [{"txt": "a"}]}', "instances[0].text"),
        (b'{"instances": []}', "instances"),
    ],
)
def test_v1_bad_instances(body, field):
    with pytest.raises(InputError) as err:
        v1.texts_from_instances(v1.parse_predict(body), 10)
    assert err.value.field == field


def test_v1_too_many_instances_is_413():
    with pytest.raises(TooLarge):
        v1.texts_from_instances(["a"] * 3, 2)


# ---------------------------------------------------------------- OpenAI


def test_openai_request_forms():
    r = openai.parse_embeddings_request({"model": "m", "input": "one"}, 10)
    assert r.texts == ["one"] and r.encoding_format == "float" and r.dimensions is None
    r = openai.parse_embeddings_request(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "user": "u"}, 10
    )
    assert r.texts == ["a", "b"] and r.encoding_format == "base64"


@pytest.mark.parametrize(
    "obj, field",
    [
        ({"input": "a"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": [[1, 2]]}, "input[0]"),
        ({"model": "m", "input": ["a", None]}, "input[1]"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": []}, "input"),
    ],
)
def test_openai_bad_requests(obj, field):
    with pytest.raises(InputError) as err:
        openai.parse_embeddings_request(obj, 10)
    assert err.value.field == field
    body = orjson.loads(openai.error_reply(err.value).body)
    assert body["error"]["param"] == field and body["error"]["type"] == "invalid_request_error"


def test_openai_dimensions_and_prompt_name_are_read_for_the_engine_to_check():
    obj = {"model": "m", "input": "a", "dimensions": 128, "prompt_name": "query"}
    req = openai.parse_embeddings_request(obj, 10)
    assert req.dimensions == 128 and req.prompt_name == "query"
    with pytest.raises(InputError, match="prompt_name: expected a string"):
        openai.parse_embeddings_request({**obj, "prompt_name": 3}, 10)


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_openai_response(fmt):
    emb = embeddings(2, 4)
    req = openai.parse_embeddings_request(
        {"model": "m", "input": ["a", "b"], "encoding_format": fmt}, 10
    )
    body = orjson.loads(openai.embeddings_reply(req, emb, prompt_tokens=7).body)
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1]
    for d, row in zip(body["data"], emb, strict=True):
        v = d["embedding"]
        got = np.frombuffer(base64.b64decode(v), "<f4") if fmt == "base64" else np.float32(v)
        np.testing.assert_array_equal(got, row)


# ---------------------------------------------------------------- errors, metrics


@pytest.mark.parametrize(
    "exc, status",
    [
        (InputError("f", "bad"), 400),
        (TooLarge("f", "big"), 413),
        (NotFound("who"), 404),
        (MethodNotAllowed("GET"), 405),
        (Unavailable("later"), 503),
        (Overloaded("full", retry_after_s=0.2), 503),
        (TimeoutError("slow"), 504),
        (ModelDirError("gone"), 500),
        (RuntimeError("secret detail"), 500),
    ],
)
def test_error_statuses(exc, status):
    reply = error_reply(exc)
    assert reply.status == status
    msg = orjson.loads(reply.body)["error"]
    if isinstance(exc, RuntimeError):  # internals are logged, never sent
        assert "secret detail" not in msg and "internal error (RuntimeError)" in msg
    else:
        assert msg == str(exc)


def test_overloaded_sets_retry_after_in_whole_seconds():
    assert dict(error_reply(Overloaded("full", retry_after_s=0.2)).headers) == {"Retry-After": "1"}
    assert dict(error_reply(Overloaded("full", retry_after_s=2.5)).headers) == {"Retry-After": "3"}


def test_every_engine_figure_is_exported_as_its_kind(engine):
    """The exporter reads EngineStats's fields: a new field needs no change in serve/."""
    engine.embed(["one text", "and another"])
    exporter = EngineStatsExporter("m", engine.stats)
    exporter.export_once()
    exporter.export_once()  # a second poll only adds what is new
    kinds = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram"}
    exported = {name: type(metric).__name__ for name, metric in exporter._metrics.items()}
    assert exported == {f.name: kinds[f.metadata["kind"]] for f in dataclasses.fields(EngineStats)}
    stats = engine.stats()
    assert exporter._last["sequences"] == stats.sequences
    assert exporter._last_counts["batch_size"] == stats.batch_size.counts


def test_engine_errors_survive_pickling():
    """Ray pickles errors from a replica back to a handle caller; fields must survive."""
    import pickle

    e = pickle.loads(pickle.dumps(TooLarge("inputs[0].shape", "too many")))
    assert type(e) is TooLarge and e.field == "inputs[0].shape" and str(e).endswith("too many")
    o = pickle.loads(pickle.dumps(Overloaded("queue full", retry_after_s=2.5)))
    assert str(o) == "queue full" and o.retry_after_s == 2.5


def test_engine_histograms_are_replayed_into_their_buckets():
    from textfleet.serve.metrics import replay

    assert replay([1, 2, 4], [], [1, 0, 3, 2]) == [(0.5, 1), (3.0, 3), (6.0, 2)]
    # Only what is new since the last poll is replayed.
    assert replay([1, 2, 4], [1, 0, 3, 2], [1, 1, 3, 4]) == [(1.5, 1), (6.0, 2)]
