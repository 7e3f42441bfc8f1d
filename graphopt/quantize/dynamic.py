"""Dynamic int8 quantization of MatMul/Gemm-heavy models (no calibration).

``MatMul(A, W)`` with a constant float weight ``W`` (K, N) becomes::

    a_q, a_scale, a_zp = DynamicQuantizeLinear(A)        # uint8, range measured per run
    acc = MatMulInteger(a_q, W_q, a_zp, W_zp)            # int32; W_q int8 constant
    Y   = Mul(Cast(acc, float), a_scale * W_scale)       # W_scale per output column

``Gemm`` (transA=0) is handled the same way, ``alpha`` folded into the weight,
``beta * C`` added after. All standard ONNX (opset >= 10), so onnxruntime runs it.

>>> g8 = quantize_dynamic("bert.onnx")        # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph, Node, TensorType
from .qdq import weight_qparams


def _candidates(graph: Graph, op_types) -> list[tuple[Node, str]]:
    out = []
    for n in graph:
        if n.domain not in ("", "ai.onnx") or n.op_type not in op_types:
            continue
        a, w = n.input(0), n.input(1)
        if a is None or a.dtype != "float32" or w is None or w.const is None or w.const.ndim != 2:
            continue
        if w.const.dtype != np.float32:
            continue
        if n.op_type == "Gemm" and n.attr("transA", 0):
            continue
        if n.op_type == "Gemm" and n.input(2) is not None and n.input(2).const is None:
            continue
        out.append((n, n.op_type))
    return out


def quantize_dynamic(model: Any, *, op_types: tuple[str, ...] = ("MatMul", "Gemm"), per_channel: bool = True,
                     reduce_range: bool = False, exclude=()) -> Graph:
    """Return a copy of ``model`` with its MatMul/Gemm layers quantized dynamically.

    ``graph.meta["quantization_report"]`` lists the rewritten nodes.
    """
    from ..api import load

    graph = load(model).clone()
    opset = graph.opset_imports.get("", 17)
    if opset < 13:
        per_channel = False
    done = []
    shared_q: dict = {}  # one DynamicQuantizeLinear per activation, shared by its MatMuls
    for n, op in _candidates(graph, op_types):
        if n.name in set(exclude):
            continue
        a, w = n.input(0), n.input(1)
        wf = w.const.astype(np.float32)
        if op == "Gemm":
            if n.attr("transB", 0):
                wf = wf.T
            wf = wf * np.float32(n.attr("alpha", 1.0))
        w_scale, wq = weight_qparams(np.ascontiguousarray(wf), 1 if per_channel else None, reduce_range=reduce_range)
        if a not in shared_q:
            anchor = {"after": a.producer} if a.producer is not None else {"before": next(iter(graph))}
            dq = graph.make_node("DynamicQuantizeLinear", [a], num_outputs=3,
                                 output_names=[f"{a.name}_quantized", f"{a.name}_scale", f"{a.name}_zero_point"],
                                 output_types=[TensorType("uint8", a.shape), TensorType("float32", ()),
                                               TensorType("uint8", ())], **anchor)
            shared_q[a] = dq
        dq = shared_q[a]
        wqv = graph.add_initializer(f"{w.name}_quantized", wq)
        wzv = graph.add_initializer(f"{w.name}_zero_point", np.zeros(w_scale.shape, np.int8))
        wsv = graph.add_initializer(f"{w.name}_scale", w_scale)
        y = n.output
        out_shape = y.shape
        mm = graph.make_node("MatMulInteger", [dq.outputs[0], wqv, dq.outputs[2], wzv],
                             output_names=[f"{y.name}_int32"], output_types=[TensorType("int32", out_shape)],
                             before=n)
        cast = graph.make_node("Cast", [mm.output], {"to": 1}, output_names=[f"{y.name}_acc"],
                               output_types=[TensorType("float32", out_shape)], before=n)
        sc = graph.make_node("Mul", [dq.outputs[1], wsv], output_names=[f"{y.name}_rescale"],
                             output_types=[TensorType("float32", w_scale.shape)], before=n)
        res = graph.make_node("Mul", [cast.output, sc.output], output_names=[f"{y.name}_dequantized"],
                              output_types=[TensorType("float32", out_shape)], before=n)
        last = res.output
        if op == "Gemm" and n.input(2) is not None:
            c = n.input(2).const.astype(np.float32) * np.float32(n.attr("beta", 1.0))
            cv = graph.add_initializer(f"{n.input(2).name}_bias", c)
            add = graph.make_node("Add", [last, cv], output_names=[f"{y.name}_biased"],
                                  output_types=[TensorType("float32", out_shape)], before=n)
            last = add.output
        y.replace_all_uses_with(last)
        # keep the output's name: graph outputs and downstream readers see no change
        old_name = y.name
        consts = [v for v in n.inputs[1:] if v is not None and v.const is not None]
        graph.remove(n)
        _rename(graph, last, old_name)
        for v in consts:
            if not v.num_uses and not v.is_graph_output and v.name in graph.initializers:
                graph.remove_initializer(v)
        done.append({"layer": n.name, "op": op})
    graph.meta["quantization_report"] = {"mode": "dynamic", "quantized": done}
    return graph


def _rename(graph: Graph, v, name: str) -> None:
    names = graph._all_names()
    names.discard(v.name)
    v.name = name
    names.add(name)
