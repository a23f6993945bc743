"""Tokenizer facade: the native WordPiece core, or Hugging Face ``tokenizers``.

``Tokenizer.from_file`` reads a ``tokenizer.json``. When the native core can
reproduce it exactly (BERT normalizer, BERT pre-tokenizer, WordPiece model,
BERT/template post-processor) it is used (``backend == "native"``); anything
else falls back to the ``tokenizers`` library, loudly (a warning log line and
``backend == "huggingface"``). Both paths give the same public API:

- ``encode`` / ``encode_batch``: ``Encoding`` objects, as HF gives them with
  padding off and truncation (longest-first) at ``max_length``;
- ``tokenize``: token sequences held outside Python, with their ``lengths``,
  collated on demand into a padded ``Batch`` (what the engine batches from);
- ``pad_batch``: ``tokenize`` + ``collate`` of everything, as a dict.

Padding or truncation settings stored in the tokenizer.json are ignored on
purpose: padding is the batcher's job and truncation is ``max_length``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textfleet.engine.batch import Batch
from textfleet.engine.errors import InputError

log = logging.getLogger(__name__)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """A batch of texts as a list; anything else is the caller's InputError (HTTP 400),
    naming the item: ``texts[1]: expected str, got int``."""
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        got = "a single str" if isinstance(texts, str) else type(texts).__name__
        raise InputError(name, f"expected a list of str, got {got}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"{name}[{i}]", f"expected str, got {type(t).__name__}")
    return out


@dataclass(frozen=True)
class Encoding:
    """One encoded text (or pair), in the shape HF ``tokenizers`` gives it."""

    ids: list[int]
    type_ids: list[int]
    attention_mask: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


class HFTokenized:
    """``tokenize`` result of the fallback path: id lists kept in Python."""

    def __init__(self, ids: list[list[int]], type_ids: list[list[int]], pad_id: int):
        self._ids = ids
        self._type_ids = type_ids
        self._pad_id = pad_id
        self.lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def collate(self, indices: Sequence[int] | np.ndarray | None = None) -> Batch:
        rows = range(len(self._ids)) if indices is None else [int(i) for i in indices]
        width = max((len(self._ids[i]) for i in rows), default=0)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            n = len(self._ids[i])
            ids[r, :n] = self._ids[i]
            mask[r, :n] = 1
            types[r, :n] = self._type_ids[i]
        return Batch(ids, mask, types)


class HFTokenizer:
    """Fallback: the ``tokenizers`` library with padding off, truncation at max_length."""

    backend = "huggingface"

    def __init__(self, path: Path, max_length: int, num_threads: int):
        from tokenizers import Tokenizer as _HF

        self._tok = _HF.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self.max_length = max_length
        self.num_threads = num_threads
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    @staticmethod
    def _wrap(e) -> Encoding:
        return Encoding(list(e.ids), list(e.type_ids), list(e.attention_mask), list(e.offsets))

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True):
        return self._wrap(self._tok.encode(text, pair, add_special_tokens=add_special_tokens))

    def _inputs(self, texts, pairs):
        if pairs is None:
            return texts
        return list(zip(texts, pairs, strict=True))

    def encode_batch(self, texts, pairs=None, add_special_tokens: bool = True):
        encs = self._tok.encode_batch(
            self._inputs(texts, pairs), add_special_tokens=add_special_tokens
        )
        return [self._wrap(e) for e in encs]

    def tokenize(self, texts, pairs=None) -> HFTokenized:
        encs = self._tok.encode_batch(self._inputs(texts, pairs))
        return HFTokenized([e.ids for e in encs], [e.type_ids for e in encs], self.pad_id)


class Tokenizer:
    """Public tokenizer: one of the two implementations above, one API."""

    def __init__(self, impl):
        self._impl = impl

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, max_length: int = 512, num_threads: int | None = None
    ) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {max_length}")
        threads = default_threads() if num_threads is None else int(num_threads)
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        impl = _load_native(path, max_length, threads)
        if impl is None:
            impl = HFTokenizer(path, max_length, threads)
        return cls(impl)

    @property
    def backend(self) -> str:
        return self._impl.backend

    @property
    def max_length(self) -> int:
        return self._impl.max_length

    @property
    def native(self):
        """The compiled ``_native.WordPieceTokenizer`` for native components (the
        scheduler tokenizes with it), or None on the Hugging Face fallback."""
        return getattr(self._impl, "native", None)

    @property
    def pad_id(self) -> int:
        return self._impl.pad_id

    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True
    ) -> Encoding:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        if pair is not None and not isinstance(pair, str):
            raise TypeError(f"pair must be str or None, got {type(pair).__name__}")
        return self._impl.encode(text, pair, add_special_tokens)

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
    ) -> list[Encoding]:
        texts, pairs = self._check(texts, pairs)
        if not texts:
            return []
        return self._impl.encode_batch(texts, pairs, add_special_tokens)

    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None):
        texts, pairs = self._check(texts, pairs)
        return self._impl.tokenize(texts, pairs)

    def pad_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict:
        return self.tokenize(texts, pairs).collate(None).as_dict()

    @staticmethod
    def _check(texts, pairs):
        texts = check_texts(texts, "texts")
        if pairs is not None:
            pairs = check_texts(pairs, "pairs")
            if len(pairs) != len(texts):
                raise InputError("pairs", f"has {len(pairs)} items but texts has {len(texts)}")
        return texts, pairs


def _load_native(path: Path, max_length: int, num_threads: int):
    """The native implementation, or None (with a warning) if it cannot be exact."""
    # Imported here, not at the top, only to keep engine.tokenizer importable
    # while the extension builds; a missing extension is an error, not a fallback.
    from textfleet.engine.native_tokenizer import NativeTokenizer, unsupported_reason

    reason = unsupported_reason(path)
    if reason is not None:
        log.warning("tokenizer %s falls back to the tokenizers library: %s", path, reason)
        return None
    return NativeTokenizer(path, max_length, num_threads)
