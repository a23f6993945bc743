"""The task methods of ``Engine``: classify, entities, score, rerank (and their async forms).

A mixin, so the engine keeps one batching path: every method hands its
texts (or pairs: both segments count toward the token budget) to
``self._forward``, which tokenizes, batches, runs the backend and the task
head and returns one item per input in input order. What is left here is
checking the request and turning rows into results with the pure heads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import InputError, ModelDirError
from engine.model_dir import ModelDir
from engine.tasks import classification, entities, scoring
from engine.tasks.results import Entity, LabelScore, Ranked
from engine.tokenizer import check_texts


@dataclass(frozen=True)
class TaskState:
    """What a task needs from the model directory, read once at load (errors then, not later)."""

    labels: list[str]
    activation: str
    vocab: entities.Vocab | None

    @classmethod
    def from_model_dir(cls, md: ModelDir) -> TaskState:
        task = md.info.task
        if task not in ("classification", "token-classification"):
            return cls([], "sigmoid" if task == "pair-scoring" else "none", None)
        config = md.config()
        labels = classification.labels_from_config(config, str(md.config_path))
        if len(labels) != md.info.dim:
            raise ModelDirError(
                f"{md.config_path}: names {len(labels)} labels but the model outputs {md.info.dim}"
            )
        vocab = None
        if task == "token-classification":
            vocab = entities.Vocab.from_tokenizer_json(md.tokenizer_path)
        return cls(labels, classification.activation_for(config), vocab)


class TaskMethods:
    """Mixed into Engine, which provides ``info``, ``tokenizer``, ``_task`` and ``_forward``."""

    def _require(self, task: str, method: str) -> None:
        if self.info.task != task:
            raise InputError(
                "task",
                f"model {self.info.name!r} serves task {self.info.task!r}; "
                f"{method}() needs a model of task {task!r}",
            )

    def classify(self, texts: Sequence[str], top_k: int | None = 1) -> list[list[LabelScore]]:
        """Per text, its ``top_k`` labels (all when None), best first.

        Scores are softmax probabilities, or sigmoid for multi-label configs
        (as transformers' text-classification pipeline decides).
        """
        self._require("classification", "classify")
        top_k = classification.check_top_k(top_k)
        texts = check_texts(texts, "texts")
        logits = self._stack(self._forward(texts), len(self._task.labels))
        scores = classification.activate(logits, self._task.activation)
        return classification.top_k_labels(scores, self._task.labels, top_k)

    def entities(self, texts: Sequence[str], aggregation: str | None = None) -> list[list[Entity]]:
        """Per text, its entity spans with character offsets into that text.

        ``aggregation``: none | simple | first | average | max (transformers'
        token-classification strategies); default: the model directory's.
        Text past ``max_length`` tokens is truncated, so it yields no spans.
        """
        self._require("token-classification", "entities")
        aggregation = entities.check_aggregation(aggregation or self.info.aggregation or "simple")
        texts = check_texts(texts, "texts")
        rows = self._forward(texts)
        # Offsets come from the same tokenizer with the same max_length, so
        # encoding i has exactly the tokens of row i.
        encodings = self.tokenizer.encode_batch(texts)
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

    def score(self, pairs: Sequence[Sequence[str]], raw_scores: bool = False) -> np.ndarray:
        """float32 [n]: one relevance per (query, document) pair; sigmoid(logit) unless raw."""
        self._require("pair-scoring", "score")
        firsts, seconds = scoring.check_pairs(pairs)
        return self._scores(firsts, seconds, raw_scores)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        raw_scores: bool = False,
    ) -> list[Ranked]:
        """Documents by relevance to ``query``, best first (``index`` into ``documents``)."""
        self._require("pair-scoring", "rerank")
        documents = scoring.check_rerank(query, documents)
        if top_k is not None:
            scoring.rank(np.zeros(1, np.float32), top_k)  # validate before computing
        scores = self._scores([query] * len(documents), documents, raw_scores)
        return scoring.rank(scores, top_k)

    def _scores(self, firsts: list[str], seconds: list[str], raw: bool) -> np.ndarray:
        if not firsts:
            return np.empty(0, np.float32)
        return scoring.pair_scores(self._stack(self._forward(firsts, seconds), 1), raw)

    @staticmethod
    def _stack(rows, width: int) -> np.ndarray:
        if isinstance(rows, np.ndarray):
            return rows
        return np.stack(rows) if len(rows) else np.empty((0, width), np.float32)

    # Async forms: off the event loop until the scheduler batches across requests.
    async def aclassify(self, texts, top_k: int | None = 1, timeout: float | None = None):
        return await asyncio.wait_for(asyncio.to_thread(self.classify, texts, top_k), timeout)

    async def aentities(self, texts, aggregation: str | None = None, timeout: float | None = None):
        return await asyncio.wait_for(asyncio.to_thread(self.entities, texts, aggregation), timeout)

    async def ascore(self, pairs, raw_scores: bool = False, timeout: float | None = None):
        return await asyncio.wait_for(asyncio.to_thread(self.score, pairs, raw_scores), timeout)

    async def arerank(self, query, documents, top_k=None, raw_scores=False, timeout=None):
        call = asyncio.to_thread(self.rerank, query, documents, top_k, raw_scores)
        return await asyncio.wait_for(call, timeout)
