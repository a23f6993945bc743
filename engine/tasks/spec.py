"""``TaskSpec``: everything the engine and the layers above need to know about one task.

Each task module (embedding.py, classification.py, token_classification.py,
pair_scoring.py) declares one ``TASK``; registry.py collects them. Exporters,
the model directory schema, the engine, the serve adapters and the CLI read
these fields instead of branching on task names, so a task is added in one
place. Fields are plain data, or engine-level callables (no torch, no wire
formats): the serve layer builds its adapters from them, the build layer its
graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textfleet.engine.model_dir import ModelDir, ModelInfo


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model's V2 metadata; -1 marks a variable dimension and
    ``"dim"`` the model's output width (``ModelInfo.dim``), filled in by ``sized``."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]

    def sized(self, dim: int) -> TensorSpec:
        return replace(self, shape=tuple(dim if d == "dim" else d for d in self.shape))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


TEXTS = (TensorSpec("text", "BYTES", (-1,)),)
"""The V2 input of a task that takes texts: one string per row."""


@dataclass(frozen=True)
class TaskState:
    """What a task reads from the model directory once, at load (errors then, not later)."""

    labels: list[str] = field(default_factory=list)
    activation: str = "none"
    vocab: Any = None  # entities.Vocab for token classification


def no_state(md: ModelDir) -> TaskState:
    return TaskState()


def no_check(info: ModelInfo) -> str | None:
    return None


@dataclass(frozen=True)
class TaskSpec:
    """One task, as data. Field docs say who reads them."""

    name: str
    """The task's name in textfleet.json, models.yaml and ``--task``."""
    auto_class: str
    """transformers class that loads the weights (export, torch backend)."""
    onnx_output: str
    """Graph output the exporter writes and the head reads (a model output attribute)."""
    output_rank: int
    """Its rank, [rows, labels] (2) or [rows, tokens, width] (3); import-onnx checks it."""
    output_width: Callable[[dict, str], int]
    """``(config.json dict, where)`` -> ``ModelInfo.dim``; raises ModelDirError naming ``where``."""
    width_of: str | None
    """What one output row counts, for errors ("labels (config.json id2label)");
    None: a free width (hidden size) that an imported graph decides."""
    head: Callable[[ModelInfo], Callable]
    """Batch head factory: model outputs of one batch -> one row per sequence."""
    methods: tuple[str, ...]
    """``Engine`` methods serving the task (sync and async); any other task method refuses."""
    v2_outputs: tuple[TensorSpec, ...]
    """KServe V2 output tensors of the served model (serve/tasks.py adapters)."""
    predict: Callable[..., list[str]]
    """``textfleet predict``: ``(engine, texts, query=, top_k=, aggregation=)`` -> lines."""
    v2_inputs: tuple[TensorSpec, ...] = TEXTS
    """KServe V2 input tensors."""
    pairs: bool = False
    """Inputs are (query, document) pairs."""
    ragged: bool = False
    """Rows differ in shape (per-token rows): the scheduler keeps a list, else stacks them."""
    pooled: bool = False
    """The head pools the token vectors into one row per text (``pooling``/``normalize``):
    a backend may pool on its device instead and hand the head the pooled rows."""
    load_state: Callable[[ModelDir], TaskState] = no_state
    """What ``Engine`` reads from the directory at load (labels, vocabulary)."""
    options: tuple[str, ...] = ()
    """ModelInfo fields only this task uses; set on another task they are an error,
    ``textfleet export`` reads them for this one, and ``describe`` prints them."""
    check_info: Callable[[ModelInfo], str | None] = no_check
    """More rules for textfleet.json: an error message, or None when the info is valid."""
    join_windows: Callable[..., Any] | None = None
    """``(rows, spans, prefix, suffix, info)`` -> the row of a whole text from the rows of
    its windows (engine/windows.py); None: the task cannot run ``on_overflow: window``."""
    default_overflow: str = "truncate"
    """``EngineConfig.on_overflow`` when the config leaves it unset."""


def short(text: str) -> str:
    return text if len(text) <= 70 else text[:67] + "..."


def per_text_lines(texts: Sequence[str], results: Sequence[Sequence[Any]]) -> list[str]:
    """Each text, then its results (records with ``as_dict``) indented below it."""
    lines = []
    for text, found in zip(texts, results, strict=True):
        lines.append(short(text))
        lines.extend(f"    {item.as_dict()}" for item in found)
    return lines
