"""The torch backend's GPU path, run on the CPU by forcing it: pooling on the device,
batch widths padded to a multiple; and the device's batching defaults (resolution only).

On CUDA the backend pools embeddings itself (``heads.POOLED``) and pads batch widths
to a multiple of 8; both are switched on here on the CPU, in float32, and compared with
the numpy head on the same batches.
"""

from __future__ import annotations

import numpy as np
import pytest

from textfleet.engine.backends.torch import TorchBackend, pad_width
from textfleet.engine.config import GPU_BATCHING, BatchingConfig, device_batching
from textfleet.engine.engine import Engine, resolve_config
from textfleet.engine.heads import POOLED, EmbeddingHead
from textfleet.engine.model_dir import ModelDir

TEXTS = [
    "A man is eating food.",
    "",
    "Ünïcödé, emoji 🎉 and 中文 mixed in.",
    "a much longer sentence with many words in it " * 9,
    "short",
]


def torch_backend(md: ModelDir, **options) -> TorchBackend:
    backend = TorchBackend(md, threads=2, **options)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def batch(engine):
    seqs = engine.tokenizer.tokenize(TEXTS)
    return seqs.collate(np.arange(len(TEXTS)))


@pytest.mark.parametrize(
    ("pooling", "normalize"), [("mean", True), ("mean", False), ("cls", True), ("max", False)]
)
def test_pooling_in_the_backend_matches_the_numpy_head(model_dir, batch, pooling, normalize):
    info = model_dir.info.model_copy(update={"pooling": pooling, "normalize": normalize})
    md = ModelDir(model_dir.path, info)
    head = EmbeddingHead.from_info(info)
    on_host = torch_backend(md).run(batch)
    assert set(on_host) == {"last_hidden_state"}  # the CPU default: the head pools
    want = head(on_host, batch)
    for multiple in (1, 8):
        out = torch_backend(md, pool_on_device=True, width_multiple=multiple).run(batch)
        assert set(out) == {POOLED} and out[POOLED].shape == (batch.rows, info.dim)
        got = head(out, batch)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_engine_on_the_pooling_backend_matches_the_default_one(model_dir, engine):
    backend = torch_backend(model_dir, pool_on_device=True, width_multiple=8)
    with Engine(model_dir, engine.tokenizer, backend, BatchingConfig(workers=1)) as pooled:
        got = pooled.embed(TEXTS * 3)
    with Engine.load(model_dir, backend="torch", threads=2) as default:
        assert not default.backend.pool_on_device and default.backend.width_multiple == 1
        want = default.embed(TEXTS * 3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_head_checks_pooled_rows(model_dir, batch):
    head = EmbeddingHead.from_info(model_dir.info)
    message = r"output 'pooled' has shape \(2, 384\); expected \[5, dim\]"
    with pytest.raises(ValueError, match=message):
        head({POOLED: np.zeros((2, 384), np.float32)}, batch)


def test_padded_width_leaves_token_outputs_unchanged(token_model_dir):
    from textfleet.engine.tokenizer import Tokenizer

    md = ModelDir.open(token_model_dir.path)
    tok = Tokenizer.from_file(md.tokenizer_path, max_length=md.info.max_length)
    batch = tok.tokenize(TEXTS).collate(np.arange(len(TEXTS)))
    assert batch.width % 8  # the padded run does pad
    want = torch_backend(md).run(batch)
    got = torch_backend(md, width_multiple=8).run(batch)
    for name, value in want.items():
        assert got[name].shape == value.shape == (batch.rows, batch.width, md.info.dim)
        np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0)


def test_pad_width_pads_every_input_with_zeros():
    arrays = {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64)}
    padded = pad_width(arrays, 8)
    assert {a.shape for a in padded.values()} == {(2, 8)}
    assert padded["attention_mask"][:, 5:].sum() == 0 and padded["input_ids"][:, :5].all()
    assert pad_width(arrays, 1) is arrays and pad_width(arrays, 5) is arrays


def test_backend_defaults_follow_the_device(model_dir, categorium_dir):
    cpu = TorchBackend(model_dir)
    assert (cpu.pool_on_device, cpu.width_multiple) == (False, 1)
    gpu = TorchBackend(model_dir, device="cuda")  # not loaded: no GPU needed
    assert (gpu.pool_on_device, gpu.width_multiple) == (True, 8)
    classifier = TorchBackend(categorium_dir, device="cuda:1")
    assert (classifier.pool_on_device, classifier.width_multiple) == (False, 8)


# ---------------------------------------------------------------- batching by device


def knobs(config) -> tuple[int, int, int]:
    b = config.batching
    return b.max_batch_size, b.max_batch_tokens, b.max_row_padding


def test_a_gpu_starts_from_gpu_batching_under_the_model_dir_and_the_caller():
    gpu = tuple(GPU_BATCHING[k] for k in ("max_batch_size", "max_batch_tokens", "max_row_padding"))
    cpu = (32, 8192, 16)
    assert knobs(resolve_config(None, {}, None)) == cpu
    assert knobs(resolve_config(None, {"device": "cuda"}, None)) == gpu
    assert knobs(resolve_config({"device": "cuda:1"}, {}, None)) == gpu
    model_dir_defaults = BatchingConfig(max_batch_size=64)
    assert knobs(resolve_config(None, {"device": "cuda"}, model_dir_defaults)) == (64, *gpu[1:])
    assert knobs(resolve_config(None, {}, model_dir_defaults)) == (64, *cpu[1:])
    caller = {"device": "cuda", "batching": {"max_row_padding": 8}}
    assert knobs(resolve_config(caller, {}, model_dir_defaults)) == (64, gpu[1], 8)
    # A BatchingConfig is used as is, on any device.
    as_is = resolve_config(None, {"device": "cuda", "batching": BatchingConfig()}, None)
    assert knobs(as_is) == cpu
    # A lower queue bound caps the GPU's batch budget instead of failing on a knob not set.
    low = resolve_config(None, {"device": "cuda", "batching": {"max_queue_tokens": 20000}}, None)
    assert low.batching.max_batch_tokens == 20000
    assert device_batching("cpu") == {} and device_batching("cuda:0") == GPU_BATCHING


def test_a_bad_device_is_named_before_batching_is_resolved():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"device\n.*got 'gpu'"):
        resolve_config(None, {"device": "gpu"}, None)
