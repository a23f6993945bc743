"""Tasks: one module per task (embedding, classification, token_classification,
pair_scoring), each declaring one ``TaskSpec``; ``registry.TASKS`` collects them.

The heads are pure functions from model outputs (numpy) to per-text results;
the engine runs the model and calls them.
"""

from textfleet.engine.tasks.results import Entity, LabelScore, Ranked

__all__ = ["Entity", "LabelScore", "Ranked"]
