"""The task methods of ``Engine``: classify, entities, score, rerank (and their async forms).

A mixin, so the engine keeps one batching path: every method hands its
texts (or pairs: both segments count toward the token budget) to
``self._forward``, which tokenizes, batches, runs the backend and the task
head and returns one item per input in input order. What is left here is
checking the request and turning rows into results with the pure heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textfleet.engine.errors import InputError
from textfleet.engine.tasks import classification, entities, scoring
from textfleet.engine.tasks.registry import task_serving
from textfleet.engine.tasks.results import Entity, LabelScore, Ranked
from textfleet.engine.tokenizer import check_texts


class TaskMethods:
    """Mixed into Engine, which provides ``info``, ``tokenizer``, ``_task`` and ``_forward``."""

    def _require(self, method: str) -> None:
        needed = task_serving(method)
        if self.info.task != needed.name:
            raise InputError(
                "task",
                f"model {self.info.name!r} serves task {self.info.task!r}; "
                f"{method}() needs a model of task {needed.name!r}",
            )

    def classify(
        self, texts: Sequence[str], top_k: int | None = 1, *, priority: int | None = None
    ) -> list[list[LabelScore]]:
        """Per text, its ``top_k`` labels (all when None), best first.

        Scores are softmax probabilities, or sigmoid for multi-label configs
        (as transformers' text-classification pipeline decides). ``priority`` here and
        below: the request's class, lower is more urgent (engine/priority.py).
        """
        texts, top_k = self._classify_args(texts, top_k)
        return self._classify_rows(self._forward(texts, priority=priority), top_k)

    def _classify_args(self, texts, top_k):
        self._require("classify")
        return check_texts(texts, "texts"), classification.check_top_k(top_k)

    def _classify_rows(self, rows, top_k):
        logits = self._stack(rows, len(self._task.labels))
        scores = classification.activate(logits, self._task.activation)
        return classification.top_k_labels(scores, self._task.labels, top_k)

    def entities(
        self, texts: Sequence[str], aggregation: str | None = None, *, priority: int | None = None
    ) -> list[list[Entity]]:
        """Per text, its entity spans with character offsets into that text.

        ``aggregation``: none | simple | first | average | max (transformers'
        token-classification strategies); default: the model directory's.
        A text past ``max_length`` tokens runs in overlapping windows (``on_overflow``
        window, the default here) and its spans carry offsets into the whole text.
        """
        texts, aggregation = self._entities_args(texts, aggregation)
        rows = self._forward(texts, priority=priority)
        return self._entities_rows(texts, rows, aggregation)

    def _entities_args(self, texts, aggregation):
        self._require("entities")
        aggregation = entities.check_aggregation(aggregation or self.info.aggregation or "simple")
        return check_texts(texts, "texts"), aggregation

    def _entities_rows(self, texts, rows, aggregation):
        # Offsets come from the tokenizer the rows came from (the truncating one, or
        # the whole text's when windows were joined), so encoding i has the tokens of row i.
        encodings = self._overflow.offsets_tokenizer.encode_batch(texts)
        out = []
        for text, enc, probs in zip(texts, encodings, rows, strict=True):
            if len(enc.ids) != probs.shape[0]:
                raise RuntimeError(f"{len(enc.ids)} offsets for {probs.shape[0]} token rows")
            out.append(
                entities.group_entities(
                    text,
                    np.asarray(enc.ids),
                    np.asarray(enc.offsets),
                    probs,
                    self._task.labels,
                    self._task.vocab,
                    aggregation,
                    self.info.merge_gaps,
                )  # fmt: skip
            )
        return out

    def score(
        self,
        pairs: Sequence[Sequence[str]],
        raw_scores: bool = False,
        *,
        priority: int | None = None,
    ) -> np.ndarray:
        """float32 [n]: one relevance per (query, document) pair; sigmoid(logit) unless raw."""
        self._require("score")
        firsts, seconds = scoring.check_pairs(pairs)
        return self._pair_scores(self._forward(firsts, seconds, priority), raw_scores)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        raw_scores: bool = False,
        *,
        priority: int | None = None,
    ) -> list[Ranked]:
        """Documents by relevance to ``query``, best first (``index`` into ``documents``)."""
        documents = self._rerank_args(query, documents, top_k)
        rows = self._forward([query] * len(documents), documents, priority)
        return scoring.rank(self._pair_scores(rows, raw_scores), top_k)

    def _rerank_args(self, query, documents, top_k):
        self._require("rerank")
        documents = scoring.check_rerank(query, documents)
        if top_k is not None:
            scoring.rank(np.zeros(1, np.float32), top_k)  # validate before computing
        return documents

    def _pair_scores(self, rows, raw: bool) -> np.ndarray:
        if len(rows) == 0:
            return np.empty(0, np.float32)
        return scoring.pair_scores(self._stack(rows, 1), raw)

    @staticmethod
    def _stack(rows, width: int) -> np.ndarray:
        if isinstance(rows, np.ndarray):
            return rows
        return np.stack(rows) if len(rows) else np.empty((0, width), np.float32)

    # Async forms: the same checks and heads; the rows come from one scheduler
    # request resolved on the caller's loop (``timeout`` in seconds, ``priority`` its class).
    async def aclassify(
        self, texts, top_k: int | None = 1, timeout: float | None = None, *, priority=None
    ):
        texts, top_k = self._classify_args(texts, top_k)
        rows = await self._aforward(texts, None, timeout, priority)
        return self._classify_rows(rows, top_k)

    async def aentities(
        self, texts, aggregation: str | None = None, timeout: float | None = None, *, priority=None
    ):
        texts, aggregation = self._entities_args(texts, aggregation)
        rows = await self._aforward(texts, None, timeout, priority)
        return self._entities_rows(texts, rows, aggregation)

    async def ascore(
        self, pairs, raw_scores: bool = False, timeout: float | None = None, *, priority=None
    ):
        self._require("score")
        firsts, seconds = scoring.check_pairs(pairs)
        rows = await self._aforward(firsts, seconds, timeout, priority)
        return self._pair_scores(rows, raw_scores)

    async def arerank(
        self, query, documents, top_k=None, raw_scores=False, timeout=None, *, priority=None
    ):
        documents = self._rerank_args(query, documents, top_k)
        rows = await self._aforward([query] * len(documents), documents, timeout, priority)
        return scoring.rank(self._pair_scores(rows, raw_scores), top_k)
