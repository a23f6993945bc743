"""``POST /v1/rerank``: a query and documents in, documents by relevance out.

Requests in either common shape are accepted:

- Cohere / Jina: ``{"model", "query", "documents": [str | {"text": str}],
  "top_n"?, "return_documents"?}``;
- Hugging Face TEI: ``{"model", "query", "texts": [str], "raw_scores"?,
  "return_text"?}`` (TEI serves one model; here ``model`` picks it).

Each is answered in its own API's shape, best first, so either client reads
the reply it expects. Cohere's::

    {"model": "...", "results": [{"index": 2, "relevance_score": 0.93,
                                  "document": {"text": "..."}}, ...]}

``document`` only when ``return_documents`` is true (Cohere's default is
false). TEI's is a bare array, ``text`` only when ``return_text`` is true::

    [{"index": 2, "score": 0.93, "text": "..."}, ...]

``top_n`` keeps the best n (all when absent or larger than the list), in
either shape. Scores are sigmoid(logit) in 0..1 unless ``raw_scores`` asks
for the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from textfleet.engine.errors import InputError
from textfleet.engine.priority import check_priority
from textfleet.serve.protocols.common import (
    Reply,
    as_mapping,
    check_count,
    dumps,
    short_repr,
    type_name,
)


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    raw_scores: bool
    dialect: Literal["cohere", "tei"] = "cohere"
    """Which API the body is written for (``documents``: Cohere, ``texts``: TEI);
    the reply takes the same API's shape."""
    priority: int | None = None
    """An extra field: the request's class, lower is more urgent (engine/priority.py)."""


def model_of(obj: Any) -> str:
    """The ``model`` field: what the gateway routes on."""
    model = as_mapping(obj, "body").get("model")
    if not isinstance(model, str) or not model:
        raise InputError("model", "missing or not a string; name the served reranker")
    return model


def parse_rerank_request(obj: Any, max_texts: int) -> RerankRequest:
    model = model_of(obj)
    query = obj.get("query")
    if not isinstance(query, str):
        raise InputError("query", f"expected a string, got {type_name(query)}")
    key = "documents" if "documents" in obj else "texts" if "texts" in obj else None
    if key is None:
        raise InputError("documents", 'missing; send {"query": ..., "documents": [...]}')
    docs = obj[key]
    if not isinstance(docs, list):
        raise InputError(key, f"expected an array, got {type_name(docs)}")
    check_count(len(docs), max_texts, key)
    return RerankRequest(
        model=model,
        query=query,
        documents=[_document(d, f"{key}[{i}]") for i, d in enumerate(docs)],
        top_n=_top_n(obj.get("top_n")),
        return_documents=_flag(obj, "return_documents") or _flag(obj, "return_text"),
        raw_scores=_flag(obj, "raw_scores"),
        dialect="cohere" if key == "documents" else "tei",
        priority=check_priority(obj.get("priority")),
    )


def _document(d: Any, where: str) -> str:
    if isinstance(d, dict):  # Cohere's structured form: {"text": ...}
        d = d.get("text")
        where += ".text"
    if not isinstance(d, str):
        raise InputError(where, f"expected a string, got {type_name(d)}")
    return d


def _top_n(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError("top_n", f"expected an integer >= 1, got {short_repr(value)}")
    return value


def _flag(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise InputError(name, f"expected true or false, got {type_name(value)}")
    return value


def rerank_body(req: RerankRequest, ranked: Sequence[Any]) -> dict[str, Any] | list[dict]:
    """``ranked``: items with ``index`` and ``score`` (engine.tasks.Ranked), best first."""
    if req.dialect == "tei":
        return [_tei_rank(req, r) for r in ranked]
    results = []
    for r in ranked:
        item: dict[str, Any] = {"index": int(r.index), "relevance_score": float(r.score)}
        if req.return_documents:
            item["document"] = {"text": req.documents[r.index]}
        results.append(item)
    return {"model": req.model, "results": results}


def _tei_rank(req: RerankRequest, r: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"index": int(r.index), "score": float(r.score)}
    if req.return_documents:
        item["text"] = req.documents[r.index]
    return item


def rerank_reply(req: RerankRequest, ranked: Sequence[Any]) -> Reply:
    return Reply(200, dumps(rerank_body(req, ranked)))
