"""The task registry: every task a model directory may declare, by name.

The one list of tasks. The model directory schema, models.yaml, the
exporters, the engine, the serve adapters and the CLI all derive their task
lists and per-task behaviour from ``TASKS``; a new task is a new module
declaring a ``TaskSpec`` and one line here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from textfleet.engine.tasks import classification, embedding, pair_scoring, token_classification
from textfleet.engine.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (embedding.TASK, classification.TASK, token_classification.TASK, pair_scoring.TASK)
}

DEFAULT_TASK = embedding.TASK.name
"""What ``textfleet export`` makes when no task is named."""


class UnknownTask(ValueError):
    """A task name no module declares; the message names the known ones."""


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTask(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_serving(method: str) -> TaskSpec:
    """The task whose models serve ``Engine.<method>``."""
    for task in TASKS.values():
        if method in task.methods:
            return task
    raise ValueError(f"no task serves method {method!r}")


def _known(name: str) -> str:
    get_task(name)
    return name


TaskName = Annotated[str, AfterValidator(_known)]
"""A pydantic field type: a registered task name (the error names the known ones)."""
