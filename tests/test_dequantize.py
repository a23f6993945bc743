"""``dequantize_graph`` on a graph onnxruntime's own dynamic quantizer wrote.

An embedding Gather plus a bias (as BERT adds its embeddings) under a
two-layer MLP (MatMul, bias, ReLU, MatMul) is quantized with
``quantize_dynamic`` (per tensor and per channel), then dequantized: the
rewritten graph has no quantized node, its weights are the int8 values times
their scales (within half a quantization step of the float originals), and
its outputs equal a numpy forward pass with those weights, for any batch.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from textfleet.engine.errors import ModelDirError
from textfleet.models.dequantize import QUANTIZED_OPS, dequantize_graph

RNG = np.random.default_rng(0)
TABLE = RNG.normal(size=(50, 16)).astype(np.float32)
W1 = RNG.normal(size=(16, 32)).astype(np.float32)
B0 = RNG.normal(size=(16,)).astype(np.float32)
B1 = RNG.normal(size=(32,)).astype(np.float32)
W2 = RNG.normal(size=(32, 4)).astype(np.float32)


def float_model() -> onnx.ModelProto:
    inits = {"table": TABLE, "b0": B0, "w1": W1, "b1": B1, "w2": W2}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Add", ["emb", "b0"], ["x"]),
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.fixture(scope="module", params=[False, True], ids=["per-tensor", "per-channel"])
def quantized(request, tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = tmp_path_factory.mktemp("dequantize")
    onnx.save(float_model(), str(tmp / "float.onnx"))
    quantize_dynamic(
        tmp / "float.onnx", tmp / "int8.onnx", per_channel=request.param,
        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
    )  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(tmp / "int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "DequantizeLinear"} <= ops
    return tmp / "int8.onnx"


def forward(weights: dict, ids: np.ndarray) -> np.ndarray:
    h = np.maximum((weights["table"][ids] + B0) @ weights["w1"] + B1, 0)
    return h @ weights["w2"]


def test_the_rewritten_graph_is_float_and_computes_its_weights(quantized, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "float32.onnx"
    assert dequantize_graph(quantized, out) == 3
    graph = onnx.load(str(out)).graph
    assert not {n.op_type for n in graph.node} & QUANTIZED_OPS
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert {t.data_type for t in graph.initializer} == {TensorProto.FLOAT}
    for name, original in {"w1": W1, "w2": W2}.items():
        step = np.abs(original).max() / 127  # the per-tensor scale, the coarsest
        assert np.all(np.abs(weights[name] - original) <= step / 2 + 1e-6), name
    assert np.abs(weights["table"] - TABLE).max() <= np.ptp(TABLE) / 255  # uint8, per tensor
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = RNG.integers(0, 50, size=(5, 7))
    got = session.run(["out"], {"ids": ids})[0]
    np.testing.assert_allclose(got, forward(weights, ids), rtol=1e-5, atol=1e-5)
    # Row by row gives the same numbers as the whole batch: no batch-wide scale left.
    rows = np.concatenate([session.run(["out"], {"ids": ids[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(rows, got, rtol=0, atol=1e-5)


def test_a_graph_with_other_quantized_nodes_is_refused(tmp_path):
    model = float_model()
    scale = numpy_helper.from_array(np.float32(0.1), "s")
    model.graph.initializer.append(scale)
    model.graph.node.append(helper.make_node("QuantizeLinear", ["out", "s"], ["q"]))
    model.graph.output.append(helper.make_tensor_value_info("q", TensorProto.UINT8, None))
    onnx.save(model, str(tmp_path / "q.onnx"))
    with pytest.raises(ModelDirError, match="QuantizeLinear"):
        dequantize_graph(tmp_path / "q.onnx", tmp_path / "out.onnx")
