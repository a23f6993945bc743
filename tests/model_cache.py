"""Exports cached across test runs: a model is exported again only when its
source files, the export options or the exporter's code changed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from textfleet.engine.errors import ModelDirError
from textfleet.engine.model_dir import INFO_FILE, ModelDir, sha256_file
from textfleet.engine.tasks import registry as task_registry
from textfleet.models import export as export_module
from textfleet.models.export import export
from textfleet.models.source import ExportError, resolve_source

log = logging.getLogger(__name__)


def source_digest(folder: Path) -> str:
    """sha256 over every file's relative path and contents: a cache key for an export."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(folder)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def exporter_code() -> list[Path]:
    """The files whose change must invalidate an export: the exporter package and the
    task specs it reads (output names, auto classes)."""
    models = Path(export_module.__file__).parent
    tasks = Path(task_registry.__file__).parent
    return sorted([*models.glob("*.py"), *tasks.glob("*.py")])


def cached_export(source: str | os.PathLike, cache_root: str | os.PathLike, **options) -> ModelDir:
    """Export once per (source contents, options, exporter code) under ``cache_root``.

    A test run re-exports only a model whose files changed; the key includes
    the exporter's and the task specs' source so their changes invalidate old exports.
    """
    folder, src = resolve_source(source)
    h = hashlib.sha256(source_digest(folder).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    for code in exporter_code():
        h.update(code.read_bytes())
    target = Path(cache_root) / f"{Path(src.name).name}-{h.hexdigest()[:16]}"
    if (target / INFO_FILE).is_file():
        try:
            return ModelDir.open(target)
        except ModelDirError as e:
            log.warning("cached export %s is unusable (%s); exporting again", target, e)
            shutil.rmtree(target)
    try:
        return export(source, target, **options)
    except (ExportError, OSError):
        if (target / INFO_FILE).is_file():  # another process finished the same export first
            return ModelDir.open(target)
        raise
