"""Relu(Add(Conv(x, w, b), r)) => ai.graphopt::FusedConv[epilogue="relu(add(acc, in1))"](x, w, b, r)

The pointwise work after a Conv, ConvTranspose, Gemm or MatMul runs in the
base op's epilogue, on the accumulator while it is still in registers, instead
of as separate passes over memory:

* a constant per-channel bias Add folds into the Conv's ``B`` (the Gemm's ``C``
  when it has none);
* activations: Relu, Clip (Relu6), Sigmoid, SiLU (``x * Sigmoid(x)``), HardSwish,
  Gelu (the op, or its erf/tanh decomposition when ``fuse_gelu`` has not run),
  Tanh, LeakyRelu, and any other op with an expression form;
* a residual Add of a tensor of the output's shape, and the elementwise chain
  that follows, become ``epilogue`` terms over ``acc`` and extra inputs.

The epilogue grows one step at a time from the current end value ``e``: the
step is the smallest set of pointwise nodes that takes every reader of ``e`` and
leaves exactly one value read outside it (SiLU's Sigmoid and Mul, a decomposed
Gelu's five ops). Every member computes one value per output element: its
result has the accumulator's shape, and the operands from outside broadcast
into that shape (else: "Add operand not broadcastable as bias/residual"). A
single exit whose other values are read only inside the step cannot close a
cycle.

Refusals are counted with their reason ("Conv output has 2 users", "Gemm output
is a graph output"). A base op that is already fused (``FusedConv``...) grows its
epilogue further, so the pass can run before or after ``convert_layout_nhwc``.
When the pass context names a backend, a fused op that backend cannot run is
not written.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (1, 2, 4, 4)); r = b.input("r", (1, 3, 4, 4))
>>> y = b.op("Relu", b.op("Add", b.op("Conv", x, np.ones((3, 2, 1, 1), np.float32)), r))
>>> _ = b.output(y, "y"); _ = run_passes(b.graph, ["fuse_conv_epilogue"])
>>> [(n.op_type, n.attrs["epilogue"]) for n in b.graph]
[('FusedConv', 'relu(add(acc, in1))')]
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.expr import Const, Expr, Input, dtype_of, format_expr, parse_expr, substitute
from graphopt.ir import Graph, Node, Value
from graphopt.ops.fused import FUSED_DOMAIN
from graphopt.ops.registry import infer_node
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from
from .fuse_elementwise import node_exprs

MAX_STEP = 12  # nodes in one epilogue step (a decomposed Gelu needs 5)

# base op -> (fused op, number of base inputs, index of the bias input or None)
BASES = {
    "Conv": ("FusedConv", 3, 2), "ConvTranspose": ("FusedConvTranspose", 3, 2),
    "Gemm": ("FusedGemm", 3, 2), "MatMul": ("FusedMatMul", 2, None),
}
FUSED_BASES = {fused: (op, n, b) for op, (fused, n, b) in BASES.items()}


def backend_accepts(ctx: PassContext, node: Node) -> bool:
    """Whether the backend the pass context names (if any) can run ``node``."""
    if not ctx.backend:
        return True
    from graphopt.plugin_loader import get_backend

    cache = ctx.options.setdefault("_backend_objects", {})
    if ctx.backend not in cache:
        cache[ctx.backend] = get_backend(ctx.backend)
    return bool(cache[ctx.backend].supports(node))


def _same_shape(a, b) -> bool:
    """Equal ranks and dims (an unknown dim matches an unknown one: operands are checked by ``_fits``)."""
    return a is not None and b is not None and len(a) == len(b) and all(x == y for x, y in zip(a, b))


def _fits(shape, into) -> bool:
    """``shape`` broadcasts into ``into`` without growing it (provably, unknown dims included)."""
    if shape is None or into is None or len(shape) > len(into):
        return False
    return all(d == 1 or (d is not None and d == t) for d, t in zip(reversed(shape), reversed(into)))


class _Epilogue:
    """A base op and the epilogue grown so far."""

    def __init__(self, node: Node, pos: dict[Node, int]):
        self.node = node
        self.pos = pos
        if node.domain == FUSED_DOMAIN:
            base, self.n_base, self.bias_at = FUSED_BASES[node.op_type]
            self.fused_op = node.op_type
            text = node.attrs.get("epilogue", "")
            self.expr: Expr = parse_expr(text) if text else Input(0)
        else:
            base = node.op_type
            self.fused_op, self.n_base, self.bias_at = BASES[base]
            self.expr = Input(0)
        self.base = base
        self.inputs = list(node.inputs[:self.n_base]) + [None] * (self.n_base - len(node.inputs[:self.n_base]))
        self.extras = list(node.inputs[self.n_base:])
        self.attrs = dict(node.attrs)
        self.acc_shape = node.output.shape
        self.end: Value = node.output  # the value the epilogue computes so far
        self.consumed: list[Node] = []

    def channel_axis(self) -> int | None:
        if self.base in ("Conv", "ConvTranspose"):
            return -1 if self.attrs.get("layout", "NCHW") == "NHWC" else 1
        return None

    def operand(self, v: Value) -> Expr:
        c = v.const
        if c is not None and c.size == 1 and c.dtype.kind in "biuf" and np.ndim(c) <= len(self.acc_shape):
            return Const(c.reshape(()).item(), v.dtype)
        if v not in self.extras:
            self.extras.append(v)
        return Input(1 + self.extras.index(v))

    # -- one step ----------------------------------------------------------------------
    def find_step(self) -> tuple[list[Node], Value] | str | None:
        """The nodes of the next step and their exit value; a reason; None at a natural end."""
        e = self.end
        if not e.users:
            return None
        if e.is_graph_output:
            return self._users_reason(f"{self.base} output is a graph output")
        step: list[Node] = []
        inside: set[Node] = set()
        while True:
            region = [e] + [o for t in step for o in t.outputs]
            esc = [v for v in region if v.is_graph_output or (v is not e and not v.users)
                   or any(u not in inside for u in v.users)]
            if step and len(esc) == 1 and esc[0] is not e:
                return step, esc[0]
            # the earliest escaping value is never the step's exit: expand it
            v = min(esc, key=lambda x: self.pos.get(x.producer, -1))
            if v.is_graph_output or not v.users:
                return self._users_reason(f"{self.base} output has {len(e.users)} users")
            for u in v.users:
                if u in inside:
                    continue
                if u.graph is not e.graph or node_exprs(u) is None or len(u.outputs) != 1:
                    return self._users_reason(f"{self.base} output has {len(e.users)} users") \
                        if len(e.users) > 1 else None
                if not _same_shape(u.output.shape, self.acc_shape):
                    return f"{u.op_type} operand not broadcastable as bias/residual"
                step.append(u)
                inside.add(u)
            if len(step) > MAX_STEP:
                return self._users_reason(f"{self.base} output has {len(e.users)} users")

    def _users_reason(self, why: str) -> str | None:
        """Report why the base op got no epilogue; a chain that already grew just ends."""
        return None if self.consumed or self.expr != Input(0) else why

    def try_fold_bias(self, step: list[Node]) -> bool:
        """A first step that is ``Add(acc, constant bias)`` folds into the bias input."""
        if len(step) != 1 or self.expr != Input(0) or self.bias_at is None or step[0].op_type != "Add":
            return False
        add = step[0]
        other = add.input(1) if add.input(0) is self.end else add.input(0)
        if other is None or other is self.end or other.const is None:
            return False
        c = np.asarray(other.const)
        g = self.node.graph
        if self.base == "Gemm":
            if self.inputs[2] is not None:
                return False
            self.inputs[2] = other
            self.attrs["beta"] = 1.0
            return True
        axis = self.channel_axis()
        shape = self.acc_shape
        if axis is None or c.ndim > len(shape) or not isinstance(shape[axis], int):
            return False
        chans = shape[axis]
        padded = (1,) * (len(shape) - c.ndim) + c.shape
        if any(d != 1 for i, d in enumerate(padded) if i != axis % len(shape)) or padded[axis] not in (1, chans):
            return False
        bias = np.broadcast_to(c.reshape(-1), (chans,)).astype(c.dtype)
        old = self.inputs[2]
        if old is not None:
            if old.const is None:
                return False
            bias = (old.const.astype(bias.dtype) + bias).astype(old.const.dtype)
        self.inputs[2] = g.add_initializer(f"{self.node.name}_bias", bias)
        return True

    def absorb(self, step: list[Node], exit_value: Value) -> str | None:
        """Compose the step into the epilogue; a reason when an operand does not fit."""
        env: dict[Value, Expr] = {self.end: self.expr}
        saved = list(self.extras)
        for u in sorted(step, key=lambda n: self.pos.get(n, len(self.pos))):
            for x in u.inputs:
                if x is not None and x not in env and x.producer not in step and not _fits(x.shape, self.acc_shape):
                    self.extras = saved
                    return f"{u.op_type} operand not broadcastable as bias/residual"
            args = [None if x is None else (env[x] if x in env else self.operand(x)) for x in u.inputs]
            (local,) = node_exprs(u)
            env[u.output] = substitute(local, lambda inp: args[inp.index])
        new = env[exit_value]
        if dtype_of(new, [self.inputs[0].dtype] + [x.dtype for x in self.extras]) != exit_value.dtype:
            self.extras = saved
            return f"the epilogue would change the dtype of {exit_value.name!r}"
        self.expr = new
        self.end = exit_value
        self.consumed += step
        return None


def _rewrite(graph: Graph, ep: _Epilogue, ctx: PassContext) -> str | None:
    """Write the fused node in place of the chain; a reason when the backend refuses it."""
    attrs = dict(ep.attrs)
    attrs["epilogue"] = "" if ep.expr == Input(0) else format_expr(ep.expr, acc=True)
    if ep.fused_op == "FusedConv":
        attrs.setdefault("layout", "NCHW")
    inputs = list(ep.inputs)
    while ep.bias_at is not None and len(inputs) > ep.bias_at and inputs[-1] is None and not ep.extras:
        inputs.pop()
    old_end = ep.end
    last = old_end.producer
    node = graph.make_node(ep.fused_op, inputs + ep.extras, attrs, output_names=[old_end.name],
                           output_types=[old_end.type], domain=FUSED_DOMAIN, name=ep.node.name, before=last)
    infer_node(node)
    if not backend_accepts(ctx, node):
        graph.remove(node)
        return f"backend {ctx.backend!r} cannot run {ep.fused_op}"
    graph.replace_value(old_end, node.output, take_name=True)
    remove_dead_from(graph, [ep.node, *ep.consumed, last])
    return None


@register_pass("fuse_conv_epilogue", opt_level=2, kind="lowering", order=20)
def fuse_conv_epilogue(graph: Graph, ctx: PassContext) -> PassResult:
    """Relu(Add(Conv(x, w, b), r)) => FusedConv[epilogue="relu(add(acc, in1))"](x, w, b, r)"""
    if ctx.level < 2:
        return PassResult(False, refused=Counter({("fuse_conv_epilogue", "operator fusion needs -O2"): 1}))
    stats: Counter = Counter()
    refused: Counter = Counter()
    order = list(graph)
    pos = {n: i for i, n in enumerate(order)}
    # latest first: of two convs meeting in a residual Add, the later one (the main path,
    # next to the Add) takes it, the earlier one (a shortcut) is its extra input
    for node in reversed(order):
        if node.graph is not graph:
            continue  # consumed by an earlier rewrite
        known = BASES if node.domain in ("", "ai.onnx") else FUSED_BASES if node.domain == FUSED_DOMAIN else {}
        if node.op_type not in known or node.output.shape is None:
            continue
        ep = _Epilogue(node, pos)
        rule = f"{ep.base.lower()}_epilogue"
        folded = False
        while True:
            found = ep.find_step()
            if not isinstance(found, tuple):
                if found is not None:
                    refused[(rule, found)] += 1
                break
            step, exit_value = found
            if ep.try_fold_bias(step):
                ep.end, ep.consumed = exit_value, ep.consumed + step
                folded = True
                continue
            why = ep.absorb(step, exit_value)
            if why is not None:
                refused[(rule, why)] += 1
                break
        if not ep.consumed:
            continue
        why = _rewrite(graph, ep, ctx)
        if why is not None:
            refused[(rule, why)] += 1
            continue
        stats[f"{ep.fused_op}"] += 1
        stats["ops_absorbed"] += len(ep.consumed)
        stats["bias_folded"] += int(folded)
    return PassResult(bool(stats), {k: v for k, v in stats.items() if v}, refused)
