"""Open Inference Protocol (KServe V2 / Triton) REST: requests in, responses out.

Covers the JSON form and the binary tensor data extension that
``tritonclient.http`` uses by default: the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw tensor bytes, BYTES
elements each prefixed by a little-endian uint32 length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textfleet.engine.errors import InputError
from textfleet.engine.priority import check_priority
from textfleet.serve.protocols.common import (
    NotFound,
    Reply,
    TensorSpec,
    as_mapping,
    check_count,
    dumps,
    loads,
    short_repr,
    type_name,
)

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data",)

_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_DATATYPE = {np.dtype(v): k for k, v in _NUMPY.items()}

# Request parameters that steer the protocol itself, not the model.
_RESERVED = {"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start"}


@dataclass(frozen=True)
class InputTensor:
    index: int
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # JSON list (maybe nested) or raw bytes of the binary extension
    binary: bool

    @property
    def field(self) -> str:
        return f"inputs[{self.index}]"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request-wide default


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool
    timeout_s: float | None
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    """``parameters.priority``: the request's class, lower is more urgent (Triton's
    schedule-policy convention; engine/priority.py); None: the default class."""

    def input(self, name: str) -> InputTensor | None:
        return next((t for t in self.inputs if t.name == name), None)


# ---------------------------------------------------------------- requests


def parse_infer_request(body: bytes, header_length: int | str | None = None) -> InferRequest:
    """Parse a V2 infer body (JSON, or JSON header + binary tensors)."""
    binary = b""
    if header_length is not None:
        n = _header_length(header_length, len(body))
        body, binary = body[:n], body[n:]
    return infer_request_from_dict(as_mapping(loads(body), "body"), memoryview(binary))


def infer_request_from_dict(obj: dict[str, Any], binary: memoryview | None = None) -> InferRequest:
    """Validate an already parsed V2 request (also what ``handle.infer`` takes)."""
    req_id = obj.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InputError("id", f"expected a string, got {type_name(req_id)}")
    params = _parameters(obj, "parameters")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError("inputs", "expected a non-empty array of input tensors")
    inputs, offset = [], 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _parse_input(i, raw, binary, offset)
        inputs.append(tensor)
    if binary is not None and offset != len(binary):
        raise InputError("body", f"{len(binary) - offset} bytes of binary data belong to no input")
    return _request(req_id, tuple(inputs), _parse_outputs(obj.get("outputs")), params)


def infer_request_from_arrays(
    inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None
) -> InferRequest:
    """The request ``infer_request_from_dict`` makes of these arrays' JSON form (BYTES:
    object arrays of str) and ``parameters``, without building that form: a graph
    step's call (``ModelServer.infer_arrays``). Every output is answered."""
    if not isinstance(inputs, dict) or not inputs:
        raise InputError("inputs", "expected a non-empty mapping of input arrays")
    tensors = []
    for i, (name, arr) in enumerate(inputs.items()):
        if not isinstance(name, str) or not name:
            raise InputError(f"inputs[{i}].name", "missing or not a string")
        if not isinstance(arr, np.ndarray):
            raise InputError(f"inputs[{i}]", f"expected a numpy array, got {type_name(arr)}")
        try:
            datatype = datatype_of(arr)
        except TypeError as e:
            raise InputError(f"inputs[{i}].datatype", str(e)) from None
        data = arr.ravel().tolist()
        tensors.append(InputTensor(i, name, datatype, tuple(arr.shape), data, False))
    params = {} if parameters is None else as_mapping(parameters, "parameters")
    return _request(None, tuple(tensors), None, params)


def _request(req_id, inputs, outputs, params: dict[str, Any]) -> InferRequest:
    """The request of parsed tensors; ``params``: the request's ``parameters`` (those
    that steer the protocol checked and taken out)."""
    return InferRequest(
        id=req_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)),
        timeout_s=_timeout(params.get("timeout")),
        parameters={k: v for k, v in params.items() if k not in _RESERVED},
        priority=check_priority(params.get("priority"), "parameters.priority"),
    )


def _parameters(obj: dict[str, Any], field: str) -> dict[str, Any]:
    """A ``parameters`` object; absent or null is empty, any other non-object a 400."""
    params = obj.get("parameters")
    return {} if params is None else as_mapping(params, field)


def _header_length(value: int | str, body_len: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InputError(
            "Inference-Header-Content-Length", f"not an integer: {short_repr(value)}"
        ) from None
    if not 0 < n <= body_len:
        raise InputError(
            "Inference-Header-Content-Length", f"{n} is outside the body of {body_len} bytes"
        )
    return n


def _parse_input(i: int, raw: Any, binary: memoryview | None, offset: int):
    where = f"inputs[{i}]"
    raw = as_mapping(raw, where)
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}.name", "missing or not a string")
    # isinstance first: a JSON array or object is unhashable, so no membership test.
    if not isinstance(datatype, str) or (datatype not in _NUMPY and datatype != "BYTES"):
        raise InputError(
            f"{where}.datatype",
            f"unknown datatype {short_repr(datatype)}; "
            f"expected BYTES or one of {', '.join(_NUMPY)}",
        )
    if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
        raise InputError(
            f"{where}.shape",
            f"expected an array of non-negative integers, got {_shape_text(shape)}",
        )
    size = _parameters(raw, f"{where}.parameters").get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InputError(f"{where}.data", "missing (and no binary_data_size parameter)")
        return InputTensor(i, name, datatype, tuple(shape), raw["data"], False), offset
    if binary is None or not _is_dim(size) or offset + size > len(binary):
        raise InputError(
            f"{where}.parameters.binary_data_size",
            f"{short_repr(size)} bytes, but the body holds "
            f"{0 if binary is None else len(binary) - offset} more binary bytes",
        )
    data = bytes(binary[offset : offset + size])
    return InputTensor(i, name, datatype, tuple(shape), data, True), offset + size


def _is_dim(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


def _shape_text(shape: Any) -> str:
    """A bad shape for a message: short arrays of scalars as written, anything else in brief."""
    if (
        isinstance(shape, list)
        and len(shape) <= 8
        and not any(isinstance(d, list | dict) for d in shape)
    ):
        return "[" + ", ".join(short_repr(d, 12) for d in shape) + "]"
    return short_repr(shape)


def _parse_outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InputError("outputs", f"expected an array, got {type_name(raw)}")
    out = []
    for i, o in enumerate(raw):
        o = as_mapping(o, f"outputs[{i}]")
        if not isinstance(o.get("name"), str):
            raise InputError(f"outputs[{i}].name", "missing or not a string")
        params = _parameters(o, f"outputs[{i}].parameters")
        b = params.get("binary_data")
        out.append(RequestedOutput(o["name"], None if b is None else bool(b)))
    return tuple(out)


def _timeout(value: Any) -> float | None:
    # Triton's request "timeout" parameter is in microseconds.
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise InputError(
            "parameters.timeout", f"expected microseconds > 0, got {short_repr(value)}"
        )
    return value / 1e6


def check_input_names(req: InferRequest, specs: tuple[TensorSpec, ...]) -> None:
    """Reject inputs the model does not take; a 400 naming them and the known ones."""
    known = {s.name for s in specs}
    for t in req.inputs:
        if t.name not in known:
            raise InputError(
                f"{t.field}.name",
                f"unknown input {short_repr(t.name)}; this model takes: {', '.join(sorted(known))}",
            )


def texts_input(req: InferRequest, name: str, max_texts: int) -> list[str]:
    """The BYTES input ``name`` as a list of str: shape [n] or [n, 1], UTF-8."""
    t = req.input(name)
    if t is None:
        raise InputError("inputs", f"missing input {name!r} (datatype BYTES, shape [n])")
    if t.datatype != "BYTES":
        raise InputError(f"{t.field}.datatype", f"input {name!r} must be BYTES, got {t.datatype}")
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise InputError(
            f"{t.field}.shape", f"input {name!r} must have shape [n] or [n, 1], got {list(t.shape)}"
        )
    n = t.shape[0]
    check_count(n, max_texts, f"{t.field}.shape")
    items = _split_bytes(t) if t.binary else _flat_json(t)
    if len(items) != n:
        raise InputError(
            f"{t.field}.data", f"shape {list(t.shape)} needs {n} elements, got {len(items)}"
        )
    return [_as_text(x, f"{t.field}.data[{i}]") for i, x in enumerate(items)]


def _flat_json(t: InputTensor) -> list:
    data = t.data
    if not isinstance(data, list):
        raise InputError(f"{t.field}.data", f"expected an array, got {type_name(data)}")
    if data and isinstance(data[0], list):  # row-major nested form: [["a"], ["b"]]
        if not all(isinstance(row, list) for row in data):
            raise InputError(f"{t.field}.data", "mixes nested arrays and scalars")
        data = [x for row in data for x in row]
    return data


def _split_bytes(t: InputTensor) -> list[bytes]:
    buf, out, pos = t.data, [], 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise InputError(f"{t.field}.data", "binary BYTES tensor ends inside a length prefix")
        (n,) = struct.unpack_from("<I", buf, pos)
        if pos + 4 + n > len(buf):
            raise InputError(
                f"{t.field}.data", f"binary element {len(out)} runs past the tensor end"
            )
        out.append(buf[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _as_text(x: Any, where: str) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(where, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    raise InputError(where, f"expected a string, got {type_name(x)}")


# ---------------------------------------------------------------- responses


def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype == object or arr.dtype.kind in "US":
        return "BYTES"
    try:
        return _DATATYPE[arr.dtype]
    except KeyError:
        raise TypeError(f"no V2 datatype for numpy dtype {arr.dtype}") from None


def select_outputs(
    outputs: dict[str, np.ndarray], req: InferRequest
) -> list[tuple[str, np.ndarray, bool]]:
    """(name, array, binary) of each output to send, in the requested order."""
    if req.outputs is None:
        return [(k, v, req.binary_output) for k, v in outputs.items()]
    chosen = []
    for i, o in enumerate(req.outputs):
        if o.name not in outputs:
            raise InputError(
                f"outputs[{i}].name",
                f"unknown output {short_repr(o.name)}; this model gives: {', '.join(outputs)}",
            )
        chosen.append(
            (o.name, outputs[o.name], req.binary_output if o.binary is None else o.binary)
        )
    return chosen


def infer_response(
    model_name: str,
    model_version: str,
    req: InferRequest,
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
) -> Reply:
    """Encode outputs as JSON, or JSON header + binary tensors where asked;
    ``parameters``: the response's (none by default)."""
    header, blobs = _response_header(
        model_name, model_version, req.id, select_outputs(outputs, req)
    )
    if parameters:
        header["parameters"] = parameters
    head = dumps(header)
    if not blobs:
        return Reply(200, head)
    return Reply(
        200,
        b"".join([head, *blobs]),
        (("Inference-Header-Content-Length", str(len(head))),),
        "application/octet-stream",
    )


def infer_response_dict(
    model_name: str,
    model_version: str,
    req: InferRequest,
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON form of a response as a Python dict (``handle.infer``'s result)."""
    chosen = [(n, a, False) for n, a, _ in select_outputs(outputs, req)]
    header, _ = _response_header(model_name, model_version, req.id, chosen, as_lists=True)
    if parameters:
        header["parameters"] = parameters
    return header


def output_array(out: dict[str, Any]) -> np.ndarray:
    """One output of ``infer_response_dict`` back as an array (BYTES: an object array
    of str); float32 data comes back bit for bit."""
    shape = out["shape"]
    if out["datatype"] == "BYTES":
        arr = np.empty(len(out["data"]), dtype=object)
        arr[:] = out["data"]
        return arr.reshape(shape)
    return np.asarray(out["data"], dtype=_NUMPY[out["datatype"]]).reshape(shape)


def output_arrays(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``outputs`` as ``output_array`` gives each back from ``infer_response_dict``,
    without the lists between: BYTES as object arrays of str, numbers unchanged."""
    out = {}
    for name, arr in outputs.items():
        if datatype_of(arr) == "BYTES":
            texts = np.empty(arr.size, dtype=object)
            texts[:] = [_text(x) for x in arr.ravel()]
            arr = texts.reshape(arr.shape)
        out[name] = arr
    return out


def _response_header(name, version, req_id, chosen, as_lists=False):
    outs, blobs = [], []
    for out_name, arr, binary in chosen:
        dt = datatype_of(arr)
        entry: dict[str, Any] = {"name": out_name, "datatype": dt, "shape": list(arr.shape)}
        if binary:
            blob = bytes_blob(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif dt == "BYTES":
            entry["data"] = [_text(x) for x in arr.ravel()]
        else:
            entry["data"] = arr.ravel().tolist() if as_lists else arr.ravel()
        outs.append(entry)
    header: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outs}
    if req_id is not None:
        header["id"] = req_id
    return header, blobs


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def bytes_blob(arr: np.ndarray) -> bytes:
    """A BYTES tensor's raw form: each element's little-endian uint32 length, then it."""
    parts = []
    for x in arr.ravel():
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


# ---------------------------------------------------------------- metadata


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "textfleet", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(
    name: str,
    version: str,
    platform: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model metadata object; ``parameters`` (optional in the protocol) says what
    requests may ask of the model: its token limit, what long texts get, and for
    embeddings the widths (``dimensions``) and prompts (``prompt_name``) on offer."""
    out = {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [s.as_dict() for s in inputs],
        "outputs": [s.as_dict() for s in outputs],
    }
    if parameters:
        out["parameters"] = parameters
    return out


def split_version(sub: str, version: str, model: str) -> str:
    """Strip ``/versions/<v>`` from a model sub-path; an unknown version is a 404."""
    if not sub.startswith("/versions/"):
        return sub
    rest = sub[len("/versions/") :]
    v, _, tail = rest.partition("/")
    if v != version:
        raise NotFound(f"model {model!r} has no version {short_repr(v)}; versions: {version}")
    return "/" + tail if tail else ""


__all__ = [
    "InferRequest",
    "InputTensor",
    "RequestedOutput",
    "check_input_names",
    "infer_request_from_arrays",
    "infer_request_from_dict",
    "infer_response",
    "infer_response_dict",
    "model_metadata",
    "output_array",
    "output_arrays",
    "parse_infer_request",
    "server_metadata",
    "split_version",
    "texts_input",
]
