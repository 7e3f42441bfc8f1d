"""What the fuzzer can generate: one row per ONNX op (and a few multi-node motifs).

``OPS`` maps an op name to ``OpGen(min_opset, fn, weight)``; ``fn(g)`` picks
operands from the ``GraphGen`` ``g``, draws attributes across their ranges
(negative axes, size-1 and odd dims, broadcasting, every mode an op has) and
emits the node in the form its opset defines (``axes`` as attribute or input,
Split's ``num_outputs``...). MatMul, Conv, the pools and Resize come from
``opgen_nn``; ``motifs.MOTIFS`` emit the multi-node patterns passes rewrite.

>>> import numpy as np
>>> from graphopt.fuzz.gen import GraphGen
>>> g = GraphGen(np.random.default_rng(1), opset=18)
>>> OPS["Softmax"].fn(g); g.nodes[-1].op_type
'Softmax'
"""
from __future__ import annotations

import math

import numpy as np

from .gen import DIMS, FLOATS, INTS, NUMERIC, GraphGen, OpGen, Reject, Val, f32, i64
from .motifs import MOTIFS
from .opgen_nn import gen_conv, gen_gemm, gen_matmul, gen_resize, global_pool, pool


# -- pointwise --------------------------------------------------------------------------

def unary(op: str, dtypes=FLOATS, **attr_fns):
    def fn(g: GraphGen):
        x = g.pick(dtypes)
        g.emit(op, [x], {k: f(g) for k, f in attr_fns.items()})
    return fn


def binary(op: str, dtypes=NUMERIC, swap: bool = True):
    """``op(x, partner)``, the operands swapped three times in ten when ``swap``."""
    def fn(g: GraphGen):
        x = g.pick(dtypes)
        y = g.partner(x)
        a, b = (x, y) if not swap or g.rng.random() < 0.7 else (y, x)
        g.emit(op, [a, b])
    return fn


def variadic(op: str):
    def fn(g: GraphGen):
        x = g.pick(FLOATS)
        ops = [x] + [g.partner(x) for _ in range(int(g.rng.integers(0, 3)))]
        g.emit(op, ops)
    return fn


def logical(op: str):
    def fn(g: GraphGen):
        x = _bool(g)
        g.emit(op, [x, g.partner(x)])
    return fn


def _bool(g: GraphGen) -> Val:
    bools = [v for v in g.vals if v.dtype == "bool"]
    if bools and g.rng.random() < 0.7:
        return bools[-1]
    x = g.pick(FLOATS)
    (b,) = g.emit(str(g.rng.choice(["Greater", "Less", "Equal"])), [x, g.partner(x, const=True)])
    return b


def gen_where(g: GraphGen):
    c = _bool(g)
    x = g.pick(NUMERIC)
    g.emit("Where", [c, x, g.partner(x)])


def gen_not(g: GraphGen):
    g.emit("Not", [_bool(g)])


def gen_mod(g: GraphGen):
    if g.rng.random() < 0.5:
        x = g.pick(INTS)
        d = g.random_array(x.dtype, x.shape[int(g.rng.integers(0, x.rank + 1)):])
        d[d == 0] = 3
        g.emit("Mod", [x, g.const(d)], {"fmod": int(g.rng.integers(0, 2))})
    else:
        x = g.pick(FLOATS)
        g.emit("Mod", [x, g.partner(x)], {"fmod": 1})


def gen_div_int(g: GraphGen):
    x = g.pick(INTS)
    d = g.random_array(x.dtype, x.shape[int(g.rng.integers(0, x.rank + 1)):])
    d[d == 0] = -2
    g.emit("Div", [x, g.const(d)])


def gen_pow(g: GraphGen):
    x = g.pick(FLOATS)
    if g.rng.random() < 0.5:
        e = g.const(np.asarray(g.rng.choice([0.5, 1.0, 2.0, 3.0, -1.0, -0.5, 0.0]), np.float32))
    else:
        e = g.partner(x)
    g.emit("Pow", [x, e])


def gen_prelu(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    # slope broadcasts to x (unidirectionally)
    k = int(g.rng.integers(0, x.rank + 1))
    shape = tuple(1 if g.rng.random() < 0.5 else d for d in x.shape[k:])
    g.emit("PRelu", [x, g.const(g.random_array("float32", shape))])


def gen_clip(g: GraphGen):
    x = g.pick(NUMERIC)
    lo, hi = sorted(g.rng.standard_normal(2))
    if g.rng.random() < 0.1:
        lo, hi = hi, lo  # min > max: every element becomes max
    dt = np.dtype(x.dtype)
    lo_v = g.const(np.asarray(lo if dt.kind == "f" else round(lo * 3), dt))
    hi_v = g.const(np.asarray(hi if dt.kind == "f" else round(hi * 3), dt))
    form = int(g.rng.integers(0, 4))
    ins = [x, lo_v, hi_v] if form == 0 else [x, lo_v] if form == 1 else [x, None, hi_v] if form == 2 else [x]
    g.emit("Clip", ins)


def gen_bitshift(g: GraphGen):
    x = g.const(g.rng.integers(0, 200, g.random_shape(max_rank=3)).astype(np.uint8)) if g.rng.random() < 0.3 \
        else g.new_input("uint8", g.random_shape(max_rank=3))
    s = g.const(g.rng.integers(0, 8, x.shape[int(g.rng.integers(0, x.rank + 1)):]).astype(np.uint8))
    g.emit("BitShift", [x, s], {"direction": str(g.rng.choice(["LEFT", "RIGHT"]))})


def gen_isinf(g: GraphGen):
    x = g.pick(FLOATS)
    (y,) = g.emit("Div", [x, g.partner(x)])  # x / 0 and friends make infinities
    g.emit("IsInf", [y], {"detect_negative": int(g.rng.integers(0, 2)), "detect_positive": int(g.rng.integers(0, 2))})


def gen_cast(g: GraphGen):
    from .. import dtypes

    x = g.pick(("float32", "int64", "int32", "bool"))
    to = str(g.rng.choice(["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]))
    if x.dtype == "float32" and to in ("int8", "uint8", "int32", "int64"):
        (x,) = g.emit("Round", [x])  # float -> int of out-of-range or fractional values is implementation-defined
        (x,) = g.emit("Clip", [x, g.const(np.float32(0 if to == "uint8" else -100)), g.const(np.float32(100))])
    (y,) = g.emit("Cast", [x], {"to": dtypes.to_onnx(to)})
    if to not in ("float32", "int64", "int32", "bool"):  # back to a type the other ops take
        g.emit("Cast", [y], {"to": dtypes.to_onnx("float32")})


def gen_castlike(g: GraphGen):
    x = g.pick(("float32", "int64", "int32"))
    like = g.pick(("float32", "int64", "int32"), where=lambda v: v.dtype != x.dtype)
    if x.dtype == "float32":
        (x,) = g.emit("Round", [x])
    g.emit("CastLike", [x, like])


# -- reductions and normalizations ----------------------------------------------------------

def _axes(g: GraphGen, rank: int) -> list[int]:
    if rank == 0:
        return []
    k = int(g.rng.integers(1, rank + 1))
    axes = sorted(g.rng.choice(rank, k, replace=False).tolist())
    return [a - rank if g.rng.random() < 0.3 else a for a in axes]


def reduce(op: str, dtypes=FLOATS, input_axes_from: int = 18):
    def fn(g: GraphGen):
        x = g.pick(dtypes)
        attrs = {"keepdims": int(g.rng.integers(0, 2))}
        axes = None if g.rng.random() < 0.15 else _axes(g, x.rank)
        if g.opset >= input_axes_from:
            if g.rng.random() < 0.2:
                attrs["noop_with_empty_axes"] = int(g.rng.integers(0, 2))
            g.emit(op, [x, None if axes is None else g.const(i64(axes))], attrs)
        else:
            if axes is not None:
                attrs["axes"] = axes
            g.emit(op, [x], attrs)
    return fn


def arg(op: str):
    def fn(g: GraphGen):
        x = g.pick(FLOATS, min_rank=1)
        g.emit(op, [x], {"axis": g.axis(x.rank), "keepdims": int(g.rng.integers(0, 2)),
                         "select_last_index": int(g.rng.integers(0, 2))})
    return fn


def softmax_like(op: str):
    def fn(g: GraphGen):
        x = g.pick(FLOATS, min_rank=1)
        g.emit(op, [x], {"axis": g.axis(x.rank)})
    return fn


def gen_cumsum(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1)
    g.emit("CumSum", [x, g.const(np.asarray(g.axis(x.rank), np.int64))],
           {"exclusive": int(g.rng.integers(0, 2)), "reverse": int(g.rng.integers(0, 2))})


def gen_topk(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    axis = g.axis(x.rank)
    k = int(g.rng.integers(0, x.shape[axis] + 1))
    g.emit("TopK", [x, g.const(i64([k]))], {"axis": axis, "largest": int(g.rng.integers(0, 2))}, n_out=2)


def gen_lpnorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    g.emit("LpNormalization", [x], {"axis": g.axis(x.rank), "p": int(g.rng.choice([1, 2]))})


def gen_mvn(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    g.emit("MeanVarianceNormalization", [x], {"axes": _axes(g, x.rank)})


def gen_batchnorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=2, max_rank=5)
    c = x.shape[1]
    params = [g.const(g.random_array("float32", (c,))) for _ in range(3)] + \
             [g.const(g.random_array("float32", (c,), positive=True))]
    g.emit("BatchNormalization", [x, *params], {"epsilon": f32(g, 1e-5, 1e-2)})


def gen_instancenorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=3, max_rank=5)
    c = x.shape[1]
    g.emit("InstanceNormalization", [x, g.const(g.random_array("float32", (c,))),
                                     g.const(g.random_array("float32", (c,)))], {"epsilon": f32(g, 1e-5, 1e-2)})


def gen_layernorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    axis = g.axis(x.rank)
    norm = x.shape[axis % x.rank:]
    ins = [x, g.const(g.random_array("float32", norm))]
    if g.rng.random() < 0.6:
        ins.append(g.const(g.random_array("float32", norm)))
    g.emit("LayerNormalization", ins, {"axis": axis, "epsilon": f32(g, 1e-5, 1e-2)})


def gen_groupnorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=3, max_rank=4)
    c = x.shape[1]
    groups = int(g.rng.choice([d for d in range(1, c + 1) if c % d == 0]))
    g.emit("GroupNormalization", [x, g.const(g.random_array("float32", (c,))),
                                  g.const(g.random_array("float32", (c,)))],
           {"num_groups": groups, "epsilon": f32(g, 1e-5, 1e-2)})


def gen_rmsnorm(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    axis = g.axis(x.rank)
    g.emit("RMSNormalization", [x, g.const(g.random_array("float32", x.shape[axis % x.rank:]))],
           {"axis": axis, "epsilon": f32(g, 1e-5, 1e-2)})


def gen_lrn(g: GraphGen):
    x = g.pick(FLOATS, min_rank=4, max_rank=4)
    g.emit("LRN", [x], {"size": int(g.rng.choice([1, 3, 5])), "alpha": f32(g, 1e-4, 1e-2), "beta": f32(g, 0.5, 1),
                        "bias": f32(g, 1, 2)})


# -- shape and data movement --------------------------------------------------------------------

def gen_transpose(g: GraphGen):
    x = g.pick(NUMERIC + ("bool",))
    attrs = {} if g.rng.random() < 0.15 else {"perm": g.rng.permutation(x.rank).tolist()}
    g.emit("Transpose", [x], attrs)


def _factor(g: GraphGen, n: int) -> list[int]:
    dims = []
    while n > 1 and len(dims) < 4:
        divs = [d for d in range(2, n + 1) if n % d == 0]
        d = int(g.rng.choice(divs))
        dims.append(d)
        n //= d
    if g.rng.random() < 0.3:
        dims.insert(int(g.rng.integers(0, len(dims) + 1)), 1)
    return dims


def gen_reshape(g: GraphGen):
    x = g.pick(NUMERIC)
    target = _factor(g, x.size) if x.size else list(x.shape)
    if target and g.rng.random() < 0.5:
        target[int(g.rng.integers(0, len(target)))] = -1
    if target and g.rng.random() < 0.2:  # 0 copies the input's dim at the same position
        i = int(g.rng.integers(0, min(len(target), x.rank) + 1)) if x.rank else 0
        if i < min(len(target), x.rank) and -1 not in target and target[i] == x.shape[i]:
            target[i] = 0
    g.emit("Reshape", [x, g.const(i64(target))])


def gen_flatten(g: GraphGen):
    x = g.pick(NUMERIC)
    g.emit("Flatten", [x], {"axis": g.axis(x.rank, allow_end=True)})


def gen_squeeze(g: GraphGen):
    x = g.pick(NUMERIC, where=lambda v: 1 in v.shape)
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted(g.rng.choice(ones, int(g.rng.integers(1, len(ones) + 1)), replace=False).tolist())
    if g.rng.random() < 0.2:
        g.emit("Squeeze", [x])
    elif g.opset >= 13:
        g.emit("Squeeze", [x, g.const(i64(axes))])
    else:
        g.emit("Squeeze", [x], {"axes": axes})


def gen_unsqueeze(g: GraphGen):
    x = g.pick(NUMERIC, max_rank=4)
    n = int(g.rng.integers(1, 3))
    out_rank = x.rank + n
    axes = sorted(g.rng.choice(out_rank, n, replace=False).tolist())
    axes = [a - out_rank if g.rng.random() < 0.3 else a for a in axes]
    g.emit("Unsqueeze", [x, g.const(i64(axes))] if g.opset >= 13 else [x], {} if g.opset >= 13 else {"axes": axes})


def gen_concat(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1)
    axis = g.axis(x.rank)
    parts = [x]
    for _ in range(int(g.rng.integers(1, 3))):
        shape = list(x.shape)
        shape[axis] = int(g.rng.choice((0, 1, 2, 3))) if g.rng.random() < 0.3 else int(g.rng.choice(DIMS))
        parts.append(g.const(g.random_array(x.dtype, shape)) if g.rng.random() < 0.4 else g.new_input(x.dtype, shape))
    g.rng.shuffle(parts)
    g.emit("Concat", parts, {"axis": axis})


def gen_split(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1, where=lambda v: any(d >= 2 for d in v.shape))
    axis = int(g.rng.choice([i for i, d in enumerate(x.shape) if d >= 2]))
    n = x.shape[axis]
    if g.opset >= 18 and g.rng.random() < 0.4:
        k = int(g.rng.integers(2, n + 1))
        g.emit("Split", [x], {"axis": axis, "num_outputs": k}, n_out=k)
        return
    cuts = sorted(g.rng.choice(np.arange(1, n), int(g.rng.integers(1, min(n - 1, 3) + 1)), replace=False).tolist())
    sizes = np.diff([0, *cuts, n]).tolist()
    if g.opset >= 13:
        g.emit("Split", [x, g.const(i64(sizes))], {"axis": axis}, n_out=len(sizes))
    else:
        g.emit("Split", [x], {"axis": axis, "split": sizes}, n_out=len(sizes))


def gen_slice(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1)
    axes = _axes(g, x.rank)
    starts, ends, steps = [], [], []
    for a in axes:
        n = x.shape[a]
        step = int(g.rng.choice([1, 1, 1, 2, -1, -2, 3]))
        s = int(g.rng.integers(-n - 2, n + 3))
        e = int(g.rng.integers(-n - 2, n + 3))
        if g.rng.random() < 0.15:
            e = int(np.iinfo(np.int64).max if step > 0 else np.iinfo(np.int64).min)
        starts.append(s)
        ends.append(e)
        steps.append(step)
    ins = [x, g.const(i64(starts)), g.const(i64(ends))]
    if g.rng.random() < 0.8:
        ins.append(g.const(i64(axes)))
        if g.rng.random() < 0.8:
            ins.append(g.const(i64(steps)))
    g.emit("Slice", ins)


def gen_gather(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1)
    axis = g.axis(x.rank)
    n = x.shape[axis]
    shape = g.random_shape(max_rank=2)
    idx = g.rng.integers(-n, n, shape).astype(np.int64)
    g.emit("Gather", [x, g.const(idx)], {"axis": axis})


def gen_gather_elements(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1)
    axis = g.axis(x.rank)
    shape = [int(g.rng.integers(1, d + 1)) if d else 0 for d in x.shape]
    shape[axis] = int(g.rng.integers(1, 5))
    n = x.shape[axis]
    idx = g.rng.integers(-n, n, shape).astype(np.int64)
    g.emit("GatherElements", [x, g.const(idx)], {"axis": axis})


def gen_scatter_elements(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    axis = g.axis(x.rank)
    red = str(g.rng.choice(["none", "add", "mul", "max", "min"])) if g.opset >= 18 else "none"
    shape = list(x.shape)
    n = shape[axis]
    if red == "none":  # unique indices along the axis: duplicates leave the result undefined
        shape[axis] = int(g.rng.integers(1, n + 1))
        idx = np.stack([g.rng.permutation(n)[:shape[axis]] for _ in range(int(np.prod(shape)) // shape[axis])])
        idx = np.moveaxis(idx.reshape([s for i, s in enumerate(shape) if i != axis % x.rank] + [shape[axis]]),
                          -1, axis % x.rank)
    else:
        shape[axis] = int(g.rng.integers(1, 4))
        idx = g.rng.integers(-n, n, shape)
    attrs = {"axis": axis} if red == "none" else {"axis": axis, "reduction": red}
    g.emit("ScatterElements", [x, g.const(np.asarray(idx, np.int64)), g.const(g.random_array("float32", shape))],
           attrs)


def gen_expand(g: GraphGen):
    x = g.pick(NUMERIC, max_rank=3)
    target = [int(g.rng.choice(DIMS)) if d == 1 else (1 if g.rng.random() < 0.3 else d) for d in x.shape]
    lead = [int(g.rng.choice(DIMS)) for _ in range(int(g.rng.integers(0, 2)))]
    target = lead + target
    if g.rng.random() < 0.3 and len(target) > 1:
        target = target[1:]  # a shorter target broadcasts too
    g.emit("Expand", [x, g.const(i64(target))])


def gen_tile(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=1, max_rank=3)
    g.emit("Tile", [x, g.const(i64(g.rng.integers(1, 3, x.rank)))])


def gen_pad(g: GraphGen):
    x = g.pick(FLOATS, min_rank=1)
    modes = ["constant", "reflect", "edge"] + (["wrap"] if g.opset >= 19 else [])
    mode = str(g.rng.choice(modes))
    axes = list(range(x.rank))
    if g.opset >= 18 and g.rng.random() < 0.4:
        axes = _axes(g, x.rank)
    pads = []
    for side in range(2):
        for a in axes:
            n = x.shape[a]
            hi = n - 1 if mode == "reflect" else n if mode == "wrap" else 3
            lo = -(n - 1) if mode == "constant" and g.rng.random() < 0.2 else 0
            pads.append(int(g.rng.integers(lo, max(hi, 0) + 1)))
    if mode in ("reflect", "edge", "wrap") and any(x.shape[a] == 0 for a in axes):
        raise Reject("Pad of an empty axis")
    ins = [x, g.const(i64(pads))]
    if mode == "constant" and g.rng.random() < 0.5:
        ins.append(g.const(np.asarray(g.rng.standard_normal(), np.float32)))
    if len(axes) != x.rank:
        ins += [None] * (3 - len(ins)) + [g.const(i64(axes))]
    g.emit("Pad", ins, {"mode": mode})


def gen_shape(g: GraphGen):
    x = g.pick(NUMERIC + ("bool",))
    attrs = {}
    if g.opset >= 15 and g.rng.random() < 0.4:
        attrs = {"start": int(g.rng.integers(-x.rank - 1, x.rank + 1))}
        if g.rng.random() < 0.5:
            attrs["end"] = int(g.rng.integers(-x.rank - 1, x.rank + 2))
    g.emit("Shape", [x], attrs)


def gen_size(g: GraphGen):
    g.emit("Size", [g.pick(NUMERIC)])


def gen_constant_of_shape(g: GraphGen):
    from onnx import numpy_helper

    shape = g.rng.integers(0, 4, int(g.rng.integers(0, 4))).astype(np.int64)
    src = g.const(shape) if g.rng.random() < 0.5 else g.emit("Shape", [g.pick(NUMERIC)])[0]
    val = np.asarray([g.rng.standard_normal()], np.float32) if g.rng.random() < 0.7 else np.asarray([3], np.int64)
    g.emit("ConstantOfShape", [src], {"value": numpy_helper.from_array(val)})


def gen_range(g: GraphGen):
    dt = str(g.rng.choice(["float32", "int64", "int32"]))
    if dt == "float32":
        start, delta = float(g.rng.uniform(-3, 3)), float(g.rng.choice([0.5, 1.0, -0.7, 2.5]))
        limit = start + delta * float(g.rng.uniform(-1, 9))
    else:
        start, delta = int(g.rng.integers(-5, 5)), int(g.rng.choice([1, 2, -1, -3, 4]))
        limit = start + delta * int(g.rng.integers(-1, 9))
    nd = np.dtype(dt)
    g.emit("Range", [g.const(np.asarray(start, nd)), g.const(np.asarray(limit, nd)), g.const(np.asarray(delta, nd))])


def gen_depth_to_space(g: GraphGen):
    b = int(g.rng.choice([1, 2]))
    c = b * b * int(g.rng.choice([1, 2, 3]))
    x = g.pick(FLOATS, min_rank=4, max_rank=4, where=lambda v: v.shape[1] == c)
    g.emit("DepthToSpace", [x], {"blocksize": b, "mode": str(g.rng.choice(["DCR", "CRD"]))})


def gen_space_to_depth(g: GraphGen):
    b = int(g.rng.choice([1, 2]))
    x = g.pick(FLOATS, min_rank=4, max_rank=4, where=lambda v: v.shape[2] % b == 0 and v.shape[3] % b == 0)
    g.emit("SpaceToDepth", [x], {"blocksize": b})


def gen_trilu(g: GraphGen):
    x = g.pick(NUMERIC, min_rank=2)
    ins = [x]
    if g.rng.random() < 0.6:
        ins.append(g.const(np.asarray(int(g.rng.integers(-4, 5)), np.int64)))
    g.emit("Trilu", ins, {"upper": int(g.rng.integers(0, 2))})


def gen_einsum(g: GraphGen):
    eq = str(g.rng.choice(["ij,jk->ik", "bij,bjk->bik", "ij->ji", "ii->i", "ij,ij->i", "i,j->ij", "bhsd,bhtd->bhst",
                           "ij->", "...ij,...jk->...ik", "ij,kj->ik"]))
    terms = eq.split("->")[0].split(",")
    sizes = {c: int(g.rng.choice((1, 2, 3, 4))) for c in "bhijkstd"}
    ins = []
    for t in terms:
        shape = []
        for c in t.replace("...", "E"):
            shape += [2] if c == "E" else [sizes[c]]
        ins.append(g.new_input("float32", shape) if not ins or g.rng.random() < 0.5
                   else g.const(g.random_array("float32", shape)))
    g.emit("Einsum", ins, {"equation": eq})


_ACT = {
    "alpha": lambda g: f32(g, 0.05, 2.0),
}


OPS: dict[str, OpGen] = {
    **{op: OpGen(7, unary(op)) for op in ("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos",
                                          "Cosh", "Erf", "Exp", "Floor", "Log", "Neg", "Reciprocal", "Relu", "Round",
                                          "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan",
                                          "Tanh", "Identity")},
    "HardSwish": OpGen(14, unary("HardSwish")),
    "Mish": OpGen(18, unary("Mish")),
    "Elu": OpGen(7, unary("Elu", alpha=_ACT["alpha"])),
    "Celu": OpGen(12, unary("Celu", alpha=_ACT["alpha"])),
    "LeakyRelu": OpGen(7, unary("LeakyRelu", alpha=lambda g: f32(g, -1, 1))),
    "HardSigmoid": OpGen(7, unary("HardSigmoid", alpha=lambda g: f32(g, 0.05, 1), beta=lambda g: f32(g, 0, 1))),
    "Selu": OpGen(7, unary("Selu", alpha=_ACT["alpha"], gamma=lambda g: f32(g, 0.5, 2))),
    "ThresholdedRelu": OpGen(10, unary("ThresholdedRelu", alpha=lambda g: f32(g, -1, 1))),
    "Shrink": OpGen(9, unary("Shrink", bias=lambda g: f32(g, -1, 1), lambd=lambda g: f32(g, 0, 1.5))),
    "Gelu": OpGen(20, unary("Gelu", approximate=lambda g: str(g.rng.choice(["none", "tanh"])))),
    "IsNaN": OpGen(13, unary("IsNaN")),
    "IsInf": OpGen(10, gen_isinf),
    "Not": OpGen(7, gen_not),
    "AbsInt": OpGen(13, unary("Abs", INTS)),
    "NegInt": OpGen(13, unary("Neg", INTS)),
    "SignInt": OpGen(13, unary("Sign", INTS)),
    **{op: OpGen(7, binary(op), 2.0) for op in ("Add", "Sub", "Mul")},
    "Div": OpGen(7, binary("Div", FLOATS)),
    "DivInt": OpGen(7, gen_div_int),
    "Pow": OpGen(7, gen_pow),
    **{op: OpGen(8, variadic(op)) for op in ("Max", "Min", "Mean", "Sum")},
    "MaxInt": OpGen(12, binary("Max", INTS)),
    "Mod": OpGen(10, gen_mod),
    "PRelu": OpGen(7, gen_prelu),
    **{op: OpGen(7, binary(op, swap=False)) for op in ("Equal", "Less", "Greater")},
    **{op: OpGen(12, binary(op, swap=False)) for op in ("LessOrEqual", "GreaterOrEqual")},
    **{op: OpGen(7, logical(op)) for op in ("And", "Or", "Xor")},
    "Where": OpGen(9, gen_where),
    "Clip": OpGen(12, gen_clip, 1.5),
    "BitShift": OpGen(11, gen_bitshift, 0.5),
    **{op: OpGen(18, binary(op, INTS, swap=False), 0.5) for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor")},
    "Cast": OpGen(13, gen_cast, 1.5),
    "CastLike": OpGen(15, gen_castlike, 0.5),
    "ReduceSum": OpGen(7, reduce("ReduceSum", NUMERIC, input_axes_from=13), 1.5),
    **{op: OpGen(7, reduce(op, NUMERIC)) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")},
    **{op: OpGen(7, reduce(op)) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                          "ReduceSumSquare")},
    "ArgMax": OpGen(12, arg("ArgMax")),
    "ArgMin": OpGen(12, arg("ArgMin")),
    **{op: OpGen(13, softmax_like(op), 1.5) for op in ("Softmax", "LogSoftmax", "Hardmax")},
    "CumSum": OpGen(11, gen_cumsum),
    "TopK": OpGen(11, gen_topk),
    "LpNormalization": OpGen(7, gen_lpnorm, 0.5),
    "MeanVarianceNormalization": OpGen(13, gen_mvn, 0.5),
    "BatchNormalization": OpGen(15, gen_batchnorm),
    "InstanceNormalization": OpGen(7, gen_instancenorm, 0.5),
    "LayerNormalization": OpGen(17, gen_layernorm),
    "GroupNormalization": OpGen(21, gen_groupnorm, 0.5),
    "RMSNormalization": OpGen(23, gen_rmsnorm, 0.5),
    "LRN": OpGen(13, gen_lrn, 0.3),
    "Transpose": OpGen(7, gen_transpose, 1.5),
    "Reshape": OpGen(14, gen_reshape, 1.5),
    "Flatten": OpGen(13, gen_flatten),
    "Squeeze": OpGen(11, gen_squeeze),
    "Unsqueeze": OpGen(11, gen_unsqueeze),
    "Concat": OpGen(11, gen_concat),
    "Split": OpGen(11, gen_split),
    "Slice": OpGen(13, gen_slice, 1.5),
    "Gather": OpGen(13, gen_gather),
    "GatherElements": OpGen(13, gen_gather_elements),
    "ScatterElements": OpGen(16, gen_scatter_elements, 0.5),
    "Expand": OpGen(13, gen_expand),
    "Tile": OpGen(13, gen_tile),
    "Pad": OpGen(13, gen_pad),
    "Shape": OpGen(13, gen_shape, 0.5),
    "Size": OpGen(13, gen_size, 0.3),
    "ConstantOfShape": OpGen(9, gen_constant_of_shape, 0.5),
    "Range": OpGen(11, gen_range, 0.5),
    "DepthToSpace": OpGen(13, gen_depth_to_space, 0.5),
    "SpaceToDepth": OpGen(13, gen_space_to_depth, 0.5),
    "Trilu": OpGen(14, gen_trilu, 0.5),
    "Einsum": OpGen(12, gen_einsum, 0.5),
    "MatMul": OpGen(13, gen_matmul, 2.0),
    "Gemm": OpGen(13, gen_gemm),
    "Conv": OpGen(11, gen_conv, 1.5),
    "ConvTranspose": OpGen(11, lambda g: gen_conv(g, transpose=True)),
    "MaxPool": OpGen(12, pool("MaxPool")),
    "AveragePool": OpGen(11, pool("AveragePool")),
    "LpPool": OpGen(11, pool("LpPool"), 0.5),
    "GlobalAveragePool": OpGen(7, global_pool("GlobalAveragePool"), 0.5),
    "GlobalMaxPool": OpGen(7, global_pool("GlobalMaxPool"), 0.5),
    "GlobalLpPool": OpGen(7, global_pool("GlobalLpPool"), 0.3),
    "Resize": OpGen(13, gen_resize),
}


def op_name(key: str) -> str:
    """The ONNX op a table row generates ("DivInt" -> "Div")."""
    for suffix in ("Int",):
        if key.endswith(suffix) and key[: -len(suffix)] in OPS:
            return key[: -len(suffix)]
    return key
