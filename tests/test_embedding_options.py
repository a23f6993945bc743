"""Matryoshka widths (``dimensions``) and instruction prompts (``prompt_name``).

The model: all-MiniLM-L6-v2's folder with prompts added to its
``config_sentence_transformers.json`` (as e5 / bge / arctic ship them) and
exported with ``matryoshka_dims``. References: the plain export of the same
weights, with the prefix prepended by hand; truncation and re-normalisation
by hand. Engine, task adapter (V2, OpenAI, handle) and metadata.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from conftest import PROMPTS

from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError
from textfleet.serve.config import parse_model
from textfleet.serve.protocols import v2
from textfleet.serve.protocols.common import error_status
from textfleet.serve.tasks import adapter_for

TEXTS = ["how do cats sleep", "Cats sleep up to sixteen hours a day.", ""]


@pytest.fixture(scope="module")
def prompted(prompted_dir):
    with Engine.load(prompted_dir, threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def plain(model_dir):
    with Engine.load(model_dir, threads=1) as engine:
        yield engine


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_export_reads_prompts_and_records_the_widths(prompted_dir):
    info = prompted_dir.info
    assert info.prompts == PROMPTS and info.default_prompt_name == "query"
    assert info.matryoshka_dims == (64, 128, 256)


def test_export_refuses_widths_the_model_does_not_have(prompted_source, tmp_path, capsys):
    from textfleet.cli import main

    out = tmp_path / "never"
    args = ["export", str(prompted_source), "-o", str(out), "--matryoshka-dims", "64,999"]
    assert main(args) == 2
    assert "each width must be between 1 and 383" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- prompts


def test_prompts_equal_the_prefix_prepended_by_hand(prompted, plain):
    by_hand = plain.embed([PROMPTS["passage"] + t for t in TEXTS])
    np.testing.assert_allclose(prompted.embed(TEXTS, prompt_name="passage"), by_hand, atol=1e-6)
    # no prompt named: the model's default one
    default = plain.embed([PROMPTS["query"] + t for t in TEXTS])
    np.testing.assert_allclose(prompted.embed(TEXTS), default, atol=1e-6)
    assert not np.allclose(prompted.embed(TEXTS[:1]), plain.embed(TEXTS[:1]), atol=1e-3)


def test_prompt_tokens_are_counted_in_usage(prompted, plain):
    vectors, tokens = asyncio.run(prompted.aembed_with_usage(TEXTS, prompt_name="passage"))
    prefixed = [PROMPTS["passage"] + t for t in TEXTS]
    assert tokens == sum(plain.count_tokens(prefixed))
    np.testing.assert_allclose(vectors, plain.embed(prefixed), atol=1e-6)


def test_an_unknown_prompt_names_the_ones_there_are(prompted, plain):
    with pytest.raises(InputError, match="no prompt 'doc'; its prompts: 'query' or 'passage'"):
        prompted.embed(TEXTS, prompt_name="doc")
    with pytest.raises(InputError, match="its prompts: none"):
        plain.embed(TEXTS, prompt_name="query")


# ---------------------------------------------------------------- Matryoshka


@pytest.mark.parametrize("width", [64, 128, 256])
def test_dimensions_equal_truncation_and_renormalisation_by_hand(prompted, width):
    full = prompted.embed(TEXTS)
    got = prompted.embed(TEXTS, dimensions=width)
    assert got.shape == (len(TEXTS), width) and got.dtype == np.float32
    np.testing.assert_allclose(got, l2(full[:, :width]), atol=1e-6)
    got_async = asyncio.run(prompted.aembed(TEXTS, dimensions=width))
    np.testing.assert_allclose(got_async, got, atol=1e-6)
    np.testing.assert_allclose(prompted.embed(TEXTS, dimensions=384), full, atol=1e-6)
    assert prompted.embed([], dimensions=width).shape == (0, width)


def test_undeclared_widths_are_refused_naming_the_declared_ones(prompted, plain):
    with pytest.raises(InputError) as err:
        prompted.embed(TEXTS, dimensions=100)
    assert err.value.field == "dimensions"
    assert "gives embeddings of 64, 128, 256 or 384 dimensions, not 100" in str(err.value)
    assert error_status(err.value) == 400
    with pytest.raises(InputError, match="of 384 dimensions, not 64 .no Matryoshka widths"):
        plain.embed(TEXTS, dimensions=64)


# ---------------------------------------------------------------- serving adapter


@pytest.fixture(scope="module")
def adapter(prompted, prompted_dir):
    return adapter_for(prompted, parse_model({"name": "p", "model_dir": str(prompted_dir.path)}))


def test_v2_parameters_pick_the_width_and_the_prompt(adapter, plain):
    req = v2.infer_request_from_dict(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}],
            "parameters": {"dimensions": 128, "prompt_name": "passage"},
        }
    )
    out = asyncio.run(adapter.infer(req))["embedding"]
    expected = l2(plain.embed([PROMPTS["passage"] + t for t in TEXTS])[:, :128])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_openai_dimensions_and_prompt_name(adapter, plain):
    body = {"model": "p", "input": TEXTS, "dimensions": 64, "prompt_name": "passage"}
    reply = asyncio.run(adapter.openai_embeddings(body))
    data = orjson.loads(reply.body)
    got = np.array([d["embedding"] for d in data["data"]], np.float32)
    prefixed = [PROMPTS["passage"] + t for t in TEXTS]
    np.testing.assert_allclose(got, l2(plain.embed(prefixed)[:, :64]), atol=1e-6)
    assert data["usage"]["prompt_tokens"] == sum(plain.count_tokens(prefixed))
    with pytest.raises(InputError, match="dimensions"):
        asyncio.run(adapter.openai_embeddings({**body, "dimensions": 65}))


def test_handle_keywords_and_metadata(adapter):
    got = asyncio.run(adapter.embed(TEXTS, dimensions=256, prompt_name="query"))
    np.testing.assert_allclose(got, asyncio.run(adapter.embed(TEXTS, dimensions=256)), atol=1e-6)
    assert adapter.metadata_parameters() == {
        "max_length": 256,
        "on_overflow": "truncate",
        "dimensions": [64, 128, 256, 384],
        "prompts": PROMPTS,
        "default_prompt_name": "query",
    }
