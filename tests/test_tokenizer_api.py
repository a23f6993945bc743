"""The public Tokenizer API on the native backend: inputs, errors, padding, threads.

Parity of the tokens themselves is tests/test_tokenizer_parity.py; here the
reference is still HF ``tokenizers`` wherever there is one to compare with.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import threading

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from textfleet.engine import InputError, _native
from textfleet.engine.native_tokenizer import unsupported_reason
from textfleet.engine.tokenizer import Tokenizer, default_threads

TEXTS = ["Hello, world!", "", "A much longer sentence, with punctuation; and [MASK].", "héllo 北京"]


@pytest.fixture(scope="module")
def tok(minilm_tokenizer_json) -> Tokenizer:
    t = Tokenizer.from_file(minilm_tokenizer_json, max_length=128)
    assert t.backend == "native"
    return t


@pytest.fixture(scope="module")
def hf(minilm_tokenizer_json) -> HFTokenizer:
    h = HFTokenizer.from_file(str(minilm_tokenizer_json))
    h.no_padding()
    h.enable_truncation(128)
    return h


def test_defaults(tok, minilm_tokenizer_json):
    assert tok.max_length == 128
    assert tok.pad_id == 0
    assert Tokenizer.from_file(minilm_tokenizer_json)._impl.num_threads == default_threads()
    assert unsupported_reason(minilm_tokenizer_json) is None


def test_encoding_fields(tok, hf):
    enc = tok.encode("Hello, world!", "pair")
    ref = hf.encode("Hello, world!", "pair")
    assert len(enc) == len(ref.ids)
    assert enc.ids == ref.ids
    assert enc.type_ids == ref.type_ids
    assert enc.attention_mask == [1] * len(ref.ids)
    assert enc.offsets == ref.offsets
    assert isinstance(enc.offsets[0], tuple)


def test_empty_string_encodes_like_hf(tok, hf):
    for pair in (None, "", "x"):
        assert tok.encode("", pair).ids == hf.encode("", pair).ids
    assert tok.encode("", add_special_tokens=False).ids == []


def test_empty_list(tok):
    assert tok.encode_batch([]) == []
    tokenized = tok.tokenize([])
    assert len(tokenized) == 0
    assert tokenized.lengths.shape == (0,)
    padded = tok.pad_batch([])
    assert {k: v.shape for k, v in padded.items()} == {
        "input_ids": (0, 0),
        "attention_mask": (0, 0),
        "token_type_ids": (0, 0),
    }


@pytest.mark.parametrize("call", ["encode_batch", "tokenize", "pad_batch"])
def test_non_str_names_the_index(tok, call):
    with pytest.raises(InputError, match=r"texts\[2\]: expected str, got int"):
        getattr(tok, call)(["a", "b", 3])
    with pytest.raises(InputError, match=r"pairs\[1\]: expected str, got NoneType"):
        getattr(tok, call)(["a", "b"], ["x", None])
    with pytest.raises(InputError, match="texts: expected a list of str, got a single str"):
        getattr(tok, call)("not a list")


def test_native_layer_checks_inputs_too(minilm_tokenizer_json):
    impl = Tokenizer.from_file(minilm_tokenizer_json)._impl
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got bytes"):
        impl.encode_batch(["ok", b"bytes"])
    with pytest.raises(TypeError, match="text must be str"):
        impl.encode(5)


def test_lone_surrogate_is_rejected(tok):
    with pytest.raises(ValueError, match=r"texts\[1\].*surrogate"):
        tok.encode_batch(["fine", "bad \ud800"])
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("\udfff")


def test_pairs_length_mismatch(tok):
    with pytest.raises(InputError, match="pairs: has 1 items but texts has 2"):
        tok.encode_batch(["a", "b"], ["x"])


def test_pad_batch_equals_hf_plus_numpy(tok, hf):
    padded = tok.pad_batch(TEXTS, TEXTS[::-1])
    refs = hf.encode_batch(list(zip(TEXTS, TEXTS[::-1], strict=True)))
    width = max(len(r.ids) for r in refs)
    for key, field in [
        ("input_ids", "ids"),
        ("attention_mask", "attention_mask"),
        ("token_type_ids", "type_ids"),
    ]:
        want = np.zeros((len(refs), width), dtype=np.int64)
        for i, r in enumerate(refs):
            want[i, : len(r.ids)] = getattr(r, field)
        assert padded[key].dtype == np.int64
        np.testing.assert_array_equal(padded[key], want, err_msg=key)


def test_collate_subsets_in_given_order(tok):
    tokenized = tok.tokenize(TEXTS)
    lengths = tokenized.lengths
    assert lengths.dtype == np.int64
    assert list(lengths) == [len(tok.encode(t)) for t in TEXTS]
    full = tokenized.collate()
    batch = tokenized.collate(np.array([3, 0]))
    assert batch.width == max(lengths[3], lengths[0])
    np.testing.assert_array_equal(batch.input_ids[0, : lengths[3]], full.input_ids[3, : lengths[3]])
    np.testing.assert_array_equal(batch.input_ids[1, : lengths[0]], full.input_ids[0, : lengths[0]])
    assert batch.real_tokens == lengths[3] + lengths[0]
    np.testing.assert_array_equal(
        tokenized.collate([-1]).input_ids, tokenized.collate([3]).input_ids
    )
    with pytest.raises(IndexError, match=r"indices\[1\] = 4 is out of range for 4"):
        tokenized.collate([0, 4])


def test_truncation_counts_special_tokens(minilm_tokenizer_json):
    tok = Tokenizer.from_file(minilm_tokenizer_json, max_length=8)
    assert len(tok.encode("word " * 50)) == 8
    assert len(tok.encode("word " * 50, "other " * 3)) == 8
    assert len(tok.encode("word " * 50, add_special_tokens=False)) == 8


def test_max_length_below_the_template_is_refused(minilm_tokenizer_json):
    with pytest.raises(ValueError, match="max_length must be >= 4"):
        Tokenizer.from_file(minilm_tokenizer_json, max_length=3)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(minilm_tokenizer_json, workload_texts, threads):
    tok = Tokenizer.from_file(minilm_tokenizer_json, max_length=64, num_threads=threads)
    texts = workload_texts[:3000]
    ref = Tokenizer.from_file(minilm_tokenizer_json, max_length=64, num_threads=1)
    np.testing.assert_array_equal(
        tok.pad_batch(texts)["input_ids"], ref.pad_batch(texts)["input_ids"]
    )


def test_concurrent_callers_share_one_tokenizer(minilm_tokenizer_json, workload_texts):
    tok = Tokenizer.from_file(minilm_tokenizer_json, max_length=128, num_threads=2)
    texts = workload_texts[:2000]
    want = tok.pad_batch(texts)["input_ids"]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                got = tok.pad_batch(texts)["input_ids"] if i % 2 else None
                if got is not None:
                    np.testing.assert_array_equal(got, want)
                else:
                    assert [e.ids for e in tok.encode_batch(texts[:200])] == [
                        list(r[r != 0]) for r in want[:200]
                    ]
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_encodings_outlive_the_tokenizer(minilm_tokenizer_json):
    tok = Tokenizer.from_file(minilm_tokenizer_json)
    encs = tok.encode_batch(["one", "two three"])
    tokenized = tok.tokenize(["one", "two three"])
    del tok
    assert encs[1].ids[0] == 101
    assert tokenized.collate().rows == 2


def edited(src, tmp_path, **changes):
    cfg = json.loads(src.read_text(encoding="utf-8"))
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"normalizer": {"type": "Lowercase"}}, "normalizer 'Lowercase'"),
        ({"pre_tokenizer": {"type": "Whitespace"}}, "pre_tokenizer 'Whitespace'"),
        ({"post_processor": None}, "post_processor"),
    ],
)
def test_unsupported_falls_back_loudly(minilm_tokenizer_json, tmp_path, caplog, changes, reason):
    path = edited(minilm_tokenizer_json, tmp_path, **changes)
    assert reason in unsupported_reason(path)
    with caplog.at_level(logging.WARNING, logger="textfleet.engine.tokenizer"):
        tok = Tokenizer.from_file(path, max_length=64)
    assert tok.backend == "huggingface"
    assert "falls back to the tokenizers library" in caplog.text
    ref = HFTokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(64)
    assert tok.encode("Hello there").ids == ref.encode("Hello there").ids


def test_added_token_flags_fall_back(minilm_tokenizer_json, tmp_path):
    cfg = json.loads(minilm_tokenizer_json.read_text(encoding="utf-8"))
    cfg["added_tokens"][4]["lstrip"] = True
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    assert "lstrip=true" in unsupported_reason(path)
    assert Tokenizer.from_file(path).backend == "huggingface"


def test_stub_file_lists_the_native_api():
    from pathlib import Path

    stub = (Path(_native.__file__).parent / "_native.pyi").read_text(encoding="utf-8")
    for name in ("class WordPieceTokenizer", "class Encoding", "class Tokenized", "def collate"):
        assert name in stub


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_still_tokenizes(minilm_tokenizer_json):
    """Workers started in the parent do not exist in a forked child: it must not hang."""
    tok = Tokenizer.from_file(minilm_tokenizer_json, max_length=64, num_threads=2)
    texts = [f"text number {i}, with words" for i in range(500)]
    want = tok.pad_batch(texts)["input_ids"]  # starts the worker threads here
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into pytest
        try:
            same = np.array_equal(tok.pad_batch(texts)["input_ids"], want)
            os.write(write_end, b"1" if same else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 60)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    answer = os.read(read_end, 1) if ready else b""
    os.close(read_end)
    assert answer == b"1", "the forked child hung or tokenized differently"
