"""A model's pre/post-processing hooks, around every engine call of its replica.

Every protocol (V2, KServe V1, OpenAI embeddings, rerank, the model's own
routes) and every handle call reaches the model through its task adapter
(serve/tasks.py), and every adapter reaches the engine through the async task
methods (``aembed``, ``aembed_with_usage``, ``aclassify``, ``aentities``,
``ascore``, ``arerank``). ``HookedEngine`` wraps those methods, so a hook runs
once per request whatever the protocol:

- preprocess: ``texts -> texts`` (pair models: ``pairs -> pairs``), one out per one in;
- postprocess: ``(outputs, texts) -> outputs``, ``outputs`` the task's V2 output
  tensors (``{"embedding": float32 [n, d]}``, ``{"label", "score"}``,
  ``{"entities": JSON per row}``, ``{"score": float32 [n]}``); it returns the
  same tensors (same rows and datatypes) plus the extra ones the config declares.
  Protocols other than V2 take the task's tensors back and leave the extras out.

Hooks are user code of unknown cost, so they never run on the replica's event
loop (which also carries every other request's I/O): each runs in the
replica's own small thread pool (``hooks.threads``, 1 by default, so a class
instance sees one call at a time). A hook's ``InputError`` reaches the client
as a 400; anything else it raises, or a result of the wrong shape, is a 500
naming the model, the stage and the hook (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from textfleet.engine.errors import EngineError, InputError
from textfleet.engine.tasks import scoring
from textfleet.engine.tasks.results import Entity, LabelScore
from textfleet.engine.tasks.spec import TensorSpec
from textfleet.serve.config import HookCall, HooksConfig
from textfleet.serve.hooks import LoadError, load_callable
from textfleet.serve.protocols.v2 import datatype_of

log = logging.getLogger(__name__)


class HookError(EngineError):
    """A hook failed or broke its contract (HTTP 500); the message names the hook."""


@dataclass(frozen=True)
class Hook:
    stage: str
    """``preprocess`` or ``postprocess``."""
    call: str
    fn: Callable[..., Any]

    def failed(self, model: str, what: str) -> HookError:
        return HookError(f"model {model!r}: {self.stage} hook {self.call!r} {what}")


class ModelHooks:
    """One model's hooks, loaded once per replica, and the threads that run them."""

    def __init__(self, model: str, config: HooksConfig):
        self.model = model
        self.pre = self._load("preprocess", config.preprocess)
        self.post = self._load("postprocess", config.postprocess)
        declared = config.postprocess.outputs if config.postprocess is not None else []
        self.extra_outputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in declared)
        self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix=f"hooks-{model}")

    def _load(self, stage: str, spec: HookCall | None) -> Hook | None:
        if spec is None:
            return None
        try:
            return Hook(stage, spec.call, load_callable(spec.call, spec.args))
        except LoadError as e:
            raise LoadError(f"model {self.model!r}: {stage} hook: {e}") from e

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, hook: Hook, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, hook.fn, *args)
        except InputError:
            raise  # the hook judged the request bad: a 400 with its own message
        except Exception as e:
            log.error("model %r: %s hook %r raised", self.model, hook.stage, hook.call, exc_info=e)
            what = f"raised {type(e).__name__}; see the server log"
            raise hook.failed(self.model, what) from None

    async def preprocess(self, inputs: list[Any], pairs: bool) -> list[Any]:
        """Texts (or pairs) through the preprocess hook; one out per one in."""
        if self.pre is None:
            return inputs
        out = await self._run(self.pre, list(inputs))
        if not isinstance(out, list | tuple) or len(out) != len(inputs):
            got = f"{len(out)} items" if isinstance(out, list | tuple) else type(out).__name__
            raise self.pre.failed(
                self.model, f"returned {got} for {len(inputs)}; it must return one per input"
            )
        return [_checked_item(self.pre, self.model, x, i, pairs) for i, x in enumerate(out)]

    async def postprocess(
        self, outputs: dict[str, np.ndarray], inputs: list[Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The task's tensors through the postprocess hook -> (task tensors, extra tensors)."""
        assert self.post is not None
        out = await self._run(self.post, dict(outputs), list(inputs))
        if not isinstance(out, dict):
            raise self.post.failed(self.model, f"returned a {type(out).__name__}, not a dict")
        n = len(inputs)
        task = {name: self._task_tensor(out, name, arr, n) for name, arr in outputs.items()}
        extras = {t.name: self._extra_tensor(out, t, n) for t in self.extra_outputs}
        unknown = sorted(set(out) - set(task) - set(extras))
        if unknown:
            raise self.post.failed(
                self.model,
                f"returned undeclared outputs {unknown}; declare them under "
                "hooks.postprocess.outputs",
            )
        return task, extras

    def _task_tensor(self, out: dict, name: str, before: np.ndarray, n: int) -> np.ndarray:
        assert self.post is not None
        if name not in out:
            raise self.post.failed(self.model, f"dropped the task's output {name!r}")
        arr = np.asarray(out[name])
        if _datatype(arr) != _datatype(before) or arr.ndim != before.ndim or len(arr) != n:
            raise self.post.failed(
                self.model,
                f"changed output {name!r} from {_kind(before)} to {_kind(arr)}; "
                "keep its datatype, rank and rows",
            )
        return arr

    def _extra_tensor(self, out: dict, spec: TensorSpec, n: int) -> np.ndarray:
        assert self.post is not None
        if spec.name not in out:
            raise self.post.failed(self.model, f"did not return declared output {spec.name!r}")
        arr = np.asarray(out[spec.name])
        want = (n, *spec.shape[1:])
        fits = arr.ndim == len(want) and all(
            w in (-1, g) for w, g in zip(want, arr.shape, strict=True)
        )
        if _datatype(arr) != spec.datatype or not fits:
            raise self.post.failed(
                self.model,
                f"returned output {spec.name!r} as {_kind(arr)}; declared {spec.datatype} "
                f"{list(spec.shape)} with {n} rows",
            )
        return arr


def _datatype(arr: np.ndarray) -> str:
    """The V2 datatype of an array, or its numpy dtype when V2 has none."""
    try:
        return datatype_of(arr)
    except TypeError:
        return str(arr.dtype)


def _kind(arr: np.ndarray) -> str:
    return f"{_datatype(arr)} {list(arr.shape)}"


def _checked_item(hook: Hook, model: str, x: Any, i: int, pairs: bool) -> Any:
    if pairs:
        ok = isinstance(x, list | tuple) and len(x) == 2 and all(isinstance(t, str) for t in x)
        if ok:
            return (x[0], x[1])
        raise hook.failed(model, f"returned item {i} that is not a (query, document) pair of str")
    if not isinstance(x, str):
        raise hook.failed(model, f"returned item {i} as a {type(x).__name__}, not a str")
    return x


def load_hooks(model: str, config: HooksConfig | None) -> ModelHooks | None:
    """The model's hooks, loaded (None when it has none); ``LoadError`` names the hook."""
    if config is None or (config.preprocess is None and config.postprocess is None):
        return None
    return ModelHooks(model, config)


def _texts(texts: Any) -> list[str]:
    """A caller's texts as the hook receives them: checked first, so a hook never sees
    a malformed request."""
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise InputError("texts", f"expected a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}]", f"expected str, got {type(t).__name__}")
    return list(texts)


class HookedEngine:
    """The engine as the task adapters see it: the hooks around its task methods.

    Each task method takes ``extra``: a dict the postprocess hook's extra tensors
    are put in (the V2 path passes one; the others leave them out). Without hooks
    every call goes straight through. Everything else is the engine's own.
    """

    def __init__(self, engine: Any, hooks: ModelHooks | None):
        self._engine = engine
        self.hooks = hooks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def _post(self, outputs: dict[str, np.ndarray], inputs: list, extra: dict | None):
        assert self.hooks is not None
        if self.hooks.post is None:
            return outputs
        task, extras = await self.hooks.postprocess(outputs, inputs)
        if extra is not None:
            extra.update(extras)
        return task

    async def _pre(self, inputs: list, pairs: bool, timeout: float | None):
        """Inputs through the preprocess hook, and what is left of the request's
        deadline for the engine: the deadline covers the hook too."""
        assert self.hooks is not None
        if self.hooks.pre is None:
            return inputs, timeout
        start = time.monotonic()
        inputs = await self.hooks.preprocess(inputs, pairs)
        if timeout is None:
            return inputs, None
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(
                f"model {self.hooks.model!r}: the preprocess hook took the request's whole "
                f"{timeout:g} s deadline"
            )
        return inputs, left

    async def aembed(self, texts, timeout=None, extra=None, **options):
        if self.hooks is None:
            return await self._engine.aembed(texts, timeout=timeout, **options)
        texts, timeout = await self._pre(_texts(texts), False, timeout)
        emb = await self._engine.aembed(texts, timeout=timeout, **options)
        return (await self._post({"embedding": emb}, texts, extra))["embedding"]

    async def aembed_with_usage(self, texts, timeout=None, extra=None, **options):
        if self.hooks is None:
            return await self._engine.aembed_with_usage(texts, timeout=timeout, **options)
        texts, timeout = await self._pre(_texts(texts), False, timeout)
        emb, tokens = await self._engine.aembed_with_usage(texts, timeout=timeout, **options)
        return (await self._post({"embedding": emb}, texts, extra))["embedding"], tokens

    async def aclassify(self, texts, top_k=1, timeout=None, extra=None):
        if self.hooks is None:
            return await self._engine.aclassify(texts, top_k, timeout=timeout)
        texts, timeout = await self._pre(_texts(texts), False, timeout)
        results = await self._engine.aclassify(texts, top_k, timeout=timeout)
        if self.hooks.post is None:
            return results
        # The tensors as V2 sends them: [n] for the best label only, else [n, k].
        labels = np.array([[x.label for x in r] for r in results], dtype=object)
        scores = np.array([[x.score for x in r] for r in results], dtype=np.float32)
        if top_k == 1:
            labels, scores = labels[:, 0], scores[:, 0]
        out = await self._post({"label": labels, "score": scores}, texts, extra)
        labels, scores = out["label"], out["score"]
        if labels.ndim == 1:
            labels, scores = labels[:, None], scores[:, None]
        return [
            [LabelScore(_str(x), float(s)) for x, s in zip(lr, sr, strict=True)]
            for lr, sr in zip(labels, scores, strict=True)
        ]

    async def aentities(self, texts, aggregation=None, timeout=None, extra=None):
        if self.hooks is None:
            return await self._engine.aentities(texts, aggregation, timeout=timeout)
        texts, timeout = await self._pre(_texts(texts), False, timeout)
        found = await self._engine.aentities(texts, aggregation, timeout=timeout)
        if self.hooks.post is None:
            return found
        rows = np.array([orjson.dumps([e.as_dict() for e in s]) for s in found], dtype=object)
        out = await self._post({"entities": rows}, texts, extra)
        try:
            return [[Entity(**d) for d in orjson.loads(row)] for row in out["entities"]]
        except (TypeError, ValueError) as e:
            assert self.hooks.post is not None
            raise self.hooks.post.failed(
                self.hooks.model,
                f"returned entities that are not JSON arrays of {{label, text, start, end, "
                f"score}} ({type(e).__name__})",
            ) from None

    async def ascore(self, pairs, raw_scores=False, timeout=None, extra=None):
        if self.hooks is None:
            return await self._engine.ascore(pairs, raw_scores, timeout=timeout)
        firsts, seconds = scoring.check_pairs(pairs)
        pairs, timeout = await self._pre(list(zip(firsts, seconds, strict=True)), True, timeout)
        scores = await self._engine.ascore(pairs, raw_scores, timeout=timeout)
        return (await self._post({"score": scores}, pairs, extra))["score"]

    async def arerank(self, query, documents, top_k=None, raw_scores=False, timeout=None):
        if self.hooks is None:
            return await self._engine.arerank(query, documents, top_k, raw_scores, timeout=timeout)
        # Reranking is scoring (query, document) pairs, then ordering: the hooks see the
        # pairs and the scores, as they do for ``score``.
        documents = scoring.check_rerank(query, documents)
        scoring.rank(np.zeros(1, np.float32), top_k)  # a bad top_k is refused before any work
        scores = await self.ascore([(query, d) for d in documents], raw_scores, timeout)
        return scoring.rank(scores, top_k)


def _str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
