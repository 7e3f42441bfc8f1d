"""Where QDQ goes, and putting it there.

``plan_qdq(graph)`` decides, in one walk in topological order:

* **layers** (quantized ops): ``Conv`` and ``Gemm`` with a constant weight,
  ``MatMul`` with a constant weight or with two activations, and ``Add`` whose
  two inputs are both already quantized tensors (a residual). A layer's
  activation inputs get ``QuantizeLinear -> DequantizeLinear``; its weight becomes
  an int8 initializer read through ``DequantizeLinear`` (per output channel,
  symmetric); a float bias becomes int32 with scale ``x_scale * w_scale``.
  A layer's output is quantized after its epilogue: a bias ``Add`` behind a
  ``MatMul``, then one ``Relu`` or ``Clip``, when they are the sole readers. So
  ``Relu(Conv(x))`` gets one Q/DQ pair, after the ``Relu``.
* **pass-through ops** (``MaxPool``, ``Reshape``, ``Transpose``, ``Flatten``,
  ``Squeeze``, ``Unsqueeze``, ``Concat``, ...), whose data inputs are all quantized,
  stay in int8: their outputs are quantized with the *same* scale and zero point
  as their inputs (one scale group, whose range is the union of its members'),
  so ``DQ -> op -> Q`` is exact and ``lower_qdq_int8`` drops the pair.
* everything else stays float, reading ``DequantizeLinear`` outputs; the plan
  records why each candidate op was left float.

``insert_qdq(graph, plan, params)`` then rewrites the graph with the scales
chosen by calibration.

>>> plan = plan_qdq(graph)                                   # doctest: +SKIP
>>> insert_qdq(graph, plan, params, per_channel=True)        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import GraphoptError
from ..ir import Graph, Node, TensorType, Value
from ..ops.quant import quantize

LAYER_OPS = ("Conv", "Gemm", "MatMul", "Add")
# pass-through op -> the input positions that carry data (None: every input)
PASSTHROUGH: dict[str, tuple[int, ...] | None] = {
    "MaxPool": (0,), "Reshape": (0,), "Transpose": (0,), "Flatten": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Identity": (0,), "Slice": (0,), "Gather": (0,), "DepthToSpace": (0,),
    "SpaceToDepth": (0,), "Concat": None,
}
EPILOGUE_ACTS = ("Relu", "Clip")


@dataclass
class Layer:
    """One quantized op and what around it gets quantized."""

    node: Node
    kind: str                          # conv | gemm | matmul | add
    acts: list[Value]                  # activation inputs (per-tensor)
    weight_index: int | None = None    # input position of the constant weight
    weight_axis: int | None = None     # its output-channel axis
    bias_node: Node | None = None      # the node whose input is the bias (the layer, or MatMul's Add)
    bias_index: int | None = None
    epilogue: list[Node] = field(default_factory=list)
    output: Value | None = None        # the value quantized after the epilogue

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op_type


@dataclass
class Plan:
    layers: list[Layer] = field(default_factory=list)
    passthrough: list[Node] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)     # activations that get Q/DQ, in order
    parent: dict[Value, Value] = field(default_factory=dict)  # union-find over shared-scale groups
    float_nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, why float)

    def group(self, v: Value) -> Value:
        root = v
        while self.parent.get(root, root) is not root:
            root = self.parent[root]
        while self.parent.get(v, v) is not root:  # path compression
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: Value, b: Value) -> None:
        ra, rb = self.group(a), self.group(b)
        if ra is not rb:
            self.parent[rb] = ra

    def layer(self, name: str) -> Layer | None:
        return next((lay for lay in self.layers if lay.name == name), None)


def _is_float32(v: Value | None) -> bool:
    return v is not None and v.type is not None and v.type.dtype == "float32"


def _sole_user(v: Value) -> Node | None:
    users = v.users
    if len(users) != 1 or v.is_graph_output or v.num_uses != 1:
        return None
    return users[0]


def _const_scalar_or_none(v: Value | None) -> bool:
    return v is None or (v.const is not None and v.const.size == 1)


def _epilogue(lay: Layer) -> None:
    out = lay.node.output
    if lay.kind == "matmul" and lay.weight_axis is not None:  # a 2-D constant weight: (K, N)
        u = _sole_user(out)
        if u is not None and u.op_type == "Add":
            other = u.input(1) if u.input(0) is out else u.input(0)
            n = lay.node.input(1).shape[-1] if lay.node.input(1).shape else None
            if (other is not None and other.const is not None and other.const.dtype == np.float32
                    and other.const.size == n and other.const.shape[-1:] == (n,)
                    and other.const.ndim <= len(out.shape or ())):
                lay.bias_node, lay.bias_index = u, (1 if u.input(0) is out else 0)
                lay.epilogue.append(u)
                out = u.output
    u = _sole_user(out)
    if u is not None and u.op_type in EPILOGUE_ACTS and u.input(0) is out:
        if u.op_type == "Relu" or all(_const_scalar_or_none(u.input(i)) for i in (1, 2)):
            lay.epilogue.append(u)
            out = u.output
    lay.output = out


def _classify(n: Node, quantized: set[Value], opset: int) -> tuple[Layer | None, str | None]:
    """A Layer for ``n``, or the reason it stays float (None when it is not a candidate)."""
    op = n.op_type
    if n.domain not in ("", "ai.onnx"):
        return None, None
    if op == "Conv":
        x, w = n.input(0), n.input(1)
        if not _is_float32(x):
            return None, "input is not float32"
        if w is None or w.const is None:
            return None, "weight is not a constant"
        lay = Layer(n, "conv", [x], 1, 0)
        b = n.input(2)
        if b is not None:
            if b.const is None:
                return None, "bias is not a constant"
            lay.bias_node, lay.bias_index = n, 2
        return lay, None
    if op == "Gemm":
        a, w = n.input(0), n.input(1)
        if not _is_float32(a):
            return None, "input is not float32"
        if n.attr("transA", 0):
            return None, "transA=1"
        if w is None or w.const is None or w.const.ndim != 2:
            return None, "weight is not a constant matrix"
        lay = Layer(n, "gemm", [a], 1, 0 if n.attr("transB", 0) else 1)
        c = n.input(2)
        if c is not None:
            nout = w.const.shape[0 if n.attr("transB", 0) else 1]
            if c.const is None:
                return None, "C is not a constant"
            if c.const.size == nout and c.const.shape[-1:] == (nout,):
                lay.bias_node, lay.bias_index = n, 2
            # any other constant C stays a float input of the Gemm
        return lay, None
    if op == "MatMul":
        a, b = n.input(0), n.input(1)
        if not _is_float32(a):
            return None, "input is not float32"
        if b is not None and b.const is not None:
            if b.const.dtype != np.float32:
                return None, "weight is not float32"
            return Layer(n, "matmul", [a], 1, b.const.ndim - 1 if b.const.ndim == 2 else None), None
        if not _is_float32(b):
            return None, "second input is not float32"
        return Layer(n, "matmul", [a, b]), None
    if op == "Add":
        a, b = n.input(0), n.input(1)
        if a is None or b is None or a.const is not None or b.const is not None:
            return None, None  # bias adds and constants are not residuals
        if not (_is_float32(a) and _is_float32(b)):
            return None, None
        if a not in quantized or b not in quantized:
            return None, "not both inputs are quantized"
        return Layer(n, "add", [a, b]), None
    return None, None


def plan_qdq(graph: Graph, *, exclude: set[str] | frozenset = frozenset(),
             op_types: tuple[str, ...] = LAYER_OPS) -> Plan:
    """Choose layers, pass-through ops and the activations to quantize (see module doc)."""
    opset = graph.opset_imports.get("", 17)
    plan = Plan()
    quantized: dict[Value, None] = {}
    consumed: set[Node] = set()

    def mark(v: Value) -> None:
        if v not in quantized:
            quantized[v] = None
            plan.parent.setdefault(v, v)

    for n in graph:
        if n in consumed:
            continue
        if n.op_type in op_types:
            lay, why = _classify(n, set(quantized), opset)
            if lay is None:
                if why:
                    plan.float_nodes.append((n.name, n.op_type, why))
                continue
            if n.name in exclude:
                plan.float_nodes.append((n.name, n.op_type, "excluded"))
                continue
            _epilogue(lay)
            consumed.update(lay.epilogue)
            for v in lay.acts:
                mark(v)
            if lay.output.users:
                mark(lay.output)
            plan.layers.append(lay)
            continue
        data = PASSTHROUGH.get(n.op_type, ())
        if n.op_type not in PASSTHROUGH or n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type == "MaxPool" and (opset < 12 or len(n.outputs) > 1 and n.outputs[1].num_uses):
            continue
        ins = [n.input(i) for i in (range(len(n.inputs)) if data is None else data)]
        if not ins or any(v is None or v not in quantized for v in ins):
            continue
        if n.name in exclude:
            plan.float_nodes.append((n.name, n.op_type, "excluded"))
            continue
        out = n.outputs[0]
        if not _is_float32(out):
            continue
        plan.passthrough.append(n)
        mark(out)
        for v in ins:
            plan.union(v, out)
    plan.values = list(quantized)
    return plan


# ---------------------------------------------------------------------------
# parameters


@dataclass
class QParams:
    scale: np.float32
    zero_point: int
    dtype: str  # uint8 | int8

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.scale, np.float32), np.array(self.zero_point, dtype=self.dtype)


def weight_qparams(w: np.ndarray, axis: int | None, *, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 scales (per ``axis``, or per tensor when None) and int8 weights.

    ``reduce_range`` uses 7 bits ([-64, 63]) for int8 kernels that add pairs of
    products in int16 (x86 without VNNI).
    """
    qmax = 63.0 if reduce_range else 127.0
    w = w.astype(np.float32)
    if axis is None:
        amax = np.float32(np.max(np.abs(w))) if w.size else np.float32(0)
        scale = np.float32(amax / qmax) if amax > 0 else np.float32(1.0)
        q = quantize(w, scale, np.int8(0), dtype="int8")
        return np.array(scale, np.float32), q
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = quantize(w, scale, np.zeros_like(scale, dtype=np.int8), axis=axis, dtype="int8")
    return scale, q


def activation_params(plan: Plan, observers: dict, method: str, act_type: str, opts: dict | None = None
                      ) -> dict[Value, QParams]:
    """Scale and zero point of every planned activation from its observer's range;
    the members of a scale group share the union of their ranges."""
    from .calibration import qparams

    opts = opts or {}
    ranges = {}
    for v in plan.values:
        obs = observers.get(v.name)
        if obs is None or not obs.seen:
            raise GraphoptError(f"calibration never saw tensor {v.name!r}")
        ranges[v] = obs.range(method, act_type, **opts)
    groups: dict = {}
    for v in plan.values:
        lo, hi = ranges[v]
        g = plan.group(v)
        glo, ghi = groups.get(g, (lo, hi))
        groups[g] = (min(glo, lo), max(ghi, hi))
    params = {}
    for v in plan.values:
        lo, hi = groups[plan.group(v)]
        s, z, _, _ = qparams(lo, hi, act_type)
        params[v] = QParams(s, z, act_type)
    return params


# ---------------------------------------------------------------------------
# insertion


def _first_node(graph: Graph) -> Node | None:
    return next(iter(graph), None)


def _add_qdq(graph: Graph, v: Value, p: QParams) -> Value:
    """``v -> QuantizeLinear -> DequantizeLinear``; every other reader of ``v`` reads the DQ."""
    s, z = p.arrays()
    sv = graph.add_initializer(f"{v.name}_scale", s)
    zv = graph.add_initializer(f"{v.name}_zero_point", z)
    readers = list(v.uses)
    anchor = v.producer
    kw = {"after": anchor} if anchor is not None else {"before": _first_node(graph)}
    q = graph.make_node("QuantizeLinear", [v, sv, zv], output_names=[f"{v.name}_quantized"],
                        output_types=[TensorType(p.dtype, v.shape)], **kw)
    dq = graph.make_node("DequantizeLinear", [q.output, sv, zv], output_names=[f"{v.name}_dequantized"],
                         output_types=[TensorType("float32", v.shape)], after=q)
    for node, i in readers:
        node.set_input(i, dq.output)
    return dq.output


def _dq_const(graph: Graph, before: Node, name: str, q: np.ndarray, scale: np.ndarray, axis: int | None,
              cache: dict) -> Value:
    key = (name, q.tobytes(), q.shape, scale.tobytes(), axis)
    if key in cache:
        return cache[key]
    qv = graph.add_initializer(f"{name}_quantized", q)
    sv = graph.add_initializer(f"{name}_scale", scale.astype(np.float32))
    zv = graph.add_initializer(f"{name}_zero_point", np.zeros(scale.shape, q.dtype))
    attrs = {"axis": int(axis)} if axis is not None and scale.ndim == 1 else {}
    dq = graph.make_node("DequantizeLinear", [qv, sv, zv], attrs, output_names=[f"{name}_dequantized"],
                         output_types=[TensorType("float32", tuple(q.shape))], before=before)
    cache[key] = dq.output
    return dq.output


def _drop_if_unused(graph: Graph, v: Value) -> None:
    if v.const is not None and v.name in graph.initializers and not v.num_uses and not v.is_graph_output:
        graph.remove_initializer(v)


def insert_qdq(graph: Graph, plan: Plan, params: dict[Value, QParams], *, per_channel: bool = True,
               reduce_range: bool = False) -> dict[str, int]:
    """Rewrite ``graph`` per ``plan``; ``params`` holds the activation parameters of every
    value in ``plan.values`` (members of a scale group share theirs). Returns counters."""
    opset = graph.opset_imports.get("", 17)
    if opset < 10:
        raise GraphoptError(f"QDQ needs opset >= 10, the model has opset {opset}")
    if opset < 13:
        per_channel = False  # per-axis DequantizeLinear arrived in opset 13
    stats = {"layers": 0, "qdq_pairs": 0, "weights": 0, "biases": 0}
    # weights and biases first: bias scales need the input activation's scale
    cache: dict = {}
    for lay in plan.layers:
        n = lay.node
        if lay.kind == "gemm":
            alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
            if alpha != 1.0:
                w = n.input(1)
                n.set_input(1, graph.add_initializer(f"{w.name}_alpha", (w.const * np.float32(alpha))
                                                     .astype(np.float32)))
                _drop_if_unused(graph, w)
                n.attrs["alpha"] = 1.0
            if beta != 1.0 and n.input(2) is not None:
                c = n.input(2)
                n.set_input(2, graph.add_initializer(f"{c.name}_beta", (c.const * np.float32(beta))
                                                     .astype(np.float32)))
                _drop_if_unused(graph, c)
                n.attrs["beta"] = 1.0
        w_scale = None
        if lay.weight_index is not None:
            w = n.input(lay.weight_index)
            axis = lay.weight_axis if per_channel else None
            w_scale, wq = weight_qparams(w.const, axis, reduce_range=reduce_range)
            n.set_input(lay.weight_index, _dq_const(graph, n, w.name, wq, w_scale, axis, cache))
            _drop_if_unused(graph, w)
            stats["weights"] += 1
        if lay.bias_node is not None and w_scale is not None:
            b = lay.bias_node.input(lay.bias_index)
            x_scale = params[lay.acts[0]].scale
            b_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
            bf = b.const.astype(np.float64).reshape(-1)
            bq = np.clip(np.rint(bf / b_scale.astype(np.float64)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            if b_scale.ndim == 0 and bq.size > 1:
                b_scale = b_scale.reshape(())
            node = lay.bias_node
            node.set_input(lay.bias_index, _dq_const(graph, node, f"{b.name}_{n.name}", bq, b_scale,
                                                     0 if b_scale.ndim == 1 else None, cache))
            _drop_if_unused(graph, b)
            stats["biases"] += 1
        stats["layers"] += 1
    for v in plan.values:
        if not v.users:
            continue
        _add_qdq(graph, v, params[v])
        stats["qdq_pairs"] += 1
    return stats
