"""Pre/post-processing hooks without Ray: the loader, the config, and the hooks around
real engines through the task adapters (the one path every protocol takes).

The hooks are tests/hook_modules/sample_hooks.py (on the path through conftest.py).
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import orjson
import pytest
import sample_hooks

from textfleet.engine.engine import Engine
from textfleet.engine.errors import InputError
from textfleet.serve.config import ConfigError, parse_model, parse_models
from textfleet.serve.hooked_engine import HookError, load_hooks
from textfleet.serve.hooks import LoadError, load_callable
from textfleet.serve.protocols import v2
from textfleet.serve.protocols.common import error_reply
from textfleet.serve.tasks import adapter_for

TEXTS = ["The Quick Brown FOX.", "Zürich CAFÉ ☕", "ÉCOLE Normale", "already lower"]
ATOL = 2e-5  # other batch shapes than the reference call: float reassociation only
NORM_OUTPUT = {"name": "norm", "datatype": "FP32", "shape": [-1]}
PREFIX = "note: "  # the models are uncased: lowercasing alone would change nothing


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- the loader


def test_a_function_is_returned_with_its_args_bound():
    assert load_callable("sample_hooks:lowercase", {}) is sample_hooks.lowercase
    picky = load_callable("sample_hooks:picky", {"refuse": "no"})
    assert picky(["A", "B"]) == ["a", "b"]
    assert load_callable("sample_hooks:picky", {"prefix": "p "})(["A"]) == ["p a"]
    with pytest.raises(InputError, match="'no' is refused"):
        picky(["no"])


def test_a_class_is_built_once_with_its_args():
    before = sample_hooks.AddNorm.built
    hook = load_callable("sample_hooks:AddNorm", {"scale": 2.0})
    assert isinstance(hook, sample_hooks.AddNorm) and hook.scale == 2.0
    assert sample_hooks.AddNorm.built == before + 1
    emb = np.array([[3.0, 4.0]], np.float32)
    assert hook({"embedding": emb}, ["x"])["norm"].tolist() == [10.0]


@pytest.mark.parametrize(
    ("call", "args", "message"),
    [
        ("no_such_hooks_module:f", {}, "cannot import 'no_such_hooks_module:f': ModuleNotFound"),
        ("sample_hooks:nothing_here", {}, "'sample_hooks' has no 'nothing_here'"),
        ("sample_hooks:lowercase", {"bogus": 1}, "args do not fit its parameters"),
        ("sample_hooks:AddNorm", {"bogus": 1}, "args do not fit its parameters"),
        ("sample_hooks:not_a_thread_hook", {}, "is async"),
        ("sample_hooks:np", {}, "is a module, not a function or a class"),
        ("os.system('x'):f", {}, "expected an import path"),
        ("sample_hooks.lowercase", {}, "expected an import path"),
    ],
)
def test_what_cannot_be_loaded_is_a_load_error_naming_the_call(call, args, message):
    with pytest.raises(LoadError, match=re.escape(message)):
        load_callable(call, args)


# ---------------------------------------------------------------- the config


def entry(hooks: dict, **more) -> dict:
    return {"name": "m", "model_dir": "/nowhere", "hooks": hooks, **more}


def test_hooks_config_is_typed():
    cfg = parse_model(
        entry(
            {
                "preprocess": {"call": "sample_hooks:picky", "args": {"refuse": "x"}},
                "postprocess": {"call": "sample_hooks:AddNorm", "outputs": [NORM_OUTPUT]},
                "threads": 2,
            }
        )
    )
    assert cfg.hooks.preprocess.args == {"refuse": "x"} and cfg.hooks.threads == 2
    assert cfg.hooks.postprocess.outputs[0].shape == [-1]
    assert parse_model(cfg.builder_args()).hooks == cfg.hooks  # what the replica receives


@pytest.mark.parametrize(
    ("hooks", "field", "message"),
    [
        ({"preprocess": {"call": "pkg.mod.fn"}}, "hooks.preprocess.call", "import path"),
        ({"preprocess": {"call": "__import__('os'):x"}}, "hooks.preprocess.call", "import path"),
        ({"preprocess": {"call": "m:f", "extra": 1}}, "hooks.preprocess.extra", "not permitted"),
        ({"postprocess": {"call": "m:C", "outputs": [{**NORM_OUTPUT, "shape": [3]}]}},
         "hooks.postprocess.outputs.0.shape", "first dimension is the rows"),
        ({"postprocess": {"call": "m:C", "outputs": [{**NORM_OUTPUT, "datatype": "F32"}]}},
         "hooks.postprocess.outputs.0.datatype", "Input should be"),
        ({"postprocess": {"call": "m:C", "outputs": [NORM_OUTPUT, NORM_OUTPUT]}},
         "hooks.postprocess.outputs", "'norm' is declared twice"),
        ({"threads": 0}, "hooks.threads", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_hooks_config_names_model_and_field(hooks, field, message):
    with pytest.raises(ConfigError) as err:
        parse_models({"models": [entry(hooks)]})
    text = str(err.value)
    assert f"model 'm': field '{field}'" in text and message in text, text


# ---------------------------------------------------------------- around a real engine


@pytest.fixture(scope="module")
def minilm(model_dir):
    eng = Engine.load(model_dir.path, threads=1)
    yield eng
    eng.close()


def hooked(engine, md, hooks: dict, name: str = "hooked"):
    config = parse_model({"name": name, "model_dir": str(md.path), "hooks": hooks})
    return adapter_for(engine, config, load_hooks(name, config.hooks))


@pytest.fixture(scope="module")
def embedder(minilm, model_dir):
    return hooked(
        minilm,
        model_dir,
        {
            "preprocess": {"call": "sample_hooks:picky", "args": {"prefix": PREFIX}},
            "postprocess": {
                "call": "sample_hooks:AddNorm",
                "args": {"scale": 2.0},
                "outputs": [NORM_OUTPUT],
            },
        },
    )


def v2_request(texts, **params) -> v2.InferRequest:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return v2.infer_request_from_dict({"inputs": [inp], "parameters": params})


def lowered(engine, texts) -> np.ndarray:
    return engine.embed([PREFIX + t.lower() for t in texts])


def test_preprocess_lowercasing_equals_the_engine_on_lowercased_text(embedder, minilm):
    out = run(embedder.infer(v2_request(TEXTS)))
    want = lowered(minilm, TEXTS)
    np.testing.assert_allclose(out["embedding"], want, atol=ATOL)
    assert not np.allclose(minilm.embed(TEXTS), want, atol=1e-3)  # the hook made a difference


def test_a_plain_lowercasing_hook_equals_the_engine_on_lowercased_text(minilm, model_dir):
    adapter = hooked(minilm, model_dir, {"preprocess": {"call": "sample_hooks:lowercase"}})
    want = minilm.embed([t.lower() for t in TEXTS])
    np.testing.assert_allclose(run(adapter.embed(TEXTS)), want, atol=ATOL)


def test_postprocess_adds_a_declared_output_to_metadata_and_v2(embedder, minilm):
    assert embedder.outputs[-1].as_dict() == NORM_OUTPUT
    assert [t.name for t in embedder.outputs] == ["embedding", "norm"]
    out = run(embedder.infer(v2_request(TEXTS)))
    np.testing.assert_allclose(out["norm"], 2.0 * np.linalg.norm(out["embedding"], axis=1))
    body = orjson.loads(v2.infer_response("hooked", "1", v2_request(TEXTS), out).body)
    assert [o["name"] for o in body["outputs"]] == ["embedding", "norm"]
    assert body["outputs"][1]["datatype"] == "FP32" and body["outputs"][1]["shape"] == [4]


def test_every_protocol_and_handle_call_passes_through_the_hooks(embedder, minilm):
    want = lowered(minilm, TEXTS)
    v1 = run(embedder.v1_predictions(TEXTS))
    np.testing.assert_allclose(np.array(v1), want, atol=ATOL)
    reply = run(embedder.openai_embeddings({"model": "hooked", "input": TEXTS}))
    got = [d["embedding"] for d in orjson.loads(reply.body)["data"]]
    np.testing.assert_allclose(np.array(got), want, atol=ATOL)
    np.testing.assert_allclose(run(embedder.embed(TEXTS)), want, atol=ATOL)


def test_a_hooks_input_error_is_a_400_anything_else_a_500_naming_the_hook(embedder):
    with pytest.raises(InputError) as err:
        run(embedder.infer(v2_request(["fine", "reject"])))
    reply = error_reply(err.value)
    assert reply.status == 400 and "'reject' is refused" in orjson.loads(reply.body)["error"]
    with pytest.raises(HookError) as err:
        run(embedder.infer(v2_request(["crash"])))
    reply = error_reply(err.value)
    assert reply.status == 500
    assert orjson.loads(reply.body)["error"] == (
        "model 'hooked': preprocess hook 'sample_hooks:picky' raised RuntimeError; "
        "see the server log"
    )


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ({"preprocess": {"call": "sample_hooks:drop_last"}},
         "preprocess hook 'sample_hooks:drop_last' returned 1 items for 2; it must return one"),
        ({"postprocess": {"call": "sample_hooks:undeclared"}},
         "returned undeclared outputs ['surprise']"),
        ({"postprocess": {"call": "sample_hooks:halve_rows"}},
         "changed output 'embedding' from FP32 [2, 384] to FP32 [1, 384]"),
        ({"postprocess": {"call": "sample_hooks:as_list"}}, "returned a list, not a dict"),
    ],
)  # fmt: skip
def test_a_hook_breaking_its_contract_is_a_500_naming_it(minilm, model_dir, hooks, message):
    adapter = hooked(minilm, model_dir, hooks)
    with pytest.raises(HookError, match=re.escape(message)):
        run(adapter.infer(v2_request(["a", "b"])))


def test_an_extra_output_may_not_take_a_task_outputs_name(minilm, model_dir):
    clash = {"call": "sample_hooks:AddNorm", "outputs": [{**NORM_OUTPUT, "name": "embedding"}]}
    with pytest.raises(ValueError, match="'embedding' is an output of the task already"):
        hooked(minilm, model_dir, {"postprocess": clash})


def test_a_hook_that_cannot_be_imported_names_model_and_stage():
    config = parse_model(entry({"preprocess": {"call": "no_such_hooks_module:f"}}))
    with pytest.raises(LoadError, match="model 'm': preprocess hook: cannot import"):
        load_hooks("m", config.hooks)


def test_without_hooks_calls_go_straight_to_the_engine(minilm, model_dir):
    adapter = adapter_for(minilm, parse_model({"name": "plain", "model_dir": str(model_dir.path)}))
    assert adapter.engine.hooks is None
    np.testing.assert_allclose(run(adapter.embed(TEXTS)), minilm.embed(TEXTS), atol=ATOL)


# ---------------------------------------------------------------- other tasks


def test_pair_hooks_see_pairs_on_score_rerank_and_v2(cross_encoder_dir):
    engine = Engine.load(cross_encoder_dir.path, threads=1)
    try:
        pre = {"preprocess": {"call": "sample_hooks:lowercase_pairs"}}
        adapter = hooked(engine, cross_encoder_dir, pre)
        docs = ["Paris Is The Capital", "BANANAS are yellow", "The Eiffel Tower"]
        want = engine.score([("where is paris?", d.lower()) for d in docs])
        got = run(adapter.score([("WHERE is Paris?", d) for d in docs]))
        np.testing.assert_allclose(got, want, atol=ATOL)
        ranked = run(adapter.rerank("WHERE is Paris?", docs, top_k=2))
        assert [r.index for r in ranked] == list(np.argsort(-want, kind="stable")[:2])
        np.testing.assert_allclose([r.score for r in ranked], np.sort(want)[::-1][:2], atol=ATOL)
        query = {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["WHERE is Paris?"]}
        document = {"name": "document", "datatype": "BYTES", "shape": [3], "data": docs}
        req = v2.infer_request_from_dict({"inputs": [query, document]})
        np.testing.assert_allclose(run(adapter.infer(req))["score"], want, atol=ATOL)
    finally:
        engine.close()


def test_a_classifier_postprocess_renames_labels_on_every_path(categorium_dir):
    engine = Engine.load(categorium_dir.path, threads=1)
    try:
        best = engine.classify(TEXTS)
        names = {r[0].label: f"topic-{r[0].label}" for r in best}
        post = {
            "call": "sample_hooks:RenameLabels",
            "args": {"names": names},
            "outputs": [{"name": "length", "datatype": "INT64", "shape": [-1]}],
        }
        adapter = hooked(engine, categorium_dir, {"postprocess": post})
        out = run(adapter.infer(v2_request(TEXTS)))
        assert list(out["label"]) == [f"topic-{r[0].label}" for r in best]
        assert out["length"].tolist() == [len(t) for t in TEXTS]
        v1 = run(adapter.v1_predictions(TEXTS))
        assert [p["label"] for p in v1] == list(out["label"])
        top3 = run(adapter.classify(TEXTS, top_k=3))
        assert [r[0].label for r in top3] == list(out["label"])
        assert [r[0].score for r in top3] == pytest.approx([r[0].score for r in best], abs=ATOL)
    finally:
        engine.close()
