"""Token classification head: per-token probabilities -> entity spans.

Pure numpy + Python, one text at a time. The aggregation strategies are the
ones transformers' ``TokenClassificationPipeline`` defines, reproduced rule for
rule so a model gives the same spans here as there:

- ``none``: every non-special token with its own label (``B-PER`` ...);
- ``simple``: per-token argmax, then adjacent tokens of one type are grouped
  unless a token is tagged ``B-`` (which starts a new group);
- ``first`` / ``max`` / ``average``: sub-word tokens are first folded into
  words (label from the first token / the most confident token / the mean of
  the word's probabilities), then words are grouped as in ``simple``.

A token counts as a sub-word the way the pipeline decides it: for tokenizers
with a continuing-subword prefix (WordPiece ``##``), when the token's string
and the text it covers differ in length; ``[UNK]`` always starts a word.

``merge_gaps`` adds one rule the pipeline lacks: consecutive spans of one type
separated only by nothing or whitespace become one span, whatever their B/I
tags. Models that tag every sub-token ``B-`` (the rampart PII tagger does)
need it, or ``Maplewood`` comes back as ``Maple`` and ``wood``.

Offsets are Python ``str`` indices into the original text (what the native
tokenizer gives), so ``entity.text == text[entity.start:entity.end]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textfleet.engine.errors import InputError, short_repr
from textfleet.engine.tasks.results import Entity

AGGREGATIONS = ("none", "simple", "first", "average", "max")


@dataclass(frozen=True)
class Vocab:
    """What grouping needs from a tokenizer: token strings and special ids."""

    tokens: Sequence[str]  # token string by id ("" where an id has none)
    special_ids: frozenset[int]  # skipped: [CLS], [SEP], [PAD] ... but not [UNK]
    unk_id: int | None
    subword_prefix: str | None  # "##" for WordPiece; None: the pipeline's fallback heuristic

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> Vocab:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        by_id: dict[int, str] = {}
        vocab = model.get("vocab") or {}
        if isinstance(vocab, dict):  # WordPiece / BPE: token -> id
            by_id.update((int(i), t) for t, i in vocab.items())
        else:  # Unigram: [[token, score], ...] in id order
            by_id.update((i, entry[0]) for i, entry in enumerate(vocab))
        special: set[int] = set()
        for added in spec.get("added_tokens") or []:
            by_id[int(added["id"])] = added["content"]
            if added.get("special"):
                special.add(int(added["id"]))
        tokens = [""] * (max(by_id, default=-1) + 1)
        for i, t in by_id.items():
            tokens[i] = t
        unk = model.get("unk_token")
        unk_id = vocab.get(unk) if isinstance(vocab, dict) and unk is not None else None
        # [UNK] stands for real text (an emoji, a too-long word): it is special to the
        # tokenizer but not skipped, as the pipeline's special_tokens_mask does not skip it.
        special.discard(unk_id)
        return cls(
            tokens, frozenset(special), unk_id, model.get("continuing_subword_prefix") or None
        )


@dataclass
class _Piece:
    """A token (or a folded word) on its way into a group."""

    label: str
    score: float
    start: int
    end: int


def check_aggregation(aggregation: str) -> str:
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise InputError(
            "aggregation", f"must be one of {list(AGGREGATIONS)}, got {short_repr(aggregation)}"
        )
    return aggregation


def group_entities(
    text: str,
    ids: np.ndarray,
    offsets: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    vocab: Vocab,
    aggregation: str = "simple",
    merge_gaps: bool = False,
    ignore_labels: Sequence[str] = ("O",),
) -> list[Entity]:
    """Entity spans of one text from its tokens' ids, char offsets and label probabilities.

    ``ids`` [T], ``offsets`` [T, 2], ``probs`` [T, num_labels]: the text's real
    tokens (no padding) including its special tokens, which are skipped here.
    """
    check_aggregation(aggregation)
    ids = np.asarray(ids)
    offsets = np.asarray(offsets)
    keep = [i for i, t in enumerate(ids.tolist()) if t not in vocab.special_ids]
    if not keep:
        return []
    probs = np.asarray(probs, dtype=np.float32)[keep]
    spans = offsets[keep].tolist()
    if aggregation in ("none", "simple"):
        pieces = _token_pieces(probs, spans, labels)
    else:
        subword = _is_subword(text, ids[keep].tolist(), spans, vocab)
        pieces = _word_pieces(probs, spans, subword, labels, aggregation)
    if aggregation == "none":
        groups = [(p.label, [p.score], p.start, p.end) for p in pieces]
    else:
        groups = _group(pieces)
    groups = [g for g in groups if g[0] not in ignore_labels]
    if merge_gaps and aggregation != "none":  # "none" stays one span per token
        groups = _merge_gaps(text, groups)
    return [
        Entity(label, text[start:end], start, end, float(np.mean(scores, dtype=np.float64)))
        for label, scores, start, end in groups
    ]


def _token_pieces(probs: np.ndarray, spans: list, labels: Sequence[str]) -> list[_Piece]:
    best = probs.argmax(axis=1).tolist()
    score = probs.max(axis=1).tolist()
    return [_Piece(labels[b], s, st, en) for b, s, (st, en) in zip(best, score, spans, strict=True)]


def _is_subword(text: str, ids: list[int], spans: list, vocab: Vocab) -> list[bool]:
    out = []
    for tid, (start, end) in zip(ids, spans, strict=True):
        if vocab.unk_id is not None and tid == vocab.unk_id:
            out.append(False)
        elif vocab.subword_prefix:
            token = vocab.tokens[tid] if 0 <= tid < len(vocab.tokens) else ""
            out.append(len(token) != end - start)
        else:  # the pipeline's heuristic for tokenizers that do not mark sub-words
            out.append(start > 0 and " " not in text[start - 1 : start + 1])
    return out


def _word_pieces(
    probs: np.ndarray, spans: list, subword: list[bool], labels: Sequence[str], how: str
) -> list[_Piece]:
    # Word boundaries: a new word at every non-sub-word token (and at token 0).
    starts = [0] + [i for i in range(1, len(subword)) if not subword[i]]
    ends = starts[1:] + [len(subword)]
    pieces = []
    for a, b in zip(starts, ends, strict=True):
        word = probs[a:b]
        if how == "first":
            row = word[0]
        elif how == "max":
            row = word[int(word.max(axis=1).argmax())]
        else:  # average
            row = np.nanmean(word, axis=0)
        best = int(row.argmax())
        pieces.append(_Piece(labels[best], float(row[best]), spans[a][0], spans[b - 1][1]))
    return pieces


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label  # untagged labels continue a group, as in the pipeline


def _group(pieces: list[_Piece]) -> list[tuple[str, list[float], int, int]]:
    """Adjacent pieces of one type form a group; a ``B-`` piece starts a new one."""
    groups: list[tuple[str, list[float], int, int]] = []
    current: list[_Piece] = []
    for p in pieces:
        bi, tag = _tag(p.label)
        if current and tag == _tag(current[-1].label)[1] and bi != "B":
            current.append(p)
            continue
        if current:
            groups.append(_close(current))
        current = [p]
    if current:
        groups.append(_close(current))
    return groups


def _close(pieces: list[_Piece]) -> tuple[str, list[float], int, int]:
    # The group's name is its first label without the B-/I- prefix, as the pipeline names it.
    return (
        pieces[0].label.split("-", 1)[-1],
        [p.score for p in pieces],
        pieces[0].start,
        pieces[-1].end,
    )


def _merge_gaps(text: str, groups: list) -> list:
    merged: list = []
    for label, scores, start, end in groups:
        if merged:
            p_label, p_scores, p_start, p_end = merged[-1]
            # Overlapping spans (several tokens from one character, as Hangul gives) merge too.
            if p_label == label and text[p_end:start].strip() == "":
                merged[-1] = (label, p_scores + scores, p_start, max(p_end, end))
                continue
        merged.append((label, scores, start, end))
    return merged
