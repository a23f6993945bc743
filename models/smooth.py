"""Activation smoothing before int8 (SmoothQuant): an exact fp32 rewrite.

Dynamic int8 quantizes each matmul's input with one uint8 scale per tensor. A
BERT's LayerNorm outputs carry a few channels tens of times larger than the
rest (and the GELU output feeding FFN-down is lopsided too), so that one scale
is set by those few channels and the others keep only a handful of levels.

Per input channel j of a matmul's input X, with weight W ([in, out]):
``X @ W == (X / s) @ (diag(s) @ W)``. With
``s_j = max|X_j| ** alpha / max|W_j,:| ** (1 - alpha)`` (max over calibration
texts for X, over every matmul reading X for W) the outlier channels shrink and
the weight rows that meet them grow, moving part of the range from the
activation, quantized per tensor, to the weight, quantized per output channel.

The division by s is a Mul node inserted once per input tensor (the three
attention projections share one), which every weight-reading matmul of that
tensor then reads; the tensor's other readers (the residual additions) still
read the original. The graph answers as before up to fp32 rounding.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

DEFAULT_ALPHA = 0.5
# s is kept within this factor of 1 either way: a channel never seen active in
# calibration (max |X_j| ~ 0) must not get a huge weight row.
MAX_SCALE = 1e3
# Only LayerNorm outputs are smoothed (the attention projections and FFN-up read them).
# Measured on MiniLM: smoothing the GELU output (FFN-down's input) doubles that matmul's
# error, since its range is lopsided (about -0.17 to +20) and a per-tensor uint8 scale
# spans min to max: dividing the quiet channels by s < 1 widens their negative side.
SMOOTHED = {"LayerNormalization", "SkipLayerNormalization"}


def check_alpha(alpha: float | None) -> float | None:
    if alpha is not None and not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"smooth must be an alpha between 0 and 1 (exclusive), got {alpha!r}")
    return None if alpha is None else float(alpha)


def weighted_inputs(graph) -> dict[str, list]:
    """Input tensor -> the MatMul nodes reading it with a 2-D constant weight second."""
    weights = {t.name: t for t in graph.initializer}
    readers = defaultdict(list)
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        a, b = node.input
        if b in weights and a not in weights and len(weights[b].dims) == 2:
            readers[a].append(node)
    return dict(readers)


def channel_ranges(model, tensors: list[str], feeds: list[dict], threads: int | None) -> dict:
    """max |X_j| per channel (last axis) of each tensor over the calibration feeds."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for tensor in tensors:
        if tensor not in present:
            info = onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
            model.graph.output.append(info)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        outs = sess.run(tensors, feed)
        for tensor, x in zip(tensors, outs, strict=True):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            ranges[tensor] = m if tensor not in ranges else np.maximum(ranges[tensor], m)
    return ranges


def smoothing_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    x_max = np.maximum(x_max.astype(np.float64), 1e-5)
    w_max = np.maximum(w_max.astype(np.float64), 1e-5)
    s = x_max**alpha / w_max ** (1.0 - alpha)
    return np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE)


def smooth_onnx(
    path: Path, feeds: list[dict], alpha: float = DEFAULT_ALPHA, threads: int | None = None
) -> int:
    """Rewrite the fp32 graph at ``path`` in place; return how many input tensors were
    smoothed. ``feeds``: calibration inputs, each text alone (textfleet.models.quantize.Feeds)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    readers = {
        t: nodes for t, nodes in weighted_inputs(graph).items() if producers.get(t) in SMOOTHED
    }
    ranges = channel_ranges(model, list(readers), feeds, threads)
    weights = {t.name: t for t in graph.initializer}
    new_nodes: dict[str, onnx.NodeProto] = {}  # inserted after the producer of its input
    for tensor, nodes in readers.items():
        ws = [numpy_helper.to_array(weights[n.input[1]]).astype(np.float32) for n in nodes]
        if any(w.shape[0] != ranges[tensor].shape[0] for w in ws):
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        s = smoothing_scales(ranges[tensor], w_max, alpha)
        for node, w in zip(nodes, ws, strict=True):
            scaled = (w.astype(np.float64) * s[:, None]).astype(np.float32)
            name = f"{node.input[1]}_smoothed"
            graph.initializer.append(numpy_helper.from_array(scaled, name))
            node.input[1] = name
        inv_name, out_name = f"{tensor}_smooth_inv", f"{tensor}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        new_nodes[tensor] = onnx.helper.make_node(
            "Mul", [tensor, inv_name], [out_name], name=f"{tensor}_smooth"
        )
        for node in nodes:
            node.input[0] = out_name
    # Drop the weights no node reads any more; insert each Mul right after its input's
    # producer (graph inputs: at the front), keeping the node list topologically sorted.
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used or t.name.endswith("_smooth_inv")]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    ordered = [new_nodes[t] for t in new_nodes if t in {i.name for i in graph.input}]
    for node in graph.node:
        ordered.append(node)
        ordered += [new_nodes[o] for o in node.output if o in new_nodes]
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(path))
    return len(new_nodes)
