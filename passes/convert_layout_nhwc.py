"""Conv(x, w) => Transpose(FusedConv[layout="NHWC"](Transpose(x, NHWC), w^(O,kH,kW,I)), NCHW), transposes cancelled

Convolution networks run channels-last: every 2-D Conv (or NCHW ``FusedConv``)
with a constant weight becomes ``ai.graphopt::FusedConv`` with ``layout="NHWC"``
and its weight pre-transposed to ``[O, kH, kW, I/group]``. The layout then
follows the data through the ops that do not care where the channels are:

* elementwise ops (``FusedElementwise`` too): operands of the same rank are
  read channels-last, constants are permuted once, scalars stay;
* Concat (axis remapped), MaxPool / AveragePool / GlobalAveragePool /
  GlobalMaxPool (``ai.graphopt`` NHWC variants), BatchNormalization (a Mul and
  an Add with per-channel constants on the last axis), reductions with constant
  axes (remapped);
* a Transpose of a channels-last value composes with it (often to nothing);
* Flatten / Reshape read the channels-last tensor directly where its memory
  order is the same: ``[N, 1, 1, C]`` flattens like ``[N, C, 1, 1]``, so a
  GlobalAveragePool + Flatten + Gemm classifier needs no transpose at all.

Any other reader, and every graph output, gets the NCHW value back through one
Transpose per value (shared by all its readers), so Transposes are left only at
the edges of the channels-last region; ``stats["transposes_remaining"]`` counts
the Transposes in the graph afterwards. A plain CNN keeps one at its input and
at most one at its output. Each value's layout is a permutation ``p`` with
``stored = logical.transpose(p)``, so any composition of layouts cancels
exactly. Layout is a ``-O3`` change: below that level the pass does nothing.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (1, 3, 8, 8))
>>> y = b.op("Relu", b.op("Conv", x, np.ones((4, 3, 3, 3), np.float32)))
>>> _ = b.output(b.op("GlobalAveragePool", y), "y")
>>> r = run_passes(b.graph, ["convert_layout_nhwc"], level=3)
>>> [n.op_type for n in b.graph]
['Transpose', 'FusedConv', 'Relu', 'GlobalAveragePool', 'Transpose']
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.fused import FUSED_DOMAIN, channels_last_perm
from graphopt.ops.registry import get_schema, normalize_axis
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from
from .fuse_conv_epilogue import backend_accepts
from .lower_batchnorm import batchnorm_affine

RULE = "convert_layout_nhwc"
NHWC = channels_last_perm(4)
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _ident(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _permuted(t: TensorType | None, perm) -> TensorType | None:
    if t is None or t.shape is None:
        return t
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


class _Layout:
    def __init__(self, graph: Graph, ctx: PassContext):
        self.graph = graph
        self.ctx = ctx
        self.stored: dict[Value, tuple[Value, tuple[int, ...]]] = {}  # logical -> (stored value, perm)
        self.cache: dict[tuple[Value, tuple[int, ...]], Value] = {}
        self.old: list[Node] = []
        self.stats: Counter = Counter()
        self.refused: Counter = Counter()

    # -- values in a layout ------------------------------------------------------------
    def layout(self, v: Value) -> tuple[Value, tuple[int, ...]]:
        return self.stored.get(v) or (v, _ident(_rank(v) or 0))

    def as_layout(self, v: Value, target: tuple[int, ...]) -> Value:
        """A value holding ``logical(v).transpose(target)``."""
        sv, cur = self.layout(v)
        return self.transposed(sv, tuple(cur.index(t) for t in target))

    def transposed(self, v: Value, q: tuple[int, ...]) -> Value:
        """``v.transpose(q)``: nothing, a permuted constant, a composed Transpose, or a new one."""
        if q == _ident(len(q)):
            return v
        key = (v, q)
        if key in self.cache:
            return self.cache[key]
        g = self.graph
        p = v.producer
        if v.const is not None:
            out = g.add_initializer(f"{v.name}_nhwc", np.ascontiguousarray(np.transpose(v.const, q)))
        elif p is not None and p.op_type == "Transpose" and p.domain == "" and p.graph is g:
            p0 = tuple(p.attrs.get("perm") or range(len(q) - 1, -1, -1))
            out = self.transposed(p.input(0), tuple(p0[i] for i in q))
        else:
            where = {"after": p} if p is not None and p.graph is g else {"before": next(iter(g))}
            out = g.make_node("Transpose", [v], {"perm": list(q)}, output_names=[f"{v.name}_t"],
                              output_types=[_permuted(v.type, q)], **where).output
            self.stats["transposes_inserted"] += 1
        self.cache[key] = out
        return out

    def const_in(self, v: Value, rank: int, perm: tuple[int, ...]) -> Value:
        """A constant broadcast against rank-``rank`` operands, in layout ``perm``."""
        c = v.const.reshape((1,) * (rank - v.const.ndim) + v.const.shape)
        if c.shape == v.const.shape:
            return self.transposed(v, perm)
        key = (v, ("padded",) + tuple(perm))
        if key not in self.cache:
            self.cache[key] = self.graph.add_initializer(f"{v.name}_nhwc", np.ascontiguousarray(np.transpose(c, perm)))
        return self.cache[key]

    # -- rewrites ------------------------------------------------------------------------
    def replace(self, old: Node, op_type: str, inputs, attrs: dict, perms, domain: str = "") -> Node:
        """A new node before ``old`` whose outputs hold ``old``'s outputs in layouts ``perms``."""
        new = self.graph.make_node(op_type, inputs, attrs, num_outputs=len(old.outputs),
                                   output_names=[o.name for o in old.outputs],
                                   output_types=[_permuted(o.type, p) for o, p in zip(old.outputs, perms)],
                                   domain=domain, before=old)
        for o, n, p in zip(old.outputs, new.outputs, perms):
            self.stored[o] = (n, tuple(p))
        self.old.append(old)
        return new

    def conv(self, n: Node) -> bool:
        x, w = n.input(0), n.input(1)
        if n.domain == FUSED_DOMAIN and n.attrs.get("layout", "NCHW") != "NCHW":
            return False
        if _rank(x) != 4 or _rank(n.output) != 4:
            self.refused[(RULE, "only 2-D convolutions change layout")] += 1
            return False
        if w is None or w.const is None or w.const.ndim != 4:
            self.refused[(RULE, "Conv weight is not a constant")] += 1
            return False
        extras = list(n.inputs[3:])
        if any(_rank(e) != 4 and e.const is None and not _all_ones(e) for e in extras):
            self.refused[(RULE, "an epilogue operand of lower rank is not a constant")] += 1
            return False
        xs = self.as_layout(x, NHWC)
        wv = self.graph.add_initializer(f"{w.name}_ohwi", np.ascontiguousarray(w.const.transpose(0, 2, 3, 1)))
        ex = [self.operand(e, 4, NHWC) for e in extras]
        attrs = {**n.attrs, "layout": "NHWC"}
        attrs.setdefault("epilogue", "")
        b = n.input(2)
        new = self.replace(n, "FusedConv", [xs, wv, b, *ex] if (b is not None or ex) else [xs, wv], attrs,
                           [NHWC], FUSED_DOMAIN)
        if not backend_accepts(self.ctx, new):
            self.undo(n, new)
            self.refused[(RULE, f"backend {self.ctx.backend!r} cannot run NHWC FusedConv")] += 1
            return False
        self.stats["convs_converted"] += 1
        return True

    def undo(self, old: Node, new: Node) -> None:
        for o in old.outputs:
            self.stored.pop(o, None)
        self.old.remove(old)
        self.graph.remove(new)

    def operand(self, v: Value | None, rank: int, perm) -> Value | None:
        """``v`` as an operand broadcast against rank-``rank`` values in layout ``perm``."""
        if v is None or _rank(v) == rank:
            return None if v is None else self.as_layout(v, perm)
        if v.const is not None:
            return self.const_in(v, rank, perm)
        return v  # all ones (checked by the caller): broadcasting does not care

    def follow(self, n: Node) -> bool:
        """Rewrite ``n`` to work on channels-last operands; False when it cannot."""
        ins = [v for v in n.inputs if v is not None]
        perm = next((self.stored[v][1] for v in ins if v in self.stored
                     and self.stored[v][1] != _ident(len(self.stored[v][1]))), None)
        schema = get_schema(n.op_type, n.domain)
        op = n.op_type if n.domain == "" else None
        if op == "Transpose":
            sv, cur = self.layout(n.input(0))
            p = tuple(n.attrs.get("perm") or range(len(cur) - 1, -1, -1))
            self.stored[n.output] = (sv, tuple(p.index(c) for c in cur))
            self.old.append(n)
            self.stats["transposes_cancelled"] += 1
            return True
        if op in ("Flatten", "Reshape"):
            return self.reinterpret(n)
        if perm is None:
            return False
        rank = len(perm)
        if schema is not None and schema.elementwise and (n.domain == "" or n.op_type == "FusedElementwise"):
            if any(_rank(o) != rank for o in n.outputs):
                return False
            if any(_rank(v) != rank and v.const is None and not _all_ones(v) for v in ins):
                return False
            self.replace(n, n.op_type, [self.operand(v, rank, perm) for v in n.inputs], dict(n.attrs),
                         [perm] * len(n.outputs), n.domain)
            return True
        if op == "Concat" and all(_rank(v) == rank for v in ins):
            axis = perm.index(normalize_axis(n.attrs.get("axis", 0), rank, n))
            self.replace(n, "Concat", [self.as_layout(v, perm) for v in ins], {**n.attrs, "axis": axis}, [perm])
            return True
        if op in POOLS and perm == NHWC and len(n.outputs) == 1:
            self.replace(n, n.op_type, [self.as_layout(n.input(0), NHWC)], {**n.attrs, "layout": "NHWC"}, [NHWC],
                         FUSED_DOMAIN)
            return True
        if op == "BatchNormalization":
            return self.batchnorm(n, perm)
        if op in REDUCE:
            return self.reduce(n, perm)
        return False

    def batchnorm(self, n: Node, perm) -> bool:
        x = n.input(0)
        got = batchnorm_affine(n)
        if isinstance(got, str):
            return False
        inv, shift = got
        tail = (1,) * (len(perm) - 1 - perm.index(1))
        dt = np.dtype(x.dtype)
        g = self.graph
        xs = self.as_layout(x, perm)
        mul = g.make_node("Mul", [xs, g.add_initializer(f"{n.name}_scale", inv.astype(dt).reshape((-1,) + tail))],
                          output_types=[xs.type], before=n)
        self.replace(n, "Add", [mul.output, g.add_initializer(f"{n.name}_shift", shift.astype(dt).reshape(
            (-1,) + tail))], {}, [perm])
        return True

    def reduce(self, n: Node, perm) -> bool:
        rank = len(perm)
        axes_in = n.input(1)
        if axes_in is not None and axes_in.const is None:
            return False
        axes = axes_in.const.tolist() if axes_in is not None else n.attrs.get("axes")
        if axes is None or len(axes) == 0:
            if n.attrs.get("noop_with_empty_axes", 0):
                return False
            axes = list(range(rank))
        logical = sorted({normalize_axis(int(a), rank, n) for a in axes})
        stored_axes = sorted(perm.index(a) for a in logical)
        inputs = [self.as_layout(n.input(0), perm)]
        attrs = dict(n.attrs)
        if axes_in is not None:
            inputs.append(self.graph.add_initializer(f"{n.name}_axes", np.array(stored_axes, np.int64)))
        else:
            attrs["axes"] = stored_axes
        if n.attrs.get("keepdims", 1):
            out_perm = perm
        else:
            rest = [p for p in perm if p not in logical]
            order = sorted(rest)
            out_perm = tuple(order.index(p) for p in rest)
        self.replace(n, n.op_type, inputs, attrs, [out_perm])
        return True

    def reinterpret(self, n: Node) -> bool:
        """Flatten/Reshape straight off the stored tensor when its memory order is the logical one."""
        x = n.input(0)
        if x not in self.stored:
            return False
        sv, cur = self.stored[x]
        shape = x.shape
        if shape is None or n.output.shape is None:
            return False
        moving = [a for a in cur if shape[a] != 1]
        if moving != sorted(moving):
            return False
        if n.op_type == "Flatten":
            axis = n.attrs.get("axis", 1)
            axis = axis + len(shape) if axis < 0 else axis
            stored_shape = sv.shape
            if [d for d in stored_shape[:axis] if d != 1] != [d for d in shape[:axis] if d != 1]:
                return False
        else:
            target = n.input(1).const if n.input(1) is not None else None
            if target is None or (0 in target.tolist() and not n.attrs.get("allowzero", 0)):
                return False
        n.set_input(0, sv)
        self.stats["transposes_avoided"] += 1
        return True

    def restore_inputs(self, n: Node) -> None:
        for i, v in enumerate(n.inputs):
            if v is not None and v in self.stored:
                n.set_input(i, self.as_layout(v, _ident(len(self.stored[v][1]))))

    def run(self) -> None:
        g = self.graph
        for n in list(g):
            is_conv = (n.op_type, n.domain) in (("Conv", ""), ("FusedConv", FUSED_DOMAIN))
            if is_conv and self.conv(n):
                continue
            if not any(v in self.stored for v in n.inputs if v is not None):
                continue
            if not self.follow(n):
                self.restore_inputs(n)
        for o in list(g.outputs):
            if o in self.stored:
                g.replace_value(o, self.as_layout(o, _ident(len(self.stored[o][1]))))
        remove_dead_from(g, list(self.old))


def _all_ones(v: Value) -> bool:
    return v.shape is not None and all(d == 1 for d in v.shape)


@register_pass("convert_layout_nhwc", opt_level=3, kind="lowering", order=30)
def convert_layout_nhwc(graph: Graph, ctx: PassContext) -> PassResult:
    """Conv(x, w) => FusedConv[layout="NHWC"](x^NHWC, w^OHWI), the layout followed until it stops mattering"""
    if ctx.level < 3:
        return PassResult(False, refused=Counter({(RULE, "layout changes need -O3"): 1}))
    lay = _Layout(graph, ctx)
    lay.run()
    stats = {k: v for k, v in lay.stats.items() if v}
    modified = bool(lay.stats["convs_converted"])
    if modified:  # (a run that changed nothing adds nothing to the report's sums)
        stats["transposes_remaining"] = sum(1 for n in graph if n.op_type == "Transpose" and n.domain == "")
    return PassResult(modified, stats, lay.refused)
