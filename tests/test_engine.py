"""Engine: parity with the torch + sentence-transformers reference, order, truncation,
batching, bad input and pooling heads."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from pydantic import ValidationError

from textfleet.engine import Engine, EngineConfig, InputError
from textfleet.engine.backends.base import create_backend
from textfleet.engine.batch import Batch
from textfleet.engine.errors import EngineError, ModelDirError
from textfleet.engine.heads import EmbeddingHead, l2_normalize, max_pool, mean_pool
from textfleet.engine.memory import IDLE_S

# ---------------------------------------------------------------- reference


def sample_texts(texts: list[str], n: int = 1000, longest: int = 50, seed: int = 1234) -> list[str]:
    """A fixed-seed sample of the workload that always includes its longest texts."""
    by_length = np.argsort([-len(t) for t in texts], kind="stable")[:longest]
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(len(texts)), by_length)
    picked = np.concatenate([by_length, rng.choice(rest, n - longest, replace=False)])
    rng.shuffle(picked)
    return [texts[i] for i in picked]


def reference_embeddings(folder, texts: list[str], max_length: int) -> np.ndarray:
    """sentence-transformers' recipe, written out: HF tokenizer (no fixed padding,
    truncation at max_length), AutoModel from the original safetensors, mean pooling
    with the attention mask, L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), use_safetensors=True).eval()
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            idx = order[start : start + 32]
            enc = tok(
                [texts[i] for i in idx],
                padding="longest",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_matches_torch_reference_on_1000_workload_texts(engine, source_dir, workload_texts):
    texts = sample_texts(workload_texts)
    lengths = engine.count_tokens(texts)
    assert max(lengths) == engine.info.max_length  # the sample does exercise truncation
    got = engine.embed(texts)
    ref = reference_embeddings(source_dir, texts, engine.info.max_length)
    assert got.shape == (1000, engine.info.dim) and got.dtype == np.float32
    cos = cosine(got, ref)
    worst = int(cos.argmin())
    assert cos.min() >= 0.9999, f"text {worst} ({lengths[worst]} tokens): cosine {cos[worst]}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_torch_backend_matches_onnxruntime(model_dir, engine, workload_texts):
    texts = sample_texts(workload_texts, n=64, longest=8, seed=7)
    with Engine.load(model_dir, backend="torch", threads=2) as torch_engine:
        assert torch_engine.backend.name == "torch"
        got = torch_engine.embed(texts)
    assert cosine(got, engine.embed(texts)).min() >= 0.9999


# ---------------------------------------------------------------- behaviour


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "",
    "Ünïcödé, emoji 🎉 and 中文 mixed in.",
    "short",
    "a much longer sentence with many words in it " * 6,
]


def test_results_come_back_in_input_order(engine):
    forward = engine.embed(SENTENCES)
    backward = engine.embed(SENTENCES[::-1])
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-5)
    one_by_one = np.stack([engine.embed([t])[0] for t in SENTENCES])
    assert cosine(one_by_one, forward).min() >= 0.99999
    # Known sentence-transformers behaviour: the two eating sentences are close.
    assert forward[0] @ forward[1] > 0.7 > forward[0] @ forward[2]


def test_empty_list_gives_zero_rows(engine):
    out = engine.embed([])
    assert out.shape == (0, engine.info.dim) and out.dtype == np.float32
    assert engine.count_tokens([]) == []


def test_long_texts_are_truncated_at_max_length(engine):
    long = "word " * 1000
    assert engine.count_tokens([long, "two words"]) == [engine.info.max_length, 4]
    a, b = engine.embed([long, long + " and a different tail that is cut off"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lower_max_length_at_load_matches_the_reference(model_dir, source_dir, engine):
    long = "the quick brown fox jumps over the lazy dog " * 20
    texts = [long, "two words", SENTENCES[0]]
    with Engine.load(model_dir, threads=1, max_length=32) as short:
        assert short.max_length == 32
        assert short.count_tokens(texts) == [32, 4, engine.count_tokens([SENTENCES[0]])[0]]
        got = short.embed(texts)
    want = reference_embeddings(source_dir, texts, max_length=32)
    assert cosine(got, want).min() > 0.9999
    # Short texts are unaffected; the long one differs from the full-length vector.
    np.testing.assert_allclose(got[1:], engine.embed(texts[1:]), atol=1e-5)
    assert cosine(got[:1], engine.embed(texts[:1]))[0] < 0.999


def test_max_length_can_only_be_lowered(model_dir, engine):
    with pytest.raises(ValueError, match=r"max_length 1024 is above .* max_length 256"):
        Engine.load(model_dir, max_length=1024)
    with pytest.raises(ValidationError, match=r"max_length\n.*greater than or equal to 4"):
        Engine.load(model_dir, max_length=2)


def test_bad_input_names_the_index(engine):
    with pytest.raises(InputError, match=r"texts\[1\]: expected str, got int") as err:
        engine.embed(["fine", 3])
    assert err.value.field == "texts[1]"  # the protocol layer answers 400 with it
    with pytest.raises(InputError, match=r"texts\[1\]: expected str, got bytes"):
        asyncio.run(engine.aembed(["fine", b"raw"]))
    with pytest.raises(InputError, match="texts: expected a list of str, got a single str"):
        engine.embed("a bare string")
    with pytest.raises(InputError, match="texts: expected a list of str, got int"):
        engine.embed(3)
    with pytest.raises(InputError, match=r"texts\[0\]: expected str, got NoneType"):
        engine.count_tokens([None])


def test_small_token_budget_gives_same_vectors_within_limits(model_dir, engine):
    texts = SENTENCES * 3
    budget = {"max_batch_size": 4, "max_batch_tokens": 64, "max_queue_tokens": 64}
    with Engine.load(model_dir, threads=1, batching=budget) as small:
        got = small.embed(texts)  # more tokens than the queue holds: split into requests
        stats = small.stats()
    np.testing.assert_allclose(got, engine.embed(texts), atol=1e-5)
    lengths = np.array(engine.count_tokens(texts))
    assert stats.requests > 1 and stats.sequences == len(texts)
    assert stats.real_tokens == lengths.sum()
    sizes = stats.batch_size
    assert sizes.count == stats.batches and sizes.sum == len(texts)
    assert sum(c for b, c in zip(sizes.bounds, sizes.counts, strict=False) if b > 4) == 0
    # A batch over 64 padded tokens only when one text alone is longer than that.
    assert stats.padded_tokens <= 64 * stats.batches + sum(lengths[lengths > 64])
    assert stats.compute_s > 0 and 0 <= stats.padding_ratio < 1
    assert stats.queue_sequences == stats.live_requests == 0
    as_json = json.loads(json.dumps(stats.as_dict()))  # stats in JSON output, histograms too
    assert as_json["batch_size"]["counts"] == list(sizes.counts)
    assert as_json["padded_tokens"] == stats.padded_tokens


def test_aembed_matches_embed(engine):
    got = asyncio.run(engine.aembed(SENTENCES, timeout=60))
    np.testing.assert_allclose(got, engine.embed(SENTENCES), atol=1e-6)


def test_aembed_with_usage_counts_the_tokens_of_its_own_batches(engine):
    """The usage count comes from the request's rows (special tokens in, truncated),
    equal to counting again; concurrent requests each get their own."""
    huge = "a long text " * 200_000
    requests = [SENTENCES, [huge, "two words"], SENTENCES[:1] * 7]

    async def run_all():
        return await asyncio.gather(*(engine.aembed_with_usage(r, timeout=60) for r in requests))

    for texts, (emb, tokens) in zip(requests, asyncio.run(run_all()), strict=True):
        assert tokens == sum(engine.count_tokens(texts))
        np.testing.assert_allclose(emb, engine.embed(texts), atol=1e-5)
    assert asyncio.run(engine.aembed_with_usage([]))[1] == 0


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def test_memory_returns_near_baseline_after_peaks(engine, workload_texts):
    """Four 10 MB texts and a batch of 64 texts past max_length leave no lasting
    growth: tokenizing stops at max_length, and once the engine is quiet it shrinks
    the runtime's arenas and hands free heap pages back (engine/memory.py) by
    itself, within a few seconds."""

    def huge(k: int) -> str:
        text = " ".join(workload_texts[k * 1000 : k * 1000 + 2000])
        return (text * (10 * 2**20 // len(text) + 1))[: 10 * 2**20]

    longs = [" ".join(workload_texts[i : i + 40]) for i in range(0, 64 * 40, 40)]
    assert min(engine.count_tokens(longs)) == engine.max_length
    # The baseline is a warm engine, quiet: every path (a full batch on the workers,
    # a lone text on the lone-text session) has run once at max_length.
    engine.embed(longs)
    engine.embed(longs[:1])
    engine.embed(SENTENCES[:1])
    time.sleep(3 * IDLE_S)
    base = rss_mib()
    for k in range(4):
        assert engine.embed([huge(k)]).shape == (1, engine.info.dim)
    assert engine.embed(longs).shape == (64, engine.info.dim)
    del longs
    peak = rss_mib() - base
    deadline = time.monotonic() + 5 * IDLE_S
    while (grown := rss_mib() - base) >= 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"\nRSS +{peak:.0f} MiB after the peaks, +{grown:.0f} MiB once quiet")
    assert grown < 50


def test_closed_engine_refuses_work(model_dir):
    eng = Engine.load(model_dir, threads=1)
    assert eng.health()
    eng.close()
    eng.close()  # idempotent
    assert not eng.health()
    with pytest.raises(EngineError, match="closed"):
        eng.embed(["x"])


def test_load_errors_name_the_problem(tmp_path, model_dir):
    with pytest.raises(ModelDirError, match="model directory not found"):
        Engine.load(tmp_path / "nope")
    with pytest.raises(ValidationError, match=r"backend\n.*'onnxruntime' or 'torch'"):
        Engine.load(model_dir, backend="tf")
    with pytest.raises(ValidationError, match=r"threads\n.*greater than or equal to 1"):
        Engine.load(model_dir, threads=0)
    with pytest.raises(ValidationError, match=r"thread\n.*Extra inputs are not permitted"):
        Engine.load(model_dir, thread=2)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:", "cuda:-1", "cuda1", "CPU"])
def test_invalid_device_is_rejected_naming_the_field(model_dir, device):
    message = rf"device\n.*got '{device}'; expected 'cpu', 'cuda' or 'cuda:<index>'"
    with pytest.raises(ValidationError, match=message):
        EngineConfig(device=device)
    with pytest.raises(ValidationError, match=message):
        Engine.load(model_dir, device=device)  # before anything loads


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_cuda_index_reaches_the_backend(model_dir, backend):
    assert EngineConfig(backend=backend, device="cuda:1").device == "cuda:1"
    runtime = create_backend(backend, model_dir, device="cuda:1")
    assert runtime.device == "cuda:1"
    if backend == "onnxruntime":  # the CUDA provider on GPU 1
        cuda = ("CUDAExecutionProvider", {"device_id": 1})
        assert runtime.providers() == [cuda, "CPUExecutionProvider"]
        assert create_backend(backend, model_dir, device="cuda").providers()[0] == (
            "CUDAExecutionProvider",
            {"device_id": 0},
        )
    else:  # torch takes the device string as is; fp16 on any GPU
        assert (runtime.gpu, runtime.dtype) == (1, "float16")


def test_a_missing_gpu_fails_at_load_naming_the_device(model_dir):
    """Validated is loadable: cuda:1 reaches the backend, which says what it lacks."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeError, match="device 'cuda:1' needs onnxruntime with the CUDA"):
        Engine.load(model_dir, device="cuda:1")


def test_config_and_keywords_are_one_schema(model_dir):
    config = EngineConfig(threads=1, max_length=64, batching={"max_batch_size": 4, "workers": 1})
    with Engine.load(model_dir, config) as eng:
        assert eng.config == config
        assert (eng.backend.threads, eng.max_length, eng.batching.max_batch_size) == (1, 64, 4)
    # Keywords lay over the config (a dict works too); the rest of it stands.
    with Engine.load(model_dir, config.model_dump(), max_length=32) as eng:
        assert eng.config == config.model_copy(update={"max_length": 32})


# ---------------------------------------------------------------- heads


def _hidden_and_mask(rows=5, width=9, dim=7, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(rows, width, dim)).astype(np.float32)
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[0] = width
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return hidden, mask, lengths


def test_pooling_ignores_padding():
    hidden, mask, lengths = _hidden_and_mask()
    mean = mean_pool(hidden, mask)
    mx = max_pool(hidden, mask)
    for r, n in enumerate(lengths):
        np.testing.assert_allclose(mean[r], hidden[r, :n].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mx[r], hidden[r, :n].max(0))
    assert mean.dtype == np.float32


def test_embedding_head_modes_and_normalisation():
    hidden, mask, _ = _hidden_and_mask()
    batch = Batch(np.zeros_like(mask), mask, np.zeros_like(mask))
    cls = EmbeddingHead("cls", normalize=False, output="h")({"h": hidden}, batch)
    np.testing.assert_array_equal(cls, hidden[:, 0])
    unit = EmbeddingHead("mean", normalize=True, output="h")({"h": hidden}, batch)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    assert not np.isnan(l2_normalize(np.zeros((2, 3), np.float32))).any()
    with pytest.raises(ValueError, match="expected"):
        EmbeddingHead("mean", False, "h")({"h": hidden[:, :3]}, batch)
    with pytest.raises(ValueError, match="pooling must be one of"):
        EmbeddingHead("sum", False, "h")
