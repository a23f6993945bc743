"""The shared routes' protocols under one model's own prefix.

Beside V2, a model's application answers OpenAI embeddings, rerank and KServe
V1 predict below its route prefix ``/v2/models/<name>``:

- ``/v1/embeddings``: OpenAI, as ``POST /v1/embeddings`` (an OpenAI SDK's
  ``base_url=http://host:port/v2/models/<name>/v1``);
- ``/v1/rerank``: Cohere / TEI rerank, as ``POST /v1/rerank``;
- ``/v1/models/<name>:predict``: KServe V1, as ``POST /v1/models/<name>:predict``
  (a V1 client's base URL ``http://host:port/v2/models/<name>``).

These paths reach the replica the way V2 does (under HAProxy, straight to the
replica's own HTTP server), and HAProxy rewrites the shared routes onto them
(serve/haproxy_routes.py). Each is served by the very handler the gateway
calls through a handle (``ModelServer.openai_embeddings``, ``rerank_http``,
``v1_predict``), so limits, errors and metrics are the same on both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textfleet.serve.protocols import openai
from textfleet.serve.protocols.common import Reply, error_reply


@dataclass(frozen=True)
class ProtocolRoute:
    """One shared route's protocol, as served below a model's prefix."""

    protocol: str
    """The ``protocol`` tag of the model's request metrics."""
    handler: str
    """The ``ModelServer`` method taking ``(body, timeout)``: the gateway calls it too."""
    error_reply: Callable[[BaseException], Reply]
    """How the protocol spells an error found before the handler runs (body type, size)."""


OPENAI_EMBEDDINGS = ProtocolRoute("openai", "openai_embeddings", openai.error_reply)
RERANK = ProtocolRoute("rerank", "rerank_http", error_reply)
V1_PREDICT = ProtocolRoute("v1", "v1_predict", error_reply)


def protocol_route(sub: str, model: str) -> ProtocolRoute | None:
    """The route of ``sub`` (the path below the model's prefix), None for V2's own."""
    if sub == "/v1/embeddings":
        return OPENAI_EMBEDDINGS
    if sub == "/v1/rerank":
        return RERANK
    if sub == f"/v1/models/{model}:predict":
        return V1_PREDICT
    return None
