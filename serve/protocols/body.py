"""What a request body must be before it is parsed: its media type, its encoding, its size.

Every POST route reads its body through ``read_request_body``, so every
route has the same rules:

- ``Content-Type``: JSON (``application/json``, ``application/<x>+json``;
  a ``charset`` other than UTF-8 is refused, JSON is UTF-8) or, where the V2
  binary tensor extension is spoken, ``application/octet-stream``. A missing
  header is read as JSON (or binary, with ``Inference-Header-Content-Length``):
  ``tritonclient.http`` sends none. Anything else is a 415 naming the header,
  which also keeps a web page from posting to the server cross-site: the
  types a browser may send without a CORS preflight (``text/plain``, forms)
  are exactly the ones refused.
- ``Content-Encoding``: none or ``identity``; compressed bodies are a 415.
- Size: over the limit is a 413, decided from ``Content-Length`` before a
  byte is read, and for a streamed (chunked) body as soon as the running
  count passes the limit; nothing past the limit is buffered.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

from textfleet.serve.protocols.common import (
    UnsupportedMediaType,
    check_body_size,
    short_repr,
)

BINARY = "application/octet-stream"


def check_media_type(headers: Mapping[str, str], binary_ok: bool = False) -> None:
    """415 unless the body is declared as JSON (or binary where ``binary_ok``), or undeclared."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            "Content-Encoding",
            f"{short_repr(encoding)} bodies are not accepted; send the body uncompressed",
        )
    declared = headers.get("content-type", "").strip()
    if not declared:
        return
    mime, _, params = declared.partition(";")
    mime = mime.strip().lower()
    if _is_json(mime):
        charset = _charset(params)
        if charset not in (None, "utf-8", "utf8"):
            raise UnsupportedMediaType(
                "Content-Type", f"charset {short_repr(charset)}; JSON bodies are UTF-8"
            )
        return
    if binary_ok and mime == BINARY:
        return
    wanted = "application/json" + (f" or {BINARY} (binary tensor extension)" if binary_ok else "")
    raise UnsupportedMediaType(
        "Content-Type", f"{short_repr(declared)} is not accepted here; send {wanted}"
    )


def _is_json(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _charset(params: str) -> str | None:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit():
        check_body_size(int(declared), limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        check_body_size(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_request_body(request: Request, limit: int, binary_ok: bool = False) -> bytes:
    """The body of a POST route: its media type checked, then read within ``limit``."""
    check_media_type(request.headers, binary_ok)
    return await read_body(request, limit)
