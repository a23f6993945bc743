"""Open Inference Protocol (KServe V2 / Triton) gRPC: protos in, protos out.

The messages are ``inference.GRPCInferenceService``'s as ``tritonclient.grpc``
ships them generated (``service_pb2``). A ``ModelInferRequest`` becomes the
same ``v2.InferRequest`` a JSON body becomes, through the same validation
(``v2.infer_request_from_dict``): the tensors' ``raw_input_contents`` travel
as the binary tensor extension's bytes (BYTES elements each prefixed by a
little-endian uint32 length, as Triton lays them out), typed ``contents`` as
the JSON ``data`` arrays. So the tasks, their checks and their error messages
are the HTTP path's; only the outer shape differs. Outputs always go back as
``raw_output_contents``, as Triton sends them.

Errors keep their HTTP meaning, as a gRPC status code (``status_code``).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from textfleet.engine.errors import InputError
from textfleet.serve.protocols import v2
from textfleet.serve.protocols.common import (
    NotFound,
    TensorSpec,
    error_message,
    error_status,
    short_repr,
)


def _importable(module: Any) -> None:
    """Ray pickles request and reply protos between its processes (proxy, replica,
    gateway). tritonclient's generated classes name the proto file's module,
    ``grpc_service_pb2``, which cannot be imported, so pickle cannot find them by
    reference (and cloudpickle cannot copy them by value): name the module they
    are in, for every message class and the classes nested in them."""

    def fix(cls: Any, descriptor: Any) -> None:
        cls.__module__ = module.__name__
        for nested in descriptor.nested_types:
            inner = getattr(cls, nested.name, None)
            if inner is not None:
                fix(inner, nested)

    for name, descriptor in module.DESCRIPTOR.message_types_by_name.items():
        fix(getattr(module, name), descriptor)


_importable(pb)


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """What Ray Serve's ``grpc_options.grpc_servicer_functions`` names: the V2 service
    as tritonclient generates it; importing this module first makes its messages
    picklable in the process that registers it (Ray's proxy)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


APPLICATION_KEY = "application"
"""The gRPC metadata key Ray Serve routes on: the name of the model's application."""

# The typed field of InferTensorContents that holds each datatype (FP16 has none:
# it travels only as raw contents).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# HTTP status of an error (protocols/common.error_status) -> gRPC status code. A
# full queue is UNAVAILABLE, as Triton answers it and as gRPC clients retry it;
# Ray Serve's own queue limit (max_queued_requests) answers RESOURCE_EXHAUSTED.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status of an exception raised while serving a call."""
    return code_for(error_status(exc))


def code_for(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status."""
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL)


def status(exc: BaseException) -> tuple[grpc.StatusCode, str, int]:
    """(gRPC code, the message a client sees, the HTTP status for metrics)."""
    return status_code(exc), error_message(exc), error_status(exc)


# ---------------------------------------------------------------- requests


def check_model(name: str, version: str, served: str, served_version: str) -> None:
    """A call's model name (and version, when given) must be the application's: Ray
    Serve chose the application by the ``application`` metadata, not by the name."""
    if name != served:
        raise NotFound(
            f"model {short_repr(name)} is not served by application {served!r}; "
            f"send the gRPC metadata {APPLICATION_KEY}: <model name> (or the gateway's "
            "application, which routes by the request's model name)"
        )
    if version and version != served_version:
        raise NotFound(
            f"model {served!r} has no version {short_repr(version)}; versions: {served_version}"
        )


def infer_request(req: pb.ModelInferRequest) -> v2.InferRequest:
    """A ``ModelInferRequest`` as the internal request the JSON path builds."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InputError(
            "raw_input_contents",
            f"{len(raw)} entries for {len(req.inputs)} inputs; send one per input, in order",
        )
    inputs = []
    for i, t in enumerate(req.inputs):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if raw:
            if t.HasField("contents"):
                raise InputError(
                    f"inputs[{i}].contents", "given with raw_input_contents; send one or the other"
                )
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = _CONTENTS.get(t.datatype)
            entry["data"] = list(getattr(t.contents, field)) if field else []
        inputs.append(entry)
    obj: dict[str, Any] = {
        "inputs": inputs,
        "parameters": parameters(req.parameters),
        "outputs": [{"name": o.name} for o in req.outputs] or None,
    }
    if req.id:
        obj["id"] = req.id
    binary = memoryview(b"".join(raw)) if raw else None
    return v2.infer_request_from_dict(obj, binary)


def parameters(params) -> dict[str, Any]:
    """A proto parameter map as plain values: the JSON request's ``parameters``, so
    ``priority``, ``timeout``, ``top_k``, ``dimensions``, ``prompt_name`` and the rest
    pass the HTTP path's checks, with its messages (``parameters.<name>``)."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


def infer_parameter(value: bool | int | float | str) -> pb.InferParameter:
    """A plain value as a proto parameter (the inverse of ``parameters``)."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


# ---------------------------------------------------------------- responses


def infer_response(
    model_name: str,
    model_version: str,
    req: v2.InferRequest,
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
) -> pb.ModelInferResponse:
    """Outputs as raw contents: BYTES length-prefixed, numbers little-endian;
    ``parameters``: the response's (a graph's step times), as the JSON response's."""
    out = pb.ModelInferResponse(model_name=model_name, model_version=model_version)
    if req.id is not None:
        out.id = req.id
    for key, value in (parameters or {}).items():
        out.parameters[key].CopyFrom(infer_parameter(value))
    for name, arr, _ in v2.select_outputs(outputs, req):
        datatype = v2.datatype_of(arr)
        out.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        out.raw_output_contents.append(_raw(arr, datatype))
    return out


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return v2.bytes_blob(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def model_metadata(
    name: str,
    version: str,
    platform: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> pb.ModelMetadataResponse:
    """The model's metadata; the proto has no ``parameters`` (the HTTP metadata's
    limits and options), so they are left out here."""

    def tensors(specs):
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=s.datatype, shape=[int(d) for d in s.shape]
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=name,
        versions=[version],
        platform=platform,
        inputs=tensors(inputs),
        outputs=tensors(outputs),
    )


def server_metadata(version: str) -> pb.ServerMetadataResponse:
    meta = v2.server_metadata(version)
    return pb.ServerMetadataResponse(
        name=meta["name"], version=meta["version"], extensions=meta["extensions"]
    )


__all__ = [
    "APPLICATION_KEY",
    "add_servicer_to_server",
    "check_model",
    "code_for",
    "infer_parameter",
    "infer_request",
    "infer_response",
    "model_metadata",
    "parameters",
    "server_metadata",
    "status",
    "status_code",
]
