"""The three kinds of inference graph, as models.yaml entries, for the graph tests.

Model names are arguments so that the config tests (tasks declared, no model
directories) and the serving tests (real exported models) share them:
``embedder`` an embedding model, ``classifier`` a classifier whose labels the
switch routes on, ``tagger_a`` / ``tagger_b`` two token classifiers (they may
be one model directory under two names), ``scorer`` a cross-encoder.
"""

from __future__ import annotations

TEXT = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def enrich(embedder: str = "minilm", tagger: str = "ner-a") -> dict:
    """Parallel fan-out, merged: an embedding and the entities of every text."""
    return {
        "name": "enrich",
        "inputs": TEXT,
        "steps": [
            {"name": "embed", "model": embedder, "inputs": {"text": "$input.text"}},
            {"name": "pii", "model": tagger, "inputs": {"text": "$input.text"}, "optional": True},
        ],
        "outputs": {"embedding": "embed.embedding", "entities": "pii.entities"},
    }


def topic_ner(
    cases: dict[str, str],
    default: str | None,
    classifier: str = "topics",
    name: str = "topic-ner",
) -> dict:
    """Per-row routing: classify, then tag each row with its topic's tagger
    (``cases``: label -> tagger; ``default`` a tagger, or None for ``error``)."""
    return {
        "name": name,
        "inputs": TEXT,
        "steps": [
            {"name": "topic", "model": classifier, "inputs": {"text": "$input.text"}},
            {
                "name": "ner",
                "switch": {
                    "on": "topic.label",
                    "cases": {label: {"model": m} for label, m in cases.items()},
                    "default": {"model": default} if default else "error",
                },
                "inputs": {"text": "$input.text"},
            },
        ],
        "outputs": {"topic": "topic.label", "entities": "ner.entities", "route": "ner.route"},
    }


def search_rerank(embedder: str = "minilm", scorer: str = "ce", shortlist: int = 5, k: int = 3):
    """Shortlist documents by cosine to the query, rerank the shortlist with a cross-encoder."""
    return {
        "name": "search-rerank",
        "inputs": [
            {"name": "query", "datatype": "BYTES", "shape": [1]},
            {"name": "document", "datatype": "BYTES", "shape": [-1]},
        ],
        "steps": [
            {"name": "q", "model": embedder, "inputs": {"text": "$input.query"}},
            {"name": "d", "model": embedder, "inputs": {"text": "$input.document"}},
            {
                "name": "shortlist",
                "op": "top_k",
                "by": "cosine",
                "k": shortlist,
                "inputs": {"query": "q.embedding", "candidates": "d.embedding"},
            },
            {
                "name": "docs",
                "op": "gather",
                "inputs": {"values": "$input.document", "index": "shortlist.index"},
            },
            {
                "name": "ce",
                "model": scorer,
                "inputs": {"query": "$input.query", "document": "docs.values"},
            },
            {
                "name": "ranked",
                "op": "top_k",
                "by": "score",
                "k": k,
                "inputs": {"score": "ce.score"},
            },
            {
                "name": "top",
                "op": "gather",
                "inputs": {"values": "docs.values", "index": "ranked.index"},
            },
            {
                "name": "top_index",
                "op": "gather",
                "inputs": {"values": "shortlist.index", "index": "ranked.index"},
            },
        ],
        "outputs": {"document": "top.values", "score": "ranked.score", "index": "top_index.values"},
    }


def clip_tag(
    classifier: str = "topics",
    tagger: str = "ner-a",
    call: str = "sample_hooks:label_and_clip",
    args: dict | None = None,
) -> dict:
    """A python step between two models: classify, then label and clip each text in user
    code (tests/hook_modules/sample_hooks.py), then tag the clipped texts."""
    return {
        "name": "clip-tag",
        "inputs": TEXT,
        "steps": [
            {"name": "topic", "model": classifier, "inputs": {"text": "$input.text"}},
            {
                "name": "clip",
                "python": {"call": call, "args": {"chars": 12} if args is None else args},
                "inputs": {"text": "$input.text", "label": "topic.label"},
                "outputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [-1]},
                    {"name": "length", "datatype": "INT64", "shape": [-1]},
                ],
            },
            {"name": "tag", "model": tagger, "inputs": {"text": "clip.text"}},
        ],
        "outputs": {"entities": "tag.entities", "clipped": "clip.text", "length": "clip.length"},
    }
