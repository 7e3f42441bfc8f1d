"""BatchNormalization(x, scale, B, mean, var) => Add(Mul(x, inv), shift)   [inv, shift per channel]

A lowering pass: the BatchNormalization that ``fold_batchnorm`` could not fold (it follows no
Conv/Gemm of its own, as the pre-activation BN of DenseNet, or the Conv has other readers)
becomes a Mul and an Add with per-channel constants, ``inv = scale / sqrt(var + eps)`` and
``shift = B - mean * inv`` (in the input's float type, float32 for float16, as the CPU kernel
computes them), shaped ``[C, 1, ...]`` to broadcast over the spatial axes. ``fuse_elementwise``
then takes them into the elementwise group around them: DenseNet's BN -> Mul -> Add -> Relu is
one pass over memory instead of a BatchNormalization pass and a fused pass (16 ms of its 79 on
the CPU backend were these two).

A graph pass would not do this: in an exported ONNX file one BatchNormalization node is one pass
in every runtime, two nodes are two (``fold_batchnorm`` says so too). Only a backend that fuses
elementwise groups asks for it (the CPU backend's lowering pipeline).

Refused: training mode (or statistics outputs read), parameters that are not constants,
``spatial=0``, non-float inputs, inputs of rank below 2.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (1, 3, 4, 4)); c = np.ones(3, np.float32)
>>> _ = b.output(b.op("Relu", b.op("BatchNormalization", x, c, c, c, c)), "y")
>>> _ = run_passes(b.graph, ["lower_batchnorm"], level=2)
>>> [n.op_type for n in b.graph]
['Mul', 'Add', 'Relu']
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.ir import Graph, Node
from graphopt.passmanager import PassContext, PassResult, register_pass

_FLOATS = ("float16", "float32", "float64")


def batchnorm_affine(n: Node) -> tuple[np.ndarray, np.ndarray] | str:
    """``(inv, shift)`` per channel of an inference-mode BatchNormalization with constant
    parameters (``x * inv + shift`` computes it), in the float type its kernel uses (float64 for
    float64 inputs, else float32); or the reason it is not one."""
    x = n.input(0)
    consts = [n.input(i).const if n.input(i) is not None else None for i in range(1, 5)]
    if len(n.outputs) != 1 or n.attrs.get("training_mode", 0):
        return "training mode (statistics outputs)"
    if any(c is None for c in consts):
        return "parameters not constant"
    if not n.attrs.get("spatial", 1):
        return "spatial=0"
    if x.dtype not in _FLOATS:
        return f"input is {x.dtype}"
    scale, b, mean, var = consts
    sd = np.float64 if x.dtype == "float64" else np.float32  # as the BatchNormalization kernel
    inv = scale.astype(sd) / np.sqrt(var.astype(sd) + sd(n.attrs.get("epsilon", 1e-5)))
    return inv, b.astype(sd) - mean.astype(sd) * inv


@register_pass("lower_batchnorm", opt_level=2, kind="lowering")
def lower_batchnorm(graph: Graph, ctx: PassContext) -> PassResult:
    stats = {"lowered": 0}
    refused: Counter = Counter()
    for n in [n for n in graph if n.op_type == "BatchNormalization" and not n.domain]:
        x = n.input(0)
        shape = x.type.shape if x.type is not None else None
        got = batchnorm_affine(n) if shape is not None and len(shape) >= 2 else "input rank unknown or below 2"
        if isinstance(got, str):
            refused[("batchnorm_to_mul_add", f"BatchNormalization {n.name!r}: {got}")] += 1
            continue
        inv, shift = got
        dt = np.dtype(x.dtype)
        tail = (1,) * (len(shape) - 2)
        mul = graph.make_node("Mul", [x, graph.add_initializer(f"{n.name}_inv", inv.astype(dt).reshape((-1,) + tail))],
                              output_types=[x.type], before=n)
        add = graph.make_node("Add", [mul.output, graph.add_initializer(f"{n.name}_shift",
                                                                        shift.astype(dt).reshape((-1,) + tail))],
                              output_types=[n.output.type], before=n)
        n.output.replace_all_uses_with(add.output)
        graph.remove(n)
        stats["lowered"] += 1
    return PassResult(stats["lowered"] > 0, stats, refused)
