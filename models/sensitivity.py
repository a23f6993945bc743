"""Which matmuls int8 hurts most: measured per matmul on calibration texts.

One fp32 run over the calibration texts (each alone) with every quantized
matmul's input exposed as a graph output; then, per matmul, the relative
error of its product when its input and weight are rounded the way
onnxruntime's quantizer rounds them, against the fp32 product:

- weight: int8, symmetric, one scale per output channel (max |w| / 127);
- input: uint8, asymmetric, one scale per tensor over a range that includes 0;
  dynamic: the range of this input (a text alone); static: the range over all
  calibration texts (MinMax calibration).

A per-matmul (local) measure rather than the graph's output error with each
matmul quantized on its own: it ranks the same outliers (the matmuls whose
inputs carry a few huge channels) at the cost of one fp32 run instead of one
quantization and one run per matmul. Which of them to keep in fp32 is then
decided end to end by the quality check (textfleet.models.int8_export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def quantize_weight(w: np.ndarray) -> np.ndarray:
    """int8 symmetric per output channel (axis 1 of a MatMul's [in, out] weight), dequantized."""
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def quantize_input(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 asymmetric over [min(lo, 0), max(hi, 0)], dequantized."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def matmul_sensitivity(
    prepared: Path, nodes: list[str], feeds: list[dict], method: str, threads: int | None = None
) -> list[tuple[str, float]]:
    """(node, mean relative error of its product) for ``nodes``, most sensitive first."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(prepared))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    taps = {}  # node -> (input tensor, weight array)
    for name in nodes:
        node = by_name[name]
        a, b = node.input[0], node.input[1]
        if node.op_type != "MatMul" or b not in weights or a in weights:
            continue  # Gemm and weight-first matmuls do not occur in the exported BERTs
        taps[name] = (a, numpy_helper.to_array(weights[b]).astype(np.float32))
    present = {o.name for o in graph.output}
    for tensor in {a for a, _ in taps.values()} - present:
        tap = onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        graph.output.append(tap)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = [dict(zip(names, sess.run(None, feed), strict=True)) for feed in feeds]
    errors = []
    for name, (tensor, w) in taps.items():
        xs = [run[tensor] for run in runs]
        wq = quantize_weight(w)
        lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
        err = []
        for x in xs:
            if method == "dynamic":
                lo, hi = float(x.min()), float(x.max())
            ref = x @ w
            got = quantize_input(x, lo, hi) @ wq
            err.append(np.linalg.norm(got - ref) / max(float(np.linalg.norm(ref)), 1e-12))
        errors.append((name, float(np.mean(err))))
    errors.sort(key=lambda e: -e[1])
    return errors
