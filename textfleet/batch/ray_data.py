"""A batch run on Ray Data: read, ``map_batches`` through engine actors, write.

Each actor of the pool loads one ``Engine`` (a replica of the model) and runs
``RowRunner`` over the batches it is given; ``concurrency`` actors share the
work. The model directory must be readable at the same path on every node that
runs an actor (a shared file system, or the same image), and textfleet
installed there. Blocks keep their order (``preserve_order``) and Ray names the
part files by block, so the output directory read in name order is in input
order; rows are matched to the input by ``id_column``. The actors hold their
CPUs for the whole run: leave a CPU free for the read and write tasks
(``concurrency`` x ``actor_cpus`` below the cluster's CPUs), or the run waits.

The run writes into a temporary directory next to the output and renames it
into place when every block is written: the output directory, once there, is
complete, and a rerun finds it and does nothing.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from textfleet.batch import files
from textfleet.batch.local import Summary
from textfleet.batch.rows import ERROR, RowRunner


class EngineReplica:
    """The callable class of ``map_batches``: one engine per actor."""

    def __init__(self, model_dir: str, engine_config: dict, runner: dict[str, Any]):
        from textfleet.engine.engine import Engine

        self.engine = Engine.load(model_dir, engine_config)
        self.runner = RowRunner(self.engine, **runner)

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {n: batch.column(n).to_pylist() for n in self.runner.input_columns}
        ids = None
        if self.runner.id_column:
            ids = batch.column(self.runner.id_column).combine_chunks()
        return self.runner.table(columns, ids)


def _read(input_path: str, columns: list[str]):
    import ray.data

    fmt = files.input_format(input_path)
    if fmt in (".jsonl", ".jsonl.gz"):
        ds = ray.data.read_json(input_path)
    elif fmt == ".csv":
        from pyarrow import csv

        types = dict.fromkeys(columns, pa.string())
        ds = ray.data.read_csv(input_path, convert_options=csv.ConvertOptions(column_types=types))
    else:
        ds = ray.data.read_parquet(input_path, columns=columns)
    return ds.select_columns(columns)


def run_ray(
    model_dir: str | Path,
    engine_config: dict,
    runner: dict[str, Any],
    input_path: str | Path,
    output: str | Path,
    *,
    concurrency: int = 1,
    actor_cpus: int | None = None,
    batch_size: int = 512,
    address: str | None = None,
    input_columns: list[str],
) -> Summary:
    """Run the dataset through ``concurrency`` engine actors on the Ray at ``address``
    (None: the one this process started or finds, else a new local one). ``actor_cpus``:
    the CPUs each actor reserves, and its engine's threads unless ``engine_config`` sets
    them (None: Ray Data's one CPU, the engine's own default threads)."""
    import ray
    import ray.data

    output = Path(output)
    suffix = files.output_format(output)
    if output.is_dir():  # renamed into place whole: complete
        table = files.read_output(output)
        return Summary(rows=table.num_rows, skipped_parts=len(files.part_files(output)),
                       errors=files.count_errors(output, ERROR))  # fmt: skip
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    options = {}
    if actor_cpus is not None:
        options["num_cpus"] = actor_cpus
        engine_config = {"threads": actor_cpus, **engine_config}
    began = time.perf_counter()
    ds = _read(str(input_path), input_columns).map_batches(
        EngineReplica,
        fn_constructor_kwargs={
            "model_dir": str(Path(model_dir).resolve()),
            "engine_config": engine_config,
            "runner": runner,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # a fixed pool of replicas
        zero_copy_batch=True,
        **options,
    )
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if suffix == ".parquet":
            ds.write_parquet(str(tmp))
        else:
            ds.write_json(str(tmp))
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - began
    rows = files.read_output(output).num_rows
    return Summary(rows=rows, computed=rows, errors=files.count_errors(output, ERROR),
                   seconds=seconds)  # fmt: skip
