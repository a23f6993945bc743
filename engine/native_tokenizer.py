"""The native WordPiece tokenizer: reads ``tokenizer.json``, builds ``textfleet.engine._native``.

``unsupported_reason(path)`` says why the native core could not reproduce a
``tokenizer.json`` exactly (``None`` when it can): the facade in
``engine.tokenizer`` then falls back to the ``tokenizers`` library. What the
native core reproduces: a ``WordPiece`` model, a ``BertNormalizer``, a
``BertPreTokenizer``, a ``TemplateProcessing`` or ``BertProcessing``
post-processor, and added tokens matched in the raw text
(``normalized: false`` without ``lstrip`` / ``rstrip`` / ``single_word``).
Padding and truncation stored in the file are ignored on purpose (see
``engine.tokenizer``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textfleet.engine import _native
from textfleet.engine.batch import Batch

TemplatePiece = tuple[str, list[int], int]


def _read(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_model(model: Any) -> str | None:
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else model
        return f"model type {kind!r} is not WordPiece"
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        return "WordPiece vocab is missing or empty"
    if model.get("unk_token") not in vocab:
        return f"unk_token {model.get('unk_token')!r} is not in the vocab"
    if not all(isinstance(i, int) and 0 <= i < 2**31 for i in vocab.values()):
        return "vocab ids must be non-negative 32-bit ints"
    return None


def _check_normalizer(norm: Any) -> str | None:
    if not isinstance(norm, dict) or norm.get("type") != "BertNormalizer":
        kind = norm.get("type") if isinstance(norm, dict) else norm
        return f"normalizer {kind!r} is not BertNormalizer"
    known = {"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"}
    extra = set(norm) - known
    return f"BertNormalizer has unknown options {sorted(extra)}" if extra else None


def _check_pre_tokenizer(pre: Any) -> str | None:
    if not isinstance(pre, dict) or pre.get("type") != "BertPreTokenizer":
        kind = pre.get("type") if isinstance(pre, dict) else pre
        return f"pre_tokenizer {kind!r} is not BertPreTokenizer"
    return None


def _check_post_processor(post: Any) -> str | None:
    kind = post.get("type") if isinstance(post, dict) else None
    if kind not in ("TemplateProcessing", "BertProcessing"):
        return f"post_processor {kind or post!r} is not TemplateProcessing or BertProcessing"
    return None


def _check_added_tokens(added: Any) -> str | None:
    for tok in added or []:
        for flag in ("lstrip", "rstrip", "single_word", "normalized"):
            if tok.get(flag):
                return f"added token {tok.get('content')!r} has {flag}=true"
    return None


def unsupported_reason(path: str | Path) -> str | None:
    """Why the native tokenizer cannot reproduce this tokenizer.json exactly, or None."""
    try:
        cfg = _read(Path(path))
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {e}"
    checks = (
        _check_model(cfg.get("model")),
        _check_normalizer(cfg.get("normalizer")),
        _check_pre_tokenizer(cfg.get("pre_tokenizer")),
        _check_post_processor(cfg.get("post_processor")),
        _check_added_tokens(cfg.get("added_tokens")),
    )
    return next((c for c in checks if c is not None), None)


def _template(pieces: list[dict], special: dict[str, list[int]]) -> list[TemplatePiece]:
    out: list[TemplatePiece] = []
    for piece in pieces:
        if "Sequence" in piece:
            seq = piece["Sequence"]
            out.append((seq["id"], [], int(seq["type_id"])))
        else:
            tok = piece["SpecialToken"]
            out.append(("special", special[tok["id"]], int(tok["type_id"])))
    return out


def _templates(post: dict) -> tuple[list[TemplatePiece], list[TemplatePiece]]:
    """(single, pair) templates; BertProcessing is the classic BERT template."""
    if post["type"] == "BertProcessing":
        sep_id, cls_id = post["sep"][1], post["cls"][1]
        single = [("special", [cls_id], 0), ("A", [], 0), ("special", [sep_id], 0)]
        return single, [*single, ("B", [], 1), ("special", [sep_id], 1)]
    special = {k: [int(i) for i in v["ids"]] for k, v in post["special_tokens"].items()}
    return _template(post["single"], special), _template(post["pair"], special)


def _added_tokens(path: Path) -> list[tuple[str, int]]:
    """(content, id) of the added tokens, with the ids HF really assigns them."""
    from tokenizers import Tokenizer as _HF

    decoder = _HF.from_file(str(path)).get_added_tokens_decoder()
    return sorted((tok.content, int(i)) for i, tok in decoder.items() if tok.content)


class NativeTokenized:
    """``tokenize`` result: sequences held natively, collated into a ``Batch`` on demand."""

    def __init__(self, native: _native.Tokenized):
        self._native = native
        self.lengths: np.ndarray = native.lengths

    def __len__(self) -> int:
        return len(self._native)

    def collate(self, indices: Sequence[int] | np.ndarray | None = None) -> Batch:
        return Batch(*self._native.collate(indices))


class NativeTokenizer:
    """The native implementation behind ``engine.tokenizer.Tokenizer``."""

    backend = "native"

    def __init__(self, path: str | Path, max_length: int, num_threads: int, scan_bytes: int = 0):
        """``scan_bytes``: bytes of text normalized per step; 0 (the default) sizes
        steps from the tokens still needed, so a text costs about max_length tokens
        of work whatever its size. A small fixed step is for tests."""
        path = Path(path)
        reason = unsupported_reason(path)
        if reason is not None:
            raise ValueError(f"{path}: {reason}")
        cfg = _read(path)
        model, norm = cfg["model"], cfg["normalizer"]
        vocab = model["vocab"]
        lowercase = bool(norm.get("lowercase", True))
        strip = norm.get("strip_accents")
        single, pair = _templates(cfg["post_processor"])
        added = _added_tokens(path)
        pad = dict(added).get("[PAD]", vocab.get("[PAD]"))
        self._tok = _native.WordPieceTokenizer(
            vocab=list(vocab.items()),
            unk_id=vocab[model["unk_token"]],
            continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
            max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            clean_text=bool(norm.get("clean_text", True)),
            handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
            strip_accents=lowercase if strip is None else bool(strip),
            lowercase=lowercase,
            added_tokens=added,
            single=single,
            pair=pair,
            max_length=max_length,
            pad_id=0 if pad is None else pad,
            num_threads=num_threads,
            scan_bytes=scan_bytes,
        )
        self.max_length = max_length
        self.num_threads = num_threads
        self.pad_id = self._tok.pad_id

    @property
    def native(self) -> _native.WordPieceTokenizer:
        """The compiled tokenizer, for native components (csrc/bind_tokenizer.h)."""
        return self._tok

    @property
    def scanned_bytes(self) -> int:
        """Bytes of input text normalized so far (all threads): the work done."""
        return self._tok.scanned_bytes

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True):
        return self._tok.encode(text, pair, add_special_tokens)

    def encode_batch(self, texts, pairs=None, add_special_tokens: bool = True):
        return self._tok.encode_batch(texts, pairs, add_special_tokens)

    def tokenize(self, texts, pairs=None) -> NativeTokenized:
        return NativeTokenized(self._tok.tokenize(texts, pairs))
