"""Multi-node motifs: the patterns passes rewrite, so that fuzzing exercises the rewrites and not
only the kernels (MatMul+Add, Conv+BatchNormalization+activation, decomposed LayerNorm and
Gelu, attention, Shape arithmetic, transpose pairs, no-op arithmetic, duplicated nodes, QDQ
islands as quantizers write them).
"""
from __future__ import annotations

import math

import numpy as np

from .gen import DIMS, FLOATS, NUMERIC, GraphGen, OpGen, Reject, Val, i64
from .opgen_nn import gen_conv


def motif_matmul_add(g: GraphGen):
    a = g.pick(FLOATS, min_rank=1, max_rank=3)
    n = int(g.rng.choice(DIMS))
    (y,) = g.emit("MatMul", [a, g.const(g.random_array("float32", (a.shape[-1], n)))])
    bias = g.const(g.random_array("float32", (n,) if g.rng.random() < 0.7 else y.shape))
    (z,) = g.emit("Add", [y, bias] if g.rng.random() < 0.7 else [bias, y])
    if g.rng.random() < 0.5:
        g.emit(str(g.rng.choice(["Relu", "Sigmoid", "Tanh"])), [z])


def motif_conv_bn_act(g: GraphGen):
    gen_conv(g)
    y = g.vals[-1]
    c = y.shape[1]
    if g.rng.random() < 0.6:
        params = [g.const(g.random_array("float32", (c,))) for _ in range(3)] + \
                 [g.const(g.random_array("float32", (c,), positive=True))]
        (y,) = g.emit("BatchNormalization", [y, *params])
    if g.rng.random() < 0.5:
        (y,) = g.emit("Add", [y, g.partner(y)])
    act = str(g.rng.choice(["Relu", "Clip", "Sigmoid", "HardSwish", "LeakyRelu", "Tanh"]))
    g.emit(act, [y, g.const(np.float32(0)), g.const(np.float32(6))] if act == "Clip" else [y])


def motif_layernorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    ax = g.const(i64([-1]))

    def rmean(v):
        if g.opset >= 18:
            return g.emit("ReduceMean", [v, ax], {"keepdims": 1})[0]
        return g.emit("ReduceMean", [v], {"axes": [-1], "keepdims": 1})[0]

    (d,) = g.emit("Sub", [x, rmean(x)])
    (sq,) = g.emit("Pow", [d, g.const(np.float32(2))]) if g.rng.random() < 0.5 else g.emit("Mul", [d, d])
    (var,) = g.emit("Add", [rmean(sq), g.const(np.float32(1e-5))])
    (y,) = g.emit("Div", [d, g.emit("Sqrt", [var])[0]])
    (y,) = g.emit("Mul", [y, g.const(g.random_array("float32", x.shape[-1:]))])
    g.emit("Add", [y, g.const(g.random_array("float32", x.shape[-1:]))])


def motif_gelu(g: GraphGen):
    x = g.pick(FLOATS)
    if g.rng.random() < 0.5:
        (e,) = g.emit("Erf", [g.emit("Div", [x, g.const(np.float32(math.sqrt(2)))])[0]])
        (h,) = g.emit("Mul", [x, g.emit("Add", [e, g.const(np.float32(1))])[0]])
        g.emit("Mul", [h, g.const(np.float32(0.5))])
    else:  # tanh form
        (c,) = g.emit("Mul", [g.emit("Pow", [x, g.const(np.float32(3))])[0], g.const(np.float32(0.044715))])
        (t,) = g.emit("Tanh", [g.emit("Mul", [g.emit("Add", [x, c])[0], g.const(np.float32(math.sqrt(2 / math.pi)))])[0]])
        (h,) = g.emit("Mul", [g.emit("Mul", [x, g.const(np.float32(0.5))])[0], g.emit("Add", [t, g.const(np.float32(1))])[0]])


def motif_attention(g: GraphGen):
    b, h, s, t, d = (int(g.rng.choice((1, 2, 3))) for _ in range(5))
    q = g.new_input("float32", (b, h, s, d))
    k = g.const(g.random_array("float32", (b, h, t, d))) if g.rng.random() < 0.5 else g.new_input("float32", (b, h, t, d))
    v = g.new_input("float32", (b, h, t, d))
    (kt,) = g.emit("Transpose", [k], {"perm": [0, 1, 3, 2]})
    (sc,) = g.emit("MatMul", [q, kt])
    (sc,) = g.emit(str(g.rng.choice(["Mul", "Div"])), [sc, g.const(np.float32(g.rng.uniform(0.2, 2)))])
    if g.rng.random() < 0.5:
        (sc,) = g.emit("Add", [sc, g.const(g.random_array("float32", (1, 1, s, t)))])
    (p,) = g.emit("Softmax", [sc], {"axis": -1})
    g.emit("MatMul", [p, v])


def motif_transposes(g: GraphGen):
    x = g.pick(FLOATS, min_rank=2)
    p = g.rng.permutation(x.rank).tolist()
    (y,) = g.emit("Transpose", [x], {"perm": p})
    if g.rng.random() < 0.5:
        (y,) = g.emit(str(g.rng.choice(["Relu", "Neg", "Exp"])), [y])
    q = np.argsort(p).tolist() if g.rng.random() < 0.7 else g.rng.permutation(x.rank).tolist()
    g.emit("Transpose", [y], {"perm": q})


def motif_shape_reshape(g: GraphGen):
    x = g.pick(FLOATS, min_rank=2)
    (s,) = g.emit("Shape", [x])
    (d0,) = g.emit("Gather", [s, g.const(np.asarray(0, np.int64))], {"axis": 0})
    (d0,) = g.emit("Unsqueeze", [d0, g.const(i64([0]))])
    (t,) = g.emit("Concat", [d0, g.const(i64([-1]))], {"axis": 0})
    g.emit("Reshape", [x, t])


def motif_pad_conv(g: GraphGen):
    x = g.pick(FLOATS, min_rank=4, max_rank=4)
    pads = [0, 0] + g.rng.integers(0, 3, 2).tolist() + [0, 0] + g.rng.integers(0, 3, 2).tolist()
    (p,) = g.emit("Pad", [x, g.const(i64(pads))], {"mode": "constant"})
    c = x.shape[1]
    g.emit("Conv", [p, g.const(g.random_array("float32", (2, c, 1 + int(g.rng.integers(0, 2)), 1)))])


def motif_noop_arith(g: GraphGen):
    x = g.pick(NUMERIC)
    dt = np.dtype(x.dtype)
    op, val = [("Mul", 1), ("Div", 1), ("Add", 0), ("Sub", 0), ("Mul", -1), ("Div", 4), ("Pow", 2), ("Pow", 1),
               ("Pow", -1)][int(g.rng.integers(0, 9))]
    if dt.kind != "f" and op in ("Pow",):
        op = "Mul"
    c = np.asarray(-0.0 if (val == 0 and op == "Add" and dt.kind == "f") else val, dt)
    shape = () if g.rng.random() < 0.7 else (1,) * min(x.rank + 1, 4)
    (y,) = g.emit(op, [x, g.const(np.broadcast_to(c, shape).copy())])
    if g.rng.random() < 0.5:
        (y,) = g.emit("Neg", [g.emit("Neg", [y])[0]])
    g.emit("Identity", [y])


def motif_duplicate(g: GraphGen):
    """The same node twice: common-subexpression elimination merges them."""
    if not g.nodes:
        raise Reject("nothing to duplicate")
    src = g.nodes[int(g.rng.integers(max(0, len(g.nodes) - 3), len(g.nodes)))]
    ins = [g.value_info.get(i) or next((v for v in g.vals + g.inputs if v.name == i), None) for i in src.input]
    if any(v is None and i for v, i in zip(ins, src.input)) or src.op_type == "Constant":
        raise Reject("operands not at hand")
    attrs = {a.name: __import__("onnx").helper.get_attribute_value(a) for a in src.attribute}
    outs = g.emit(src.op_type, [v if i else None for v, i in zip(ins, src.input)], attrs, n_out=len(src.output))
    g.emit("Add" if outs[0].dtype == "float32" else "Identity",
           [outs[0], g.vals[[v.name for v in g.vals].index(src.output[0])]] if outs[0].dtype == "float32" else [outs[0]])


def motif_softmax_row(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    (y,) = g.emit("Mul", [x, g.const(np.float32(g.rng.uniform(0.1, 2)))])
    (y,) = g.emit(str(g.rng.choice(["Softmax", "LogSoftmax"])), [y], {"axis": -1})
    g.emit("Add", [y, g.partner(y, const=True)])


def _qdq(g: GraphGen, x: Val, dtype: str, scale: float, zero: int, axis_scales: int | None = None) -> Val:
    """QuantizeLinear then DequantizeLinear of ``x`` (per tensor, or per channel along axis 0)."""
    nd = np.dtype(dtype)
    if axis_scales:
        s = g.const((np.abs(g.rng.standard_normal(axis_scales)) * scale + scale / 4).astype(np.float32))
        z = g.const(np.zeros(axis_scales, nd))
        attrs = {"axis": 0}
    else:
        s, z, attrs = g.const(np.float32(scale)), g.const(np.asarray(zero, nd)), {}
    (q,) = g.emit("QuantizeLinear", [x, s, z], attrs)
    (dq,) = g.emit("DequantizeLinear", [q, s, z], attrs)
    return dq


def motif_qdq(g: GraphGen):
    """A QDQ island as quantizers write it: activations uint8 (or int8), weights int8 per tensor or
    per channel, the layer's result quantized again (what int8 lowering turns into QConv/QMatMul)."""
    act, zero = ("uint8", 128) if g.rng.random() < 0.7 else ("int8", 0)
    kind = str(g.rng.choice(["Conv", "MatMul", "Gemm", "Add", "alone"]))
    if kind == "Conv":
        x = g.pick(FLOATS, min_rank=4, max_rank=4)
    elif kind in ("MatMul", "Gemm"):
        x = g.pick(FLOATS, min_rank=2, max_rank=2)
    else:
        x = g.pick(FLOATS)
    xd = _qdq(g, x, act, float(g.rng.choice([0.02, 0.05, 0.1])), zero)
    if kind == "Conv":
        m = int(g.rng.choice((1, 2, 3)))
        w = g.const(g.random_array("float32", (m, x.shape[1], 1 + int(g.rng.integers(0, 2)), 1)))
        wd = _qdq(g, w, "int8", 0.02, 0, axis_scales=m if g.rng.random() < 0.5 else None)
        (y,) = g.emit("Conv", [xd, wd])
    elif kind in ("MatMul", "Gemm"):
        n = int(g.rng.choice(DIMS))
        w = g.const(g.random_array("float32", (x.shape[1], n)))
        (y,) = g.emit(kind, [xd, _qdq(g, w, "int8", 0.02, 0)])
    elif kind == "Add":
        (y,) = g.emit("Add", [xd, _qdq(g, g.partner(x, dtype="float32", const=False), act, 0.05, zero)])
    else:
        y = xd
    if g.rng.random() < 0.5:
        (y,) = g.emit("Relu", [y])
    out = _qdq(g, y, act, float(g.rng.choice([0.05, 0.1, 0.2])), zero)
    # an output only: a one-step rounding difference (allowed) must not grow through later ops
    g.vals.remove(out)
    g.sinks.append(out)


MOTIFS: dict[str, OpGen] = {
    "matmul_add": OpGen(13, motif_matmul_add, 2.0),
    "conv_bn_act": OpGen(15, motif_conv_bn_act, 2.0),
    "layernorm_pattern": OpGen(13, motif_layernorm),
    "gelu_pattern": OpGen(13, motif_gelu),
    "attention_pattern": OpGen(13, motif_attention),
    "transpose_pair": OpGen(13, motif_transposes),
    "shape_reshape": OpGen(13, motif_shape_reshape),
    "pad_conv": OpGen(13, motif_pad_conv),
    "noop_arith": OpGen(13, motif_noop_arith, 1.5),
    "duplicate": OpGen(13, motif_duplicate),
    "softmax_row": OpGen(13, motif_softmax_row),
    "qdq_island": OpGen(13, motif_qdq, 1.5),
}
