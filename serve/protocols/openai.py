"""OpenAI-style ``POST /v1/embeddings``: request parsing and response encoding."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from textfleet.engine.errors import InputError
from textfleet.engine.priority import check_priority
from textfleet.serve.protocols.common import (
    Reply,
    as_mapping,
    check_count,
    dumps,
    error_headers,
    error_message,
    error_status,
    short_repr,
    type_name,
)


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    texts: list[str]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None
    prompt_name: str | None = None
    """An extra field (not OpenAI's): the model's instruction prompt to prepend."""
    priority: int | None = None
    """An extra field: the request's class, lower is more urgent (engine/priority.py)."""


def model_of(obj: Any) -> str:
    """The ``model`` field: what the gateway routes on."""
    model = as_mapping(obj, "body").get("model")
    if not isinstance(model, str) or not model:
        raise InputError("model", "missing or not a string; name the served model")
    return model


def parse_embeddings_request(obj: Any, max_texts: int) -> EmbeddingsRequest:
    obj = as_mapping(obj, "body")
    model = model_of(obj)
    raw = obj.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        check_count(len(raw), max_texts, "input")
        for i, t in enumerate(raw):
            if not isinstance(t, str):
                what = "token id arrays are not supported" if isinstance(t, int | list) else ""
                raise InputError(f"input[{i}]", what or f"expected a string, got {type_name(t)}")
        texts = raw
    else:
        raise InputError("input", f"expected a string or an array of strings, got {type_name(raw)}")
    fmt = obj.get("encoding_format", "float")
    if not isinstance(fmt, str) or fmt not in ("float", "base64"):
        raise InputError("encoding_format", f"expected 'float' or 'base64', got {short_repr(fmt)}")
    dims = obj.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise InputError("dimensions", f"expected a positive integer, got {short_repr(dims)}")
    prompt = obj.get("prompt_name")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError("prompt_name", f"expected a string, got {short_repr(prompt)}")
    priority = check_priority(obj.get("priority"))
    # Which widths and prompts the model has is the engine's to check (400 naming them).
    return EmbeddingsRequest(model, list(texts), fmt, dims, prompt, priority)


def embeddings_reply(req: EmbeddingsRequest, embeddings: np.ndarray, prompt_tokens: int) -> Reply:
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if req.encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of each vector.
        vectors: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in emb]
    else:
        vectors = list(emb)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    body = {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return Reply(200, dumps(body))


def error_reply(exc: BaseException) -> Reply:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    status = error_status(exc)
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {
        "error": {
            "message": error_message(exc),
            "type": kind,
            "param": getattr(exc, "field", None),
            "code": status,
        }
    }
    return Reply(status, dumps(body), error_headers(exc))
