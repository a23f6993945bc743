"""What attackers and careless clients send, against a real server with API keys on.

One deployment (the session's Ray Serve, this module's own models.yaml):
``minilm`` (embedding; at most 8 texts and 16 KiB a request) and ``ce`` (a
cross-encoder; 8 texts, 32 KiB), API keys from an environment variable. A
matrix of bad requests over every route (V2 JSON and binary, KServe V1,
OpenAI, rerank) must each get its 4xx with a short message naming the field,
never a 5xx; then good requests on every route give the engine's answers from
the same replicas. The API-key tests cover every route under the session's
ingress (scripts/test.sh runs this module under both).
"""

from __future__ import annotations

import os
import struct

import httpx
import numpy as np
import orjson
import pytest
import yaml
from serving import raw_request, replica_processes

from textfleet.serve.config import GATEWAY_APP, load_models

KEYS_ENV = "TEXTFLEET_TEST_API_KEYS"
KEY, OTHER_KEY = "tf-test-key-0123456789abcdef", "tf-second-key-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
MINILM_BYTES, CE_BYTES = 16384, 32768
ATOL = 2e-5

V2, V2CE = "/v2/models/minilm/infer", "/v2/models/ce/infer"
V1, V1CE = "/v1/models/minilm:predict", "/v1/models/ce:predict"
OA, RR = "/v1/embeddings", "/v1/rerank"
DOCS = ["cats purr on the sofa", "dogs bark at night", "the stock market fell"]


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
            "limits": {"max_texts": 8, "max_request_bytes": MINILM_BYTES},
        },
        {
            "name": "ce",
            "model_dir": str(cross_encoder_dir.path),
            "limits": {"max_texts": 8, "max_request_bytes": CE_BYTES},
        },
    ]
    config = {
        "server": {"port": port, "api_keys": {"env": KEYS_ENV}},
        "models": [m | lean for m in models],
    }
    path = tmp_path_factory.mktemp("bad-inputs") / "models.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ[KEYS_ENV] = f"{KEY}, {OTHER_KEY}"
    try:
        loaded = load_models(path)
        generated = serve_config(loaded)
    finally:
        del os.environ[KEYS_ENV]  # the replicas get digests, not the variable
    deploy.apply(generated)
    states = deploy.wait([*loaded.names(), GATEWAY_APP], timeout_s=300)
    assert {n: str(s.status.value) for n, s in states.items()} == dict.fromkeys(
        [*loaded.names(), GATEWAY_APP], "RUNNING"
    )
    yield {"port": port, "url": f"http://127.0.0.1:{port}", "config": generated}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], timeout=60, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def replicas_before(served):
    return {app: replica_processes(app) for app in ("minilm", "ce", GATEWAY_APP)}


# ---------------------------------------------------------------- bodies


def nested(depth: int, leaf: str = '"a"') -> str:
    return "[" * depth + leaf + "]" * depth


def inp(**over) -> dict:
    base = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def v2(*inputs, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs or [inp()]), **extra})


def raw_v2(inputs_json: str, extra: str = "") -> bytes:
    """A V2 body spelled by hand (for nesting orjson.dumps would refuse)."""
    return f'{{"inputs": {inputs_json}{extra}}}'.encode()


def blob(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary(header: dict, data: bytes, header_len: int | str | None = None):
    """(body, headers) of the V2 binary extension; ``header_len`` may lie."""
    head = orjson.dumps(header)
    n = len(head) if header_len is None else header_len
    return head + data, {"Inference-Header-Content-Length": str(n)}


def bin_input(size, datatype="BYTES", shape=(2,)) -> dict:
    return {
        "name": "text",
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": size},
    }


GOOD_BLOB = blob(b"hello", b"world")
N = len(GOOD_BLOB)


def js(obj) -> bytes:
    return orjson.dumps(obj)


def oa(**fields) -> bytes:
    return js({"model": "minilm", "input": ["a"]} | fields)


def rr(**fields) -> bytes:
    body = {"model": "ce", "query": "pets", "documents": DOCS} | fields
    return js({k: v for k, v in body.items() if v is not DROP})


# (id, method, path, body, extra headers, status, text the message must hold)
CASES: list[tuple] = []


def case(cid, method, path, body, status, text, headers=None):
    CASES.append((cid, method, path, body, headers or {}, status, text))


# -- V2 JSON: the body and every field, wrong types and nesting
for cid, body, text in [
    ("malformed", b"{oops", "body: malformed JSON"),
    ("empty-body", b"", "body: malformed JSON"),
    ("null", b"null", "body: expected a JSON object"),
    ("array", b"[]", "body: expected a JSON object"),
    ("string", b'"x"', "body: expected a JSON object"),
    ("no-inputs", b"{}", "inputs: expected a non-empty array"),
    ("inputs-string", b'{"inputs": "x"}', "inputs: expected a non-empty array"),
    ("inputs-empty", b'{"inputs": []}', "inputs: expected a non-empty array"),
    ("inputs-object", b'{"inputs": {}}', "inputs: expected a non-empty array"),
    ("input-number", b'{"inputs": [1]}', "inputs[0]: expected a JSON object"),
    ("name-missing", v2(inp(name=DROP)), "inputs[0].name"),
    ("name-number", v2(inp(name=1)), "inputs[0].name"),
    ("name-array", v2(inp(name=["text"])), "inputs[0].name"),
    ("name-empty", v2(inp(name="")), "inputs[0].name"),
    ("name-unknown-long", v2(inp(name="x" * 5000)), "inputs[0].name: unknown input"),
    ("datatype-array", v2(inp(datatype=[])), "inputs[0].datatype: unknown datatype"),
    ("datatype-object", v2(inp(datatype={})), "inputs[0].datatype: unknown datatype"),
    ("datatype-number", v2(inp(datatype=3)), "inputs[0].datatype: unknown datatype"),
    ("datatype-null", v2(inp(datatype=None)), "inputs[0].datatype: unknown datatype"),
    ("datatype-unknown", v2(inp(datatype="FLOAT")), "inputs[0].datatype: unknown datatype"),
    ("datatype-fp32", v2(inp(datatype="FP32", data=[1.0])), "inputs[0].datatype: input 'text'"),
    (
        "datatype-nested-1000",
        raw_v2(f'[{{"name": "text", "datatype": {nested(1000)}, "shape": [1], "data": ["a"]}}]'),
        "inputs[0].datatype",
    ),
    ("shape-missing", v2(inp(shape=DROP)), "inputs[0].shape"),
    ("shape-string", v2(inp(shape="1")), "inputs[0].shape"),
    ("shape-negative", v2(inp(shape=[-1])), "inputs[0].shape"),
    ("shape-float", v2(inp(shape=[1.5])), "inputs[0].shape"),
    ("shape-bool", v2(inp(shape=[True])), "inputs[0].shape"),
    ("shape-3d", v2(inp(shape=[1, 1, 1])), "inputs[0].shape"),
    ("shape-2x2", v2(inp(shape=[2, 2], data=["a"] * 4)), "inputs[0].shape"),
    ("shape-scalar", v2(inp(shape=[])), "inputs[0].shape"),
    (
        "shape-nested-1000",
        raw_v2(f'[{{"name": "text", "datatype": "BYTES", "shape": {nested(1000, "1")}}}]'),
        "inputs[0].shape",
    ),
    ("shape-zero", v2(inp(shape=[0], data=[])), "inputs[0].shape: no texts"),
    ("data-missing", v2(inp(data=DROP)), "inputs[0].data: missing"),
    ("data-string", v2(inp(data="a")), "inputs[0].data: expected an array"),
    ("data-object", v2(inp(data={})), "inputs[0].data: expected an array"),
    ("data-number", v2(inp(data=[1])), "inputs[0].data[0]: expected a string"),
    ("data-null", v2(inp(data=[None])), "inputs[0].data[0]: expected a string"),
    ("data-mixed", v2(inp(shape=[2], data=[["a"], "b"])), "inputs[0].data: mixes"),
    ("data-too-deep", v2(inp(data=[[["a"]]])), "inputs[0].data[0]: expected a string"),
    ("data-count", v2(inp(shape=[2], data=["a"])), "inputs[0].data: shape [2] needs 2"),
    (
        "data-nested-1000",
        raw_v2(f'[{{"name": "text", "datatype": "BYTES", "shape": [1], "data": {nested(1000)}}}]'),
        "inputs[0].data",
    ),
    ("id-number", v2(id=1), "id: expected a string"),
    ("id-array", v2(id=[]), "id: expected a string"),
    ("parameters-array", v2(parameters=[1]), "parameters: expected a JSON object"),
    ("parameters-string", v2(parameters="x"), "parameters: expected a JSON object"),
    ("timeout-negative", v2(parameters={"timeout": -1}), "parameters.timeout"),
    ("timeout-string", v2(parameters={"timeout": "1s"}), "parameters.timeout"),
    ("timeout-bool", v2(parameters={"timeout": True}), "parameters.timeout"),
    (
        "timeout-nested-1000",
        raw_v2(
            f"[{orjson.dumps(inp()).decode()}]", f', "parameters": {{"timeout": {nested(1000)}}}'
        ),
        "parameters.timeout",
    ),
    (
        "binary-size-without-header",
        v2(inp(data=DROP, parameters={"binary_data_size": 5})),
        "inputs[0].parameters.binary_data_size",
    ),
    (
        "binary-size-nested-1000",
        raw_v2(
            '[{"name": "text", "datatype": "BYTES", "shape": [1], '
            f'"parameters": {{"binary_data_size": {nested(1000, "1")}}}}}]'
        ),
        "inputs[0].parameters.binary_data_size",
    ),
    ("input-parameters-array", v2(inp(parameters=[])), "inputs[0].parameters"),
    ("outputs-string", v2(outputs="embedding"), "outputs: expected an array"),
    ("outputs-number", v2(outputs=[1]), "outputs[0]: expected a JSON object"),
    ("output-name-number", v2(outputs=[{"name": 1}]), "outputs[0].name"),
    ("output-unknown", v2(outputs=[{"name": "logits" * 500}]), "outputs[0].name: unknown output"),
    (
        "output-parameters-array",
        v2(outputs=[{"name": "embedding", "parameters": [1]}]),
        "outputs[0].parameters",
    ),
    (
        "text-lone-surrogate",
        v2(inp(data=["\\ud800"])).replace(b"\\\\", b"\\"),
        "body: malformed JSON",
    ),
    ("text-invalid-utf8", v2(inp(data=["ab"])).replace(b"ab", b"a\xff"), "body: malformed JSON"),
    ("nesting-over-json-limit", raw_v2(nested(1100)), "body: malformed JSON"),
]:
    case(f"v2-{cid}", "POST", V2, body, 400, text)
case("v2-too-many-texts", "POST", V2, v2(inp(shape=[9], data=["a"] * 9)), 413, "limits.max_texts")
case("v2-huge-shape", "POST", V2, v2(inp(shape=[10**15], data=["a"])), 413, "limits.max_texts")
case("v2-huge-text", "POST", V2, v2(inp(data=["x" * 20000])), 413, "limits.max_request_bytes")
case(
    "v2-ce-raw-scores-string",
    "POST",
    V2CE,
    js(
        {
            "inputs": [inp(name="query", data=["q"]), inp(name="document", data=["d"])],
            "parameters": {"raw_scores": "yes"},
        }
    ),
    400,
    "parameters.raw_scores",
)
case(
    "v2-ce-raw-scores-nested",
    "POST",
    V2CE,
    raw_v2(
        orjson.dumps([inp(name="query"), inp(name="document")]).decode(),
        f', "parameters": {{"raw_scores": {nested(1000, "true")}}}',
    ),
    400,
    "parameters.raw_scores",
)
case("v2-ce-missing-query", "POST", V2CE, v2(inp(name="document")), 400, "missing input 'query'")

# -- V2 binary extension: lying lengths
for cid, (body, headers), text in [
    ("header-len-text", binary({"inputs": [bin_input(N)]}, GOOD_BLOB, "ten"), "Inference-Header"),
    ("header-len-zero", binary({"inputs": [bin_input(N)]}, GOOD_BLOB, 0), "Inference-Header"),
    ("header-len-negative", binary({"inputs": [bin_input(N)]}, GOOD_BLOB, -5), "Inference-Header"),
    (
        "header-len-past-end",
        binary({"inputs": [bin_input(N)]}, GOOD_BLOB, 10**6),
        "Inference-Header",
    ),
    (
        "header-len-short",
        binary({"inputs": [bin_input(N)]}, GOOD_BLOB, 10),
        "body: malformed JSON",
    ),
    ("size-past-end", binary({"inputs": [bin_input(100)]}, GOOD_BLOB), "binary_data_size"),
    ("size-negative", binary({"inputs": [bin_input(-1)]}, GOOD_BLOB), "binary_data_size"),
    ("size-string", binary({"inputs": [bin_input("14")]}, GOOD_BLOB), "binary_data_size"),
    ("size-bool", binary({"inputs": [bin_input(True)]}, GOOD_BLOB), "binary_data_size"),
    ("size-array", binary({"inputs": [bin_input([14])]}, GOOD_BLOB), "binary_data_size"),
    ("bytes-left-over", binary({"inputs": [bin_input(N)]}, GOOD_BLOB + b"xx"), "body: 2 bytes"),
    (
        "prefix-truncated",
        binary({"inputs": [bin_input(N + 3)]}, GOOD_BLOB + b"\x01\x00\x00"),
        "inputs[0].data",
    ),
    (
        "element-past-end",
        binary({"inputs": [bin_input(9)]}, struct.pack("<I", 999) + b"hello"),
        "inputs[0].data",
    ),
    (
        "element-count",
        binary({"inputs": [bin_input(N, shape=[3])]}, GOOD_BLOB),
        "inputs[0].data: shape [3]",
    ),
    (
        "invalid-utf8",
        binary({"inputs": [bin_input(13)]}, blob(b"ok", b"\xff\xfe\xfd")),
        "inputs[0].data[1]: not valid UTF-8",
    ),
    (
        "surrogate-utf8",
        binary({"inputs": [bin_input(13)]}, blob(b"ok", b"\xed\xa0\x80")),
        "inputs[0].data[1]: not valid UTF-8",
    ),
    ("fp32-datatype", binary({"inputs": [bin_input(8, "FP32")]}, b"\0" * 8), "inputs[0].datatype"),
]:
    case(f"v2bin-{cid}", "POST", V2, body, 400, text, headers)

# -- KServe V1
for cid, path, body, text in [
    ("malformed", V1, b"{oops", "body: malformed JSON"),
    ("array", V1, b"[]", "body: expected a JSON object"),
    ("no-instances", V1, b'{"data": 1}', "instances: missing"),
    ("instances-string", V1, b'{"instances": "a"}', "instances: expected an array"),
    ("inputs-object", V1, b'{"inputs": {}}', "inputs: expected an array"),
    ("instances-empty", V1, b'{"instances": []}', "instances: no texts"),
    ("instance-number", V1, b'{"instances": [1]}', "instances[0]: expected a string"),
    ("instance-null", V1, b'{"instances": ["a", null]}', "instances[1]: expected a string"),
    ("instance-no-text", V1, b'{"instances": [{}]}', "instances[0].text"),
    ("instance-text-array", V1, b'{"instances": [{"text": []}]}', "instances[0].text"),
    ("instance-nested-1000", V1, f'{{"instances": {nested(1000)}}}'.encode(), "instances[0]"),
    ("invalid-utf8", V1, b'{"instances": ["a\xff"]}', "body: malformed JSON"),
    ("ce-instance-short", V1CE, b'{"instances": [["q"]]}', "instances[0]"),
    (
        "ce-query-number",
        V1CE,
        b'{"instances": [{"query": 1, "document": "d"}]}',
        "instances[0].query",
    ),
    ("ce-document-missing", V1CE, b'{"instances": [{"query": "q"}]}', "instances[0].document"),
]:
    case(f"v1-{cid}", "POST", path, body, 400, text)
case("v1-too-many", "POST", V1, js({"instances": ["a"] * 9}), 413, "limits.max_texts")
case(
    "v1-unknown-model",
    "POST",
    "/v1/models/nope:predict",
    b'{"instances": ["a"]}',
    404,
    "unknown model 'nope'",
)
case(
    "v1-traversal",
    "POST",
    "/v1/models/..%2F..%2Fetc:predict",
    b'{"instances": ["a"]}',
    404,
    "/v1/models/",
)
case(
    "v1-over-model-limit",
    "POST",
    V1,
    js({"instances": ["x" * 20000]}),
    413,
    "limits.max_request_bytes",
)

# -- OpenAI /v1/embeddings
for cid, body, text in [
    ("malformed", b"{oops", "body: malformed JSON"),
    ("array", b"[]", "body: expected a JSON object"),
    ("model-missing", js({"input": "a"}), "model: missing"),
    ("model-number", oa(model=1), "model: missing or not a string"),
    ("model-array", oa(model=[]), "model: missing or not a string"),
    ("model-empty", oa(model=""), "model: missing or not a string"),
    ("model-nested-1000", f'{{"model": {nested(1000)}, "input": "a"}}'.encode(), "model"),
    ("model-wrong-task", oa(model="ce"), "model: model 'ce' is a pair-scoring model"),
    ("input-missing", js({"model": "minilm"}), "input: expected a string or an array"),
    ("input-number", oa(input=1), "input: expected a string or an array"),
    ("input-object", oa(input={}), "input: expected a string or an array"),
    ("input-token-ids", oa(input=[1, 2]), "input[0]: token id arrays"),
    ("input-token-id-arrays", oa(input=[[1, 2]]), "input[0]: token id arrays"),
    ("input-null", oa(input=["a", None]), "input[1]: expected a string"),
    ("input-empty", oa(input=[]), "input: no texts"),
    ("input-nested-1000", f'{{"model": "minilm", "input": {nested(1000)}}}'.encode(), "input[0]"),
    ("format-array", oa(encoding_format=[]), "encoding_format"),
    ("format-object", oa(encoding_format={}), "encoding_format"),
    ("format-unknown", oa(encoding_format="hex" * 1000), "encoding_format"),
    (
        "format-nested-1000",
        f'{{"model": "minilm", "input": "a", "encoding_format": {nested(1000)}}}'.encode(),
        "encoding_format",
    ),
    ("dimensions-string", oa(dimensions="384"), "dimensions"),
    ("dimensions-zero", oa(dimensions=0), "dimensions"),
    ("dimensions-bool", oa(dimensions=True), "dimensions"),
    ("dimensions-other", oa(dimensions=17), "dimensions: the model gives embeddings of 384 "),
    (
        "dimensions-nested-1000",
        f'{{"model": "minilm", "input": "a", "dimensions": {nested(1000, "1")}}}'.encode(),
        "dimensions",
    ),
    ("lone-surrogate", b'{"model": "minilm", "input": "\\ud800"}', "body: malformed JSON"),
    ("invalid-utf8", b'{"model": "minilm", "input": "\xc3\x28"}', "body: malformed JSON"),
]:
    case(f"openai-{cid}", "POST", OA, body, 400, text)
case("openai-unknown-model", "POST", OA, oa(model="nope" * 500), 404, "unknown model")
case("openai-too-many", "POST", OA, oa(input=["a"] * 9), 413, "limits.max_texts")
case(
    "openai-over-model-limit", "POST", OA, oa(input=["x" * 20000]), 413, "limits.max_request_bytes"
)

# -- /v1/rerank
for cid, body, text in [
    ("malformed", b"{oops", "body: malformed JSON"),
    ("model-missing", rr(model=DROP), "model: missing"),
    ("model-array", rr(model=["ce"]), "model: missing"),
    ("model-wrong-task", rr(model="minilm"), "model: model 'minilm' is a embedding model"),
    ("query-missing", rr(query=DROP), "query: expected a string"),
    ("query-number", rr(query=1), "query: expected a string"),
    (
        "query-nested-1000",
        f'{{"model": "ce", "query": {nested(1000)}, "documents": ["d"]}}'.encode(),
        "query",
    ),
    ("documents-missing", rr(documents=DROP), "documents: missing"),
    ("documents-string", rr(documents="d"), "documents: expected an array"),
    ("documents-empty", rr(documents=[]), "documents: no texts"),
    ("document-number", rr(documents=["a", 2]), "documents[1]: expected a string"),
    ("document-text-number", rr(documents=[{"text": 1}]), "documents[0].text"),
    (
        "document-nested-1000",
        f'{{"model": "ce", "query": "q", "documents": {nested(1000)}}}'.encode(),
        "documents[0]",
    ),
    ("texts-object", rr(documents=DROP, texts={}), "texts: expected an array"),
    ("top-n-zero", rr(top_n=0), "top_n"),
    ("top-n-string", rr(top_n="1"), "top_n"),
    ("top-n-array", rr(top_n=[1]), "top_n"),
    (
        "top-n-nested-1000",
        f'{{"model": "ce", "query": "q", "documents": ["d"],"top_n": {nested(999, "1")}}}'.encode(),
        "top_n",
    ),
    ("return-documents-string", rr(return_documents="yes"), "return_documents"),
    ("raw-scores-number", rr(raw_scores=1), "raw_scores"),
    (
        "invalid-utf8",
        b'{"model": "ce", "query": "\xff", "documents": ["d"]}',
        "body: malformed JSON",
    ),
]:
    case(f"rerank-{cid}", "POST", RR, body, 400, text)
case("rerank-unknown-model", "POST", RR, rr(model="nope"), 404, "unknown model 'nope'")
case("rerank-too-many", "POST", RR, rr(documents=["d"] * 9), 413, "limits.max_texts")

# -- methods and routes
for cid, method, path, text in [
    ("v2-infer-get", "GET", V2, "takes POST, not GET"),
    ("v2-infer-put", "PUT", V2, "takes POST, not PUT"),
    ("v2-metadata-post", "POST", "/v2/models/minilm", "takes GET, not POST"),
    ("v2-ready-delete", "DELETE", "/v2/models/minilm/ready", "takes GET, not DELETE"),
    ("v1-predict-get", "GET", V1, "takes POST, not GET"),
    ("v1-model-post", "POST", "/v1/models/minilm", "takes GET, not POST"),
    ("openai-get", "GET", OA, "takes POST, not GET"),
    ("rerank-patch", "PATCH", RR, "takes POST, not PATCH"),
]:
    case(f"method-{cid}", method, path, b"" if method != "POST" else b"{}", 405, text)
case("route-unknown", "GET", "/nowhere", None, 404, "no route GET /nowhere")
case("route-long", "GET", "/" + "a" * 5000, None, 404, "no route GET /aaa")
case("route-version", "POST", "/v2/models/minilm/versions/9/infer", v2(), 404, "no version '9'")
case("route-model-sub", "GET", "/v2/models/minilm/stats", None, 404, "no route GET")
case("route-unknown-model", "POST", "/v2/models/nope/infer", v2(), 404, "unknown model 'nope'")

# -- content types and encodings, on every POST route
GOOD_BODIES = {
    "v2": (V2, v2()),
    "v1": (V1, js({"instances": ["a"]})),
    "openai": (OA, oa()),
    "rerank": (RR, rr()),
}
for route, (path, body) in GOOD_BODIES.items():
    for cid, ctype in [
        ("text-plain", "text/plain"),
        ("form", "application/x-www-form-urlencoded"),
        ("multipart", "multipart/form-data; boundary=x"),
        ("latin1-json", "application/json; charset=latin-1"),
        ("xml", "application/xml"),
    ]:
        case(
            f"ctype-{route}-{cid}", "POST", path, body, 415, "Content-Type", {"Content-Type": ctype}
        )
    case(
        f"ctype-{route}-gzip",
        "POST",
        path,
        body,
        415,
        "Content-Encoding",
        {"Content-Encoding": "gzip"},
    )
    if route != "v2":
        case(
            f"ctype-{route}-octet",
            "POST",
            path,
            body,
            415,
            "Content-Type",
            {"Content-Type": "application/octet-stream"},
        )

# -- sizes: a declared or streamed body over the limit, on every POST route
for route, path, limit in [
    ("v2", V2, MINILM_BYTES),
    ("v1", V1, CE_BYTES),
    ("openai", OA, CE_BYTES),
    ("rerank", RR, CE_BYTES),
]:
    case(f"size-{route}-over", "POST", path, b"x" * (limit + 1), 413, "max_request_bytes")


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize(
    "method, path, body, headers, status, text",
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_bad_input_is_a_4xx_naming_the_field(
    http, replicas_before, method, path, body, headers, status, text
):
    r = http.request(method, path, content=body, headers=headers)
    assert r.status_code == status, r.text[:500]
    body = r.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert text in message, message
    assert len(message) < 400, f"message not capped: {len(message)} characters"


def test_the_matrix_covers_every_route():
    routes = {}
    for cid, *_ in CASES:
        routes[cid.split("-")[0]] = routes.get(cid.split("-")[0], 0) + 1
    assert sum(routes.values()) >= 100 and {"v2", "v2bin", "v1", "openai", "rerank"} <= set(routes)


def test_good_requests_after_the_matrix_come_from_the_same_replicas(
    http, replicas_before, engine, cross_encoder_dir
):
    from textfleet.engine.engine import Engine

    texts = ["The quick brown fox.", "", "a\x00b", "Zürich café ☕"]
    want = engine.embed(texts)
    r = http.post(V2, content=v2(inp(shape=[4], data=texts)))
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(4, -1)
    np.testing.assert_allclose(got, want, atol=ATOL)
    # The binary extension, declared as octet-stream, with a JSON-typed header.
    body, headers = binary({"inputs": [bin_input(N)]}, GOOD_BLOB)
    r = http.post(V2, content=body, headers=headers | {"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(2, -1)
    np.testing.assert_allclose(got, engine.embed(["hello", "world"]), atol=ATOL)
    r = http.post(
        V1,
        content=js({"instances": texts}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    np.testing.assert_allclose(np.asarray(r.json()["predictions"], np.float32), want, atol=ATOL)
    r = http.post(OA, content=oa(input=texts), headers={"Content-Type": "application/vnd.x+json"})
    rows = [d["embedding"] for d in r.json()["data"]]
    np.testing.assert_allclose(np.asarray(rows, np.float32), want, atol=ATOL)
    with Engine.load(cross_encoder_dir, threads=1) as ce:
        ranked = ce.rerank("pets", DOCS)
    r = http.post(RR, content=rr())
    assert [x["index"] for x in r.json()["results"]] == [x.index for x in ranked]
    after = {app: replica_processes(app) for app in replicas_before}
    assert after == replicas_before and all(after.values())


# ---------------------------------------------------------------- sizes before reading


@pytest.mark.parametrize("path", [V2, V1, OA, RR])
def test_an_oversized_body_is_refused_before_it_is_read(served, path):
    """A declared length of 1 GB: 413 while the client has sent a few bytes; a
    chunked body: 413 once the running count passes the limit, the rest unsent."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\n"
    )
    times = []
    for _ in range(3):
        status, took = raw_request(
            served["port"], head + "Content-Length: 1000000000\r\n\r\n", [b"{"]
        )
        assert status == 413
        times.append(took)
    chunk = b"x" * 4096
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (CE_BYTES // 4096 + 2)
    status, took = raw_request(served["port"], head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 413
    times.append(took)
    assert min(times) < 0.1, times


# ---------------------------------------------------------------- API keys


KEYED_ROUTES = [
    ("POST", V2, v2()),
    ("GET", "/v2/models/minilm", None),
    ("GET", "/v2/models/minilm/versions/1", None),
    ("GET", "/v2/models/minilm/ready", None),
    (
        "POST",
        V2CE,
        js({"inputs": [inp(name="query", data=["q"]), inp(name="document", data=["d"])]}),
    ),
    ("GET", "/v2", None),
    ("GET", "/v1/models/minilm", None),
    ("POST", V1, js({"instances": ["a"]})),
    ("POST", OA, oa()),
    ("POST", RR, rr()),
]


@pytest.mark.parametrize(
    "method, path, body", KEYED_ROUTES, ids=[f"{m} {p}" for m, p, _ in KEYED_ROUTES]
)
def test_every_route_needs_a_key(served, method, path, body):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-0123456789abcdef"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
            {"x-api-key": KEY[:-1]},
        ):
            r = client.request(method, path, content=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert KEY[:12] not in r.text
            message = r.json()["error"]
            message = message["message"] if isinstance(message, dict) else message
            assert "Authorization" in message or "x-api-key" in message
        for headers in (
            {"Authorization": f"Bearer {KEY}"},
            {"Authorization": f"bearer {OTHER_KEY}"},
            {"x-api-key": KEY},
        ):
            r = client.request(method, path, content=body, headers=headers)
            assert r.status_code == 200, (headers, r.text)


def test_unknown_routes_and_models_need_a_key_too(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        assert client.get("/nowhere").status_code == 401
        assert client.post("/v2/models/nope/infer", content=v2()).status_code == 401
        assert client.post(OA, content=oa(model="nope")).status_code == 401
        r = client.post(V2, content=b"{oops", headers={"Content-Type": "text/plain"})
        assert r.status_code == 401  # the key first: nothing else is told to a stranger


def test_probes_need_no_key_and_learn_nothing_else(served):
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        r = client.get("/v2/health/ready")
        # Other modules' applications may still be deleting: ready or not, no names.
        assert r.status_code in (200, 503) and set(r.json()) == {"ready"}
        models = client.get("/v2/health/ready", headers=AUTH).json()["models"]
        assert models["ce"] == models["minilm"] == "RUNNING"


def test_keys_reach_the_replicas_as_digests_only(served):
    text = yaml.safe_dump(served["config"])
    assert KEY not in text and OTHER_KEY not in text
    import hashlib

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    for app in served["config"]["applications"]:
        assert digest in app["deployments"][0]["user_config"]["api_key_sha256"]
