"""Turn a dynamically quantized ONNX graph back into a float32 one.

onnxruntime's dynamic quantization (``quantize_dynamic``) stores weights as
int8 and quantizes activations on the fly, before every MatMul, with one scale
and zero point for the whole activation tensor. That scale is computed over
the whole batch, padding included, so a row's output depends on the other rows
it is batched with. A served model batches requests together, so that would
make one caller's result depend on other callers' traffic.

``dequantize_graph`` rewrites the two patterns that quantizer writes:

- MatMul: ``DynamicQuantizeLinear(x)`` -> ``MatMulInteger(xq, Wq, xzp, wzp)``
  -> ``Cast`` to float -> ``Mul`` by (x scale * w scale) becomes
  ``MatMul(x, W)`` with ``W = (Wq - wzp) * w_scale`` stored as float32;
- Gather: ``Gather(table_q, ids)`` -> ``DequantizeLinear`` becomes
  ``Gather(table, ids)`` on the dequantized table (the same numbers: an
  elementwise dequantization commutes with a gather).

The weights keep their int8 values (dequantized exactly), so the float graph
computes what the int8 graph approximates, without the activation rounding;
its outputs no longer depend on the batch. Nodes and initializers left without
consumers are dropped. A node of any other quantized kind is refused.
"""

from __future__ import annotations

from pathlib import Path

from textfleet.engine.errors import ModelDirError

QUANTIZED_OPS = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "DequantizeLinear",
    "QuantizeLinear",
    "QLinearMatMul",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QGemm",
}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ModelDirError(
            "dequantizing a graph needs the onnx package; install it with `pip install onnx` "
            "(part of textfleet[torch])"
        ) from None
    return onnx


def dequantize_graph(src: Path, dst: Path) -> int:
    """Write ``src``'s graph with its int8 MatMuls and Gathers in float32 to ``dst``.

    Returns the number of rewritten nodes. Raises ModelDirError on a quantized
    node this module does not know how to rewrite.
    """
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def weight(name: str):
        if name not in inits:
            raise ModelDirError(f"{src}: {name} is not a stored weight")
        return numpy_helper.to_array(inits[name])

    def only_consumer(name: str, op: str):
        found = consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            raise ModelDirError(f"{src}: {name} feeds {[n.op_type for n in found]}, expected {op}")
        return found[0]

    def dequantized(q: str, scale: str, zero: str):
        """float32 (q - zero) * scale; a scale or zero point of shape [n] is per column
        (the last axis of a MatMul's [k, n] weight, as the quantizer writes it)."""
        import numpy as np

        values = weight(q).astype(np.float32) - weight(zero).astype(np.float32)
        return values * weight(scale).astype(np.float32)

    new_inits = []
    replace: dict[int, object] = {}  # id(node) -> its replacement (None: removed)
    rewritten = 0
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            xq, wq, _, wzp = node.input
            quant = producer.get(xq)
            if quant is None or quant.op_type != "DynamicQuantizeLinear" or wzp not in inits:
                raise ModelDirError(f"{src}: MatMulInteger {node.name} is not x(dynamic) * W(int8)")
            cast = only_consumer(node.output[0], "Cast")
            mul = only_consumer(cast.output[0], "Mul")
            scale_mul = producer[next(i for i in mul.input if i != cast.output[0])]
            w_scale = next(i for i in scale_mul.input if i in inits)
            float_w = _float_name(wq)
            new_inits.append(numpy_helper.from_array(dequantized(wq, w_scale, wzp), float_w))
            matmul = onnx.helper.make_node(
                "MatMul", [quant.input[0], float_w], [mul.output[0]], name=_renamed(node.name)
            )
            replace[id(node)] = None
            replace[id(cast)] = None
            replace[id(mul)] = matmul
            rewritten += 1
        elif node.op_type == "DequantizeLinear":
            gather = producer.get(node.input[0])
            if gather is None or gather.op_type != "Gather" or gather.input[0] not in inits:
                raise ModelDirError(f"{src}: DequantizeLinear {node.name} is not after a Gather")
            if weight(node.input[1]).ndim or weight(node.input[2]).ndim:
                raise ModelDirError(f"{src}: DequantizeLinear {node.name} is not per tensor")
            table = gather.input[0]
            float_t = _float_name(table)
            deq = dequantized(table, node.input[1], node.input[2])
            new_inits.append(numpy_helper.from_array(deq, float_t))
            regather = onnx.helper.make_node(
                "Gather", [float_t, gather.input[1]], [node.output[0]], name=_renamed(gather.name),
                **{a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute},
            )  # fmt: skip
            replace[id(gather)] = None
            replace[id(node)] = regather
            rewritten += 1
    nodes = [replace.get(id(n), n) for n in graph.node]
    nodes = _live([n for n in nodes if n is not None], graph.output)
    left = sorted({n.op_type for n in nodes} & QUANTIZED_OPS)
    if left:
        raise ModelDirError(f"{src}: quantized nodes this rewrite does not handle: {left}")
    used = {name for n in nodes for name in n.input}
    kept_inits = [t for t in [*graph.initializer, *new_inits] if t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_names = {t.name for t in kept_inits} | {o for n in nodes for o in n.output}
    value_info = [v for v in graph.value_info if v.name in kept_names]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return rewritten


def _renamed(name: str) -> str:
    """A replacement node's name: unnamed stays unnamed (names must be unique, "" may repeat)."""
    return name and name + "_float"


def _float_name(quantized: str) -> str:
    """The float weight's name: the one the quantizer started from (``X`` for ``X_quantized``)."""
    name = quantized.removesuffix("_quantized")
    return name if name != quantized else quantized + "_float"


def _live(nodes: list, outputs) -> list:
    """The nodes the graph's outputs depend on, in their order."""
    by_output = {out: node for node in nodes for out in node.output}
    needed = {o.name for o in outputs}
    live = set()
    stack = list(needed)
    while stack:
        node = by_output.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(node.input)
    return [n for n in nodes if id(n) in live]
