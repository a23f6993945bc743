"""The ``python:`` steps of an inference graph: user code between the model calls.

Each python step's ``call`` is loaded once per graph replica, when the replica
starts, with the hooks' loader (serve/hooks.py: an import path, no pickle, no
eval; a class is built once with its ``args``). A step that cannot be loaded
fails the replica, so the graph's application fails with the import error in
``textfleet status``, and the models and other graphs keep running.

A call gets one argument: the step's resolved inputs by name, BYTES tensors as
lists of str (nested for more than one dimension), numeric tensors as numpy
arrays. It returns a dict with exactly the outputs the step declares; lists or
arrays, numbers cast to the declared datatype. An output whose first dimension
is declared -1 has one row per row of the step's inputs.

The code is of unknown cost, so it never runs on the replica's event loop
(which carries every other request's I/O): each step has its own small thread
pool (``python.threads``, 1 by default, so a class instance sees one call at a
time), as a model's hooks have (serve/hooked_engine.py). An ``InputError`` it
raises is the client's (400); anything else it raises, and outputs that do not
match the declaration, are a 500 (serve/graph.py names the graph and step).

Code loaded here runs with the privileges of the server process: whoever may
edit models.yaml may run code on the replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from textfleet.engine.errors import EngineError, InputError
from textfleet.serve.graph_config import GraphPlan, PythonOutput, StepConfig
from textfleet.serve.hooks import LoadError, load_callable

log = logging.getLogger(__name__)

_KINDS = {"BOOL": "b", "FP": "fiu", "INT": "iu", "UINT": "iu"}
"""Numpy dtype kinds accepted for each family of numeric datatype (then cast)."""


class PythonStepError(EngineError):
    """A python step that raised or broke its declaration (HTTP 500)."""


class PythonSteps:
    """The python steps of one graph, loaded, and the threads that run them; an
    instance is the ``call_python`` of ``run_graph``."""

    def __init__(self, plan: GraphPlan):
        self.graph = plan.graph.name
        self._steps: dict[str, tuple[Callable[..., Any], ThreadPoolExecutor]] = {}
        for s in plan.order:
            if s.python is None:
                continue
            try:
                fn = load_callable(s.python.call, s.python.args)
            except LoadError as e:
                self.close()
                raise LoadError(f"graph {self.graph!r}: step {s.name!r}: {e}") from e
            pool = ThreadPoolExecutor(s.python.threads, thread_name_prefix=f"graph-step-{s.name}")
            self._steps[s.name] = (fn, pool)

    def close(self) -> None:
        for _, pool in self._steps.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, step: StepConfig, inputs: dict[str, np.ndarray]) -> dict:
        """Run ``step`` on its resolved inputs; its outputs as arrays of the declared types."""
        assert step.python is not None
        fn, pool = self._steps[step.name]
        given = {name: as_python(arr) for name, arr in inputs.items()}
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(pool, fn, given)
        except InputError:
            raise  # the code judged the request bad: a 400 with its own message
        except Exception as e:
            log.error(
                "graph %r: python step %r (%s) raised",
                self.graph,
                step.name,
                step.python.call,
                exc_info=e,
            )
            raise PythonStepError(f"raised {type(e).__name__}; see the server log") from None
        return checked_outputs(step, out, _rows(inputs))


def as_python(arr: np.ndarray) -> Any:
    """A tensor as a python step receives it: BYTES as (nested) lists of str."""
    if arr.dtype == object or arr.dtype.kind in "US":
        return _texts(arr.tolist())
    return arr


def _texts(x: Any) -> Any:
    if isinstance(x, list):
        return [_texts(v) for v in x]
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _rows(inputs: dict[str, np.ndarray]) -> set[int]:
    return {arr.shape[0] if arr.ndim else 1 for arr in inputs.values()}


def checked_outputs(step: StepConfig, out: Any, rows: set[int]) -> dict[str, np.ndarray]:
    """``out`` as the declared tensors; PythonStepError saying what does not fit."""
    if not isinstance(out, Mapping):
        raise PythonStepError(f"returned a {type(out).__name__}, not a dict of outputs")
    declared = {o.name: o for o in step.outputs}
    if set(out) != set(declared):
        got = ", ".join(sorted(map(str, out))) or "none"
        raise PythonStepError(f"returned outputs {got}; it declares {', '.join(declared)}")
    return {name: _tensor(spec, out[name], rows) for name, spec in declared.items()}


def _tensor(spec: PythonOutput, value: Any, rows: set[int]) -> np.ndarray:
    if spec.datatype == "BYTES":
        arr = np.asarray(value, dtype=object)
        if not all(isinstance(x, str | bytes) for x in arr.ravel()):
            raise PythonStepError(f"returned output {spec.name!r} with items that are not str")
    else:
        arr = np.asarray(value)
        family = spec.datatype.rstrip("0123456789")
        if arr.dtype.kind not in _KINDS[family]:
            raise PythonStepError(
                f"returned output {spec.name!r} as {arr.dtype}; it declares {spec.datatype}"
            )
        arr = arr.astype(_numpy_dtype(spec.datatype), copy=False)
    want = list(spec.shape)
    if want[0] == -1:
        if len(rows) != 1:
            raise PythonStepError(
                f"output {spec.name!r} has one row per input row, but the inputs have "
                f"{', '.join(map(str, sorted(rows)))} rows; declare its row count"
            )
        want[0] = next(iter(rows))
    fits = arr.ndim == len(want) and all(w in (-1, g) for w, g in zip(want, arr.shape, strict=True))
    if not fits:
        raise PythonStepError(
            f"returned output {spec.name!r} of shape {list(arr.shape)}; it declares "
            f"{list(spec.shape)}, here {want}"
        )
    return arr


def _numpy_dtype(datatype: str) -> np.dtype:
    """``FP32`` -> float32, ``INT64`` -> int64, ``BOOL`` -> bool."""
    if datatype == "BOOL":
        return np.dtype(np.bool_)
    return np.dtype(datatype.lower().replace("fp", "float"))
