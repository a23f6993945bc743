"""The task methods of Engine against their references, through the one batching path.

- classification (categorium): probabilities vs transformers on the torch weights;
- pair scoring (MiniLM cross-encoder): logits vs transformers on tokenizer pairs,
  long pairs included (longest-first truncation), and ``rerank``;
- token classification (a seeded MiniLM tagger): spans vs transformers'
  TokenClassificationPipeline for every aggregation strategy;
- rampart (ONNX only): per-token probabilities and spans vs a reference written
  here from its tokenizer + onnxruntime, one text at a time;
- entity offsets slice the original text for accents, emoji, CJK, whitespace;
- torch backend == onnxruntime within tolerance; bad input errors.

Tolerances: onnxruntime vs torch (both float32, different kernels and batch
shapes) agree to ~1e-6 on these models; the asserts allow 1e-4 absolute on
probabilities and logits.
"""

from __future__ import annotations

import json
import random
import shutil
import unicodedata

import numpy as np
import pytest

from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError, ModelDirError
from textfleet.engine.tasks.classification import softmax

ATOL = 1e-4
EDGE_TEXTS = [
    "Zoë Ångström met José Müller in São Paulo at Café Noël.",
    "Emoji 🎉👩‍👩‍👧 and flags 🇫🇷 beside words 😀x, tabs\tand\nnewlines.",
    "東京都の山田太郎さんは北京で李小龍に会った。서울의 김민수.",
    "   lots    of   extra     whitespace   between   words   ",
    "e\u0301 combining marks, \u200bzero width, and a verylongunknownword" + "z" * 120,
    "",
]


def sample(texts: list[str], n: int, seed: int) -> list[str]:
    return random.Random(seed).sample(texts, n)


@pytest.fixture(scope="module")
def classifier(categorium_dir):
    with Engine.load(categorium_dir, threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def scorer(cross_encoder_dir):
    with Engine.load(cross_encoder_dir, threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def tagger(token_model_dir):
    # Truncating, as the transformers pipeline it is compared with does
    # (windows: test_long_inputs.py).
    with Engine.load(token_model_dir, threads=1, on_overflow="truncate") as eng:
        yield eng


@pytest.fixture(scope="module")
def rampart(rampart_dir):
    with Engine.load(rampart_dir, threads=1) as eng:
        yield eng


# ---------------------------------------------------------------- classification


def test_classify_matches_transformers(classifier, categorium_dir, workload_texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = sample(workload_texts, 300, seed=1) + EDGE_TEXTS
    got = classifier.classify(texts, top_k=None)
    labels = [classifier.model_dir.config()["id2label"][str(i)] for i in range(27)]
    got_probs = np.array(
        [[dict((x.label, x.score) for x in row)[lb] for lb in labels] for row in got]
    )
    tok = AutoTokenizer.from_pretrained(categorium_dir.path)
    model = AutoModelForSequenceClassification.from_pretrained(categorium_dir.path).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**enc).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got_probs, ref, atol=ATOL)
    assert [row[0].label for row in got] == [labels[i] for i in ref.argmax(1)]
    top2 = classifier.classify(texts[:5], top_k=2)
    assert [len(r) for r in top2] == [2] * 5 and all(r[0].score >= r[1].score for r in top2)


def test_classify_on_torch_backend_matches_onnxruntime(categorium_dir, classifier, workload_texts):
    texts = sample(workload_texts, 64, seed=2)
    with Engine.load(categorium_dir, backend="torch", threads=1) as torch_engine:
        got = torch_engine.classify(texts, top_k=None)
    ref = classifier.classify(texts, top_k=None)
    for g, r in zip(got, ref, strict=True):
        assert g[0].label == r[0].label
        np.testing.assert_allclose(
            sorted(x.score for x in g), sorted(x.score for x in r), atol=ATOL
        )


# ---------------------------------------------------------------- pair scoring


def pair_reference(folder, pairs: list[tuple[str, str]], max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = np.empty(len(pairs), np.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    with torch.inference_mode():
        for i in range(0, len(pairs), 16):
            idx = order[i : i + 16]
            a, b = zip(*(pairs[j] for j in idx), strict=True)
            enc = tok(
                list(a), list(b), padding=True, truncation="longest_first",
                max_length=max_length, return_tensors="pt",
            )  # fmt: skip
            out[idx] = model(**enc).logits[:, 0].numpy()
    return out


def test_score_matches_transformers_with_longest_first_truncation(
    scorer, cross_encoder_dir, workload_texts
):
    texts = sample(workload_texts, 120, seed=3)
    pairs = list(zip(texts[:60], texts[60:], strict=True))
    long = "a long document about cats and dogs " * 120  # > 512 tokens on its own
    pairs += [("what do cats eat?", long), (long, "short"), (long, long), ("", "x"), ("q", "")]
    lengths = scorer.tokenizer.tokenize(*zip(*pairs, strict=True)).lengths
    assert lengths.max() == scorer.info.max_length  # truncation is exercised
    raw = scorer.score(pairs, raw_scores=True)
    ref = pair_reference(cross_encoder_dir.path, pairs, scorer.info.max_length)
    np.testing.assert_allclose(raw, ref, atol=ATOL)
    np.testing.assert_allclose(scorer.score(pairs), 1 / (1 + np.exp(-ref)), atol=ATOL)


def test_rerank_orders_by_score_and_counts_both_segments(scorer, workload_texts):
    docs = sample(workload_texts, 20, seed=4)
    query = "how do I reset my password"
    scores = scorer.score([(query, d) for d in docs])
    ranked = scorer.rerank(query, docs, top_k=5)
    assert [r.index for r in ranked] == list(np.argsort(-scores, kind="stable")[:5])
    np.testing.assert_allclose([r.score for r in ranked], np.sort(scores)[::-1][:5], atol=1e-6)
    assert len(scorer.rerank(query, docs)) == 20
    before = scorer.stats().real_tokens
    scorer.score([(query, docs[0])])
    one = scorer.tokenizer.encode(query, docs[0])
    assert scorer.stats().real_tokens - before == len(one.ids)  # query + document tokens


def test_pair_scoring_on_torch_backend_matches_onnxruntime(
    cross_encoder_dir, scorer, workload_texts
):
    texts = [t[:300] for t in sample(workload_texts, 64, seed=5)]
    pairs = list(zip(texts[:32], texts[32:], strict=True))
    with Engine.load(cross_encoder_dir, backend="torch", threads=1) as torch_engine:
        got = torch_engine.score(pairs, raw_scores=True)
    np.testing.assert_allclose(got, scorer.score(pairs, raw_scores=True), atol=ATOL)


# ---------------------------------------------------------------- token classification


@pytest.fixture(scope="module")
def ner_pipeline(token_model_dir, token_source_dir):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    model = AutoModelForTokenClassification.from_pretrained(token_source_dir).eval()
    tok = AutoTokenizer.from_pretrained(token_source_dir)
    return pipeline("token-classification", model=model, tokenizer=tok)


@pytest.mark.parametrize("strategy", ["simple", "first", "max", "average"])
def test_entities_match_the_transformers_pipeline(tagger, ner_pipeline, workload_texts, strategy):
    texts = sample(workload_texts, 40, seed=6) + [t for t in EDGE_TEXTS if t]
    got = tagger.entities(texts, aggregation=strategy)
    for text, spans in zip(texts, got, strict=True):
        want = ner_pipeline(text, aggregation_strategy=strategy)
        assert [(e.label, e.start, e.end) for e in spans] == [
            (w["entity_group"], w["start"], w["end"]) for w in want
        ], text
        np.testing.assert_allclose(
            [e.score for e in spans], [float(w["score"]) for w in want], atol=ATOL
        )
    assert sum(map(len, got)) > 200  # the dense random head forms many spans


def test_entities_on_torch_backend_match_onnxruntime(token_model_dir, tagger, workload_texts):
    texts = sample(workload_texts, 24, seed=7) + EDGE_TEXTS
    with Engine.load(token_model_dir, backend="torch", threads=1) as torch_engine:
        got = torch_engine.entities(texts)
    ref = tagger.entities(texts)
    assert [[(e.label, e.start, e.end) for e in s] for s in got] == [
        [(e.label, e.start, e.end) for e in s] for s in ref
    ]


def strip_accents_lower(s: str) -> str:
    nfd = unicodedata.normalize("NFD", s.lower())
    return "".join(c for c in nfd if unicodedata.category(c) != "Mn")


def test_entity_offsets_slice_the_original_text(tagger):
    """Aggregation none gives one span per token: its slice of the text must be that token."""
    vocab = tagger._task.vocab
    checked = 0
    per_text = tagger.entities(EDGE_TEXTS, aggregation="none")
    for text, spans in zip(EDGE_TEXTS, per_text, strict=True):
        enc = tagger.tokenizer.encode(text)
        # A Hangul syllable becomes several Jamo tokens sharing one character's offsets.
        tokens: dict[tuple, str] = {}
        for i, o in zip(enc.ids, enc.offsets, strict=True):
            tokens[tuple(o)] = tokens.get(tuple(o), "") + vocab.tokens[i].removeprefix("##")
        for e in spans:
            assert e.text == text[e.start : e.end] and e.text and e.text == e.text.strip()
            token = tokens[(e.start, e.end)]
            if "[UNK]" not in token:  # emoji and flags are [UNK]: no string to compare
                assert strip_accents_lower(e.text) == token, (text, e)
                checked += 1
    assert checked > 40


# ---------------------------------------------------------------- rampart (ONNX only)


def rampart_reference(folder, texts: list[str], labels: list[str]):
    """Per text: (token probabilities, offsets), from HF tokenizers + onnxruntime, batch of one."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(512)
    session = ort.InferenceSession(
        str(folder / "onnx/model_q4.onnx"), providers=["CPUExecutionProvider"]
    )
    out = []
    for text in texts:
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        logits = session.run(None, feeds)[0][0]
        keep = [i for i, t in enumerate(enc.tokens) if t not in ("[CLS]", "[SEP]")]
        out.append((softmax(logits)[keep], [enc.offsets[i] for i in keep]))
    return out


def merge_reference(text, probs, offsets, labels):
    """Spans as the rampart package intends: same type + whitespace gap -> one span."""
    spans = []
    for p, (start, end) in zip(probs, offsets, strict=True):
        label = labels[int(p.argmax())]
        kind = label.split("-", 1)[-1]
        if label == "O":
            spans.append(None)
            continue
        last = spans[-1] if spans else None
        if (
            last is not None
            and last[0] == kind
            and (label.startswith("I-") or text[last[2] : start].strip() == "")
        ):
            spans[-1] = (kind, last[1], max(end, last[2]))
        else:
            spans.append((kind, start, end))
    return [s for s in spans if s is not None]


RAMPART_TEXTS = [
    "My name is Jonathan Smithers and my email is jonathan.smithers@example.com.",
    "I live at 1234 Maplewood Avenue, Springfield, IL 62704. Passport X12345678.",
    "Zoë Ångström wohnt in der Hauptstraße 5, 10115 Berlin 🎉 東京",
    "Call   Maria    Gonzalez  at 12 Rue de Rivoli, Paris   ",
]


def test_rampart_matches_a_reference_onnxruntime_pipeline(rampart, rampart_source, workload_texts):
    texts = RAMPART_TEXTS + sample(workload_texts, 30, seed=8)
    labels = rampart._task.labels
    got = rampart.entities(texts)
    tokens = rampart.entities(texts, aggregation="none")
    for text, spans, toks, (probs, offsets) in zip(
        texts, got, tokens, rampart_reference(rampart_source, texts, labels), strict=True
    ):
        non_o = [i for i, p in enumerate(probs) if labels[int(p.argmax())] != "O"]
        assert [(t.start, t.end) for t in toks] == [tuple(offsets[i]) for i in non_o]
        np.testing.assert_allclose(
            [t.score for t in toks], [probs[i].max() for i in non_o], atol=ATOL
        )
        assert [(e.label, e.start, e.end) for e in spans] == merge_reference(
            text, probs, offsets, labels
        )
    first = {(e.label, e.text) for e in got[0] + got[1]}
    assert {("GIVEN_NAME", "Jonathan"), ("SURNAME", "Smithers")} <= first
    assert {("STREET_NAME", "Maplewood Avenue"), ("ZIP_CODE", "62704")} <= first


# ---------------------------------------------------------------- bad input and config


def test_bad_requests_name_the_field(classifier, scorer, tagger):
    with pytest.raises(InputError, match=r"pairs\[1\]"):
        scorer.score([("q", "d"), ("only a query",)])
    with pytest.raises(InputError, match=r"pairs\[0\]\[1\]"):
        scorer.score([("q", None)])
    with pytest.raises(InputError, match="documents: must hold at least one"):
        scorer.rerank("q", [])
    with pytest.raises(InputError, match="top_k"):
        scorer.rerank("q", ["d"], top_k=0)
    with pytest.raises(InputError, match="top_k"):
        classifier.classify(["x"], top_k=0)
    with pytest.raises(InputError, match="aggregation"):
        tagger.entities(["x"], aggregation="mean")
    with pytest.raises(InputError, match=r"texts\[1\]: expected str, got int"):
        classifier.classify(["ok", 3])
    with pytest.raises(InputError, match=r"texts\[0\]: expected str, got float"):
        tagger.entities([1.5])
    with pytest.raises(InputError, match="task: model 'categorium' serves task 'classification'"):
        classifier.score([("q", "d")])
    with pytest.raises(InputError, match=r"embed\(\) needs a model of task 'embedding'"):
        scorer.embed(["x"])
    assert classifier.classify([]) == [] and tagger.entities([]) == []
    assert scorer.score([]).shape == (0,)


def test_model_directory_errors(categorium_dir, tmp_path):
    broken = tmp_path / "unknown-task"
    shutil.copytree(categorium_dir.path, broken)
    info = json.loads((broken / "textfleet.json").read_text())
    (broken / "textfleet.json").write_text(json.dumps(info | {"task": "summarization"}))
    with pytest.raises(ModelDirError, match="task"):
        Engine.load(broken)

    no_labels = tmp_path / "no-labels"
    shutil.copytree(categorium_dir.path, no_labels)
    config = json.loads((no_labels / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (no_labels / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="id2label is missing"):
        Engine.load(no_labels)
