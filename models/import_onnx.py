"""``textfleet import-onnx``: a folder that already holds an ONNX model -> a model directory.

For models that ship as ONNX only (the rampart PII tagger is one, 4-bit
quantized with com.microsoft operators): no torch, no re-export. The folder
must hold the graph, a ``tokenizer.json`` and the Hugging Face
``config.json`` (labels). The graph is loaded with onnxruntime and run once
on a small padded batch, so a graph whose inputs are not Batch fields, or
whose output does not fit the task (rank, label count), is refused here and
not at the first request.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from textfleet.engine.model_dir import (
    CONFIG_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelDir,
    Source,
)
from textfleet.engine.tasks.spec import TaskSpec
from textfleet.models.export import seal_model_dir, staged_model_dir, write_tokenizer
from textfleet.models.source import (
    ExportError,
    lookup_task,
    position_limit,
    read_json,
    task_fields,
)

log = logging.getLogger(__name__)

BATCH_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def find_onnx(folder: Path, onnx_file: str | None) -> Path:
    """The graph: ``onnx_file`` (relative to the folder) or the one ``*.onnx`` found."""
    if onnx_file is not None:
        path = folder / onnx_file
        if not path.is_file():
            raise ExportError(f"--onnx-file {onnx_file}: {path} not found")
        return path
    found = sorted({*folder.glob("*.onnx"), *folder.glob("onnx/*.onnx")})
    if len(found) != 1:
        names = [str(p.relative_to(folder)) for p in found]
        raise ExportError(
            f"{folder} holds {names or 'no .onnx file'}; "
            + ("pass --onnx-file to pick one" if found else "expected model.onnx or onnx/*.onnx")
        )
    return found[0]


def probe_graph(path: Path, config: dict) -> tuple[list[str], str, tuple[int, ...]]:
    """Graph input names, first output name and its shape on a 2 x 8 padded batch."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot load the graph ({e})") from None
    inputs = [i.name for i in session.get_inputs()]
    unknown = [n for n in inputs if n not in BATCH_FIELDS]
    if unknown or "input_ids" not in inputs:
        raise ExportError(
            f"{path}: graph inputs {inputs}; expected input_ids and optionally "
            "attention_mask, token_type_ids"
        )
    rows, width = 2, 8
    ids = np.full((rows, width), 100 % int(config.get("vocab_size", 1000)), dtype=np.int64)
    mask = np.ones((rows, width), dtype=np.int64)
    mask[1, width // 2 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    output = session.get_outputs()[0].name
    shape = session.run([output], {n: feeds[n] for n in inputs})[0].shape
    return inputs, output, tuple(int(x) for x in shape)


def check_output(task: TaskSpec, shape: tuple[int, ...], dim: int, where: Path) -> None:
    """The graph's first output must have the task's rank and the config's width."""
    if len(shape) != task.output_rank:
        raise ExportError(
            f"{where}: first output has shape {list(shape)}; "
            f"task {task.name!r} needs rank {task.output_rank}"
        )
    if task.width_of is not None and shape[-1] != dim:
        raise ExportError(
            f"{where}: the graph outputs {shape[-1]} values per row, expected {dim} {task.width_of}"
        )


def import_onnx(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str,
    onnx_file: str | None = None,
    name: str | None = None,
    max_length: int | None = None,
    aggregation: str | None = None,
    merge_gaps: bool = False,
    provenance: Source | None = None,
    force: bool = False,
) -> ModelDir:
    """Copy an ONNX folder into the model directory ``out_dir`` and return it, opened."""
    folder = Path(folder).expanduser().resolve()
    spec = lookup_task(task, "import-onnx")
    if not folder.is_dir():
        raise ExportError(f"source folder not found: {folder}")
    for needed in (TOKENIZER_FILE, CONFIG_FILE):
        if not (folder / needed).is_file():
            raise ExportError(f"{folder} has no {needed}")
    config = read_json(folder / CONFIG_FILE)
    graph = find_onnx(folder, onnx_file)
    per_task = task_fields(task, config, folder, aggregation, merge_gaps)
    limit = position_limit(config)
    if max_length is not None and not 4 <= max_length <= limit:
        raise ExportError(f"--max-length must be between 4 and {limit}, got {max_length}")
    info = dict(
        name=name or folder.name, task=task, max_length=max_length or limit,
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        **per_task,
        source=provenance or Source(kind="folder", name=str(folder)),
    )  # fmt: skip
    out_dir = Path(out_dir).expanduser().resolve()
    with staged_model_dir(out_dir, force) as tmp:
        shutil.copyfile(graph, tmp / ONNX_FILE)
        # Probe the copy, not the source: a graph whose weights live in external
        # data files that were not copied fails here, not when served.
        inputs, output, shape = probe_graph(tmp / ONNX_FILE, config)
        if spec.width_of is None:  # a free width: the graph's
            info["dim"] = shape[-1]
        check_output(spec, shape, info["dim"], folder / graph.name)
        write_tokenizer(folder / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        shutil.copyfile(folder / CONFIG_FILE, tmp / CONFIG_FILE)
        seal_model_dir(tmp, out_dir, {**info, "inputs": tuple(inputs), "outputs": (output,)})
    log.info("imported %s (%s) to %s", info["name"], task, out_dir)
    return ModelDir.open(out_dir)
