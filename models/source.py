"""Reading an export source: where the model folder is (a folder or an installed
package), whether it can be exported, and what its files say (pooling, task
fields, position limit, max_length). Shared by ``export`` and ``import_onnx``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from textfleet.engine.errors import EngineError, ModelDirError
from textfleet.engine.model_dir import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    TOKENIZER_FILE,
    Source,
)
from textfleet.engine.tasks.registry import TASKS
from textfleet.engine.tasks.spec import TaskSpec

log = logging.getLogger(__name__)

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
    return read_json(config_path)


def weights_present(folder: Path) -> bool:
    return (folder / SAFETENSORS_FILE).is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file()


def read_json(path: Path) -> dict:
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
    return _pooling_mode(config_path, read_json(config_path)), normalize


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
    task: str,
    config: dict,
    where: Path,
    aggregation: str | None = None,
    merge_gaps: bool = False,
    matryoshka_dims: Sequence[int] | None = None,
) -> dict:
    """ModelInfo fields that depend on the task: the output width, entity options,
    embedding pooling, prompts and Matryoshka widths.

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
        fields |= read_prompts(where)
    if matryoshka_dims:
        if "matryoshka_dims" not in spec.options:
            raise ExportError(f"--matryoshka-dims applies to embedding models, not --task {task}")
        fields["matryoshka_dims"] = check_matryoshka_dims(matryoshka_dims, fields["dim"])
    return fields


def check_matryoshka_dims(dims: Sequence[int], dim: int) -> tuple[int, ...]:
    """The declared widths, increasing; each must be narrower than the model's ``dim``."""
    widths = sorted(set(dims))
    if any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < dim for d in widths):
        raise ExportError(
            f"--matryoshka-dims {','.join(map(str, dims))}: each width must be between 1 and "
            f"{dim - 1} (the model's embeddings have {dim} dimensions)"
        )
    return tuple(widths)


def read_prompts(folder: Path) -> dict:
    """``prompts`` and ``default_prompt_name`` from sentence-transformers'
    ``config_sentence_transformers.json`` (none when the file or the keys are absent)."""
    path = folder / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    cfg = read_json(path)
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ExportError(f"{path}: prompts must map names to prefix strings")
    default = cfg.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ExportError(f"{path}: default_prompt_name {default!r} is not one of its prompts")
    return {"prompts": dict(prompts), "default_prompt_name": default} if prompts else {}


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
        seq = read_json(st_path).get("max_seq_length")
        if seq is not None:
            return min(int(seq), limit)
    return limit
