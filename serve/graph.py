"""Walking an inference graph: each step starts once the steps it reads are done.

``run_graph`` takes a checked ``GraphPlan`` (serve/graph_config.py), the
graph's input arrays and an async ``call_model(model, inputs, parameters,
timeout_s)`` that returns a model's output arrays: the graph's replica passes
one that calls the model's application through a handle (serve/graph_app.py),
the tests one that computes in process. Nothing here knows Ray. ``python:``
steps go to ``call_python(step, inputs)`` (serve/graph_python.py's
``PythonSteps``, loaded once per graph replica).

- Steps whose references are ready run concurrently; a switch sends one
  sub-request per branch that has rows, all at once, and puts the results
  back in input order.
- A failed step fails the graph with a ``GraphError`` whose status is the
  step's (a model's 503 keeps its Retry-After) and whose message names the
  graph, the step and the model; the steps still running are cancelled. A
  failed ``optional`` step is left out instead, with the optional steps that
  read it, and listed in the result.
- ``timeout_s`` bounds the whole graph; each model call gets what is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textfleet.engine.errors import EngineError, InputError
from textfleet.serve import graph_ops
from textfleet.serve.graph_config import INPUT, ROUTE, GraphPlan, StepConfig, parse_ref
from textfleet.serve.protocols.common import NotFound, error_message, error_status

CallModel = Callable[[str, dict[str, np.ndarray], dict[str, Any], float | None], Awaitable[dict]]
"""``(model, inputs, parameters, timeout_s)`` -> the model's outputs, by name."""

CallPython = Callable[[StepConfig, dict[str, np.ndarray]], Awaitable[dict]]
"""``(step, inputs)`` -> a python step's outputs, by name."""

MAX_ROWS_NAMED = 20
"""Rows listed in a 422 for rows no switch case takes (then a count)."""


class GraphError(EngineError):
    """A graph request that failed: the HTTP status, and a message naming the graph,
    the step and the model."""

    def __init__(self, message: str, status: int, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (str(self), self.status, self.retry_after_s))


@dataclass
class GraphResult:
    outputs: dict[str, np.ndarray]
    """The graph's outputs (those of failed optional steps left out)."""
    step_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds each step took, from its start to its end."""
    requests: dict[str, int] = field(default_factory=dict)
    """Model requests each model or switch step sent (a switch: one per branch with rows)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Optional step -> why it is left out."""
    omitted: list[str] = field(default_factory=list)
    """The graph outputs left out (outputs of failed optional steps)."""
    total_ms: float = 0.0

    def parameters(self) -> dict[str, Any]:
        """The V2 response ``parameters``: flat, as the protocol's parameters are."""
        out: dict[str, Any] = {"graph_ms": round(self.total_ms, 3)}
        out |= {f"step_ms.{s}": round(ms, 3) for s, ms in self.step_ms.items()}
        out |= {f"requests.{s}": n for s, n in self.requests.items()}
        if self.failed:
            out["failed_optional"] = ",".join(self.failed)
            out |= {f"error.{s}": msg for s, msg in self.failed.items()}
        return out


async def run_graph(
    plan: GraphPlan,
    inputs: dict[str, np.ndarray],
    call_model: CallModel,
    timeout_s: float | None = None,
    call_python: CallPython | None = None,
    priority: int | None = None,
) -> GraphResult:
    """Run every step of ``plan`` on ``inputs``; the outputs, or a GraphError.
    ``priority``: the request's class (engine/priority.py), given to every model
    step in its parameters, over a step's configured one: a caller that lowers or
    raises its request's priority does so for all the work it causes."""
    walk = _Walk(plan, inputs, call_model, timeout_s, call_python, priority)
    start = time.perf_counter()
    try:
        await asyncio.wait_for(walk.run(), timeout_s)
    except asyncio.TimeoutError:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
        running = ", ".join(walk.running_names()) or "none"
        raise GraphError(
            f"graph {plan.graph.name!r} did not finish within {timeout_s:g} s "
            f"(steps still running: {running})",
            504,
        ) from None
    finally:  # a failed step, the budget spent or the caller gone: stop the others
        walk.cancel()
    result = walk.result
    result.total_ms = (time.perf_counter() - start) * 1000.0
    for name, ref in plan.graph.outputs.items():
        step, out = parse_ref(ref)
        if step in result.failed:
            result.omitted.append(name)
        else:
            result.outputs[name] = walk.values[step][out]
    return result


class _Walk:
    """The state of one graph request: the values so far and the steps running."""

    def __init__(
        self, plan: GraphPlan, inputs, call_model: CallModel, timeout_s, call_python, priority
    ):
        self.plan, self.call_model, self.call_python = plan, call_model, call_python
        self.priority: int | None = priority
        self.name = plan.graph.name
        self.values: dict[str, dict[str, np.ndarray]] = {INPUT: inputs}
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.result = GraphResult({})
        self.running: dict[asyncio.Task, StepConfig] = {}

    async def run(self) -> None:
        pending = list(self.plan.order)
        done: set[str] = set()
        while pending or self.running:
            ready = [s for s in pending if self.plan.depends[s.name] <= done]
            for s in ready:
                pending.remove(s)
                skipped = [d for d in self.plan.depends[s.name] if d in self.result.failed]
                if skipped:  # the config made sure that s is optional too
                    self.result.failed[s.name] = f"skipped: step {skipped[0]!r} failed"
                    done.add(s.name)
                else:
                    self.running[asyncio.ensure_future(self._step(s))] = s
            if not self.running:
                if ready:
                    continue  # skipped steps may have made others ready
                raise RuntimeError(f"steps never ready: {[s.name for s in pending]}")
            finished, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                s = self.running.pop(task)
                done.add(s.name)
                error = task.exception()
                if error is None:
                    continue
                failure = self._failure(s, error)
                if not s.optional:
                    raise failure
                self.result.failed[s.name] = str(failure)

    def cancel(self) -> None:
        for task in self.running:
            task.cancel()

    def running_names(self) -> list[str]:
        return [s.name for s in self.running.values()]

    async def _step(self, s: StepConfig) -> None:
        start = time.perf_counter()
        try:
            inputs = {n: self._value(ref) for n, ref in s.inputs.items()}
            if s.op is not None:
                out = graph_ops.run(s, inputs)
            elif s.switch is not None:
                out = await self._switch(s, inputs)
            elif s.python is not None:
                if self.call_python is None:
                    raise RuntimeError("python steps are not loaded here (no call_python)")
                out = await self.call_python(s, inputs)
            else:
                out = await self._call(s, s.model, inputs)
                self.result.requests[s.name] = 1
            self.values[s.name] = out
        finally:
            self.result.step_ms[s.name] = (time.perf_counter() - start) * 1000.0

    def _value(self, ref: str) -> np.ndarray:
        step, name = parse_ref(ref)
        return self.values[step][name]

    async def _call(self, s: StepConfig, model: str, inputs) -> dict[str, np.ndarray]:
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"graph {self.name!r}: its time budget is spent")
            parameters = dict(s.parameters)
            if self.priority is not None:
                parameters["priority"] = self.priority
            return await self.call_model(model, inputs, parameters, remaining)
        except Exception as e:
            raise _ModelFailed(model, e) from e

    async def _switch(self, s: StepConfig, inputs) -> dict[str, np.ndarray]:
        keys = self._value(s.switch.on)
        rows = _partition(self.name, s, keys)
        n = len(keys)
        for name, arr in inputs.items():
            if arr.ndim == 0 or arr.shape[0] != n:
                raise InputError(
                    f"inputs.{name}",
                    f"{arr.shape[0] if arr.ndim else 0} rows; the switch on "
                    f"{s.switch.on} has {n}: a switched input has one row per routed row",
                )
        calls = [
            self._call(s, model, {name: arr[idx] for name, arr in inputs.items()})
            for model, idx in rows.items()
        ]
        self.result.requests[s.name] = len(calls)
        answers = await asyncio.gather(*calls)
        out = _scatter(n, list(rows.values()), answers)
        route = np.empty(n, dtype=object)
        for model, idx in rows.items():
            route[idx] = model
        out[ROUTE] = route
        return out

    def _failure(self, s: StepConfig, error: BaseException) -> GraphError:
        if isinstance(error, GraphError):  # raised by the walk itself, named already
            return error
        where = f"graph {self.name!r}: step {s.name!r}"
        cause = error
        if isinstance(error, _ModelFailed):
            cause = error.cause
            where += f" (model {error.model!r})"
        elif s.op is not None:
            where += f" (op {s.op})"
        elif s.python is not None:
            where += f" (python {s.python.call!r})"
        status = error_status(cause)
        if isinstance(cause, GraphError):
            status = cause.status
        elif isinstance(cause, NotFound) and isinstance(error, _ModelFailed):
            status = 503  # a model of the graph that is not served now (deploying, removed)
        retry = None
        if status == 503:
            retry = getattr(cause, "retry_after_s", None) or 1.0
        return GraphError(f"{where}: {error_message(cause)}", status, retry)


class _ModelFailed(Exception):
    """A model call's failure, with the model that failed."""

    def __init__(self, model: str, cause: BaseException):
        super().__init__(str(cause))
        self.model, self.cause = model, cause


def _partition(graph: str, s: StepConfig, keys: np.ndarray) -> dict[str, np.ndarray]:
    """Branch model -> the rows it takes (ascending), in the order branches first appear."""
    if keys.ndim != 1:
        raise InputError(
            "switch.on",
            f"{s.switch.on} has shape {list(keys.shape)}; a switch needs one "
            "value per row (shape [n])",
        )
    cases = {k: b.model for k, b in s.switch.cases.items()}
    default = s.switch.default
    rows: dict[str, list[int]] = {}
    unmatched: list[tuple[int, str]] = []
    for i, key in enumerate(keys):
        key = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        model = cases.get(key) or (default.model if default != "error" else None)
        if model is None:
            unmatched.append((i, key))
        else:
            rows.setdefault(model, []).append(i)
    if unmatched:
        named = ", ".join(f"{i} ({k!r})" for i, k in unmatched[:MAX_ROWS_NAMED])
        extra = len(unmatched) - MAX_ROWS_NAMED
        more = f" and {extra} more" if extra > 0 else ""
        raise GraphError(
            f"graph {graph!r}: step {s.name!r}: no case for rows {named}{more} of "
            f"{s.switch.on} (cases: {', '.join(cases)}; default: error)",
            422,
        )
    return {model: np.asarray(idx, dtype=np.int64) for model, idx in rows.items()}


def _scatter(n: int, rows: list[np.ndarray], answers: list[dict]) -> dict[str, np.ndarray]:
    """The branches' outputs put back at their rows: one array of n rows per output."""
    out: dict[str, np.ndarray] = {}
    for name in answers[0]:
        parts = [a[name] for a in answers]
        first = parts[0]
        if any(p.shape[1:] != first.shape[1:] for p in parts):
            shapes = ", ".join(str(list(p.shape)) for p in parts)
            raise RuntimeError(f"the branches' {name!r} outputs differ in shape: {shapes}")
        dtype = object if any(p.dtype == object for p in parts) else first.dtype
        merged = np.empty((n, *first.shape[1:]), dtype=dtype)
        for idx, part in zip(rows, parts, strict=True):
            if len(part) != len(idx):
                raise RuntimeError(f"a branch answered {len(part)} rows for {len(idx)}")
            merged[idx] = part
        out[name] = merged
    return out
