"""Tracing a transformers model to ONNX (opset 17, dynamic batch and sequence axes)
and checking the graph against torch before it is accepted."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np

from textfleet.engine.tasks.registry import TASKS
from textfleet.models.source import ExportError

log = logging.getLogger(__name__)

OPSET = 17


def _wrapper(torch, model, input_names: list[str], output: str):
    """A module whose positional inputs reach the model by keyword; returns one output."""

    class KeywordInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return getattr(self.model(**dict(zip(input_names, args, strict=True))), output)

    # torch.onnx.export restores the wrapper's training flag afterwards, recursively:
    # a wrapper left in training mode would switch the model's dropout on.
    return KeywordInputs().eval()


def _sample_inputs(config: dict, input_names: list[str], rows: int, width: int) -> dict:
    """Random ids with one padded row: exercises the mask path of the graph."""
    rng = np.random.default_rng(0)
    vocab = int(config.get("vocab_size", 30522))
    ids = rng.integers(min(1000, vocab - 1), vocab, size=(rows, width), dtype=np.int64)
    mask = np.ones((rows, width), dtype=np.int64)
    mask[-1, width // 2 :] = 0
    ids[mask == 0] = int(config.get("pad_token_id") or 0)
    arrays = {"input_ids": ids, "attention_mask": mask}
    arrays["token_type_ids"] = np.zeros((rows, width), dtype=np.int64)
    return {n: arrays[n] for n in input_names}


def export_onnx(folder: Path, out: Path, task: str, config: dict, max_length: int) -> list[str]:
    """Trace the model to ONNX at ``out``; returns the graph's input names."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ExportError(
            f"export needs the torch extra (pip install 'textfleet[torch]'): {e}"
        ) from None
    spec = TASKS[task]
    transformers.utils.logging.disable_progress_bar()
    auto = getattr(transformers, spec.auto_class)
    try:
        model = auto.from_pretrained(str(folder), use_safetensors=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{folder}: transformers cannot load the model ({e})") from None
    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]
    wrapper = _wrapper(torch, model, names, spec.onnx_output)
    trace = _sample_inputs(config, names, rows=2, width=16)
    check = _sample_inputs(config, names, rows=3, width=max_length)
    with torch.inference_mode():
        expected = wrapper(*(torch.from_numpy(check[n]) for n in names)).numpy()
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, spec.onnx_output]}
    # The tracer warns about Python branches it freezes (mask shapes); the graph is
    # checked against torch below on another shape instead of trusting the warnings.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(torch.from_numpy(trace[n]) for n in names),
            str(out),
            input_names=names,
            output_names=[spec.onnx_output],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    _check_graph(out, check, expected)
    return names


def _check_graph(path: Path, feeds: dict, expected: np.ndarray, atol: float = 1e-3) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    mask = feeds["attention_mask"].astype(bool)
    err = (
        float(np.abs(got - expected)[mask].max())
        if got.ndim == 3
        else float(np.abs(got - expected).max())
    )
    if got.shape != expected.shape or not err <= atol:
        raise ExportError(
            f"exported graph disagrees with torch: shape {got.shape} vs {expected.shape}, "
            f"max abs error {err:.3g} > {atol}"
        )
