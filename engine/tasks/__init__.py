"""Task heads beyond embeddings: classification, token classification, pair scoring.

Each head is a pure function from model outputs (numpy) to per-text results;
the engine runs the model and calls them. ``TASKS`` is every task a model
directory may declare.
"""

from textfleet.engine.tasks.results import Entity, LabelScore, Ranked

TASKS = ("embedding", "classification", "token-classification", "pair-scoring")

__all__ = ["TASKS", "Entity", "LabelScore", "Ranked"]
