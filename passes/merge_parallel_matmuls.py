"""Parallel projections of one input become one MatMul and a Split.

    MatMul(x, Wq) + bq, MatMul(x, Wk) + bk, MatMul(x, Wv) + bv
        => Split(MatMul(x, [Wq | Wk | Wv]) + [bq | bk | bv], axis=-1, [Nq, Nk, Nv])

Attention's Q/K/V projections and a gated MLP's gate/up projections read the
same activation with different constant weights; one wider MatMul does the
same work in one kernel (what onnxsim does on dynamo exports). Each output
column is the same dot product as before, so the result is the same up to the
summation order a GEMM picks for a wider matrix (a reassociation: -O2).

Grouped: the MatMuls that read ``x`` as their first input with a 2-D constant
weight of the same dtype and the same inner size; those whose only reader is
an ``Add`` of a constant 1-D bias ``[N]`` merge with their biases, the others
without (two groups). Refused, with the reason in the report: a weight that
other nodes read too ("weight is shared: merging would copy it").

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (2, 4))
>>> q = b.output(b.op("MatMul", x, np.ones((4, 3), np.float32)), "q")
>>> k = b.output(b.op("MatMul", x, np.ones((4, 5), np.float32)), "k")
>>> _ = run_passes(b.graph, ["merge_parallel_matmuls"])
>>> [n.op_type for n in b.graph]
['MatMul', 'Split']
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.registry import node_opset
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from

RULE = "parallel_matmuls_to_matmul_split"
FLOATS = ("float16", "bfloat16", "float32", "float64")


def _bias(mm: Node) -> Value | None:
    """The constant 1-D bias ``[N]`` of the Add that is ``mm``'s only reader, else None."""
    out = mm.output
    if out.is_graph_output or out.num_uses != 1:
        return None
    add = out.users[0]
    if add.op_type != "Add" or add.domain != "" or add.graph is not mm.graph:
        return None
    other = add.input(1) if add.input(0) is out else add.input(0)
    w = mm.input(1).const
    if other is None or other.const is None or other.const.shape != (w.shape[1],) or other.dtype != out.dtype:
        return None
    if add.output.shape is None or out.shape is None or tuple(add.output.shape) != tuple(out.shape):
        return None
    return other


def _candidates(x: Value, refused: Counter) -> dict:
    """(dtype, K, has bias) -> [MatMul] for the MatMuls reading ``x`` with a constant 2-D weight."""
    groups: dict = defaultdict(list)
    for node in x.users:
        if node.op_type != "MatMul" or node.domain != "" or node.input(0) is not x or node.graph is not x.graph:
            continue
        w = node.input(1)
        if w is None or w.const is None or w.const.ndim != 2 or x.dtype not in FLOATS or w.dtype != x.dtype:
            continue
        if node.output.shape is None:
            continue
        if w.num_uses != 1 or w.is_graph_output:
            refused[(RULE, "weight is shared: merging would copy it")] += 1
            continue
        groups[(w.dtype, w.const.shape[0], _bias(node) is not None)].append(node)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _merge(graph: Graph, x: Value, mms: list[Node], with_bias: bool, position: dict) -> None:
    mms = sorted(mms, key=position.__getitem__)
    first = mms[0]
    widths = [int(m.input(1).const.shape[1]) for m in mms]
    weight = graph.add_initializer("merged_weight", np.concatenate([m.input(1).const for m in mms], axis=1))
    out_shape = tuple(first.output.shape[:-1]) + (sum(widths),)
    mm = graph.make_node("MatMul", [x, weight], output_types=[TensorType(x.dtype, out_shape)], name="merged_matmul",
                         before=first)
    y, outs = mm.output, [m.output for m in mms]
    if with_bias:
        biases = [_bias(m) for m in mms]
        bias = graph.add_initializer("merged_bias", np.concatenate([b.const for b in biases]))
        y = graph.make_node("Add", [y, bias], output_types=[y.type], name="merged_bias_add", before=first).output
        outs = [m.output.users[0].output for m in mms]
    split_attrs = {"axis": -1}
    split_inputs = [y]
    if node_opset(first) >= 13:
        split_inputs.append(graph.add_initializer("merged_split", np.asarray(widths, np.int64)))
    else:
        split_attrs["split"] = widths
    split = graph.make_node("Split", split_inputs, split_attrs, num_outputs=len(mms),
                            output_types=[o.type for o in outs], name="merged_split", before=first)
    for old, new in zip(outs, split.outputs):
        graph.replace_value(old, new, take_name=True)
    remove_dead_from(graph, [o.producer for o in outs] + list(mms))


@register_pass("merge_parallel_matmuls", opt_level=2, kind="graph", order=44)
def merge_parallel_matmuls(graph: Graph, ctx: PassContext) -> PassResult:
    """MatMul(x, W1) + b1, MatMul(x, W2) + b2, ... => Split(MatMul(x, [W1 | W2]) + [b1 | b2])."""
    stats: Counter = Counter()
    refused: Counter = Counter()
    position = {n: i for i, n in enumerate(graph)}
    inputs = {v for n in graph for v in n.inputs if v is not None and v.num_uses > 1}
    for x in sorted(inputs, key=lambda v: v.name):
        for (_, _, with_bias), mms in _candidates(x, refused).items():
            _merge(graph, x, mms, with_bias, position)
            stats[RULE] += 1
            stats["matmuls_merged"] += len(mms)
    return PassResult(bool(stats), dict(stats), refused)


__all__ = ["merge_parallel_matmuls"]
