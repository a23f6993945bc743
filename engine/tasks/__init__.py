"""Task heads beyond embeddings: classification, token classification, pair scoring.

Each head is a pure function from model outputs (numpy) to per-text results;
the engine runs the model and calls them. ``TASK_SPECS`` is every task a model
directory may declare, with the transformers class that builds its model (the
exporter and the torch backend both use it) and the graph output it reads.
"""

from dataclasses import dataclass

from textfleet.engine.tasks.results import Entity, LabelScore, Ranked


@dataclass(frozen=True)
class TaskSpec:
    """One task's model: the transformers auto class and the graph output."""

    auto_class: str
    output: str


TASK_SPECS: dict[str, TaskSpec] = {
    "embedding": TaskSpec(auto_class="AutoModel", output="last_hidden_state"),
    "classification": TaskSpec("AutoModelForSequenceClassification", "logits"),
    "token-classification": TaskSpec("AutoModelForTokenClassification", "logits"),
    # A cross-encoder is a sequence classifier with one label, fed (query, document).
    "pair-scoring": TaskSpec("AutoModelForSequenceClassification", "logits"),
}

TASKS = tuple(TASK_SPECS)

__all__ = ["TASKS", "TASK_SPECS", "Entity", "LabelScore", "Ranked", "TaskSpec"]
