"""``POST /v1/rerank`` bodies: Cohere and TEI request shapes, each answered in its own
API's shape, clear errors."""

from __future__ import annotations

import orjson
import pytest

from textfleet.engine.errors import InputError, TooLarge
from textfleet.engine.tasks.results import Ranked
from textfleet.serve.protocols import rerank


def test_cohere_body_with_structured_documents():
    req = rerank.parse_rerank_request(
        {
            "model": "ce",
            "query": "q",
            "documents": ["a", {"text": "b"}],
            "top_n": 1,
            "return_documents": True,
        },  # fmt: skip
        max_texts=8,
    )
    assert (req.model, req.query, req.documents, req.top_n) == ("ce", "q", ["a", "b"], 1)
    assert req.return_documents and not req.raw_scores
    body = orjson.loads(rerank.rerank_reply(req, [Ranked(1, 0.75)]).body)
    assert body == {
        "model": "ce",
        "results": [{"index": 1, "relevance_score": 0.75, "document": {"text": "b"}}],
    }


def test_cohere_reply_leaves_documents_out_unless_asked():
    req = rerank.parse_rerank_request({"model": "ce", "query": "q", "documents": ["a", "b"]}, 8)
    assert not req.return_documents and req.top_n is None and req.dialect == "cohere"
    body = orjson.loads(rerank.rerank_reply(req, [Ranked(1, 0.75), Ranked(0, 0.25)]).body)
    assert body == {
        "model": "ce",
        "results": [{"index": 1, "relevance_score": 0.75}, {"index": 0, "relevance_score": 0.25}],
    }


def test_tei_body_gets_tei_reply():
    """TEI answers ``/rerank`` with a bare array of {index, score, text?}, best first."""
    req = rerank.parse_rerank_request(
        {"model": "ce", "query": "q", "texts": ["a", "b"], "raw_scores": True, "return_text": True},
        max_texts=8,
    )
    assert req.documents == ["a", "b"] and req.raw_scores and req.return_documents
    assert req.top_n is None and req.dialect == "tei"
    body = orjson.loads(rerank.rerank_reply(req, [Ranked(1, 2.5), Ranked(0, -1.0)]).body)
    assert body == [
        {"index": 1, "score": 2.5, "text": "b"},
        {"index": 0, "score": -1.0, "text": "a"},
    ]
    plain = rerank.parse_rerank_request({"model": "ce", "query": "q", "texts": ["a"]}, 8)
    assert orjson.loads(rerank.rerank_reply(plain, [Ranked(0, 0.5)]).body) == [
        {"index": 0, "score": 0.5}
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "q", "documents": ["a"]}, "model"),
        ({"model": "ce", "documents": ["a"]}, "query"),
        ({"model": "ce", "query": "q"}, "documents"),
        ({"model": "ce", "query": "q", "documents": "a"}, "documents"),
        ({"model": "ce", "query": "q", "documents": []}, "documents"),
        ({"model": "ce", "query": "q", "documents": ["a", 3]}, r"documents\[1\]"),
        ({"model": "ce", "query": "q", "documents": [{"txt": "a"}]}, r"documents\[0\]\.text"),
        ({"model": "ce", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"model": "ce", "query": "q", "documents": ["a"], "return_documents": "yes"}, "return_"),
        (["not", "an", "object"], "body"),
    ],
)
def test_bad_bodies_name_the_field(body, field):
    with pytest.raises(InputError, match=field):
        rerank.parse_rerank_request(body, max_texts=8)


def test_too_many_documents_is_413():
    with pytest.raises(TooLarge, match="limit is 2"):
        rerank.parse_rerank_request({"model": "m", "query": "q", "documents": ["a"] * 3}, 2)
