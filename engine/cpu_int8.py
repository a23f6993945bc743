"""Which int8 matmul kernels onnxruntime runs on this CPU, and what that means for a
quantized model's figures.

An int8 graph's answers depend on the CPU serving it, not only on the graph. On
x86 with VNNI (``avx512_vnni`` or ``avx_vnni``) onnxruntime multiplies uint8 by
int8 with exact 32-bit sums. Without it (AVX2, or AVX-512 without VNNI) it adds
pairs of products in 16-bit lanes (``vpmaddubsw``), which saturate: the same graph
answers measurably further from fp32 there (MiniLM smoothed int8, cosine_min to
fp32 batched: 0.989 with VNNI, 0.958 without). Weights quantized to 7 bits
(``reduce_range``) cannot saturate those sums (0.984 without VNNI).

The quality check records the kind it was measured on (``QualityReport.cpu_int8``);
loading an 8-bit graph measured with VNNI onto a CPU without it logs a warning.
Elsewhere (ARM, other architectures) the kind is ``other``: not measured here.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Literal

Int8Kernels = Literal["vnni", "saturating", "other"]

log = logging.getLogger(__name__)

_X86 = {"x86_64", "amd64", "i386", "i686"}
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}


def int8_kernels(cpuinfo: str | None = None) -> Int8Kernels:
    """This CPU's kind (``cpuinfo``: the text of /proc/cpuinfo, read when not given)."""
    if platform.machine().lower() not in _X86:
        return "other"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "other"  # not Linux: the flags are not known
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "vnni" if _VNNI_FLAGS & set(line.split(":", 1)[-1].split()) else "saturating"
    return "other"


def drift_warning(info, here: Int8Kernels | None = None) -> str | None:
    """Why this CPU may answer further from fp32 than the model's recorded figures say
    (``info``: a ModelInfo), or None."""
    q, report = info.quantization, info.quality
    if q is None or q.reduce_range or report is None or report.cpu_int8 != "vnni":
        return None
    here = int8_kernels() if here is None else here
    if here != "saturating":
        return None
    return (
        f"model {info.name!r}: its int8 quality figures were measured on a CPU with VNNI; "
        "this CPU has none, and onnxruntime's int8 kernels here saturate, so its answers "
        "drift further from fp32 than recorded (MiniLM: cosine_min 0.989 there, 0.958 "
        "here). Export with --reduce-range for CPUs without VNNI, and --check on one."
    )


def warn_if_drifting(info) -> None:
    message = drift_warning(info)
    if message is not None:
        log.warning(message)
