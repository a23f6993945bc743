"""Long inputs: ``on_overflow`` truncate | error | window, against real references.

- token classification (the rampart PII tagger): synthetic 5,000-token texts
  with PII planted across every window boundary come back with exactly the
  planted spans, once each; a text that fits gives the same spans windowed as
  run whole; merged probabilities equal the rows of the window owning each token;
- embeddings: the windowed vector equals the token-weighted mean of the
  per-window vectors computed here by hand from the backend and head, normalised;
- error: 413-type TooLarge naming the text, its tokens and the limit;
- usage: the tokens of every window computed.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from textfleet.engine.batch import Batch
from textfleet.engine.engine import Engine
from textfleet.engine.errors import TooLarge
from textfleet.engine.tasks import entities as entity_grouping
from textfleet.engine.tokenizer import Tokenizer
from textfleet.engine.windows import merge_token_rows, owned_spans, pool_windows, window_spans

# ---------------------------------------------------------------- the window arithmetic


@pytest.mark.parametrize("size,stride", [(5, 0), (5, 4), (16, 3), (126, 31), (510, 127)])
def test_windows_cover_the_text_full_length_with_the_stride_shared(size, stride):
    for n in range(1, 4 * size + 7):
        spans = window_spans(n, size, stride)
        assert spans[0][0] == 0 and spans[-1][1] == n
        if n <= size:
            assert spans == [(0, n)]
            continue
        assert all(end - start == size for start, end in spans)
        assert all(
            b[0] > a[0] and a[1] - b[0] >= stride for a, b in zip(spans, spans[1:], strict=False)
        )
        assert len(spans) == 1 + -(-(n - size) // (size - stride))  # as few as the stride allows
        owned = owned_spans(spans)  # every token owned once, inside its window
        assert owned[0][0] == 0 and owned[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(owned, owned[1:], strict=False))
        assert all(s <= a <= b <= e for (s, e), (a, b) in zip(spans, owned, strict=True))


def test_window_spans_refuse_a_stride_as_large_as_the_window():
    with pytest.raises(ValueError, match="stride"):
        window_spans(100, 10, 10)


def test_merged_rows_take_each_token_from_its_owner_and_specials_from_the_ends():
    spans = window_spans(23, 10, 4)
    rows = [np.full((1 + 10 + 1, 2), k, np.float32) for k in range(len(spans))]
    merged = merge_token_rows(rows, spans, prefix=1, suffix=1)
    assert merged.shape == (1 + 23 + 1, 2)
    owner = np.concatenate([[k] * (b - a) for k, (a, b) in enumerate(owned_spans(spans))])
    assert merged[1:-1, 0].tolist() == owner.tolist()
    assert merged[0, 0] == 0 and merged[-1, 0] == len(spans) - 1


def test_pooled_windows_are_the_token_weighted_mean_normalised():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    out = pool_windows(vectors, [3, 1], normalize=True)
    np.testing.assert_allclose(out, np.array([3, 1]) / np.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(pool_windows(vectors, [3, 1], normalize=False), [0.75, 0.25])


# ---------------------------------------------------------------- token classification

FILLER = [
    "the",
    "report",
    "covers",
    "growth",
    "in",
    "several",
    "regions",
    "and",
    "the",
    "outlook",
    "for",
    "next",
    "year",
    ".",
]
ADDRESS = ["He", "lives", "at", "42", "Maplewood", "Avenue", ",", "Springfield", "."]
ADDRESS_PII = [
    ("BUILDING_NUMBER", "42"),
    ("STREET_NAME", "Maplewood Avenue"),
    ("CITY", "Springfield"),
]
STREET_TOKEN = 5  # "##wood" of maple ##wood: the sentence's tokens 4..6 are the street


class Planter:
    """Builds a text word by word with known token positions and planted PII."""

    def __init__(self, tokenizer):
        self.count = {w: len(tokenizer.encode(w, add_special_tokens=False).ids) for w in FILLER}
        self.count |= {w: len(tokenizer.encode(w, add_special_tokens=False).ids) for w in ADDRESS}
        assert all(self.count[w] == 1 for w in FILLER)  # filler words are one token each
        self.words: list[str] = []
        self.tokens = 0
        self.expected: list[tuple[str, int, int]] = []

    def filler(self, word: str) -> None:
        self.words.append(word)
        self.tokens += 1

    def plant(self) -> None:
        start = len(" ".join(self.words)) + (1 if self.words else 0)
        sentence = " ".join(ADDRESS)
        for label, value in ADDRESS_PII:
            at = start + sentence.index(value)
            self.expected.append((label, at, at + len(value)))
        self.words += ADDRESS
        self.tokens += sum(self.count[w] for w in ADDRESS)

    @property
    def text(self) -> str:
        return " ".join(self.words)


def spans_of(found) -> list[tuple[str, int, int]]:
    return sorted((e.label, e.start, e.end) for e in found)


@pytest.fixture(scope="module")
def tagger(rampart_dir):
    engine = Engine.load(rampart_dir)  # token classification: windows by default
    yield engine
    engine.close()


def test_token_classification_windows_by_default(tagger):
    assert tagger.on_overflow == "window"
    assert tagger._overflow.stride == tagger._overflow.window_size // 4


def test_pii_across_every_window_boundary_of_a_5000_token_text_comes_out_once(tagger):
    """The street name's middle token sits on every window's first and last token
    and on every cut between the windows' owned parts: each planted span must come
    back whole, with its offsets into the whole text, exactly once, nothing else."""
    n = 5000
    overflow = tagger._overflow
    spans = window_spans(n, overflow.window_size, overflow.stride)
    assert len(spans) >= 10
    owned = owned_spans(spans)
    boundaries = {b for _, b in owned[:-1]} | {e - 1 for _, e in spans[:-1]}
    boundaries |= {s for s, _ in spans[1:]}
    starts = sorted(b - STREET_TOKEN for b in boundaries)
    planter = Planter(tagger.tokenizer)
    rng = random.Random(0)
    for start in starts:
        while planter.tokens < start:
            planter.filler(rng.choice(FILLER))
        assert planter.tokens == start  # previous plants never run past the next start
        planter.plant()
    while planter.tokens < n:
        planter.filler(rng.choice(FILLER))
    text = planter.text
    assert len(overflow.offsets_tokenizer.encode(text, add_special_tokens=False).ids) == n
    found = tagger.entities([text])[0]
    assert spans_of(found) == sorted(planter.expected)
    assert all(text[e.start : e.end] == e.text for e in found)
    # the async path (the one serving uses) gives the same
    again = asyncio.run(tagger.aentities([text, "John lives at 42 Maplewood Avenue."]))
    assert spans_of(again[0]) == sorted(planter.expected)


@pytest.mark.parametrize("seed", [2, 3])
def test_a_text_that_fits_gives_the_same_spans_windowed(rampart_dir, tagger, seed):
    rng = random.Random(seed)
    planter = Planter(tagger.tokenizer)
    while planter.tokens < 200:
        if rng.random() < 0.08:
            planter.plant()
        else:
            planter.filler(rng.choice(FILLER))
    whole = tagger.entities([planter.text])[0]  # fits in 512: one sequence
    with Engine.load(rampart_dir, max_length=48) as small:  # the same text in ~6 windows
        assert len(small._overflow.plan([planter.text]).spans[0]) >= 5
        windowed = small.entities([planter.text])[0]
    assert spans_of(windowed) == spans_of(whole) == sorted(planter.expected)
    # Scores move with the context (position embeddings, what the window shows; this
    # tagger is surer of itself in short windows): the same spans, not the same
    # numbers, is what windowing can promise.
    assert all(e.score > 0.5 for e in windowed)


def test_merged_probabilities_are_the_owning_windows_rows(rampart_dir):
    """Reference: each window run alone through the backend and head here, its rows
    put where the documented rule says (the middle of each overlap), then grouped."""
    text = " ".join(["Maria Garcia moved to 17 Oak Street in Denver last spring."] * 12)
    with Engine.load(rampart_dir, max_length=40, window={"stride": 12}) as engine:
        counter = engine._overflow.offsets_tokenizer
        bare = counter.encode(text, add_special_tokens=False)
        full = counter.encode(text)
        spans = window_spans(len(bare.ids), 38, 12)
        rows = []
        for start, end in spans:
            ids = np.array([[full.ids[0], *bare.ids[start:end], full.ids[-1]]], np.int64)
            batch = Batch(ids, np.ones_like(ids), np.zeros_like(ids))
            rows.append(engine.head(engine.backend.run(batch), batch)[0])
        probs = np.empty((len(full.ids), rows[0].shape[1]), np.float32)
        probs[0], probs[-1] = rows[0][0], rows[-1][-1]
        for row, (start, _), (a, b) in zip(rows, spans, owned_spans(spans), strict=True):
            probs[1 + a : 1 + b] = row[1 + a - start : 1 + b - start]
        got = engine._forward([text])[0]
        np.testing.assert_allclose(got, probs, atol=1e-6)
        expected = entity_grouping.group_entities(
            text, np.array(full.ids), np.array(full.offsets), probs, engine._task.labels,
            engine._task.vocab, "simple", engine.info.merge_gaps,
        )  # fmt: skip
        assert engine.entities([text])[0] == expected


def test_truncate_keeps_the_old_behaviour_for_token_classification(rampart_dir, tagger):
    text = "x " * 600 + "He lives at 42 Maplewood Avenue, Springfield."
    with Engine.load(rampart_dir, on_overflow="truncate") as engine:
        assert engine.entities([text])[0] == []  # the address is past max_length
    assert [e.text for e in tagger.entities([text])[0]][-3:] == [
        "42", "Maplewood Avenue", "Springfield",
    ]  # fmt: skip


# ---------------------------------------------------------------- embeddings


def test_windowed_embedding_is_the_weighted_mean_of_the_window_embeddings(model_dir):
    text = " ".join(
        f"sentence {i} talks about topic {i % 7} and some more words." for i in range(60)
    )
    with Engine.load(model_dir, max_length=64, on_overflow="window", window={"stride": 16}) as eng:
        assert eng.info.normalize
        counter = eng._overflow.offsets_tokenizer
        bare = counter.encode(text, add_special_tokens=False).ids
        cls_id, sep_id = eng.tokenizer.encode("a").ids[0], eng.tokenizer.encode("a").ids[-1]
        spans = window_spans(len(bare), 62, 16)
        assert len(spans) > 3
        vectors, weights = [], []
        for start, end in spans:
            ids = np.array([[cls_id, *bare[start:end], sep_id]], np.int64)
            batch = Batch(ids, np.ones_like(ids), np.zeros_like(ids))
            vectors.append(eng.head(eng.backend.run(batch), batch)[0])
            weights.append(ids.shape[1])
        mean = np.average(np.stack(vectors).astype(np.float64), axis=0, weights=weights)
        expected = mean / np.linalg.norm(mean)
        short = "a short text fits in one window"
        got = eng.embed([short, text])
        np.testing.assert_allclose(got[1], expected, atol=1e-5)
        with Engine.load(model_dir, max_length=64) as truncating:
            assert truncating.on_overflow == "truncate"  # the embedding default
            np.testing.assert_allclose(got[0], truncating.embed([short])[0], atol=1e-6)
        vectors_async, tokens = asyncio.run(eng.aembed_with_usage([short, text]))
        np.testing.assert_allclose(vectors_async, got, atol=1e-6)
        # usage: every window's tokens, special tokens in, overlaps counted twice
        assert tokens == len(eng.tokenizer.encode(short).ids) + sum(weights)


# ---------------------------------------------------------------- error


def test_error_names_the_text_its_tokens_and_the_limit(model_dir):
    with Engine.load(model_dir, max_length=16, on_overflow="error") as engine:
        long = "one two three four five six seven eight nine ten eleven twelve thirteen " * 2
        tokens = len(Tokenizer.from_file(model_dir.tokenizer_path, 4096).encode(long).ids)
        assert tokens > 16
        with pytest.raises(TooLarge) as err:
            engine.embed(["short", long])
        assert err.value.field == "texts[1]"
        assert f"has {tokens} tokens" in str(err.value) and "at most 16" in str(err.value)
        with pytest.raises(TooLarge, match=r"texts\[0\]"):
            asyncio.run(engine.aembed([long]))
        assert engine.embed(["short enough"]).shape == (1, engine.info.dim)


def test_error_counts_both_segments_of_a_pair(cross_encoder_dir):
    engine = Engine.load(cross_encoder_dir, max_length=16, on_overflow="error")
    with engine, pytest.raises(TooLarge, match=r"pairs\[1\]: has \d+ tokens"):
        engine.score([("q", "d"), ("a query of words", "a document of several words " * 3)])


# ---------------------------------------------------------------- configuration


def test_window_is_refused_for_tasks_that_cannot_join_windows(categorium_dir, cross_encoder_dir):
    for path in (categorium_dir, cross_encoder_dir):
        with pytest.raises(ValueError, match="on_overflow 'window' is not available"):
            Engine.load(path, on_overflow="window")


def test_a_stride_as_long_as_a_window_is_refused(model_dir):
    with pytest.raises(ValueError, match=r"window.stride 14 must be less than 14"):
        Engine.load(model_dir, max_length=16, on_overflow="window", window={"stride": 14})
    with pytest.raises(ValueError, match="window settings apply to on_overflow 'window' only"):
        Engine.load(model_dir, window={"stride": 4})


def test_models_yaml_entries_carry_the_overflow_settings(model_dir):
    from textfleet.serve.config import ConfigError, parse_model
    from textfleet.serve.protocols.common import error_status

    entry = {"name": "m", "model_dir": str(model_dir.path), "max_length": 16}
    config = parse_model({**entry, "on_overflow": "window", "window": {"stride": 4}})
    with Engine.load(model_dir, config.engine_config()) as engine:
        assert engine.on_overflow == "window" and engine._overflow.stride == 4
    with pytest.raises(ConfigError, match="on_overflow"):
        parse_model({**entry, "on_overflow": "split"})
    with pytest.raises(ConfigError, match="window.stride"):
        parse_model({**entry, "window": {"stride": -1}})
    assert error_status(TooLarge("texts[0]", "has 20 tokens")) == 413
