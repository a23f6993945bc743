"""A batch run in this process: the input in parts, each part in chunks through one engine.

The output is a directory of part files, ``part-00000.parquet``, ... each
holding ``rows_per_part`` input rows in input order. A rerun with the same
input and settings skips the parts already there (a part file present is
complete: files.write_part renames it into place) and computes the others; a
rerun with other settings is refused, the ``_batch.json`` in the directory
says which ones it was written with (a changed input file of the same path and
row count is not detected). The input's columns are read whole into memory
first; the engine gets ``batch_size`` rows at a time, two chunks in flight.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import pyarrow as pa

from textfleet.batch import files
from textfleet.batch.rows import ERROR, RowRunner

SETTINGS_FILE = "_batch.json"
IN_FLIGHT = 2
"""Chunks handed to the engine at once, so its scheduler never waits for the next one."""


@dataclass(frozen=True)
class RunSettings:
    """What decides the content of an output directory (recorded in ``_batch.json``)."""

    input: str
    rows: int
    column: str
    pair_column: str | None
    id_column: str | None
    model: str
    task: str
    rows_per_part: int
    options: dict


@dataclass
class Summary:
    rows: int = 0
    computed: int = 0
    skipped_parts: int = 0
    errors: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.rows} rows: {self.computed} computed ({rate:.0f} rows/s), "
            f"{self.rows - self.computed} in {self.skipped_parts} parts already done, "
            f"{self.errors} with an error"
        )


class Progress:
    """Rows done of the total on stderr: one line rewritten on a terminal, else a line
    every few seconds; always one at the end."""

    def __init__(self, total: int, done: int = 0, out: TextIO | None = None, every_s: float = 2.0):
        out = out or sys.stderr  # looked up now: it may have been replaced since import
        self.total, self.done, self.out = total, done, out
        self.tty = out.isatty()
        self.every_s = every_s if not self.tty else 0.2
        self.start = self.last = time.perf_counter()
        self.started_at = done

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self._write(now)

    def _write(self, now: float) -> None:
        rate = (self.done - self.started_at) / max(now - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"batch: {self.done}/{self.total} rows ({pct:.0f}%), {rate:.0f} rows/s"
        self.out.write(f"\r{text}" if self.tty else f"{text}\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def check_settings(output: Path, settings: RunSettings) -> None:
    """Refuse an output directory written with other settings; record them in a new one."""
    path = output / SETTINGS_FILE
    wanted = json.loads(json.dumps(asdict(settings)))
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        for key, value in wanted.items():
            if found.get(key) != value:
                raise ValueError(
                    f"--output {output} holds a run with {key}={found.get(key)!r}, "
                    f"not {value!r}; remove it or choose another --output"
                )
        return
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def run_local(
    runner: RowRunner,
    input_path: str | Path,
    output: str | Path,
    *,
    batch_size: int = 512,
    rows_per_part: int = 10_000,
    progress_out: TextIO | None = None,
) -> Summary:
    """Compute every part of ``output`` not yet written; the summary counts them all."""
    output = Path(output)
    suffix = files.output_format(output)
    columns, typed = files.read_columns(input_path, runner.input_columns)
    total = len(columns[runner.column])
    info = runner.engine.info
    check_settings(
        output,
        RunSettings(
            input=str(Path(input_path).resolve()),
            rows=total,
            column=runner.column,
            pair_column=runner.pair_column,
            id_column=runner.id_column,
            model=info.name,
            task=info.task,
            rows_per_part=rows_per_part,
            options=runner.options,
        ),
    )
    summary = Summary(rows=total)
    starts = range(0, total, rows_per_part)
    todo = []
    for part, start in enumerate(starts):
        path = output / f"part-{part:05d}{suffix}"
        if path.exists():
            summary.skipped_parts += 1
        else:
            todo.append((path, start, min(start + rows_per_part, total)))
    progress = Progress(total, total - sum(end - start for _, start, end in todo), progress_out)
    began = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="batch") as pool:
        for path, start, end in todo:
            chunks = [(s, min(s + batch_size, end)) for s in range(start, end, batch_size)]

            def chunk_table(bounds: tuple[int, int]) -> pa.Table:
                s, e = bounds
                ids = None
                if runner.id_column and typed is not None:
                    ids = typed.column(runner.id_column).slice(s, e - s).combine_chunks()
                return runner.table({n: c[s:e] for n, c in columns.items()}, ids)

            tables = []
            for (s, e), table in zip(chunks, pool.map(chunk_table, chunks), strict=True):
                tables.append(table)
                progress.update(e - s)
            files.write_part(pa.concat_tables(tables), path)
            summary.computed += end - start
    progress.close()
    summary.seconds = time.perf_counter() - began
    summary.errors = files.count_errors(output, ERROR)
    return summary
