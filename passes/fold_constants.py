"""Constant folding.

    Add(c1, c2)           => c3 = c1 + c2          (an initializer)
    Constant[value=t]     => t                     (an initializer)
    Shape(x: f32[2, 3])   => [2, 3]                (static shapes, Shape's start/end honoured)
    Size(x: f32[2, 3])    => 6

A node folds when every input is a constant, its op is deterministic, has a
reference kernel and no subgraph: the registry kernel evaluates it and its
outputs become initializers that keep the outputs' names (graph outputs stay
named as they were). Nodes are visited once, in topological order, so a chain
of constant nodes folds in one sweep.

Folding never blows a model up: an output bigger than ``ctx.fold_size_limit``
elements *and* bigger than the node's inputs together (``ConstantOfShape`` of
a 100M-element shape, ``Expand``, ``Tile``) stays a node, with a refusal
reason in the report. The option ``fold_limit`` (bytes; ``graphopt optimize
--fold-limit BYTES``, ``graphopt.optimize(g, fold_limit=...)``) sets the cap in
bytes instead, as onnxsim's size threshold does: ``--fold-limit 0`` folds only
what does not grow the model. A kernel result whose dtype or shape disagrees with the
IR type is refused too rather than written. ``DequantizeLinear`` of a constant
is never folded: it is how a QDQ model says "this weight is int8".
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node
from graphopt.ops.registry import KernelContext, get_schema, infer_node, node_opset
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import drop_node, has_subgraph, is_dead, is_deterministic, replace_with_constant

RULE = "fold_constants"


def _shape_fold(node: Node) -> list[np.ndarray] | None:
    """Shape/Size of a value whose (sliced) shape is static, else None."""
    x = node.input(0)
    if x is None or x.type is None or x.type.shape is None:
        return None
    shape = x.type.shape
    if node.op_type == "Size":
        return [np.array(x.type.numel(), np.int64)] if x.type.is_static else None
    rank = len(shape)
    start = node.attrs.get("start", 0) or 0
    end = node.attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    dims = shape[start:max(start, end)]
    if not all(isinstance(d, int) for d in dims):
        return None
    return [np.array(dims, np.int64)]


def _numel(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _nbytes(shape, dtype: str | None) -> int | None:
    n = _numel(shape)
    if n is None or dtype is None:
        return None
    try:
        return n * dtypes.to_numpy(dtype).itemsize
    except Exception:
        return None


class _Folder:
    def __init__(self, ctx: PassContext):
        self.limit = ctx.fold_size_limit
        self.limit_bytes = ctx.options.get("fold_limit")
        self.stats: Counter = Counter()
        self.refused: Counter = Counter()

    def too_big(self, node: Node, outs: list[tuple[int, int]], ins: list[tuple[int, int]]) -> bool:
        """Refuse (and say so) an output over the limit and bigger than the inputs:
        ``outs``/``ins`` are (elements, bytes) pairs."""
        unit, k = ("bytes", 1) if self.limit_bytes is not None else ("elements", 0)
        limit = self.limit_bytes if self.limit_bytes is not None else self.limit
        total_out, total_in = sum(o[k] for o in outs), sum(i[k] for i in ins)
        if total_out > limit and total_out > total_in:
            option = "fold_limit" if self.limit_bytes is not None else "fold_size_limit"
            self.refuse(f"{node.qualified_op} output of {total_out} {unit} exceeds {option}={limit} and its inputs")
            return True
        return False

    def refuse(self, reason: str) -> None:
        self.refused[(RULE, reason)] += 1

    def fold_graph(self, g: Graph) -> None:
        for node in list(g):
            if node.graph is not g:
                continue
            if has_subgraph(node):
                for sg in node.subgraphs():
                    self.fold_graph(sg)
                continue
            if all(is_dead(v) for v in node.outputs):
                continue  # dead code elimination's business
            arrays = self.evaluate(node)
            if arrays is not None:
                self.replace(g, node, arrays)

    def evaluate(self, node: Node) -> list[np.ndarray] | None:
        std = node.domain in ("", "ai.onnx")
        inputs = [v for v in node.inputs if v is not None]
        if std and node.op_type in ("Shape", "Size") and inputs and inputs[0].const is None:
            out = _shape_fold(node)
            if out is not None:
                self.stats["shapes_folded"] += 1
            return out
        if any(v.const is None for v in inputs):
            return None
        if std and node.op_type == "DequantizeLinear":
            # an int8 weight read through DequantizeLinear is the QDQ pattern that int8 lowerings
            # (lower_qdq_int8, onnxruntime's QDQ fusion) turn into int8 kernels; folded, it is a
            # float weight four times the size and the layer runs in float
            self.refuse("DequantizeLinear of a constant kept: it marks an int8 weight")
            return None
        if not is_deterministic(node):
            self.refuse(f"{node.op_type} is not deterministic")
            return None
        schema = get_schema(node.op_type, node.domain)
        if schema is None or schema.kernel is None:
            self.refuse(f"no reference kernel for {node.qualified_op}")
            return None
        is_constant = std and node.op_type == "Constant"
        if not is_constant and not self.small_enough(node, inputs):
            return None
        try:
            outs = schema.kernel([None if v is None else v.const for v in node.inputs],
                                 schema.resolve_attrs(node.attrs), KernelContext(node=node, opset=node_opset(node)))
        except Exception as exc:  # a kernel that refuses (Dropout in training mode...) leaves the node
            self.refuse(f"{node.qualified_op} kernel failed: {type(exc).__name__}")
            return None
        outs = [np.asarray(a) for a in outs[:len(node.outputs)]]
        if len(outs) < len(node.outputs):
            self.refuse(f"{node.qualified_op} kernel returned {len(outs)} of {len(node.outputs)} outputs")
            return None
        if not is_constant and self.too_big(node, [(a.size, a.nbytes) for a in outs],
                                            [(v.const.size, v.const.nbytes) for v in inputs]):
            return None
        for v, a in zip(node.outputs, outs):
            why = self.type_mismatch(v.type, a)
            if why:
                self.refuse(f"{node.qualified_op} kernel result disagrees with the IR type: {why}")
                return None
        self.stats["constant_nodes" if is_constant else "nodes_folded"] += 1
        return outs

    def small_enough(self, node: Node, inputs) -> bool:
        """Decide from the inferred output types (inputs are constants now, so they are
        usually static) before running a kernel that might allocate a huge tensor."""
        if any(v.type is None or not v.type.is_static for v in node.outputs):
            infer_node(node)
        sizes = [(_numel(v.shape), _nbytes(v.shape, v.dtype)) for v in node.outputs]
        if any(n is None or b is None for n, b in sizes):
            return True  # checked again after evaluation
        return not self.too_big(node, sizes, [(int(v.const.size), int(v.const.nbytes)) for v in inputs])

    @staticmethod
    def type_mismatch(t, a: np.ndarray) -> str | None:
        if t is None:
            return None
        have = dtypes.from_numpy(a.dtype)
        if t.dtype and have != t.dtype:
            return f"dtype {have}, expected {t.dtype}"
        if t.shape is not None and (len(t.shape) != a.ndim or any(isinstance(d, int) and d != n
                                                                   for d, n in zip(t.shape, a.shape))):
            return f"shape {list(a.shape)}, expected {t}"
        return None

    def replace(self, g: Graph, node: Node, arrays: list[np.ndarray]) -> None:
        for v, a in zip(node.outputs, arrays):
            if not is_dead(v):
                replace_with_constant(g, v, a)
        ins = [v for v in node.inputs if v is not None]
        drop_node(g, node)
        for v in ins:  # constants only this node read would otherwise sit in the model until DCE
            if v.const is not None and is_dead(v) and g.initializers.get(v.name) is v:
                g.remove_initializer(v)


@register_pass("fold_constants", opt_level=1, kind="graph", order=10, options=("fold_limit",))
def fold_constants(graph: Graph, ctx: PassContext) -> PassResult:
    """Add(c1, c2) => c3; Constant => initializer; Shape/Size of static shapes => constants."""
    f = _Folder(ctx)
    f.fold_graph(graph)
    return PassResult(bool(f.stats), dict(f.stats), f.refused)
