"""The native tokenizer against Hugging Face ``tokenizers``: any difference fails.

The reference is ``tokenizers.Tokenizer.from_file`` with padding off and
truncation at the same max_length (longest-first for pairs). Compared per
text: ids, type ids, attention mask and offsets. Corpora: the whole workload,
the multilingual stress corpus (tests/stress_corpus.py), every code point,
and hypothesis-generated text; tokenizer.json variants cover the normalizer
options, WordPiece options, added tokens and post-processors.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stress_corpus import COMBINING, SPECIAL_TEXTS, build_pairs, build_stress_corpus
from tokenizers import Tokenizer as HFTokenizer

from textfleet.engine.native_tokenizer import NativeTokenizer
from textfleet.engine.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTHS = [8, 128, 512]

# tokenizer.json edits, applied to the default model's file.
VARIANTS = {
    "uncased": {},
    "cased": {"normalizer": {"lowercase": False, "strip_accents": False}},
    "strip_cased_no_cjk": {
        "normalizer": {"lowercase": False, "strip_accents": True, "handle_chinese_chars": False}
    },
    "lower_accents_no_clean": {
        "normalizer": {"lowercase": True, "strip_accents": False, "clean_text": False}
    },
    "wordpiece_options": {
        "model": {"continuing_subword_prefix": "", "max_input_chars_per_word": 12}
    },
    "added_tokens": {
        "added_tokens+": [
            ("<ent>", False),
            ("[CLS]x", False),
            ("ab", False),
            ("İ", False),
            ("🙂", True),
            ("hello world", False),
        ]
    },
    "bert_processing": {
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}
    },
    "custom_template": {
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 1}},
                {"Sequence": {"id": "A", "type_id": 2}},
                {"SpecialToken": {"id": "<2sep>", "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "B", "type_id": 3}},
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<2sep>", "type_id": 4}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
                "<2sep>": {"id": "<2sep>", "ids": [102, 103], "tokens": ["[SEP]", "[MASK]"]},
            },
        }
    },
}


def write_variant(src: Path, edits: dict, dst: Path) -> Path:
    cfg = json.loads(src.read_text(encoding="utf-8"))
    for key, value in edits.items():
        if key == "added_tokens+":
            next_id = len(cfg["model"]["vocab"])
            for i, (content, special) in enumerate(value):
                cfg["added_tokens"].append(
                    {
                        "id": next_id + i,
                        "content": content,
                        "single_word": False,
                        "lstrip": False,
                        "rstrip": False,
                        "normalized": False,
                        "special": special,
                    }
                )
        elif key == "post_processor":
            cfg[key] = copy.deepcopy(value)
        else:
            cfg[key].update(value)
    dst.write_text(json.dumps(cfg), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def variant_paths(minilm_tokenizer_json, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tokenizer-variants")
    return {
        name: write_variant(minilm_tokenizer_json, edits, folder / f"{name}.json")
        for name, edits in VARIANTS.items()
    }


@cache
def reference(path: Path, max_length: int) -> HFTokenizer:
    hf = HFTokenizer.from_file(str(path))
    hf.no_padding()
    hf.enable_truncation(max_length)
    return hf


@cache
def native(path: Path, max_length: int, threads: int | None = None) -> Tokenizer:
    tok = Tokenizer.from_file(path, max_length=max_length, num_threads=threads)
    assert tok.backend == "native", f"{path} fell back to the tokenizers library"
    return tok


def differences(expected, got, inputs) -> list[str]:
    """One line per input whose encodings differ, naming the first differing field."""
    assert len(expected) == len(got) == len(inputs)
    out = []
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        for field in ("ids", "type_ids", "attention_mask", "offsets"):
            want, have = list(getattr(e, field)), list(getattr(g, field))
            if want != have:
                k = next(
                    (k for k, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), None
                )
                k = min(len(want), len(have)) if k is None else k
                out.append(
                    f"[{i}] {field} differ at token {k}: HF {want[k : k + 3]} native "
                    f"{have[k : k + 3]} (lengths {len(want)}/{len(have)}); input {inputs[i]!r:.120}"
                )
                break
    return out


def assert_parity(expected, got, inputs) -> None:
    diffs = differences(expected, got, inputs)
    assert not diffs, f"{len(diffs)} of {len(inputs)} differ:\n" + "\n".join(diffs[:5])


def check_corpus(path: Path, max_length: int, texts, pairs=None, add_special=True) -> None:
    hf, tok = reference(path, max_length), native(path, max_length)
    hf_inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
    expected = hf.encode_batch(hf_inputs, add_special_tokens=add_special)
    assert_parity(expected, tok.encode_batch(texts, pairs, add_special), hf_inputs)


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_workload(minilm_tokenizer_json, workload_texts, max_length):
    check_corpus(minilm_tokenizer_json, max_length, workload_texts)


def test_workload_encode_one_by_one(minilm_tokenizer_json, workload_texts):
    hf, tok = reference(minilm_tokenizer_json, 512), native(minilm_tokenizer_json, 512)
    expected = hf.encode_batch(workload_texts)
    assert_parity(expected, [tok.encode(t) for t in workload_texts], workload_texts)


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_workload_pairs(minilm_tokenizer_json, workload_texts, max_length):
    texts, step = workload_texts, 5
    if max_length == 8:
        # HF builds every overflowing chunk of both sides (a cross product):
        # long texts make the reference, not the native side, take minutes.
        texts, step = [t for t in workload_texts if len(t) < 300], 25
    firsts, seconds = texts[::step], texts[::-step]
    check_corpus(minilm_tokenizer_json, max_length, firsts, seconds)


def test_workload_without_special_tokens(minilm_tokenizer_json, workload_texts):
    check_corpus(minilm_tokenizer_json, 128, workload_texts, add_special=False)
    texts = workload_texts[:2000]
    check_corpus(minilm_tokenizer_json, 128, texts, texts[::-1], add_special=False)


STRESS = build_stress_corpus()
STRESS_PAIRS = build_pairs(STRESS)


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stress_corpus(variant_paths, variant, max_length):
    path = variant_paths[variant]
    firsts, seconds = [a for a, _ in STRESS_PAIRS], [b for _, b in STRESS_PAIRS]
    for add_special in (True, False):
        check_corpus(path, max_length, STRESS, add_special=add_special)
        check_corpus(path, max_length, firsts, seconds, add_special=add_special)


def every_code_point_texts() -> list[str]:
    """Each code point between two letters, 64 per text (surrogates cannot be encoded)."""
    cps = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000]
    return [" ".join(f"x{chr(c)}x" for c in cps[i : i + 64]) for i in range(0, len(cps), 64)]


@pytest.mark.parametrize(
    "variant", ["uncased", "cased", "strip_cased_no_cjk", "lower_accents_no_clean"]
)
def test_every_code_point(variant_paths, variant):
    check_corpus(variant_paths[variant], 100_000, every_code_point_texts())


def test_threads_give_the_same_result(minilm_tokenizer_json):
    one = native(minilm_tokenizer_json, 128, 1).encode_batch(STRESS)
    two = native(minilm_tokenizer_json, 128, 2).encode_batch(STRESS)
    assert_parity(one, two, STRESS)


# Hypothesis: broad alphabets (all categories but surrogates), with the
# fragments most likely to break things mixed in.
FRAGMENTS = SPECIAL_TEXTS + COMBINING + ["[CLS]", "[MASK]", "İ", "ﬁ", "\u200d", "\x00", "\ufeff"]
TEXT = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),
        st.text(alphabet=st.characters(codec="utf-8", max_codepoint=0x3000), max_size=40),
        st.sampled_from(FRAGMENTS),
    ),
    max_size=6,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=TEXT,
    pair=st.none() | TEXT,
    add_special=st.booleans(),
    max_length=st.sampled_from(MAX_LENGTHS),
    variant=st.sampled_from(["uncased", "cased", "strip_cased_no_cjk", "added_tokens"]),
)
def test_hypothesis(hypothesis_paths, text, pair, add_special, max_length, variant):
    path = hypothesis_paths[variant]
    expected = reference(path, max_length).encode(text, pair, add_special_tokens=add_special)
    got = native(path, max_length).encode(text, pair, add_special)
    assert_parity([expected], [got], [(text, pair)])


@pytest.fixture(scope="module")
def hypothesis_paths(variant_paths):
    # A module-scoped alias: hypothesis re-runs the test body, not the fixture.
    return variant_paths


@pytest.mark.slow
def test_unicode_tables_are_generated_from_the_script():
    """csrc/unicode_tables.* are what scripts/gen_unicode_tables.py writes today."""
    script = REPO / "scripts" / "gen_unicode_tables.py"
    run = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


# ---- Long texts: the work stops near max_length and the result is still HF's.


def joined(texts: list[str], min_chars: int) -> list[str]:
    """Consecutive texts joined by a space into texts of at least min_chars each."""
    out, part, size = [], [], 0
    for text in texts:
        part.append(text)
        size += len(text) + 1
        if size >= min_chars:
            out.append(" ".join(part))
            part, size = [], 0
    return out


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_long_workload_texts(minilm_tokenizer_json, workload_texts, max_length):
    """Workload texts joined far past max_length: singles, and pairs with both, one or
    neither segment past it (equal segments too: the tie of longest-first)."""
    # HF builds every overflowing chunk (of both segments of a pair: a cross
    # product), so the reference's time grows with these sizes, not ours.
    singles = joined(workload_texts, 20_000)[:40]
    check_corpus(minilm_tokenizer_json, max_length, singles)
    long = joined(workload_texts, 20 * max_length)[:24]  # about 4 x max_length tokens
    short = workload_texts[: len(long)]
    firsts = long + long + short + long[:-1] + long
    seconds = long[::-1] + short + long + long[1:] + long
    check_corpus(minilm_tokenizer_json, max_length, firsts, seconds)


def test_pair_of_long_segments_counts_the_shorter(minilm_tokenizer_json):
    """Both segments past an odd limit: the odd token goes to the longer one (the
    second on a tie), which only their full lengths tell."""
    hf, tok = reference(minilm_tokenizer_json, 8), native(minilm_tokenizer_json, 8)
    for n_a, n_b in [(40, 41), (41, 40), (40, 40), (5, 6), (6, 5), (5, 5), (4, 9), (9, 4)]:
        a, b = " ".join(["a"] * n_a), " ".join(["b"] * n_b)
        assert_parity([hf.encode(a, b)], [tok.encode(a, b)], [(a, b)])
    # Too long for the reference's cross product of overflowing chunks; the
    # order alone decides, as above.
    long_a, long_b = "a " * 1_000_000, "b " * 999_999
    assert tok.encode(long_a, long_b).ids == tok.encode("a " * 41, "b " * 40).ids
    assert tok.encode(long_b, long_a).ids == tok.encode("b " * 40, "a " * 41).ids
    assert tok.encode(long_a, long_a).ids == tok.encode("a " * 40, "a " * 40).ids


@pytest.mark.parametrize("scan_bytes", [1, 5])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cutting_texts_into_windows_changes_nothing(variant_paths, variant, scan_bytes):
    """Normalizing a few bytes at a time (cut at every word boundary the normalizer
    allows) gives HF's result on the whole stress corpus, untruncated and truncated."""
    path = variant_paths[variant]
    firsts, seconds = [a for a, _ in STRESS_PAIRS], [b for _, b in STRESS_PAIRS]
    for max_length in (8, 100_000):
        hf = reference(path, max_length)
        tok = NativeTokenizer(path, max_length, 1, scan_bytes=scan_bytes)
        assert_parity(hf.encode_batch(STRESS), tok.encode_batch(STRESS), STRESS)
        inputs = list(zip(firsts, seconds, strict=True))
        assert_parity(hf.encode_batch(inputs), tok.encode_batch(firsts, seconds), inputs)


def test_work_is_bounded_by_max_length(minilm_tokenizer_json, workload_texts):
    """A 20 MB text costs what its first tokens cost: the bytes normalized are the
    same as for its first megabyte (and a few KB), and the ids are HF's."""
    text = " ".join(workload_texts)
    huge = (text * (20 * 2**20 // len(text) + 1))[: 20 * 2**20]
    first_mb = huge[: 2**20]
    tok = NativeTokenizer(minilm_tokenizer_json, 512, 2)

    def scanned(call) -> tuple[int, list[int]]:
        before = tok.scanned_bytes
        ids = call()
        return tok.scanned_bytes - before, ids

    work_mb, ids_mb = scanned(lambda: tok.encode(first_mb).ids)
    work_huge, ids_huge = scanned(lambda: tok.encode(huge).ids)
    assert ids_huge == ids_mb == reference(minilm_tokenizer_json, 512).encode(first_mb).ids
    assert work_huge == work_mb < 16 * 1024
    # The batch paths (the engine's), and a pair with one huge segment.
    work, lengths = scanned(lambda: tok.tokenize([huge, huge]).lengths.tolist())
    assert lengths == [512, 512] and work == 2 * work_mb
    work, ids = scanned(lambda: tok.encode_batch([huge], ["a question?"])[0].ids)
    assert len(ids) == 512 and work < 16 * 1024
