"""Per-task adapters: how a task's wire requests become engine calls.

The protocol modules know wire formats, the engine knows models, the task
registry (engine/tasks/registry.py) knows tasks: their V2 tensors and which
engine methods serve them. An adapter says, for one task, how a V2 or V1
request or an OpenAI / rerank body becomes an engine call and what comes
back. ``ModelServer`` only ever talks to an adapter. An adapter class names
its task's ``TaskSpec`` and is registered in ``ADAPTERS`` by defining it;
a task whose requests the existing adapters speak needs no new class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from textfleet.engine.errors import InputError
from textfleet.engine.tasks import classification, embedding, pair_scoring, token_classification
from textfleet.engine.tasks.registry import task_serving
from textfleet.engine.tasks.spec import TaskSpec, TensorSpec
from textfleet.serve import deadlines
from textfleet.serve.config import ModelConfig
from textfleet.serve.hooked_engine import HookedEngine, ModelHooks
from textfleet.serve.protocols import openai, rerank, v1, v2
from textfleet.serve.protocols.common import Reply, check_count, dumps, short_repr

ADAPTERS: dict[str, type[TaskAdapter]] = {}
"""Task name -> its adapter class; filled by defining a ``TaskAdapter`` subclass."""


class TaskAdapter:
    """Base: the protocol surface every task has, and clear errors for the rest."""

    spec: ClassVar[TaskSpec]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.spec.name in ADAPTERS:
            raise TypeError(f"task {cls.spec.name!r} already has an adapter")
        ADAPTERS[cls.spec.name] = cls

    def __init__(self, engine: Any, config: ModelConfig, hooks: ModelHooks | None = None):
        # Every protocol's engine call goes through the model's hooks (if any) here.
        self.engine = HookedEngine(engine, hooks)
        self.config = config
        self.name = config.name
        self.task = self.spec.name
        self.max_texts = config.limits.max_texts
        self.inputs = self.spec.v2_inputs
        self.outputs = tuple(t.sized(int(engine.info.dim)) for t in self.spec.v2_outputs)
        if hooks is not None:
            self.outputs += _extra_outputs(self.outputs, hooks, self.name)

    def metadata_parameters(self) -> dict[str, Any]:
        """What the V2 model metadata shows under ``parameters``."""
        return {"max_length": self.engine.max_length, "on_overflow": self.engine.on_overflow}

    def timeout(self, requested: float | None) -> float | None:
        """The request's deadline: the model's, shortened by the client's (any route)."""
        return deadlines.effective(self.config.request_timeout_s, requested, deadlines.requested())

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        """V2 inputs -> named output arrays."""
        raise NotImplementedError

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        """V1 instances -> the ``predictions`` list."""
        raise NotImplementedError

    async def openai_embeddings(self, obj: dict[str, Any]) -> Reply:
        raise self._wrong_task("/v1/embeddings", "embed")

    async def embed(self, texts: list[str], timeout: float | None = None, **options) -> np.ndarray:
        raise self._wrong_task("embed")

    async def classify(self, texts: list[str], top_k: int | None = 1, timeout=None):
        raise self._wrong_task("classify")

    async def entities(self, texts: list[str], aggregation: str | None = None, timeout=None):
        raise self._wrong_task("entities")

    async def score(self, pairs: list, raw_scores: bool = False, timeout=None):
        raise self._wrong_task("score")

    async def rerank(
        self, query: str, documents: list[str], top_k=None, raw_scores=False, timeout=None
    ):
        raise self._wrong_task("rerank")

    async def rerank_http(self, obj: dict[str, Any]) -> Reply:
        raise self._wrong_task("/v1/rerank", "rerank")

    def _wrong_task(self, what: str, method: str | None = None) -> InputError:
        """``what`` (a call or a route) is served through the engine's ``method``."""
        needs = task_serving(method or what).name
        return InputError(
            "model",
            f"model {self.name!r} is a {self.task} model; {what} needs a model of task {needs!r}",
        )


class EmbeddingTask(TaskAdapter):
    """Sentence embeddings: texts in, one float32 vector per text out."""

    spec = embedding.TASK

    def __init__(self, engine: Any, config: ModelConfig, hooks: ModelHooks | None = None):
        super().__init__(engine, config, hooks)
        self.dim = int(engine.info.dim)

    def metadata_parameters(self) -> dict[str, Any]:
        info = self.engine.info
        return super().metadata_parameters() | {
            "dimensions": embedding.widths(info),
            "prompts": dict(info.prompts),
            "default_prompt_name": info.default_prompt_name,
        }

    async def embed(
        self,
        texts: list[str],
        timeout: float | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """The Python handle call: a list of str -> float32 [n, dimensions or dim]."""
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise InputError("texts", f"expected a list of str, got {type(texts).__name__}")
        check_count(len(texts), self.max_texts, "texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}]", f"expected str, got {type(t).__name__}")
        return await self._run(list(texts), timeout, dimensions, prompt_name)

    async def _run(
        self, texts: list[str], timeout: float | None, dimensions, prompt_name, extra=None
    ):
        deadline = self.timeout(timeout)
        out = await self.engine.aembed(
            texts, timeout=deadline, extra=extra, dimensions=dimensions, prompt_name=prompt_name
        )
        if len(out) != len(texts):  # every text gets exactly one row back, in order
            raise RuntimeError(f"engine returned {len(out)} embeddings for {len(texts)} texts")
        return out

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        v2.check_input_names(req, self.inputs)
        texts = v2.texts_input(req, "text", self.max_texts)
        dimensions = _param(req, "dimensions", int, None)
        prompt_name = _param(req, "prompt_name", str, None)
        extra: dict[str, np.ndarray] = {}  # a postprocess hook's own outputs
        emb = await self._run(texts, req.timeout_s, dimensions, prompt_name, extra)
        return {"embedding": emb} | extra

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        texts = v1.texts_from_instances(instances, self.max_texts)
        return list(await self._run(texts, None, None, None))

    async def openai_embeddings(self, obj: dict[str, Any]) -> Reply:
        req = openai.parse_embeddings_request(obj, self.max_texts)
        # usage: the tokens of the engine's own batches (prompts and windows in),
        # counted off the event loop.
        emb, tokens = await self.engine.aembed_with_usage(
            req.texts, timeout=self.timeout(None), dimensions=req.dimensions,
            prompt_name=req.prompt_name,
        )  # fmt: skip
        if len(emb) != len(req.texts):  # every text gets exactly one row back, in order
            raise RuntimeError(f"engine returned {len(emb)} embeddings for {len(req.texts)} texts")
        return openai.embeddings_reply(req, emb, tokens)


def _param(req: v2.InferRequest, name: str, kind: type, default: Any) -> Any:
    """A request parameter of one JSON type, or ``default`` when absent."""
    value = req.parameters.get(name, default)
    if value is not default and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        raise InputError(f"parameters.{name}", f"expected {kind.__name__}, got {short_repr(value)}")
    return value


def _checked_texts(texts: Any, max_texts: int, field: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise InputError(field, f"expected a list of str, got {type(texts).__name__}")
    check_count(len(texts), max_texts, field)
    return list(texts)


class ClassificationTask(TaskAdapter):
    """Text classification: texts in; per text its best label(s) and score(s).

    V2: ``label`` BYTES and ``score`` FP32, shape [n] (``parameters.top_k`` > 1:
    [n, k], best first). V1: ``{"label", "score"}`` per instance (the best one).
    """

    spec = classification.TASK

    async def classify(self, texts: list[str], top_k: int | None = 1, timeout=None):
        """The Python handle call: per text a list of LabelScore, best first."""
        texts = _checked_texts(texts, self.max_texts)
        return await self.engine.aclassify(texts, top_k, timeout=self.timeout(timeout))

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        v2.check_input_names(req, self.inputs)
        texts = v2.texts_input(req, "text", self.max_texts)
        top_k = _param(req, "top_k", int, 1)
        extra: dict[str, np.ndarray] = {}
        timeout = self.timeout(req.timeout_s)
        results = await self.engine.aclassify(texts, top_k, timeout=timeout, extra=extra)
        labels = np.array([[x.label for x in r] for r in results], dtype=object)
        scores = np.array([[x.score for x in r] for r in results], dtype=np.float32)
        if top_k == 1:
            labels, scores = labels[:, 0], scores[:, 0]
        return {"label": labels, "score": scores} | extra

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        texts = v1.texts_from_instances(instances, self.max_texts)
        results = await self.engine.aclassify(texts, 1, timeout=self.timeout(None))
        return [r[0].as_dict() for r in results]


class TokenClassificationTask(TaskAdapter):
    """Token classification: texts in; per text its entity spans.

    V2: ``entities`` BYTES [n], element i the JSON array of text i's spans
    ``[{"label", "text", "start", "end", "score"}]`` (character offsets into
    the text). Spans are variable in number, so JSON in a BYTES element keeps
    one row per text; ``parameters.aggregation`` picks the strategy. V1: the
    same arrays as ``predictions``.
    """

    spec = token_classification.TASK

    async def entities(self, texts: list[str], aggregation: str | None = None, timeout=None):
        """The Python handle call: per text a list of Entity."""
        texts = _checked_texts(texts, self.max_texts)
        return await self.engine.aentities(texts, aggregation, timeout=self.timeout(timeout))

    async def _spans(self, texts: list[str], aggregation: str | None, timeout, extra=None):
        found = await self.engine.aentities(
            texts, aggregation, timeout=self.timeout(timeout), extra=extra
        )
        return [[e.as_dict() for e in spans] for spans in found]

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        v2.check_input_names(req, self.inputs)
        texts = v2.texts_input(req, "text", self.max_texts)
        aggregation = _param(req, "aggregation", str, None)
        extra: dict[str, np.ndarray] = {}
        spans = await self._spans(texts, aggregation, req.timeout_s, extra)
        return {"entities": np.array([dumps(s) for s in spans], dtype=object)} | extra

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        texts = v1.texts_from_instances(instances, self.max_texts)
        return await self._spans(texts, None, None)


class PairScoringTask(TaskAdapter):
    """Cross-encoder scoring: (query, document) pairs in; one relevance per pair.

    V2: inputs ``query`` and ``document`` BYTES [n] (``query`` may be [1]: one
    query against n documents), output ``score`` FP32 [n];
    ``parameters.raw_scores`` true gives logits. V1: instances
    ``{"query", "document"}`` or ``[query, document]`` -> scores.
    ``POST /v1/rerank`` (Cohere / TEI bodies) comes through ``rerank_http``.
    """

    spec = pair_scoring.TASK

    async def score(self, pairs: list, raw_scores: bool = False, timeout=None) -> np.ndarray:
        """The Python handle call: float32 [n] for n (query, document) pairs."""
        pairs = _checked_texts(pairs, self.max_texts, "pairs")
        return await self.engine.ascore(pairs, raw_scores, timeout=self.timeout(timeout))

    async def rerank(
        self, query: str, documents: list[str], top_k=None, raw_scores=False, timeout=None
    ):
        """The Python handle call: documents best first (Ranked: index, score)."""
        _checked_texts(documents, self.max_texts, "documents")
        call = self.engine.arerank(
            query, documents, top_k, raw_scores, timeout=self.timeout(timeout)
        )
        return await call

    async def rerank_http(self, obj: dict[str, Any]) -> Reply:
        req = rerank.parse_rerank_request(obj, self.max_texts)
        ranked = await self.rerank(req.query, req.documents, req.top_n, req.raw_scores)
        return rerank.rerank_reply(req, ranked)

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        v2.check_input_names(req, self.inputs)
        docs = v2.texts_input(req, "document", self.max_texts)
        queries = v2.texts_input(req, "query", self.max_texts)
        if len(queries) == 1:
            queries = queries * len(docs)
        if len(queries) != len(docs):
            raise InputError(
                "inputs", f"query has {len(queries)} elements and document {len(docs)}; "
                "send as many queries as documents, or one"
            )  # fmt: skip
        raw = _param(req, "raw_scores", bool, False)
        extra: dict[str, np.ndarray] = {}
        pairs = list(zip(queries, docs, strict=True))
        scores = await self.engine.ascore(
            pairs, raw, timeout=self.timeout(req.timeout_s), extra=extra
        )
        return {"score": np.asarray(scores, dtype=np.float32)} | extra

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        check_count(len(instances), self.max_texts, "instances")
        pairs = [_pair(inst, i) for i, inst in enumerate(instances)]
        scores = await self.engine.ascore(pairs, False, timeout=self.timeout(None))
        return [float(s) for s in scores]


def _pair(inst: Any, i: int) -> tuple[str, str]:
    if isinstance(inst, dict):
        inst = (inst.get("query"), inst.get("document"))
    if not isinstance(inst, list | tuple) or len(inst) != 2:
        raise InputError(f"instances[{i}]", 'expected {"query": ..., "document": ...}')
    for side, t in zip(("query", "document"), inst, strict=True):
        if not isinstance(t, str):
            raise InputError(f"instances[{i}].{side}", "missing or not a string")
    return inst[0], inst[1]


def _extra_outputs(
    task_outputs: tuple[TensorSpec, ...], hooks: ModelHooks, model: str
) -> tuple[TensorSpec, ...]:
    """The outputs a postprocess hook adds; none may take a name of the task's."""
    taken = {t.name for t in task_outputs}
    for t in hooks.extra_outputs:
        if t.name in taken:
            raise ValueError(
                f"model {model!r}: field 'hooks.postprocess.outputs': {t.name!r} is an output "
                f"of the task already ({', '.join(sorted(taken))}); name it otherwise"
            )
    return hooks.extra_outputs


def adapter_for(engine: Any, config: ModelConfig, hooks: ModelHooks | None = None) -> TaskAdapter:
    """The adapter of the engine's task, calling the engine through ``hooks`` (the
    model's loaded hooks, if any); a task mismatch with the config is an error."""
    task = engine.info.task
    if config.task is not None and config.task != task:
        raise ValueError(
            f"model {config.name!r}: models.yaml says task {config.task!r} but "
            f"{config.model_dir} holds a {task!r} model"
        )
    try:
        cls = ADAPTERS[task]
    except KeyError:
        raise ValueError(
            f"model {config.name!r}: task {task!r} cannot be served yet; served tasks: "
            f"{', '.join(ADAPTERS)}"
        ) from None
    return cls(engine, config, hooks)
