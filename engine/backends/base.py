"""The contract between the engine and model code: one Batch in, named arrays out.

A backend knows how to run a graph on a device and nothing else: not about
requests, queues, HTTP or Ray (those live above it), nor about labels (the
task heads, below the engine). Pooling is the embedding head's too, except
that a backend may pool on its device to save copying the hidden state back
(``run`` below). Four methods, as in TEI's ``Backend`` trait: ``load``,
``run``, ``health``, ``unload``.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol, runtime_checkable

import numpy as np

from textfleet.engine.backends import BACKENDS
from textfleet.engine.batch import Batch
from textfleet.engine.config import EngineConfig
from textfleet.engine.errors import ModelDirError
from textfleet.engine.model_dir import ModelDir


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a model runtime."""

    name: str
    device: str
    threads: int

    def load(self) -> None:
        """Build the session / load the weights. Idempotent."""

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Run one padded batch; returns the model outputs by name (float32, rows first,
        token axes ``batch.width`` long). ``batch.alone`` is a hint that nothing else
        computes meanwhile. An embedding model's backend may instead return
        ``heads.POOLED``: the vectors pooled (and normalised) on its device per the
        model directory, float32 [rows, dim]; the embedding head passes them through."""

    def health(self) -> bool:
        """True while loaded and able to run."""

    def unload(self) -> None:
        """Release the session and its memory. Idempotent."""

    # Optional: ``release_memory()``, called when the engine has gone quiet after
    # work (engine/memory.py), gives cached memory (arenas, allocator caches) back.


def physical_cores() -> int:
    """Physical cores available to this process (SMT siblings share one core's FPUs)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or usable or 1, usable or 1))


def create_backend(
    name: str,
    model_dir: ModelDir,
    device: str = "cpu",
    threads: int | None = None,
    solo_threads: int | None = None,
) -> Backend:
    """A backend by name, not yet loaded. The arguments are checked by ``EngineConfig``'s
    schema (pydantic's ValidationError names the field and the choices).

    ``solo_threads``: threads for batches that run alone (``Batch.alone``); a
    backend that can (onnxruntime) keeps a second session with that many."""
    EngineConfig(backend=name, device=device, threads=threads)
    module_name, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(
        model_dir, device=device, threads=threads or physical_cores(), solo_threads=solo_threads
    )


def check_outputs(model_dir: ModelDir, available: list[str]) -> None:
    missing = [o for o in model_dir.info.outputs if o not in available]
    if missing:
        raise ModelDirError(
            f"{model_dir.path}: outputs {missing} named in textfleet.json are not produced by "
            f"the model (it has {available})"
        )
