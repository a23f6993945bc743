"""Texts longer than ``max_length`` tokens: truncate, refuse, or run in windows.

``EngineConfig.on_overflow`` picks one per engine:

- ``truncate``: the tokenizer keeps the first ``max_length`` tokens (special
  tokens included), as it always did; no extra work.
- ``error``: each request's texts are counted first with a tokenizer that does
  not truncate; the first one over the limit fails the request with
  ``TooLarge`` (HTTP 413) naming its index, its tokens and the limit.
- ``window``: texts that fit run as they are; a longer one is cut into
  overlapping windows of ``max_length`` tokens (engine/windows.py), every
  window queued as its own sequence (so windows of one text batch with other
  requests' texts), and the task joins the windows' rows into the row of the
  whole text (``TaskSpec.join_windows``).

Counting costs one extra tokenization of the request (native, the GIL released,
without the ``max_length`` bound). Windows are token slices of the whole text's
encoding with the tokenizer's special tokens around each, so a token is the
same token in every window and offsets stay offsets into the original string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textfleet.engine.errors import TooLarge
from textfleet.engine.scheduler import Sequences
from textfleet.engine.tokenizer import Tokenizer
from textfleet.engine.windows import Span, window_spans

if TYPE_CHECKING:
    from textfleet.engine.config import EngineConfig
    from textfleet.engine.model_dir import ModelInfo
    from textfleet.engine.tasks.spec import TaskSpec

UNBOUNDED = 1 << 30
"""The ``max_length`` of the counting tokenizer: in effect, no truncation."""


@dataclass(frozen=True)
class Specials:
    """The special tokens a tokenizer puts around one text: ``[CLS]`` before and
    ``[SEP]`` after for BERT, ``<s>`` and ``</s>`` for RoBERTa."""

    prefix_ids: list[int]
    prefix_types: list[int]
    suffix_ids: list[int]
    suffix_types: list[int]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> Specials:
        """Read off one short text encoded with and without special tokens."""
        full = tokenizer.encode("a")
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        for p in range(len(full.ids) - len(bare) + 1):
            if full.ids[p : p + len(bare)] == bare:
                q = p + len(bare)
                return cls(full.ids[:p], full.type_ids[:p], full.ids[q:], full.type_ids[q:])
        raise ValueError("the tokenizer's special tokens do not surround the text; cannot window")

    @property
    def prefix(self) -> int:
        return len(self.prefix_ids)

    @property
    def suffix(self) -> int:
        return len(self.suffix_ids)


@dataclass(frozen=True)
class WindowPlan:
    """One request's sequences when some text needed windows: per text its window
    spans (one span, the whole text, for a text that fits), in text order."""

    sequences: Sequences
    spans: list[list[Span]]


class Overflow:
    """One engine's policy for long texts (see the module doc). Build with ``for_engine``."""

    def __init__(
        self,
        mode: str,
        tokenizer: Tokenizer,
        counter: Tokenizer | None,
        stride: int = 0,
        specials: Specials | None = None,
        join: Any = None,
        info: ModelInfo | None = None,
    ):
        self.mode = mode
        self.max_length = tokenizer.max_length
        self._tokenizer = tokenizer
        self._counter = counter  # no max_length bound; None when truncating
        self.stride = stride
        self.specials = specials
        self._join = join
        self._info = info

    @classmethod
    def for_engine(
        cls,
        config: EngineConfig,
        task: TaskSpec,
        info: ModelInfo,
        tokenizer: Tokenizer,
        tokenizer_path: Path,
        threads: int | None,
    ) -> Overflow:
        """The policy ``config`` asks for; ValueError naming ``on_overflow`` or
        ``window.stride`` when the task or the model cannot have it."""
        mode = config.on_overflow or task.default_overflow
        modes = ["truncate", "error"] + (["window"] if task.join_windows else [])
        if mode not in modes:
            raise ValueError(
                f"on_overflow {mode!r} is not available for task {task.name!r}; "
                f"choose {' or '.join(modes)}"
            )
        if config.window is not None and mode != "window":
            raise ValueError(f"window settings apply to on_overflow 'window' only, not {mode!r}")
        if mode == "truncate":
            return cls(mode, tokenizer, None)
        counter = Tokenizer.from_file(tokenizer_path, max_length=UNBOUNDED, num_threads=threads)
        if mode == "error":
            return cls(mode, tokenizer, counter)
        specials = Specials.of(tokenizer)
        size = tokenizer.max_length - specials.prefix - specials.suffix
        stride = (
            config.window.stride if config.window and config.window.stride is not None else None
        )
        if stride is None:
            stride = size // 4
        if stride >= size:
            raise ValueError(
                f"window.stride {stride} must be less than {size}: the text tokens of one "
                f"window (max_length {tokenizer.max_length} less "
                f"{specials.prefix + specials.suffix} special tokens)"
            )
        return cls(mode, tokenizer, counter, stride, specials, task.join_windows, info)

    @property
    def window_size(self) -> int:
        """Text tokens per window (special tokens not counted)."""
        return self.max_length - self.specials.prefix - self.specials.suffix

    @property
    def offsets_tokenizer(self) -> Tokenizer:
        """The tokenizer whose encodings line up with the rows a request gets back:
        the whole text's when windows may have been joined, else the truncating one."""
        return self._counter if self.mode == "window" else self._tokenizer

    def plan(self, texts: list[str], pairs: list[str] | None = None) -> WindowPlan | None:
        """None when the texts go to the model as they are (truncated if need be);
        raises TooLarge under ``error``; the windows under ``window``."""
        if self.mode == "truncate":
            return None
        lengths = self._counter.tokenize(texts, pairs).lengths
        over = np.flatnonzero(lengths > self.max_length)
        if over.size == 0:
            return None
        if self.mode == "error":
            i = int(over[0])
            field = "texts" if pairs is None else "pairs"
            raise TooLarge(
                f"{field}[{i}]",
                f"has {int(lengths[i])} tokens; the model takes at most {self.max_length} "
                "(on_overflow: error)",
            )
        return self._windows(texts)

    def _windows(self, texts: list[str]) -> WindowPlan:
        sp, size = self.specials, self.window_size
        ids: list[list[int]] = []
        types: list[list[int]] = []
        spans: list[list[Span]] = []
        for enc in self._counter.encode_batch(texts, add_special_tokens=False):
            tids, ttypes = list(enc.ids), list(enc.type_ids)
            text_spans = window_spans(len(tids), size, self.stride)
            for start, end in text_spans:
                ids.append(sp.prefix_ids + tids[start:end] + sp.suffix_ids)
                types.append(sp.prefix_types + ttypes[start:end] + sp.suffix_types)
            spans.append(text_spans)
        return WindowPlan(Sequences(ids, types), spans)

    def join(self, plan: WindowPlan, rows) -> list:
        """Per text, its row: its only window's, or its windows' joined by the task."""
        out, i = [], 0
        for spans in plan.spans:
            part = [rows[j] for j in range(i, i + len(spans))]
            i += len(spans)
            if len(part) == 1:
                out.append(part[0])
            else:
                out.append(
                    self._join(part, spans, self.specials.prefix, self.specials.suffix, self._info)
                )
        if i != len(rows):  # every window's row is used exactly once
            raise RuntimeError(f"{len(rows)} rows came back for {i} windows")
        return out
