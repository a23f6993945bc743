"""Post-export int8 quantization of a model directory's ONNX graph.

Two methods, both over the MatMul / Gemm nodes (the bulk of a BERT's compute):

- ``int8`` (dynamic): weights int8 with per-channel scales; each matmul's input is
  quantized to uint8 on the fly with one scale per tensor, taken over the whole
  padded batch. No calibration; but a text's answer then depends on the texts
  (and the padding) batched with it.
- ``int8-static`` (QDQ): weights int8 per channel, activations uint8 with scales
  fixed by calibration on sample texts (MinMax, each text run alone). Answers no
  longer depend on the batch; texts far outside the calibration ranges clip.

``keep_fp32`` leaves the most sensitive matmuls in fp32. Sensitivity is measured,
not guessed: each matmul's product error under int8 rounding on calibration
texts run alone ranks it (models/sensitivity.py).
(textfleet.models.int8_export picks how many to keep, ``auto``: the fewest that
pass the quality check.)

Accuracy figures: textfleet.models.quality and tests/test_quantize.py.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

QUANTIZATIONS = {"int8": "dynamic", "int8-static": "static"}
QUANTIZED_OPS = ["MatMul", "Gemm"]


def check_quantization(mode: str | None) -> None:
    if mode is not None and mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {mode!r}")


def check_keep_fp32(keep: str | int | None) -> str | int | None:
    """``auto``, a count >= 0, or None; a numeric string becomes an int."""
    if keep is None or keep == "auto":
        return keep
    try:
        n = int(keep)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(keep, bool):
        raise ValueError(f"keep_fp32 must be 'auto' or a count >= 0, got {keep!r}")
    return n


class Feeds:
    """Calibration inputs: each text (or pair) tokenized alone, as the graph's inputs."""

    def __init__(self, tokenizer_path: Path, max_length: int, inputs: Sequence[str], items: list):
        from textfleet.engine.tokenizer import Tokenizer

        tok = Tokenizer.from_file(tokenizer_path, max_length=max_length)
        self.feeds = []
        for item in items:
            text, pair = (item, None) if isinstance(item, str) else item
            batch = tok.pad_batch([text], None if pair is None else [pair])
            self.feeds.append({name: np.asarray(batch[name]) for name in inputs})

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        feeds = self.feeds

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(feeds)

            def get_next(self):
                return next(self._it, None)

        return Reader()


def prepare_graph(path: Path, out: Path) -> None:
    """Shape inference and graph cleanup, as onnxruntime recommends before quantizing:
    without it some MatMuls are not recognised and stay fp32."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(path), str(out), skip_symbolic_shape=True)


def matmul_nodes(path: Path) -> list[str]:
    """Names of the matmuls with a weight (a constant operand), in graph order: the ones
    quantized. Attention's activation x activation matmuls stay fp32: with one static
    scale they cost the most accuracy (MiniLM: cosine to fp32 0.79 at worst) for little
    compute."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in QUANTIZED_OPS and any(i in weights for i in n.input)
    ]


@contextmanager
def workspace(near: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=near.parent) as tmp:
        yield Path(tmp)


class Quantizer:
    """Quantizes one prepared fp32 graph, any number of times (sensitivity runs).

    Static calibration runs once; its ranges are cached in ``work`` and reused.
    """

    def __init__(
        self,
        prepared: Path,
        method: str,
        work: Path,
        calibration: Feeds | None,
        reduce_range: bool = False,
    ):
        if method == "static" and calibration is None:
            raise ValueError("static quantization needs calibration texts")
        self.prepared = prepared
        self.method = method
        self.work = work
        self.calibration = calibration
        self.reduce_range = reduce_range
        self._cache = work / "calibration.json"

    def quantize(
        self, out: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> None:
        import onnx
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        if only is None:
            only = matmul_nodes(self.prepared)
        common = {
            "op_types_to_quantize": QUANTIZED_OPS,
            "per_channel": True,
            # 7-bit weights: no saturation in the 16-bit pair sums of x86 CPUs without
            # VNNI (engine/cpu_int8.py), at a little precision.
            "reduce_range": self.reduce_range,
            "weight_type": QuantType.QInt8,
            "nodes_to_exclude": list(exclude),
            "nodes_to_quantize": list(only),
            # A fused graph's com.microsoft ops defeat onnx shape inference; their outputs
            # are float32 (the quantizer otherwise refuses the matmuls that read them).
            "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT},
        }
        if self.method == "dynamic":
            quantize_dynamic(self.prepared, out, **common)
            return
        quantize_static(
            self.prepared,
            out,
            self.calibration.reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            calibration_cache_path=self._cache,
            **common,
        )

    def sensitivity(self, probe: Feeds, threads: int | None = None) -> list[tuple[str, float]]:
        """The quantized matmuls by measured error, most sensitive first (models/sensitivity.py)."""
        from textfleet.models.sensitivity import matmul_sensitivity

        nodes = matmul_nodes(self.prepared)
        return matmul_sensitivity(self.prepared, nodes, probe.feeds, self.method, threads)


def quantize_onnx(path: Path, mode: str) -> None:
    """Replace the ONNX graph at ``path`` by its dynamically or statically quantized version
    (static needs calibration texts: see textfleet.models.int8_export)."""
    check_quantization(mode)
    if QUANTIZATIONS[mode] != "dynamic":
        raise ValueError(f"{mode} needs calibration texts; use textfleet.models.int8_export")
    path = Path(path)
    with workspace(path) as work:
        prepared = work / "prepared.onnx"
        prepare_graph(path, prepared)
        Quantizer(prepared, "dynamic", work, None).quantize(work / "int8.onnx")
        os.replace(work / "int8.onnx", path)
    log.info("quantized %s to %s", path, mode)
