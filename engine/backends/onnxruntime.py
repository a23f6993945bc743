"""onnxruntime backend: CPU, or the CUDA execution provider (``cuda:N``) when installed.

Threads: ``intra_op`` = ``threads`` (the engine defaults it to the physical
cores), ``inter_op`` 1 and sequential execution: a BERT graph is one chain of
large matmuls, so parallelism inside each op is what pays; a second pool
would only contend with it. Only the inputs the graph declares are fed (a
DistilBERT graph has no token_type_ids).

Memory: a run shrinks the CPU arena (``memory.enable_memory_arena_shrinkage``)
when none has for ``SHRINK_INTERVAL_S``, so the activations of a large batch go
back to the OS soon after it instead of staying with the process for good.
Shrinking costs throughput (the next run allocates and faults its pages in
again): after every run, or even once a second, it cost several percent of
offline throughput on 2 cores; every ten seconds it is lost in the noise, and
no arena at all costs more.
Regions another run is still using at that moment (two workers computing side
by side) are freed at a later shrink.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors

from textfleet.engine.backends.base import check_outputs
from textfleet.engine.batch import Batch
from textfleet.engine.config import cuda_index
from textfleet.engine.errors import ModelDirError
from textfleet.engine.model_dir import ModelDir

# Seconds between arena shrinks (see the module docstring).
SHRINK_INTERVAL_S = 10.0


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model_dir: ModelDir,
        device: str = "cpu",
        threads: int = 1,
        solo_threads: int | None = None,
    ):
        self.model_dir = model_dir
        self.device = device
        self.threads = threads
        # A second session on more threads for batches that run alone (``Batch.alone``,
        # several engine workers on one CPU): a lone text gets every core, at the
        # memory of a second copy of the weights.
        self.solo_threads = solo_threads if solo_threads and solo_threads > threads else None
        self._session: ort.InferenceSession | None = None
        self._solo: ort.InferenceSession | None = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._plain_run = ort.RunOptions()
        self._shrinking_run = ort.RunOptions()
        self._shrinking_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # Per session (each has its own arena); a race between workers only shrinks
        # twice, which is harmless.
        self._last_shrink: dict[int, float] = {}
        self.shrink_interval_s = SHRINK_INTERVAL_S

    def providers(self) -> list:
        """onnxruntime's execution providers for ``device``; ``cuda:N`` is the CUDA
        provider on GPU N, with the CPU provider for the ops it lacks."""
        index = cuda_index(self.device)
        if index is None:
            return ["CPUExecutionProvider"]
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]

    def _check_providers(self) -> None:
        if cuda_index(self.device) is not None and (
            "CUDAExecutionProvider" not in ort.get_available_providers()
        ):
            raise RuntimeError(
                f"device {self.device!r} needs onnxruntime with the CUDA execution provider "
                "(pip install 'textfleet[gpu]'); this onnxruntime has "
                f"{ort.get_available_providers()}"
            )

    def session_options(self, threads: int | None = None) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: between runs the
        # engine's own threads (executor, event loop, tokenizer) and the
        # serving process need these cores. Measured on 2 shared cores: 2x the
        # one-client throughput and +40% at 64 clients (benchmarks/engine_online.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def load(self) -> None:
        if self._session is not None:
            return
        path = self.model_dir.onnx_path
        self._check_providers()
        providers = self.providers()
        try:
            session = ort.InferenceSession(str(path), self.session_options(), providers=providers)
        except (_ort_errors.Fail, _ort_errors.InvalidGraph, _ort_errors.InvalidProtobuf) as e:
            raise ModelDirError(f"{path}: onnxruntime cannot load the graph ({e})") from None
        inputs = [i.name for i in session.get_inputs()]
        unknown = [n for n in inputs if n not in ("input_ids", "attention_mask", "token_type_ids")]
        if unknown:
            raise ModelDirError(f"{path}: graph inputs {unknown} are not Batch fields")
        outputs = [o.name for o in session.get_outputs()]
        check_outputs(self.model_dir, outputs)
        if self.solo_threads is not None:
            self._solo = ort.InferenceSession(
                str(path), self.session_options(self.solo_threads), providers=providers
            )
        self._session, self._inputs, self._outputs = session, inputs, outputs

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("onnxruntime backend is not loaded")
        feeds = {name: getattr(batch, name) for name in self._inputs}
        session = self._solo if batch.alone and self._solo is not None else self._session
        now = time.monotonic()
        options = self._plain_run
        if now - self._last_shrink.get(id(session), 0.0) >= self.shrink_interval_s:
            options, self._last_shrink[id(session)] = self._shrinking_run, now
        values = session.run(None, feeds, options)
        return dict(zip(self._outputs, values, strict=True))

    def release_memory(self) -> None:
        """Shrink every session's arena now: a run of one two-token row with the
        shrinking option (onnxruntime shrinks at the end of a run)."""
        sessions = [s for s in (self._session, self._solo) if s is not None]
        if not sessions or cuda_index(self.device) is not None:
            return
        feeds = {name: np.zeros((1, 2), dtype=np.int64) for name in self._inputs}
        feeds.get("attention_mask", np.empty(0))[...] = 1
        now = time.monotonic()
        for session in sessions:
            session.run(None, feeds, self._shrinking_run)
            self._last_shrink[id(session)] = now

    def health(self) -> bool:
        return self._session is not None

    def unload(self) -> None:
        self._session = self._solo = None
