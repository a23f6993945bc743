"""Per-text results of the task heads: small frozen records, one type per task.

They cross process boundaries (Ray pickles them) and serve/ turns them into
protocol shapes with ``as_dict``; nothing here knows about tokens or padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One label of a classified text and its probability (or raw score)."""

    label: str
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity span; ``text == original[start:end]`` (Python str indices)."""

    label: str
    text: str
    start: int
    end: int
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Ranked:
    """One reranked document: its index in the request and its score."""

    index: int
    score: float

    def as_dict(self) -> dict:
        return asdict(self)
