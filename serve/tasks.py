"""Per-task adapters: what a task's tensors are called and which engine call serves them.

The protocol modules know wire formats, the engine knows models; an adapter
says, for one task, which V2 inputs and outputs it has, how a V1 instance or
an OpenAI request becomes an engine call, and what comes back. ``ModelServer``
only ever talks to an adapter, so a new task (classification, token
classification, pair scoring) is one more class in ``TASKS``, nothing else.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from engine.errors import InputError
from serve.config import ModelConfig
from serve.protocols import openai, v1, v2
from serve.protocols.common import Reply, TensorSpec, check_count


class TaskAdapter:
    """Base: the protocol surface every task has, and clear errors for the rest."""

    task: ClassVar[str] = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(self, engine: Any, config: ModelConfig):
        self.engine = engine
        self.config = config
        self.name = config.name
        self.max_texts = config.limits.max_texts

    def timeout(self, requested: float | None) -> float | None:
        return requested if requested is not None else self.config.request_timeout_s

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        """V2 inputs -> named output arrays."""
        raise NotImplementedError

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        """V1 instances -> the ``predictions`` list."""
        raise NotImplementedError

    async def openai_embeddings(self, obj: dict[str, Any]) -> Reply:
        raise self._wrong_task("/v1/embeddings", "embedding")

    async def embed(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        raise self._wrong_task("embed", "embedding")

    def _wrong_task(self, what: str, needs: str) -> InputError:
        return InputError(
            "model", f"model {self.name!r} is a {self.task} model; {what} needs an {needs} model"
        )


class EmbeddingTask(TaskAdapter):
    """Sentence embeddings: texts in, one float32 vector per text out."""

    task = "embedding"

    def __init__(self, engine: Any, config: ModelConfig):
        super().__init__(engine, config)
        self.dim = int(engine.info.dim)
        self.inputs = (TensorSpec("text", "BYTES", (-1,)),)
        self.outputs = (TensorSpec("embedding", "FP32", (-1, self.dim)),)

    async def embed(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """The Python handle call: a list of str -> float32 [n, dim]."""
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise InputError("texts", f"expected a list of str, got {type(texts).__name__}")
        check_count(len(texts), self.max_texts, "texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}]", f"expected str, got {type(t).__name__}")
        return await self._run(list(texts), timeout)

    async def _run(self, texts: list[str], timeout: float | None) -> np.ndarray:
        out = await self.engine.aembed(texts, timeout=self.timeout(timeout))
        if len(out) != len(texts):  # every text gets exactly one row back, in order
            raise RuntimeError(f"engine returned {len(out)} embeddings for {len(texts)} texts")
        return out

    async def infer(self, req: v2.InferRequest) -> dict[str, np.ndarray]:
        v2.check_input_names(req, self.inputs)
        texts = v2.texts_input(req, "text", self.max_texts)
        return {"embedding": await self._run(texts, req.timeout_s)}

    async def v1_predictions(self, instances: list[Any]) -> list[Any]:
        texts = v1.texts_from_instances(instances, self.max_texts)
        return list(await self._run(texts, None))

    async def openai_embeddings(self, obj: dict[str, Any]) -> Reply:
        req = openai.parse_embeddings_request(obj, self.max_texts)
        openai.check_dimensions(req, self.dim)
        emb = await self._run(req.texts, None)
        tokens = int(sum(self.engine.count_tokens(req.texts)))
        return openai.embeddings_reply(req, emb, tokens)


TASKS: dict[str, type[TaskAdapter]] = {"embedding": EmbeddingTask}


def adapter_for(engine: Any, config: ModelConfig) -> TaskAdapter:
    """The adapter of the engine's task; a task mismatch with the config is an error."""
    task = engine.info.task
    if config.task is not None and config.task != task:
        raise ValueError(
            f"model {config.name!r}: models.yaml says task {config.task!r} but "
            f"{config.model_dir} holds a {task!r} model"
        )
    try:
        cls = TASKS[task]
    except KeyError:
        raise ValueError(
            f"model {config.name!r}: task {task!r} cannot be served yet; served tasks: "
            f"{', '.join(TASKS)}"
        ) from None
    return cls(engine, config)
