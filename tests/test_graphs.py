"""Inference graphs without Ray: the ``graphs:`` schema and its checks, the DAG walk,
the built-in ops, and the Ray Serve config they generate.

The walk runs on in-process stand-ins for the models (deterministic functions
of the texts, with the tasks' output tensors), so that every graph answer can
be checked against the same functions called directly.
"""

from __future__ import annotations

import asyncio
import time
import zlib

import numpy as np
import orjson
import pytest
import yaml
from graph_configs import clip_tag, enrich, search_rerank, topic_ner
from ray.serve.schema import ServeDeploySchema

from textfleet.engine.errors import InputError, Overloaded
from textfleet.serve.config import ConfigError, load_models, parse_models
from textfleet.serve.generate import GRAPH_BUILDER, serve_config
from textfleet.serve.graph import GraphError, run_graph
from textfleet.serve.graph_config import GraphConfig, output_shapes, plan_graph
from textfleet.serve.graph_python import PythonSteps
from textfleet.serve.hooks import LoadError
from textfleet.serve.protocols.common import NotFound, Unavailable

TASKS = {
    "minilm": "embedding",
    "topics": "classification",
    "ner-a": "token-classification",
    "ner-b": "token-classification",
    "ce": "pair-scoring",
}
MODELS = [{"name": n, "model_dir": "/x", "task": t} for n, t in TASKS.items()]
LABELS = ("sports", "politics", "science")


def models_yaml(*graphs: dict) -> dict:
    return {"models": MODELS, "graphs": list(graphs)}


def plan(graph: dict):
    return plan_graph(GraphConfig.model_validate(graph), TASKS)


# ---------------------------------------------------------------- stand-in models


def embed(texts) -> np.ndarray:
    """A float32 vector per text, from its bytes."""
    rows = []
    for t in texts:
        b = np.frombuffer(t.encode().ljust(8, b"#")[:8], dtype=np.uint8).astype(np.float32)
        rows.append(b / 255.0 - 0.3)
    return np.stack(rows)


def topic(text: str) -> str:
    return LABELS[zlib.crc32(text.encode()) % 3]


def entities(model: str, text: str) -> str:
    return orjson.dumps([{"label": model, "text": text[:5], "start": 0, "end": 5}]).decode()


def score(query: str, doc: str) -> float:
    return float(len(set(query.split()) & set(doc.split())) + len(doc) % 7 / 10)


def objects(items) -> np.ndarray:
    items = list(items)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


class Models:
    """``call_model`` over the stand-ins; records each call's model and texts."""

    def __init__(self, delay_s: float = 0.0, fail: dict | None = None):
        self.calls: list[tuple[str, list[str]]] = []
        self.parameters: list[tuple[str, dict]] = []
        self.busy: list[tuple[float, float]] = []  # each call's (start, end) of its delay
        self.delay_s, self.fail = delay_s, fail or {}

    async def __call__(self, model, inputs, parameters, timeout):
        texts = list(inputs.get("text", inputs.get("document", [])))
        self.calls.append((model, texts))
        self.parameters.append((model, parameters))
        if self.delay_s:
            start = time.perf_counter()
            await asyncio.sleep(self.delay_s)
            self.busy.append((start, time.perf_counter()))
        if model in self.fail:
            raise self.fail[model]
        return direct(model, inputs)


def direct(model: str, inputs: dict) -> dict[str, np.ndarray]:
    task = TASKS[model]
    if task == "embedding":
        return {"embedding": embed(inputs["text"])}
    if task == "classification":
        labels = [topic(t) for t in inputs["text"]]
        return {"label": objects(labels), "score": np.full(len(labels), 0.5, np.float32)}
    if task == "token-classification":
        return {"entities": objects(entities(model, t) for t in inputs["text"])}
    q = list(inputs["query"]) * (len(inputs["document"]) if len(inputs["query"]) == 1 else 1)
    return {
        "score": np.array(
            [score(a, b) for a, b in zip(q, inputs["document"], strict=True)], dtype=np.float32
        )
    }


def run(graph: dict, inputs: dict, models: Models | None = None, timeout=None, priority=None):
    arrays = {k: objects(v) for k, v in inputs.items()}
    p = plan(graph)
    python = PythonSteps(p)  # the python steps' code, loaded as a graph replica does
    try:
        return asyncio.run(run_graph(p, arrays, models or Models(), timeout, python, priority))
    finally:
        python.close()


TEXTS = [f"row {i}: {'ball game' if i % 3 == 0 else 'vote count'} {i * 7}" for i in range(200)]


# ---------------------------------------------------------------- the walk


def test_enrich_equals_direct_calls_and_runs_its_steps_concurrently():
    models = Models(delay_s=0.2)
    result = run(enrich(), {"text": TEXTS[:5]}, models)
    assert np.array_equal(result.outputs["embedding"], embed(TEXTS[:5]))
    assert list(result.outputs["entities"]) == [entities("ner-a", t) for t in TEXTS[:5]]
    assert sorted(m for m, _ in models.calls) == ["minilm", "ner-a"]
    # Concurrent: the second step started before the first one's 200 ms were over
    # (a wall-clock bound would also count a slow machine's scheduling).
    (start_a, end_a), (start_b, end_b) = models.busy
    assert max(start_a, start_b) < min(end_a, end_b), f"not concurrent: {models.busy}"
    params = result.parameters()
    assert set(params) >= {"graph_ms", "step_ms.embed", "step_ms.pii"}
    assert params["step_ms.embed"] >= 200 and "failed_optional" not in params


def test_the_requests_priority_reaches_every_model_step():
    models = Models()
    run(
        topic_ner({"sports": "ner-a", "politics": "ner-b"}, default="ner-b"),
        {"text": TEXTS[:6]},
        models,
        priority=1,
    )
    assert len(models.parameters) >= 3  # the topic step and one call per branch
    assert all(p.get("priority") == 1 for _, p in models.parameters), models.parameters
    models = Models()
    run(
        topic_ner({"sports": "ner-a", "politics": "ner-b"}, default="ner-b"),
        {"text": TEXTS[:6]},
        models,
    )
    assert not any("priority" in p for _, p in models.parameters), models.parameters


def test_switch_routes_each_row_to_its_branch_once_per_branch_in_order():
    models = Models()
    graph = topic_ner({"sports": "ner-a", "politics": "ner-b"}, default="ner-b")
    result = run(graph, {"text": TEXTS}, models)
    routes = {"sports": "ner-a", "politics": "ner-b", "science": "ner-b"}
    want_route = [routes[topic(t)] for t in TEXTS]
    assert list(result.outputs["route"]) == want_route
    assert list(result.outputs["topic"]) == [topic(t) for t in TEXTS]
    assert list(result.outputs["entities"]) == [
        entities(m, t) for m, t in zip(want_route, TEXTS, strict=True)
    ]
    # One classifier call, then one sub-request per branch holding its rows in order.
    assert models.calls[0] == ("topics", TEXTS)
    branch_calls = dict(models.calls[1:])
    assert len(models.calls) == 3 and set(branch_calls) == {"ner-a", "ner-b"}
    for m, texts in branch_calls.items():
        assert texts == [t for t, r in zip(TEXTS, want_route, strict=True) if r == m]
    assert result.requests == {"topic": 1, "ner": 2}


def test_switch_without_default_answers_422_naming_the_rows():
    graph = topic_ner({"sports": "ner-a", "politics": "ner-b"}, default=None)
    texts = TEXTS[:30]
    missing = [i for i, t in enumerate(texts) if topic(t) == "science"]
    assert missing, "the sample must hold a row of no case"
    with pytest.raises(GraphError) as e:
        run(graph, {"text": texts})
    assert e.value.status == 422
    message = str(e.value)
    assert message.startswith("graph 'topic-ner': step 'ner': no case for rows ")
    for i in missing:
        assert f"{i} ('science')" in message


def test_search_rerank_equals_a_numpy_reference():
    query = "ball game tonight"
    docs = [t + " tonight" * (i % 2) for i, t in enumerate(TEXTS[:20])]
    result = run(search_rerank(shortlist=6, k=3), {"query": [query], "document": docs})
    q, d = embed([query])[0].astype(np.float64), embed(docs).astype(np.float64)
    cos = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    shortlist = np.argsort(-cos, kind="stable")[:6]
    scores = np.array([score(query, docs[i]) for i in shortlist], dtype=np.float32)
    ranked = np.argsort(-scores.astype(np.float64), kind="stable")[:3]
    assert result.outputs["index"].tolist() == shortlist[ranked].tolist()
    assert list(result.outputs["document"]) == [docs[i] for i in shortlist[ranked]]
    assert np.array_equal(result.outputs["score"], scores[ranked])


def test_a_failed_optional_step_is_left_out_and_listed():
    models = Models(fail={"ner-a": Overloaded("queue full", retry_after_s=2.0)})
    result = run(enrich(), {"text": TEXTS[:3]}, models)
    assert set(result.outputs) == {"embedding"} and result.omitted == ["entities"]
    params = result.parameters()
    assert params["failed_optional"] == "pii"
    assert params["error.pii"] == "graph 'enrich': step 'pii' (model 'ner-a'): queue full"


def test_an_optional_step_reading_a_failed_one_is_skipped():
    graph = enrich()
    graph["steps"].append(
        {"name": "again", "model": "ner-b", "inputs": {"text": "pii.entities"}, "optional": True}
    )
    models = Models(fail={"ner-a": InputError("text", "bad")})
    result = run(graph, {"text": TEXTS[:2]}, models)
    assert result.failed["again"] == "skipped: step 'pii' failed"
    assert [m for m, _ in models.calls].count("ner-b") == 0


@pytest.mark.parametrize(
    ("error", "status", "retry"),
    [
        (Unavailable("model 'minilm' is at capacity", retry_after_s=3.0), 503, 3.0),
        (NotFound("unknown model 'minilm'"), 503, 1.0),
        (InputError("parameters.dimensions", "too wide"), 400, None),
        (TimeoutError("model 'minilm' did not answer within 1 s"), 504, None),
    ],
    ids=["unavailable", "not-found", "input", "timeout"],
)
def test_a_failed_step_fails_the_graph_naming_step_and_model(error, status, retry):
    with pytest.raises(GraphError) as e:
        run(enrich(), {"text": TEXTS[:2]}, Models(fail={"minilm": error}))
    assert e.value.status == status and e.value.retry_after_s == retry
    assert str(e.value).startswith("graph 'enrich': step 'embed' (model 'minilm'): ")


def test_the_timeout_is_the_whole_graphs_budget():
    with pytest.raises(GraphError) as e:
        run(enrich(), {"text": TEXTS[:2]}, Models(delay_s=1.0), timeout=0.2)
    assert e.value.status == 504
    assert "graph 'enrich' did not finish within 0.2 s (steps still running: " in str(e.value)


def test_an_op_on_bad_input_is_a_400_naming_the_op():
    graph = search_rerank()
    with pytest.raises(GraphError) as e:
        # Two queries where the graph declares one: the op refuses (the HTTP layer
        # checks the declared shape first; the walk itself does not).
        run(graph, {"query": ["a", "b"], "document": TEXTS[:4]})
    assert e.value.status == 400
    assert str(e.value).startswith("graph 'search-rerank': step 'shortlist' (op top_k): query")


def test_a_python_step_between_two_models_is_its_code_on_the_first_models_answer():
    models = Models()
    texts = TEXTS[:7]
    result = run(clip_tag(), {"text": texts}, models)
    clipped = [f"{topic(t)}: {t[:12].lower()}" for t in texts]
    assert list(result.outputs["clipped"]) == clipped
    assert result.outputs["length"].dtype == np.int64
    assert result.outputs["length"].tolist() == [len(t) for t in texts]
    assert list(result.outputs["entities"]) == [entities("ner-a", t) for t in clipped]
    assert models.calls == [("topics", texts), ("ner-a", clipped)]
    assert "step_ms.clip" in result.parameters() and "requests.clip" not in result.parameters()


def test_a_python_step_runs_in_its_own_thread_off_the_event_loop():
    graph = {
        "name": "where",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "steps": [
            {
                "name": "who",
                "python": {"call": "sample_hooks:thread_name"},
                "inputs": {"text": "$input.text"},
                "outputs": [{"name": "thread", "datatype": "BYTES"}],
            }
        ],
        "outputs": {"thread": "who.thread"},
    }
    result = run(graph, {"text": ["a", "b"]})
    assert [t.startswith("graph-step-who") for t in result.outputs["thread"]] == [True, True]


PYTHON_FAILURES = {
    "input-error": (
        "sample_hooks:label_and_clip",
        None,
        400,
        "graph 'clip-tag': step 'clip' (python 'sample_hooks:label_and_clip'): text[1]: "
        "'reject' is refused by the python step",
    ),
    "raised": (
        "sample_hooks:label_and_clip",
        None,
        500,
        "graph 'clip-tag': step 'clip' (python 'sample_hooks:label_and_clip'): raised "
        "RuntimeError; see the server log",
    ),
    "rows": (
        "sample_hooks:one_row_short",
        {},
        500,
        "graph 'clip-tag': step 'clip' (python 'sample_hooks:one_row_short'): returned output "
        "'text' of shape [2]; it declares [-1], here [3]",
    ),
    "names": (
        "sample_hooks:misnamed",
        {},
        500,
        "graph 'clip-tag': step 'clip' (python 'sample_hooks:misnamed'): returned outputs "
        "length, txt; it declares text, length",
    ),
}


@pytest.mark.parametrize("case", PYTHON_FAILURES, ids=list(PYTHON_FAILURES))
def test_a_failing_python_step_fails_the_graph_naming_the_step(case):
    call, args, status, message = PYTHON_FAILURES[case]
    texts = ["Ball game", "crash" if case == "raised" else "reject", "vote count"]
    models = Models()
    with pytest.raises(GraphError) as e:
        run(clip_tag(call=call, args=args), {"text": texts}, models)
    assert (e.value.status, str(e.value)) == (status, message)
    assert [m for m, _ in models.calls] == ["topics"]  # the model after it never ran


def test_a_python_step_that_cannot_be_loaded_names_the_graph_and_step():
    with pytest.raises(LoadError) as e:
        PythonSteps(plan(clip_tag(call="no_such_graph_module:clip")))
    assert str(e.value).startswith(
        "graph 'clip-tag': step 'clip': cannot import 'no_such_graph_module:clip': "
        "ModuleNotFoundError"
    )
    with pytest.raises(LoadError, match="args do not fit its parameters"):
        PythonSteps(plan(clip_tag(args={"width": 3})))


# ---------------------------------------------------------------- config


def test_the_three_graph_kinds_validate():
    graphs = [enrich(), topic_ner({"sports": "ner-a"}, "ner-b"), search_rerank()]
    loaded = parse_models(models_yaml(*graphs))
    assert [g.name for g in loaded.graphs] == ["enrich", "topic-ner", "search-rerank"]
    assert loaded.app_names()[-3:] == ["enrich", "topic-ner", "search-rerank"]
    assert loaded.graph_tasks(loaded.graphs[1]) == {
        "topics": "classification",
        "ner-a": "token-classification",
        "ner-b": "token-classification",
    }


def test_output_shapes_follow_the_tasks_and_the_ops():
    assert output_shapes(plan(enrich())) == {"embedding": [-1, -1], "entities": [-1]}
    assert output_shapes(plan(search_rerank())) == {
        "document": [-1],
        "score": [-1],
        "index": [-1],
    }
    assert output_shapes(plan(clip_tag())) == {
        "entities": [-1],
        "clipped": [-1],
        "length": [-1],
    }
    routed = plan(topic_ner({"sports": "ner-a"}, "ner-b"))
    assert output_shapes(routed) == {"topic": [-1], "entities": [-1], "route": [-1]}


def test_yaml_on_key_is_the_switch_key(tmp_path):
    """YAML 1.1 reads an unquoted ``on:`` as true; the switch takes it as ``on``."""
    text = yaml.safe_dump(models_yaml(topic_ner({"sports": "ner-a"}, "ner-b")), sort_keys=False)
    path = tmp_path / "models.yaml"
    path.write_text(text.replace("'on':", "on:"))
    assert "on: topic.label" in path.read_text()
    assert load_models(path).graphs[0].steps[1].switch.on == "topic.label"


def _with(graph: dict, step: str, **changes) -> dict:
    for s in graph["steps"]:
        if s["name"] == step:
            s.update(changes)
    return graph


def _cycle() -> dict:
    g = enrich()
    g["steps"] = [
        {"name": "a", "model": "ner-a", "inputs": {"text": "b.entities"}},
        {"name": "b", "model": "ner-b", "inputs": {"text": "a.entities"}},
    ]
    g["outputs"] = {"entities": "a.entities"}
    return g


def _switch(**changes) -> dict:
    g = topic_ner({"sports": "ner-a"}, "ner-b")
    g["steps"][1]["switch"].update(changes)
    return g


def _clip_outputs(*outputs: dict) -> dict:
    g = clip_tag()
    g["steps"][1]["outputs"] = list(outputs)
    return g


BAD_GRAPHS = {
    "unknown-model": (
        _with(enrich(), "embed", model="nope"),
        "graph 'enrich': step 'embed': unknown model 'nope'; models: minilm, topics",
    ),
    "cycle": (_cycle(), "graph 'enrich': step 'a': cycle: a -> b -> a"),
    "output-the-task-lacks": (
        _switch(on="topic.labels"),
        "graph 'topic-ner': step 'ner': 'topic.labels': step 'topic' (model 'topics', task "
        "classification) gives label, score, not 'labels'",
    ),
    "switch-on-non-bytes": (
        _switch(on="topic.score"),
        "graph 'topic-ner': step 'ner': switch.on 'topic.score' is FP32; a switch routes on a "
        "BYTES output",
    ),
    "branches-of-different-tasks": (
        _switch(cases={"sports": {"model": "ner-a"}, "politics": {"model": "minilm"}}),
        "graph 'topic-ner': step 'ner': branches of different tasks: 'ner-a' is "
        "token-classification, 'minilm' is embedding",
    ),
    "wrong-datatype": (
        _with(enrich(), "pii", inputs={"text": "embed.embedding"}, optional=False),
        "graph 'enrich': step 'pii': input 'text' ('embed.embedding') is FP32; model 'ner-a' "
        "(task token-classification) takes BYTES",
    ),
    "unknown-model-input": (
        _with(enrich(), "embed", inputs={"sentence": "$input.text"}),
        "graph 'enrich': step 'embed': model 'minilm' (task embedding) takes inputs text; "
        "got sentence",
    ),
    "unknown-graph-input": (
        _with(enrich(), "embed", inputs={"text": "$input.body"}),
        "graph 'enrich': step 'embed': '$input.body': the graph has no input 'body'",
    ),
    "reads-an-optional-step": (
        _with(enrich(), "embed", inputs={"text": "pii.entities"}),
        "graph 'enrich': step 'embed': reads optional step 'pii'; mark this step optional too",
    ),
    "two-kinds": (
        _with(enrich(), "embed", op="gather"),
        "graph 'enrich': step 'embed': set exactly one of model, switch, op or python (got "
        "model, op)",
    ),
    "op-setting-missing": (
        _with(search_rerank(), "shortlist", k=None),
        "graph 'search-rerank': step 'shortlist': op top_k needs k",
    ),
    "op-input-missing": (
        _with(search_rerank(), "shortlist", inputs={"query": "q.embedding"}),
        "graph 'search-rerank': step 'shortlist': op top_k takes inputs query, candidates; "
        "got query",
    ),
    "not-a-reference": (
        _with(enrich(), "embed", inputs={"text": "text"}),
        "graph 'enrich': step 'embed': field 'inputs': input 'text': 'text' is not a reference",
    ),
    "python-output-it-does-not-declare": (
        {**clip_tag(), "outputs": {"entities": "tag.entities", "clipped": "clip.nope"}},
        "graph 'clip-tag': step 'clip': gives no 'nope' (output 'clipped'); it gives text, length",
    ),
    "reads-a-python-output-it-does-not-declare": (
        _with(clip_tag(), "tag", inputs={"text": "clip.txt"}),
        "graph 'clip-tag': step 'tag': 'clip.txt': step 'clip' (python "
        "'sample_hooks:label_and_clip') gives text, length, not 'txt'",
    ),
    "python-output-of-the-wrong-datatype": (
        _clip_outputs(
            {"name": "text", "datatype": "FP32"}, {"name": "length", "datatype": "INT64"}
        ),
        "graph 'clip-tag': step 'tag': input 'text' ('clip.text') is FP32; model 'ner-a' "
        "(task token-classification) takes BYTES",
    ),
    "python-without-outputs": (
        _clip_outputs(),
        "graph 'clip-tag': step 'clip': a python step declares its outputs",
    ),
    "python-output-twice": (
        _clip_outputs({"name": "text", "datatype": "BYTES"}, {"name": "text", "datatype": "BYTES"}),
        "graph 'clip-tag': step 'clip': two outputs are named 'text'",
    ),
    "outputs-of-a-model-step": (
        _with(clip_tag(), "tag", outputs=[{"name": "x", "datatype": "FP32"}]),
        "graph 'clip-tag': step 'tag': outputs are declared by python steps only",
    ),
    "python-call-not-an-import-path": (
        _with(clip_tag(), "clip", python={"call": "sample_hooks.label_and_clip"}),
        "graph 'clip-tag': step 'clip': field 'python.call': got 'sample_hooks.label_and_clip'; "
        "expected an import path",
    ),
    "python-step-with-parameters": (
        _with(clip_tag(), "clip", parameters={"top_k": 2}),
        "graph 'clip-tag': step 'clip': parameters go to a model call; a python step takes "
        "python.args",
    ),
    "name-of-a-model": (
        {**enrich(), "name": "minilm"},
        "graph 'minilm': model 'minilm' has this name",
    ),
}


@pytest.mark.parametrize("case", BAD_GRAPHS, ids=list(BAD_GRAPHS))
def test_each_config_error_is_one_line_naming_graph_and_step(case):
    graph, want = BAD_GRAPHS[case]
    with pytest.raises(ConfigError) as e:
        parse_models(models_yaml(graph))
    lines = str(e.value).splitlines()
    assert lines[0] == "models.yaml: invalid configuration"
    assert len(lines) == 2, lines
    assert lines[1].strip().startswith(want), lines[1]


def test_a_model_whose_task_is_unknown_here_must_declare_it():
    models = [{"name": "minilm", "model_dir": "/nowhere"}, *MODELS[1:]]
    with pytest.raises(
        ConfigError,
        match="graph 'enrich': step 'embed': the task of model 'minilm' is not known here",
    ):
        parse_models({"models": models, "graphs": [enrich()]})


# ---------------------------------------------------------------- generated config


def test_a_graph_is_one_application_calling_the_models_by_name():
    loaded = parse_models(models_yaml(enrich(), search_rerank()))
    config = serve_config(loaded)
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert list(apps)[-3:] == ["enrich", "search-rerank", "textfleet-gateway"]
    app = apps["enrich"]
    assert app["route_prefix"] == "/v2/models/enrich" and app["import_path"] == GRAPH_BUILDER
    assert app["args"]["tasks"] == {"minilm": "embedding", "ner-a": "token-classification"}
    assert app["deployments"][0]["name"] == "ModelServer"


def test_changing_a_model_leaves_its_graphs_application_untouched():
    before = serve_config(parse_models(models_yaml(enrich())))
    models = [{**m, "threads": 3, "num_replicas": 2} for m in MODELS]
    after = serve_config(parse_models({"models": models, "graphs": [enrich()]}))
    graph = [a for a in before["applications"] if a["name"] == "enrich"]
    assert graph == [a for a in after["applications"] if a["name"] == "enrich"]
    minilm = [a for a in before["applications"] if a["name"] == "minilm"]
    assert minilm != [a for a in after["applications"] if a["name"] == "minilm"]
