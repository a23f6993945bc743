"""Input and output files of a batch run: formats by suffix, parts written whole.

Inputs: ``.jsonl`` (also ``.jsonl.gz``; read line by line, so a row whose value
has another type is that row's error, not the file's), ``.csv`` (every column
read as strings) and ``.parquet``. Outputs: a directory of part files,
``.parquet`` or ``.jsonl`` as the output path's suffix says; a part is
written to a temporary name and renamed, so a part file present is complete.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

INPUTS = (".jsonl", ".jsonl.gz", ".csv", ".parquet")
OUTPUTS = (".parquet", ".jsonl")
PART_SUFFIXES = (*OUTPUTS, ".json")  # Ray Data's write_json names its JSON-lines parts .json


def _suffix(path: Path, known: tuple[str, ...], what: str) -> str:
    for suffix in sorted(known, key=len, reverse=True):
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(f"{what}: {path} should end with one of {', '.join(known)}")


def input_format(path: str | os.PathLike) -> str:
    return _suffix(Path(path), INPUTS, "--input")


def output_format(path: str | os.PathLike) -> str:
    return _suffix(Path(path), OUTPUTS, "--output")


def read_columns(path: str | os.PathLike, names: list[str]) -> tuple[dict[str, list], pa.Table]:
    """The named columns of the input as Python lists (a row without the key: None),
    and the same columns as a table where the format keeps types (ids keep theirs)."""
    path = Path(path)
    fmt = input_format(path)
    if fmt in (".jsonl", ".jsonl.gz"):
        columns = _read_jsonl(path, names)
        return columns, None
    if fmt == ".csv":
        from pyarrow import csv

        types = dict.fromkeys(names, pa.string())
        table = csv.read_csv(path, convert_options=csv.ConvertOptions(column_types=types))
    else:
        from pyarrow import parquet

        table = parquet.read_table(path)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r}; columns: {table.column_names}")
    table = table.select(names)
    return {n: table.column(n).to_pylist() for n in names}, table


def _read_jsonl(path: Path, names: list[str]) -> dict[str, list]:
    columns: dict[str, list[Any]] = {n: [] for n in names}
    opener = gzip.open if path.name.endswith(".gz") else open
    seen: set[str] = set()
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line: {e.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line")
            seen.update(row)
            for n in names:
                columns[n].append(row.get(n))
    missing = [n for n in names if n not in seen] if columns[names[0]] else []
    if missing:
        raise ValueError(f"{path}: no row has the column {missing[0]!r}")
    return columns


def write_part(table: pa.Table, path: Path) -> None:
    """Write one part file whole: to a temporary name, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        from pyarrow import parquet

        parquet.write_table(table, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def part_files(directory: Path) -> list[Path]:
    """The finished part files of an output directory, in name (row) order."""
    if not directory.is_dir():
        return []
    # Not the temporaries (.name.tmp) nor the run's records (_batch.json).
    hidden = (".", "_")
    found = [p for p in directory.iterdir() if p.suffix in PART_SUFFIXES]
    return sorted(p for p in found if not p.name.startswith(hidden))


def read_output(directory: str | os.PathLike) -> pa.Table:
    """All part files of an output directory as one table, in part order."""
    tables = []
    for p in part_files(Path(directory)):
        if p.suffix == ".parquet":
            from pyarrow import parquet

            tables.append(parquet.read_table(p))
        else:
            with open(p, encoding="utf-8") as f:
                tables.append(pa.Table.from_pylist([json.loads(line) for line in f if line]))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def count_errors(directory: str | os.PathLike, column: str) -> int:
    table = read_output(directory)
    if column not in table.column_names:
        return 0
    return table.num_rows - table.column(column).null_count
