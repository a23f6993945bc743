"""A model directory on disk: what ``textfleet export`` writes and ``Engine`` loads.

Layout (docs/ARCHITECTURE.md, "Model directory")::

    model.onnx          the graph (opset 17, dynamic batch and sequence axes)
    model.safetensors   optional torch weights (torch backend, parity checks)
    tokenizer.json      padding and truncation removed
    config.json         the Hugging Face config (architecture, labels)
    textfleet.json      ModelInfo below: task, pooling, max_length, outputs, checksums

``ModelDir.open`` validates all of it up front, so a broken directory fails at
load time with a message naming the file and the field, never at the first
request. Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from textfleet.engine.config import BatchingConfig
from textfleet.engine.errors import ModelDirError
from textfleet.engine.quantization import QualityReport, Quantization
from textfleet.engine.tasks.registry import TASKS, TaskName, get_task

INFO_FILE = "textfleet.json"
ONNX_FILE = "model.onnx"
SAFETENSORS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1

Pooling = Literal["mean", "cls", "max"]
Aggregation = Literal["none", "simple", "first", "average", "max"]


class Source(BaseModel):
    """Where the exported model came from (for provenance, never read at run time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["folder", "package"]
    name: str
    """Folder path, or the Python package name."""
    version: str | None = None
    """Package version, when the source is a package."""


class ModelInfo(BaseModel):
    """The schema of ``textfleet.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT_VERSION
    """Version of this schema."""
    name: str = Field(min_length=1)
    """Model name, used in logs and as the default served name."""
    task: TaskName
    architecture: str
    """Hugging Face architecture the graph was exported from (e.g. BertModel)."""
    dim: int = Field(ge=1)
    """Width of one output row: hidden size (embedding), labels (classifiers), 1 (pair scoring)."""
    max_length: int = Field(ge=4)
    """Tokens per sequence, special tokens included; longer inputs are truncated."""
    pooling: Pooling | None = None
    """How token vectors become one vector (embedding task only)."""
    normalize: bool = False
    """L2-normalise pooled vectors (embedding task only)."""
    matryoshka_dims: tuple[int, ...] = ()
    """Narrower widths the embeddings may be cut to (embedding task only): the model was
    trained so that the first d components, re-normalised, are an embedding themselves
    (Matryoshka representation learning). A request asks for one with ``dimensions``."""
    prompts: dict[str, str] = Field(default_factory=dict)
    """Instruction prefixes by name (embedding task only), from sentence-transformers'
    ``config_sentence_transformers.json``: ``{"query": "query: ", ...}``. A request
    picks one with ``prompt_name``; it is prepended to each text before tokenizing."""
    default_prompt_name: str | None = None
    """The prompt a request gets when it names none (one of ``prompts``); None: no prefix."""
    aggregation: Aggregation | None = None
    """Default entity aggregation (token-classification only; transformers' strategies)."""
    merge_gaps: bool = False
    """Merge same-type entity spans separated only by whitespace (token-classification only),
    for taggers that mark every sub-token B-."""
    inputs: tuple[str, ...] = Field(min_length=1)
    """Graph inputs, a subset of the Batch fields."""
    outputs: tuple[str, ...] = Field(min_length=1)
    """Graph outputs; the head reads the first."""
    opset: int | None = None
    fused: bool = False
    """The graph went through onnxruntime's transformer optimizer (attention, layer-norm,
    GELU fusions) at export, checked equal to the unfused graph within fp32 tolerance."""
    quantization: Quantization | None = None
    """How the graph was quantized at export (None: fp32)."""
    quality: QualityReport | None = None
    """The quantized graph's answers against the fp32 graph's, measured at export."""
    batching: BatchingConfig | None = None
    """Default batching knobs for this model (e.g. a GPU model's bigger batches);
    ``Engine.load(batching=...)`` overrides them knob by knob."""
    checksums: dict[str, str]
    """sha256 (hex) of the files written next to textfleet.json, by file name."""
    source: Source

    @model_validator(mode="after")
    def _task_fields(self) -> ModelInfo:
        task = get_task(self.task)
        for other in TASKS.values():
            used = [f for f in other.options if other is not task and getattr(self, f)]
            if used:
                verb = "applies" if len(used) == 1 else "apply"
                raise ValueError(f"{' and '.join(used)} {verb} to task {other.name!r} only")
        problem = task.check_info(self)
        if problem:
            raise ValueError(problem)
        bad = [d for d in self.matryoshka_dims if not 1 <= d < self.dim]
        if bad or list(self.matryoshka_dims) != sorted(set(self.matryoshka_dims)):
            raise ValueError(
                f"matryoshka_dims {list(self.matryoshka_dims)} must be increasing widths "
                f"between 1 and {self.dim - 1} (dim {self.dim} is always served)"
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not one of prompts "
                f"{sorted(self.prompts)}"
            )
        unknown = set(self.inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ValueError(
                f"inputs {sorted(unknown)} are not Batch fields "
                "(input_ids, attention_mask, token_type_ids)"
            )
        if ONNX_FILE not in self.checksums:
            raise ValueError(f"checksums must include {ONNX_FILE}")
        return self


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _format_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "(top level)"
        parts.append(f"field '{field}': {e['msg']}")
    return "; ".join(parts)


class ModelDir:
    """A validated model directory. Construct with ``ModelDir.open(path)``."""

    def __init__(self, path: Path, info: ModelInfo):
        self.path = path
        self.info = info

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> ModelDir:
        """Read and check ``textfleet.json`` and the files it names.

        ``verify`` re-hashes model.onnx against its checksum (about 0.1 s per 100 MB):
        a truncated copy is then caught here rather than as a garbled graph later.
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelDirError(f"model directory not found: {path}")
        info_path = path / INFO_FILE
        if not info_path.is_file():
            raise ModelDirError(
                f"{info_path} is missing: {path} is not a textfleet model directory "
                "(make one with `textfleet export SOURCE -o DIR`)"
            )
        try:
            raw = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelDirError(f"{info_path}: not readable JSON ({e})") from None
        try:
            info = ModelInfo.model_validate(raw)
        except ValidationError as e:
            raise ModelDirError(f"{info_path}: {_format_validation(e)}") from None
        model_dir = cls(path, info)
        model_dir._check_files(verify)
        return model_dir

    def _check_files(self, verify: bool) -> None:
        for name in (TOKENIZER_FILE, CONFIG_FILE, ONNX_FILE):
            if not (self.path / name).is_file():
                raise ModelDirError(f"{self.path / name} is missing (named by {INFO_FILE})")
        if verify:
            self.verify(ONNX_FILE)

    def verify(self, name: str) -> None:
        """Check one file against the checksum recorded in textfleet.json."""
        expected = self.info.checksums.get(name)
        if expected is None:
            raise ModelDirError(f"{self.path / INFO_FILE}: no checksum recorded for {name}")
        actual = sha256_file(self.path / name)
        if actual != expected:
            raise ModelDirError(
                f"{self.path / name}: sha256 {actual[:12]}... does not match "
                f"checksums.{name} {expected[:12]}... in {INFO_FILE} (corrupt or replaced file)"
            )

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def safetensors_path(self) -> Path | None:
        """Torch weights, if the export kept them (``--safetensors``)."""
        p = self.path / SAFETENSORS_FILE
        return p if p.is_file() else None

    def config(self) -> dict:
        """The Hugging Face ``config.json`` as a dict."""
        try:
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelDirError(f"{self.config_path}: not readable JSON ({e})") from None

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r}, task={self.info.task!r}, name={self.info.name!r})"
