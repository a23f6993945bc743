"""The one data type that crosses from tokenization to a backend.

A ``Batch`` is what a backend consumes: padded int64 arrays of one shape
``[rows, width]``. The native core builds them (no per-token Python objects);
the Hugging Face fallback builds them with numpy. Nothing else about a batch
(which request a row belongs to, how long it waited) lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # int64 [rows, width]
    attention_mask: np.ndarray  # int64 [rows, width], 1 for real tokens
    token_type_ids: np.ndarray  # int64 [rows, width]
    alone: bool = False  # no other batch computes meanwhile: a backend may use every core

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.width

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
