"""The task registry is the one list of tasks: every layer derives its tasks from it.

The model directory schema, models.yaml, the exporters, the CLI, the engine
and the serve adapters must all accept exactly ``TASKS`` and read per-task
behaviour from its ``TaskSpec`` objects, never from their own lists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from textfleet.cli import build_parser
from textfleet.engine.engine import Engine
from textfleet.engine.model_dir import ModelInfo
from textfleet.engine.tasks.registry import TASKS, UnknownTask, get_task, task_serving
from textfleet.models.source import ExportError, lookup_task
from textfleet.serve.config import ConfigError, parse_model
from textfleet.serve.tasks import ADAPTERS, adapter_for

REPO = Path(__file__).resolve().parents[1]
NAMES = set(TASKS)


def _choices(command: str, option: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[command]
    return next(a for a in parser._actions if option in a.option_strings).choices


def _info(task: str, **fields) -> dict:
    return {
        "name": "m", "task": task, "architecture": "X", "dim": 1, "max_length": 8,
        "inputs": ["input_ids"], "outputs": ["logits"], "checksums": {"model.onnx": "0"},
        "source": {"kind": "folder", "name": "/x"}, **fields,
    }  # fmt: skip


def test_every_layer_accepts_exactly_the_registered_tasks():
    assert {"embedding", "classification", "token-classification", "pair-scoring"} == NAMES
    assert all(name == spec.name for name, spec in TASKS.items())
    assert set(_choices("import-onnx", "--task")) == NAMES
    assert set(ADAPTERS) == NAMES
    for name in NAMES:
        assert lookup_task(name, "export") is TASKS[name]
        assert parse_model({"name": "a", "model_dir": "/x", "task": name}).task == name
        fields = {"pooling": "mean"} if "pooling" in TASKS[name].options else {}
        assert ModelInfo.model_validate(_info(name, **fields)).task == name


def test_an_unknown_task_is_refused_naming_the_known_ones():
    known = ", ".join(TASKS)
    with pytest.raises(UnknownTask, match=f"unknown task 'ner'; known tasks: {known}"):
        get_task("ner")
    with pytest.raises(ExportError, match=f"unknown task 'ner'; import-onnx supports: {known}"):
        lookup_task("ner", "import-onnx")
    with pytest.raises(
        ConfigError, match=f"field 'task': unknown task 'ner'; known tasks: {known}"
    ):
        parse_model({"name": "a", "model_dir": "/x", "task": "ner"})
    with pytest.raises(ValueError, match="unknown task 'ner'"):
        ModelInfo.model_validate(_info("ner"))


def test_task_options_belong_to_their_task_only():
    with pytest.raises(ValueError, match="aggregation applies to task 'token-classification' only"):
        ModelInfo.model_validate(_info("classification", aggregation="simple"))
    with pytest.raises(ValueError, match="pooling applies to task 'embedding' only"):
        ModelInfo.model_validate(_info("pair-scoring", pooling="mean"))
    with pytest.raises(ValueError, match="one logit"):
        ModelInfo.model_validate(_info("pair-scoring", dim=2))


def test_each_engine_method_is_served_by_exactly_one_task():
    methods = [m for spec in TASKS.values() for m in spec.methods]
    assert len(methods) == len(set(methods))
    for spec in TASKS.values():
        for method in spec.methods:
            assert callable(getattr(Engine, method)), method
            assert task_serving(method) is spec


def test_adapter_tensors_are_the_task_specs(engine):
    config = parse_model({"name": "a", "model_dir": str(engine.model_dir.path)})
    adapter = adapter_for(engine, config)
    assert engine.task is TASKS[engine.info.task] and adapter.spec is engine.task
    assert adapter.inputs == engine.task.v2_inputs
    assert [t.as_dict() for t in adapter.outputs] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, engine.info.dim]}
    ]


def test_no_layer_branches_on_a_task_name():
    """Per-task behaviour lives in the task modules; elsewhere a comparison of a task
    name with a string literal is a list kept by hand."""
    names = "|".join(re.escape(n) for n in NAMES)
    branch = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']""")
    found = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for folder in ("engine", "serve", "models", "textfleet")
        for path in sorted((REPO / folder).rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []
