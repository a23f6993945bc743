"""Where a replica finds its model, on one machine or on any node of a cluster.

Two ways to have a model on every node that may run its replica:

- ``model_uri``: a zip of the model directory at a URI every node can read
  (``s3://``, ``gs://``, ``https://``, or ``file://`` for a path every node
  shares). It becomes the ``runtime_env.working_dir`` of the model's
  application, so Ray itself downloads it once per node, unpacks it into its
  per-node cache (a single top-level folder in the zip is removed) and starts
  the replica with that folder as its working directory. ``model_dir`` is
  then a path relative to it (``.`` by default), and the replica resolves it
  against its working directory (``replica_model_dir``). There is no
  downloader of ours: credentials and retries are Ray's (``s3://`` and
  ``gs://`` need ``boto3`` / ``google-cloud-storage`` on the nodes).
- ``model_dir_shared: true``: ``model_dir`` is an absolute path that holds the
  model on every node (NFS, a volume, the image).

Ray caches an unpacked archive per node by its URI: a new model goes under a
new URI (``minilm-v2.zip``), never over an old one. ``model_sha256`` pins the
model: the sha256 of its ``textfleet.json``, which records the sha256 of
every other file of the directory; the replica checks both before it loads.
``pack`` writes the zip and returns that pin.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

URI_SCHEMES = ("s3", "gs", "https", "file")
"""Schemes of a ``model_uri``: Ray's remote ``working_dir`` protocols we document."""

INFO_FILE = "textfleet.json"  # engine/model_dir.py's; the engine layer is not imported here


def check_model_uri(uri: str) -> str:
    """A ``model_uri`` as Ray's ``working_dir`` takes it: a known scheme, a ``.zip``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in URI_SCHEMES or not rest:
        raise ValueError(
            f"got {uri!r}; model_uri must start with one of "
            f"{', '.join(s + '://' for s in URI_SCHEMES)}"
        )
    if not rest.endswith(".zip"):
        raise ValueError(f"got {uri!r}; model_uri must name a .zip of the model directory")
    return uri


def check_archive_path(path: Path) -> Path:
    """``model_dir`` inside an archive: relative, and not leaving it."""
    posix = PurePosixPath(path.as_posix())
    if posix.is_absolute() or ".." in posix.parts:
        raise ValueError(
            f"got {str(path)!r}; with model_uri, model_dir is a path inside the archive "
            "(relative, without '..'; default '.')"
        )
    return path


def runtime_env(model_uri: str | None) -> dict[str, Any] | None:
    """The application's ``runtime_env`` that delivers the model, or None."""
    return None if model_uri is None else {"working_dir": model_uri}


def replica_model_dir(model_dir: Path) -> Path:
    """The model directory as this replica sees it: a relative one is under the
    working directory Ray started it in (the unpacked ``model_uri``)."""
    return model_dir if model_dir.is_absolute() else Path.cwd() / model_dir


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_pin(model_dir: Path, expected: str) -> None:
    """Raise ValueError unless ``model_dir`` is the model ``expected`` pins: its
    ``textfleet.json`` hashes to it and every file it lists to its checksum."""
    import json

    info = model_dir / INFO_FILE
    if not info.is_file():
        raise ValueError(f"{info} is missing: cannot check model_sha256")
    actual = file_digest(info)
    if actual != expected:
        raise ValueError(
            f"model_sha256 is {expected[:12]}... but {info} hashes to {actual[:12]}... "
            "(a different model at this location)"
        )
    checksums = json.loads(info.read_text(encoding="utf-8")).get("checksums") or {}
    for name, digest in sorted(checksums.items()):
        path = model_dir / name
        if not path.is_file() or file_digest(path) != digest:
            raise ValueError(f"{path} does not match its checksum in {INFO_FILE}")


def pack(model_dir: str | Path, out: str | Path) -> str:
    """Zip a model directory for ``model_uri`` (one top-level folder, which Ray
    removes when it unpacks); returns its ``model_sha256``."""
    model_dir = Path(model_dir)
    if not (model_dir / INFO_FILE).is_file():
        raise ValueError(f"{model_dir} is not a model directory ({INFO_FILE} missing)")
    top = model_dir.resolve().name
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            z.write(path, f"{top}/{path.relative_to(model_dir).as_posix()}")
    return file_digest(model_dir / INFO_FILE)
