"""Generators of MatMul, Gemm, Conv, ConvTranspose, the pools and Resize (rows of ``opgen.OPS``).

Windows draw strides, dilations, explicit or automatic padding and ceil mode,
and now and then a kernel wider than the input.
"""
from __future__ import annotations

import numpy as np

from .gen import DIMS, FLOATS, GraphGen, f32, i64


def gen_matmul(g: GraphGen):
    a = g.pick(FLOATS, min_rank=1, max_rank=4)
    k = a.shape[-1]
    kind = int(g.rng.integers(0, 4))
    if kind == 0:
        bshape = (k,)
    elif kind == 1:
        bshape = (k, int(g.rng.choice(DIMS)))
    else:
        batch = list(a.shape[:-2])
        batch = [1 if g.rng.random() < 0.3 else d for d in batch][int(g.rng.integers(0, len(batch) + 1)):]
        bshape = (*batch, k, int(g.rng.choice(DIMS)))
    b = g.const(g.random_array("float32", bshape)) if g.rng.random() < 0.6 else g.new_input("float32", bshape)
    ins = [a, b] if g.rng.random() < 0.8 or a.rank < 2 else [b, a]
    if ins[0] is b and b.rank >= 1 and a.rank >= 2 and b.shape[-1] != a.shape[-2]:
        ins = [a, b]
    g.emit("MatMul", ins)


def gen_gemm(g: GraphGen):
    a = g.pick(FLOATS, min_rank=2, max_rank=2)
    ta, tb = int(g.rng.integers(0, 2)), int(g.rng.integers(0, 2))
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    n = int(g.rng.choice(DIMS))
    b = g.const(g.random_array("float32", (n, k) if tb else (k, n)))
    ins = [a, b]
    if g.rng.random() < 0.7:
        cs = [(), (n,), (1, n), (m, 1), (m, n), (1, 1)]
        ins.append(g.const(g.random_array("float32", cs[int(g.rng.integers(0, len(cs)))])))
    attrs = {"transA": ta, "transB": tb}
    if g.rng.random() < 0.4:
        attrs["alpha"] = f32(g, -2, 2)
    if g.rng.random() < 0.4:
        attrs["beta"] = f32(g, -2, 2)
    g.emit("Gemm", ins, attrs)


def _window_attrs(g: GraphGen, spatial, kernel, dilate=True, ceil=False):
    r = len(spatial)
    attrs = {}
    if g.rng.random() < 0.5:
        attrs["strides"] = g.rng.integers(1, 4, r).tolist()
    if dilate and g.rng.random() < 0.3:
        attrs["dilations"] = g.rng.integers(1, 3, r).tolist()
    mode = g.rng.random()
    if mode < 0.15:
        attrs["auto_pad"] = str(g.rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    elif mode < 0.6:
        attrs["pads"] = [int(g.rng.integers(0, k)) for k in list(kernel) * 2]
    if ceil and g.rng.random() < 0.3:
        attrs["ceil_mode"] = 1
    return attrs


def gen_conv(g: GraphGen, transpose: bool = False):
    x = g.pick(FLOATS, min_rank=3, max_rank=5)
    c = x.shape[1]
    groups = int(g.rng.choice([d for d in range(1, c + 1) if c % d == 0])) if g.rng.random() < 0.4 else 1
    m = groups * int(g.rng.choice((1, 2, 3)))
    kernel = [int(g.rng.integers(1, min(d, 3) + 1)) if d else 1 for d in x.shape[2:]]
    if g.rng.random() < 0.1:
        kernel = [int(g.rng.integers(1, 5)) for _ in kernel]  # maybe wider than the input
    attrs = _window_attrs(g, x.shape[2:], kernel)
    if transpose:
        w = g.const(g.random_array("float32", (c, m // groups, *kernel)))
        strides = attrs.get("strides", [1] * len(kernel))
        if g.rng.random() < 0.3 and max(strides) > 1:
            attrs["output_padding"] = [int(g.rng.integers(0, s)) for s in strides]
    else:
        w = g.const(g.random_array("float32", (m, c // groups, *kernel)))
    if groups > 1:
        attrs["group"] = groups
    if g.rng.random() < 0.5:
        attrs["kernel_shape"] = kernel
    ins = [x, w]
    if g.rng.random() < 0.6:
        ins.append(g.const(g.random_array("float32", (m,))))
    g.emit("ConvTranspose" if transpose else "Conv", ins, attrs)


def pool(op: str):
    def fn(g: GraphGen):
        x = g.pick(FLOATS, min_rank=3, max_rank=5)
        kernel = [int(g.rng.integers(1, 4)) for _ in x.shape[2:]]
        dilate = op == "MaxPool" or g.opset >= (19 if op == "AveragePool" else 18)
        attrs = _window_attrs(g, x.shape[2:], kernel, dilate=dilate, ceil=op != "LpPool" or g.opset >= 18)
        attrs["kernel_shape"] = kernel
        if op == "AveragePool" and g.rng.random() < 0.5:
            attrs["count_include_pad"] = 1
        if op == "LpPool":
            attrs["p"] = int(g.rng.choice([1, 2, 3]))
        n_out = 2 if op == "MaxPool" and g.rng.random() < 0.2 and "dilations" not in attrs else 1
        g.emit(op, [x], attrs, n_out=n_out)
    return fn


def global_pool(op: str):
    def fn(g: GraphGen):
        x = g.pick(FLOATS, min_rank=3, max_rank=5)
        g.emit(op, [x], {"p": int(g.rng.choice([1, 2, 3]))} if op == "GlobalLpPool" else {})
    return fn


def gen_resize(g: GraphGen):
    x = g.pick(FLOATS, min_rank=3, max_rank=4, where=lambda v: all(d > 0 for d in v.shape))
    mode = str(g.rng.choice(["nearest", "linear", "cubic"]))
    ctm = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
    if mode != "nearest":
        ctm.append("half_pixel_symmetric") if g.opset >= 19 else None
    attrs = {"mode": mode, "coordinate_transformation_mode": str(g.rng.choice(ctm))}
    if mode == "nearest":
        attrs["nearest_mode"] = str(g.rng.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    if mode == "cubic" and g.rng.random() < 0.5:
        attrs["cubic_coeff_a"] = f32(g, -0.75, -0.5)
        if g.rng.random() < 0.5:
            attrs["exclude_outside"] = 1
    spatial = x.shape[2:]
    if g.rng.random() < 0.5:
        scales = [1.0, 1.0] + [float(g.rng.choice([0.5, 1.0, 1.5, 2.0, 3.0])) for _ in spatial]
        ins = [x, None, g.const(np.asarray(scales, np.float32))]
    else:
        sizes = list(x.shape[:2]) + [int(g.rng.integers(1, 9)) for _ in spatial]
        ins = [x, None, None, g.const(i64(sizes))]
    g.emit("Resize", ins, attrs)
