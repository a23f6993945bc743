"""The ``graphs:`` section of models.yaml: inference graphs over the served models.

A graph is served like a model (``/v2/models/<graph>/infer``): its inputs feed
steps, each step reads inputs of the graph or outputs of earlier steps by
reference (``$input.text``, ``topic.label``), and the graph's outputs name
step outputs. A step is one of:

- ``model: <name>``: a call to an entry of ``models:`` (its application, shared
  with direct traffic);
- ``switch: {on: <step>.<output>, cases: {<value>: {model: <name>}}, default: ...}``:
  rows routed by a BYTES output of an earlier step, one sub-request per branch,
  results put back in input order; ``<step>.route`` names each row's model.
  ``default: {model: <name>}`` takes the rows no case names, ``default: error``
  (the default) answers 422 naming them;
- ``op: top_k`` / ``op: gather``: built-ins, serve/graph_ops.py;
- ``python: {call: "pkg.module:function_or_Class", args: {...}}``: user code,
  loaded once per graph replica with the hooks' loader (serve/hooks.py) and
  run off the event loop (serve/graph_python.py). It reads its ``inputs`` like
  any step and declares the tensors it returns under the step's ``outputs:``
  (``[{name, datatype, shape}]``), so later steps and the graph's outputs are
  checked against them. It runs with the privileges of the server process.

``optional: true`` drops a failed step (and the optional steps reading it) from
the answer instead of failing the graph. Dependencies come from the references;
steps that do not depend on each other run concurrently (serve/graph.py).

``plan_graph`` checks a graph against the tasks of the models it calls and
returns its ``GraphPlan``: the same check runs when models.yaml is loaded (the
tasks from the model entries) and in the graph's replica (the tasks from its
application's args), so a graph that validates is one that deploys. Every
error is one line naming the graph and the step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from textfleet.engine.tasks.registry import get_task
from textfleet.serve import graph_ops
from textfleet.serve.hooks import check_call

INPUT = "$input"
"""The reference prefix of a graph input: ``$input.<name>``."""

ROUTE = "route"
"""The output of a switch step naming the model that took each row."""

_STEP_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_TENSOR_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"
REF_PATTERN = r"^(\$input|[A-Za-z0-9][A-Za-z0-9_-]{0,63})\.([A-Za-z0-9_][A-Za-z0-9_-]{0,63})$"
_REF = re.compile(REF_PATTERN)


class GraphConfigError(ValueError):
    """A graph that does not check out; the message names the graph and the step."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GraphInput(_Strict):
    """One input tensor of the graph (texts: BYTES, one per row)."""

    name: str = Field(pattern=_TENSOR_NAME)
    datatype: Literal["BYTES"] = "BYTES"
    shape: list[int] = Field(default_factory=lambda: [-1], min_length=1, max_length=1)
    """``[-1]``: any number of rows; ``[n]``: exactly n."""

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, v: list[int]) -> list[int]:
        if v[0] == 0 or v[0] < -1:
            raise ValueError(f"got {v}; use [-1] (any number of rows) or [n] with n >= 1")
        return v


DATATYPE = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
"""The V2 tensor datatypes a python step may return."""


class PythonOutput(_Strict):
    """One tensor a python step returns."""

    name: str = Field(pattern=_TENSOR_NAME)
    datatype: DATATYPE
    shape: list[int] = Field(default_factory=lambda: [-1], min_length=1, max_length=8)
    """First dimension: -1 for one row per row of the step's inputs (which must then
    all have the same number of rows), or a fixed row count n >= 1; the others are
    widths >= 1, or -1 for any width."""

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, v: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in v):
            raise ValueError(f"got {v}; each dimension is -1 (any) or >= 1")
        return v


class PythonCall(_Strict):
    """User code run as a graph step (serve/graph_python.py)."""

    call: str
    """``"package.module:function"`` (called with ``args`` bound) or
    ``"package.module:Class"`` (built once per graph replica as ``Class(**args)``)."""
    args: dict[str, JsonValue] = Field(default_factory=dict)
    """Keyword arguments, plain JSON."""
    threads: int = Field(1, ge=1, le=64)
    """Threads running this step in each graph replica, off its event loop. 1: the
    code (a class instance) sees one call at a time."""

    @field_validator("call")
    @classmethod
    def _check_call(cls, v: str) -> str:
        return check_call(v)


class Branch(_Strict):
    model: str
    """The entry of ``models:`` that takes this branch's rows."""


class SwitchConfig(_Strict):
    """Per-row routing on a BYTES output of an earlier step."""

    on: str = Field(pattern=REF_PATTERN)
    """``<step>.<output>``: one value per row, matched against ``cases``."""

    cases: dict[str, Branch] = Field(min_length=1)
    default: Branch | Literal["error"] = "error"
    """The rows no case matches: a model, or ``error`` (422 naming the rows)."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted `on:` key as the boolean true.
        if isinstance(v, dict) and True in v and "on" not in v:
            v = {("on" if k is True else k): x for k, x in v.items()}
        return v

    def branches(self) -> list[str]:
        """The models of the cases and the default, each once, in config order."""
        models = [b.model for b in self.cases.values()]
        if isinstance(self.default, Branch):
            models.append(self.default.model)
        return list(dict.fromkeys(models))


class StepConfig(_Strict):
    """One step: exactly one of ``model``, ``switch``, ``op`` or ``python``."""

    name: str = Field(pattern=_STEP_NAME)
    model: str | None = None
    switch: SwitchConfig | None = None
    op: str | None = None
    python: PythonCall | None = None
    by: str | None = None
    """``top_k``: ``cosine`` or ``score``."""
    k: int | None = Field(None, ge=1, le=1_000_000)
    """``top_k``: how many rows to keep."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """The step's input name -> a reference (``$input.<name>`` or ``<step>.<output>``)."""
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """V2 request parameters for the model call (``top_k``, ``aggregation``, ...)."""
    optional: bool = False
    """On failure, leave the step's outputs out (listed in the response) instead of failing."""
    outputs: list[PythonOutput] = Field(default_factory=list)
    """A python step's outputs (a model's come from its task, an op's from the op)."""

    @field_validator("inputs")
    @classmethod
    def _check_refs(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            if not _REF.match(str(ref)):
                raise ValueError(
                    f"input {name!r}: {ref!r} is not a reference; write $input.<name> "
                    "or <step>.<output>"
                )
        return v

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str | None) -> str | None:
        if v is not None and v not in graph_ops.OPS:
            raise ValueError(f"unknown op {v!r}; ops: {', '.join(graph_ops.OPS)}")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> StepConfig:
        kinds = [k for k in ("model", "switch", "op", "python") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"set exactly one of model, switch, op or python (got {', '.join(kinds) or 'none'})"
            )
        if self.python is not None:
            problem = _check_python_step(self)
            if problem:
                raise ValueError(problem)
        elif self.outputs:
            raise ValueError(
                f"outputs are declared by python steps only; a {kinds[0]} step's come from "
                f"its {'op' if self.op is not None else 'task'}"
            )
        if self.op is not None:
            problem = graph_ops.check_settings(self)
            if problem:
                raise ValueError(problem)
        elif self.by is not None or self.k is not None:
            raise ValueError("by and k are settings of op top_k")
        if self.parameters and self.op is not None:
            raise ValueError("parameters go to a model call; an op takes none")
        if self.parameters and self.python is not None:
            raise ValueError("parameters go to a model call; a python step takes python.args")
        return self

    def refs(self) -> list[str]:
        """Every reference the step reads (its inputs, then the switch's key)."""
        return [*self.inputs.values(), *([self.switch.on] if self.switch else [])]


def _check_python_step(step: StepConfig) -> str | None:
    """What is wrong with a python step's inputs and outputs, or None."""
    if not step.inputs:
        return "a python step reads at least one input"
    if not step.outputs:
        return "a python step declares its outputs: [{name, datatype, shape}]"
    names = [o.name for o in step.outputs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        return f"two outputs are named {dup!r}"
    return None


class GraphConfig(_Strict):
    """One inference graph, served at ``/v2/models/<name>`` beside the models."""

    name: str
    inputs: list[GraphInput] = Field(min_length=1)
    steps: list[StepConfig] = Field(min_length=1)
    outputs: dict[str, str] = Field(min_length=1)
    """Output name -> ``<step>.<output>``: the tensors of the graph's answer."""
    request_timeout_s: float = Field(30.0, gt=0, le=300.0)
    """Budget of the whole graph; a request's ``parameters.timeout`` or
    ``x-request-timeout`` may shorten it, never lengthen it."""
    max_texts: int = Field(1024, ge=1, le=1_000_000)
    """Most rows in one input tensor (413 past it)."""
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Most bytes in one request body."""
    num_replicas: int = Field(1, ge=1, le=1024)
    """Replicas of the graph's ingress (no model: it waits on the models' replicas)."""
    max_ongoing_requests: int = Field(1024, ge=1, le=100_000)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        from textfleet.serve.config import MODEL_NAME_PATTERN  # config imports this module

        if not re.match(MODEL_NAME_PATTERN, v):
            raise ValueError(
                f"got {v!r}; a graph name must start with a letter or digit and hold only "
                "letters, digits, '.', '_' or '-' (at most 128 characters)"
            )
        return v

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            if not re.match(_TENSOR_NAME, name):
                raise ValueError(f"output name {name!r}: letters, digits, '_' and '-' only")
            if not _REF.match(str(ref)) or str(ref).startswith(INPUT + "."):
                raise ValueError(f"output {name!r}: {ref!r} is not a <step>.<output> reference")
        return v

    def models(self) -> list[str]:
        """Every model the graph calls, each once."""
        out = []
        for s in self.steps:
            out.extend([s.model] if s.model else s.switch.branches() if s.switch else [])
        return list(dict.fromkeys(out))


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class GraphPlan:
    """A checked graph: its steps in an order that respects the references."""

    graph: GraphConfig
    order: tuple[StepConfig, ...]
    depends: dict[str, frozenset[str]]
    """Step -> the steps it reads."""
    step_outputs: dict[str, dict[str, str]]
    """Step -> output name -> datatype."""
    outputs: dict[str, str]
    """Graph output -> datatype."""
    tasks: dict[str, str]
    """Model -> its task, for the models the graph calls."""


def parse_ref(ref: str) -> tuple[str, str]:
    """``"topic.label"`` -> ``("topic", "label")``; ``"$input.text"`` -> ``("$input", "text")``."""
    step, _, name = ref.partition(".")
    return step, name


def plan_graph(graph: GraphConfig, tasks: Mapping[str, str | None]) -> GraphPlan:
    """Check ``graph`` against the models' tasks (model name -> task, None where it is
    not known here); a GraphConfigError names the graph and the step."""
    steps = {}
    for s in graph.steps:
        if s.name in steps:
            raise _error(graph, s, "two steps have this name")
        steps[s.name] = s
    used = {m: _task_of(graph, s, m, tasks) for s in graph.steps for m in _step_models(s)}
    depends = {s.name: _dependencies(graph, s, steps) for s in graph.steps}
    order = _ordered(graph, steps, depends)
    inputs = {i.name: i.datatype for i in graph.inputs}
    produced: dict[str, dict[str, str]] = {}
    for s in order:
        types = {
            n: _ref_type(graph, s, ref, inputs, produced, used, steps)
            for n, ref in s.inputs.items()
        }
        produced[s.name] = _outputs_of(graph, s, types, inputs, produced, used, steps)
        for d in depends[s.name]:
            if steps[d].optional and not s.optional:
                raise _error(graph, s, f"reads optional step {d!r}; mark this step optional too")
    outputs = {}
    for name, ref in graph.outputs.items():
        step, out = parse_ref(ref)
        if step not in steps:
            raise GraphConfigError(
                f"graph {graph.name!r}: output {name!r}: {ref!r} names no step; steps: "
                f"{', '.join(steps)}"
            )
        if out not in produced[step]:
            raise _error(
                graph,
                steps[step],
                f"gives no {out!r} (output {name!r}); it gives {', '.join(produced[step])}",
            )
        outputs[name] = produced[step][out]
    return GraphPlan(graph, tuple(order), depends, produced, outputs, used)


def output_shapes(plan: GraphPlan) -> dict[str, list[int]]:
    """Graph output -> its shape for the V2 metadata (-1: a dimension that varies)."""
    steps = {s.name: s for s in plan.order}
    inputs = {i.name: [-1] for i in plan.graph.inputs}

    def shape(ref: str) -> list[int]:
        step, name = parse_ref(ref)
        if step == INPUT:
            return inputs[name]
        s = steps[step]
        if s.python is not None:
            return list(next(o.shape for o in s.outputs if o.name == name))
        if s.op is not None:
            same = graph_ops.OPS[s.op].outputs[name] == graph_ops.SAME_AS_VALUES
            return [-1, *shape(s.inputs["values"])[1:]] if same else [-1]
        if name == ROUTE:
            return [-1]
        spec = get_task(plan.tasks[s.model or s.switch.branches()[0]])
        dims = next(t.shape for t in spec.v2_outputs if t.name == name)
        return [d if isinstance(d, int) else -1 for d in dims]

    return {name: shape(ref) for name, ref in plan.graph.outputs.items()}


def check_graphs(
    graphs: list[GraphConfig], tasks: Mapping[str, str | None], taken: Mapping[str, str]
) -> dict[str, GraphPlan]:
    """Plan every graph of a models.yaml; ``taken``: application names already used
    (name -> what uses it), which no graph may take."""
    plans: dict[str, GraphPlan] = {}
    for g in graphs:
        if g.name in plans:
            raise GraphConfigError(f"graph {g.name!r}: two graphs have this name")
        if g.name in taken:
            raise GraphConfigError(
                f"graph {g.name!r}: {taken[g.name]} has this name; graphs and models share "
                "the /v2/models/<name> routes, rename one"
            )
        plans[g.name] = plan_graph(g, tasks)
    return plans


def _error(graph: GraphConfig, step: StepConfig, message: str) -> GraphConfigError:
    return GraphConfigError(f"graph {graph.name!r}: step {step.name!r}: {message}")


def _step_models(s: StepConfig) -> list[str]:
    return [s.model] if s.model else s.switch.branches() if s.switch else []


def _task_of(graph, step, model: str, tasks: Mapping[str, str | None]) -> str:
    if model not in tasks:
        known = ", ".join(tasks) or "none"
        raise _error(graph, step, f"unknown model {model!r}; models: {known}")
    task = tasks[model]
    if task is None:
        raise _error(
            graph,
            step,
            f"the task of model {model!r} is not known here (its model_dir is "
            "not on this machine): set task: in its models.yaml entry",
        )
    return task


def _dependencies(graph, s: StepConfig, steps: dict[str, StepConfig]) -> frozenset[str]:
    deps = set()
    for ref in s.refs():
        step, _ = parse_ref(ref)
        if step == INPUT:
            continue
        if step not in steps:
            raise _error(graph, s, f"{ref!r} names no step; steps: {', '.join(steps)}")
        deps.add(step)
    return frozenset(deps)


def _ordered(graph, steps: dict[str, StepConfig], depends) -> list[StepConfig]:
    """The steps in config order where possible, each after the steps it reads."""
    order: list[StepConfig] = []
    placed: set[str] = set()
    while len(order) < len(steps):
        ready = [s for n, s in steps.items() if n not in placed and depends[n] <= placed]
        if not ready:
            stuck = next(n for n in steps if n not in placed)
            raise _error(graph, steps[stuck], f"cycle: {' -> '.join(_cycle(stuck, depends))}")
        order.append(ready[0])
        placed.add(ready[0].name)
    return order


def _cycle(start: str, depends) -> list[str]:
    """A path of dependencies from ``start`` that comes back to a step on it."""
    path = [start]
    while True:
        nxt = sorted(depends[path[-1]])[0] if depends[path[-1]] else None
        if nxt is None:
            return path
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)


def _ref_type(graph, s, ref, inputs, produced, used, steps) -> str:
    step, name = parse_ref(ref)
    if step == INPUT:
        if name not in inputs:
            raise _error(
                graph, s, f"{ref!r}: the graph has no input {name!r}; inputs: {', '.join(inputs)}"
            )
        return inputs[name]
    if name not in produced[step]:
        raise _error(
            graph,
            s,
            f"{ref!r}: {_describe(steps[step], used)} gives "
            f"{', '.join(produced[step])}, not {name!r}",
        )
    return produced[step][name]


def _describe(s: StepConfig, used: Mapping[str, str]) -> str:
    """How a step's outputs are decided, for messages."""
    if s.model:
        return f"step {s.name!r} (model {s.model!r}, task {used[s.model]})"
    if s.switch:
        return f"step {s.name!r} (switch over task {used[s.switch.branches()[0]]})"
    if s.python:
        return f"step {s.name!r} (python {s.python.call!r})"
    return f"step {s.name!r} (op {s.op})"


def _outputs_of(graph, s, types, inputs, produced, used, steps) -> dict[str, str]:
    if s.python is not None:  # user code takes any tensors and gives what it declares
        return {o.name: o.datatype for o in s.outputs}
    if s.op is not None:
        _check_tensors(graph, s, graph_ops.OPS[s.op].inputs(s), types, f"op {s.op}")
        return graph_ops.output_types(s, types)
    if s.switch is not None:
        on_type = _ref_type(graph, s, s.switch.on, inputs, produced, used, steps)
        if on_type != "BYTES":
            raise _error(
                graph,
                s,
                f"switch.on {s.switch.on!r} is {on_type}; a switch routes "
                "on a BYTES output (one label per row)",
            )
        branch_tasks = {m: used[m] for m in s.switch.branches()}
        if len(set(branch_tasks.values())) > 1:
            listed = ", ".join(f"{m!r} is {t}" for m, t in branch_tasks.items())
            raise _error(
                graph,
                s,
                f"branches of different tasks: {listed}; every branch must give the same outputs",
            )
        task, what = next(iter(branch_tasks.values())), "the switch's branches"
    else:
        task, what = used[s.model], f"model {s.model!r}"
    spec = get_task(task)
    wanted = {t.name: frozenset({t.datatype}) for t in spec.v2_inputs}
    _check_tensors(graph, s, wanted, types, f"{what} (task {task})")
    outputs = {t.name: t.datatype for t in spec.v2_outputs}
    if s.switch is not None:
        outputs[ROUTE] = "BYTES"
    return outputs


def _check_tensors(graph, s, wanted: dict[str, frozenset[str] | None], types, what) -> None:
    """The step's inputs are exactly ``wanted``, each of an accepted datatype."""
    if set(types) != set(wanted):
        raise _error(
            graph, s, f"{what} takes inputs {', '.join(wanted)}; got {', '.join(types) or 'none'}"
        )
    for name, accepted in wanted.items():
        if accepted is not None and types[name] not in accepted:
            raise _error(
                graph,
                s,
                f"input {name!r} ({s.inputs[name]!r}) is {types[name]}; "
                f"{what} takes {' or '.join(sorted(accepted))}",
            )
