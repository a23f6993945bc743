"""Which version of a versioned model answers a request: weights and sticky keys.

Pure and Ray-free, so the split is tested exactly. Versions with weight 0 are
known (their own route and a named pick reach them) but never picked.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from itertools import accumulate


def sticky_point(key: str) -> float:
    """A stable point in [0, 1) for ``key``: the same on every replica and restart
    (Python's ``hash`` is salted per process, so it is not used)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class TrafficPlan:
    """The weights of a model's versions and how a request picks one."""

    def __init__(self, weights: Mapping[str, float], sticky_header: str | None = None):
        bad = {v: w for v, w in weights.items() if not isinstance(w, int | float) or w < 0}
        if bad or not weights or sum(weights.values()) <= 0:
            raise ValueError(
                f"weights: expected non-negative numbers summing above 0, got {dict(weights)}"
            )
        self.weights = dict(weights)
        self.sticky_header = sticky_header.lower() if sticky_header else None
        self._names, self._bounds = self._table(self.weights)

    @staticmethod
    def _table(weights: Mapping[str, float]) -> tuple[list[str], list[float]]:
        names = [v for v, w in weights.items() if w > 0]
        return names, list(accumulate(weights[v] for v in names))

    def shares(self) -> dict[str, float]:
        """Each version's expected share of unversioned requests."""
        total = sum(self.weights.values())
        return {v: w / total for v, w in self.weights.items()}

    def pick(self, key: str | None = None, exclude: Iterable[str] = ()) -> str | None:
        """A version for one request: by ``key``'s point when given (sticky), else at
        random, in proportion to the weights; None when ``exclude`` leaves none."""
        names, bounds = self._names, self._bounds
        excluded = set(exclude)
        if excluded:
            names, bounds = self._table(
                {v: w for v, w in self.weights.items() if v not in excluded}
            )
            if not names:
                return None
        point = sticky_point(key) if key is not None else random.random()
        i = bisect_right(bounds, point * bounds[-1])
        return names[min(i, len(names) - 1)]
