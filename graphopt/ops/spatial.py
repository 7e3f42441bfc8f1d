"""Image-layout and sampling ops: DepthToSpace, SpaceToDepth, GridSample, AffineGrid,
Col2Im, CenterCropPad, MaxUnpool, DeformConv.

Sampling is vectorized over every output position: per spatial axis the source
taps and their weights are computed once, then the taps are gathered with
fancy indexing and summed (``2**r`` gathers for linear, ``4**r`` for cubic).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .nn import compute_dtype
from .registry import REQUIRED, in_type, normalize_axis, register_op
from .shape_ops import values_of
from .windows import geometry, spatial_attrs

# ---------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth


def _d2s_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None or t.shape is None or len(t.shape) != 4:
        return [t]
    n, c, h, w = t.shape
    b = attrs["blocksize"]
    mul = lambda d, k: d * k if isinstance(d, int) else None  # noqa: E731
    if node.op_type == "DepthToSpace":
        return [TensorType(t.dtype, (n, c // (b * b) if isinstance(c, int) else None, mul(h, b), mul(w, b)))]
    div = lambda d: d // b if isinstance(d, int) else None  # noqa: E731
    return [TensorType(t.dtype, (n, mul(c, b * b), div(h), div(w)))]


@register_op("DepthToSpace", inputs=["input"], attrs={"blocksize": REQUIRED, "mode": "DCR"}, infer=_d2s_infer)
def depth_to_space(inputs, attrs, ctx):
    """(N, C*b*b, H, W) -> (N, C, H*b, W*b); DCR takes the depth as (b, b, C), CRD as (C, b, b)."""
    x = inputs[0]
    n, c, h, w = x.shape
    b = int(attrs["blocksize"])
    if c % (b * b):
        raise ShapeError(f"DepthToSpace: {c} channels are not divisible by blocksize^2 = {b * b}")
    co = c // (b * b)
    if attrs["mode"] == "DCR":
        y = x.reshape(n, b, b, co, h, w).transpose(0, 3, 4, 1, 5, 2)
    elif attrs["mode"] == "CRD":
        y = x.reshape(n, co, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ShapeError(f"DepthToSpace mode {attrs['mode']!r} (DCR or CRD)")
    return [np.ascontiguousarray(y).reshape(n, co, h * b, w * b)]


@register_op("SpaceToDepth", inputs=["input"], attrs={"blocksize": REQUIRED, "mode": "DCR"}, infer=_d2s_infer)
def space_to_depth(inputs, attrs, ctx):
    """(N, C, H, W) -> (N, C*b*b, H/b, W/b), the depth ordered (b, b, C) (DCR) or (C, b, b) (CRD)."""
    x = inputs[0]
    n, c, h, w = x.shape
    b = int(attrs["blocksize"])
    if h % b or w % b:
        raise ShapeError(f"SpaceToDepth: spatial size {h}x{w} is not divisible by blocksize {b}")
    perm = {"DCR": (0, 3, 5, 1, 2, 4), "CRD": (0, 1, 3, 5, 2, 4)}.get(attrs["mode"])
    if perm is None:
        raise ShapeError(f"SpaceToDepth mode {attrs['mode']!r} (DCR or CRD)")
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(perm)
    return [np.ascontiguousarray(y).reshape(n, c * b * b, h // b, w // b)]


# ---------------------------------------------------------------------------
# GridSample, AffineGrid


def _grid_sample_infer(node: Node, attrs: dict):
    x, g = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    if x.shape is None or g is None or g.shape is None:
        return [TensorType(x.dtype, None)]
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *g.shape[1:-1]))]


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold coordinates into [lo, hi] by reflecting at the borders, as often as needed."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.floor(d / rng)
    r = d - n * rng
    even = (n % 2) == 0
    from_lo = np.where(even, lo + r, hi - r)
    from_hi = np.where(even, hi - r, lo + r)
    return np.where(below, from_lo, np.where(above, from_hi, x))


def _cubic_coeffs(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    """Keys' cubic weights of the taps at -1, 0, 1, 2 for a fractional offset ``t``."""
    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _grid_taps(x: np.ndarray, size: int, mode: str, padding: str, align: bool):
    """Per output position along one axis: tap indices, weights, and which taps read real pixels."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    if mode == "nearest":
        x = np.rint(x)
    if padding == "border":
        x = np.where((x < lo) | (x > hi), np.clip(x, 0, size - 1), x)
    elif padding == "reflection":
        x = _reflect(x, lo, hi)
    if mode == "nearest":
        idx = [np.trunc(x).astype(np.int64)]
        w = [np.ones_like(x)]
    else:
        base = np.floor(x)
        t = x - base
        base = base.astype(np.int64)
        if mode == "linear":
            idx, w = [base, base + 1], [1 - t, t]
        else:
            idx, w = [base - 1, base, base + 1, base + 2], _cubic_coeffs(t)
    taps = []
    for i, wt in zip(idx, w):
        if padding == "border":
            i = np.clip(i, 0, size - 1)
        elif padding == "reflection":
            i = _reflect(i.astype(np.float64), lo, hi).astype(np.int64)
        valid = (i >= 0) & (i < size)
        taps.append((np.clip(i, 0, size - 1), wt, valid))
    return taps


@register_op("GridSample", inputs=["X", "grid"], attrs={"align_corners": 0, "mode": "linear",
                                                        "padding_mode": "zeros"}, infer=_grid_sample_infer)
def grid_sample(inputs, attrs, ctx):
    """Sample ``X`` (N, C, *D) at the normalized ``grid`` (N, *O, r) positions, the grid's last axis
    listing coordinates innermost axis first (x, y, z); any number of spatial axes."""
    x, grid = inputs
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(attrs["mode"], attrs["mode"])
    padding = attrs["padding_mode"]
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise UnsupportedOpError(f"GridSample mode {attrs['mode']!r} / padding_mode {padding!r}")
    align = bool(attrs["align_corners"])
    n, c = x.shape[:2]
    sizes = x.shape[2:]
    r = len(sizes)
    if grid.shape[-1] != r or grid.shape[0] != n:
        raise ShapeError(f"GridSample: grid {list(grid.shape)} for input {list(x.shape)}")
    work = np.float64
    g = grid.astype(work)
    per_axis = []
    for axis, size in enumerate(sizes):
        gi = g[..., r - 1 - axis]
        pos = (gi + 1) / 2 * (size - 1) if align else ((gi + 1) * size - 1) / 2
        per_axis.append(_grid_taps(pos, size, mode, padding, align))
    xt = np.moveaxis(x.astype(work), 1, -1)               # (N, *D, C)
    bidx = np.arange(n).reshape((n,) + (1,) * (grid.ndim - 2))
    out = np.zeros(grid.shape[:-1] + (c,), work)
    for combo in itertools.product(*per_axis):
        w = np.ones(grid.shape[:-1], work)
        valid = np.ones(grid.shape[:-1], bool)
        for _, wt, ok in combo:
            w = w * wt
            valid &= ok
        vals = xt[(bidx,) + tuple(i for i, _, _ in combo)]  # (N, *O, C)
        out += vals * np.where(valid, w, 0.0)[..., None]
    return [np.moveaxis(out, -1, 1).astype(x.dtype)]


def _affine_grid_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    size = values_of(node.input(1))
    if t is None:
        return [None]
    if size is None:
        return [TensorType(t.dtype, None)]
    r = len(size) - 2
    return [TensorType(t.dtype, (size[0], *size[2:], r))]


def _base_coords(n: int, align: bool) -> np.ndarray:
    if align:
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(n)
    return (np.arange(n) * 2.0 + 1.0) / n - 1.0


@register_op("AffineGrid", inputs=["theta", "size"], attrs={"align_corners": 0}, infer=_affine_grid_infer)
def affine_grid(inputs, attrs, ctx):
    """Normalized sampling grid (N, *S, r) of the affine maps ``theta`` (N, r, r+1) over ``size``."""
    theta, size = inputs
    size = [int(s) for s in np.asarray(size).reshape(-1)]
    n, spatial = size[0], size[2:]
    r = len(spatial)
    if theta.shape != (n, r, r + 1):
        raise ShapeError(f"AffineGrid: theta {list(theta.shape)} for size {size}")
    align = bool(attrs["align_corners"])
    axes = [_base_coords(s, align) for s in spatial]        # per data axis (D, H, W order)
    mesh = np.meshgrid(*axes, indexing="ij")
    # homogeneous coordinates listed innermost axis first: (x, y[, z], 1)
    base = np.stack([m.reshape(-1) for m in mesh[::-1]] + [np.ones(mesh[0].size)], axis=-1)
    work = np.float64
    grid = np.einsum("pk,nrk->npr", base.astype(work), theta.astype(work))
    return [grid.reshape((n, *spatial, r)).astype(theta.dtype)]


# ---------------------------------------------------------------------------
# Col2Im, CenterCropPad, MaxUnpool


def _col2im_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    img, blk = values_of(node.input(1)), values_of(node.input(2))
    if t is None:
        return [None]
    if t.shape is None or img is None or blk is None or not isinstance(t.shape[1], int):
        return [TensorType(t.dtype, None)]
    return [TensorType(t.dtype, (t.shape[0], t.shape[1] // math.prod(blk), *img))]


@register_op("Col2Im", inputs=["input", "image_shape", "block_shape"],
             attrs={"dilations": None, "pads": None, "strides": None}, infer=_col2im_infer)
def col2im(inputs, attrs, ctx):
    """The inverse of im2col: (N, C*prod(block), L) blocks summed back into (N, C, *image)."""
    x, image, block = inputs
    image = [int(v) for v in np.asarray(image).reshape(-1)]
    ks = [int(v) for v in np.asarray(block).reshape(-1)]
    r = len(ks)
    strides, dilations, pb, pe = spatial_attrs(attrs, ks)
    n, ck, length = x.shape
    k = math.prod(ks)
    if ck % k:
        raise ShapeError(f"Col2Im: {ck} rows are not a multiple of the block size {k}")
    c = ck // k
    blocks = [(i + b + e - d * (kk - 1) - 1) // s + 1 for i, b, e, d, kk, s in zip(image, pb, pe, dilations, ks, strides)]
    if math.prod(blocks) != length:
        raise ShapeError(f"Col2Im: {length} blocks, the geometry gives {blocks}")
    cols = x.reshape((n, c) + tuple(ks) + tuple(blocks))
    padded = [i + b + e for i, b, e in zip(image, pb, pe)]
    buf = np.zeros((n, c) + tuple(padded), dtype=compute_dtype(x.dtype))
    for kk in itertools.product(*[range(v) for v in ks]):
        dst = tuple(slice(o * d, o * d + (nb - 1) * s + 1, s) for o, d, nb, s in zip(kk, dilations, blocks, strides))
        buf[(slice(None), slice(None)) + dst] += cols[(slice(None), slice(None)) + kk]
    crop = tuple(slice(b, b + i) for b, i in zip(pb, image))
    return [np.ascontiguousarray(buf[(slice(None), slice(None)) + crop]).astype(x.dtype, copy=False)]


def _ccp_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    shape = values_of(node.input(1))
    if t is None or t.shape is None:
        return [t]
    if shape is None:
        return [TensorType(t.dtype, (None,) * len(t.shape))]
    r = len(t.shape)
    axes = attrs.get("axes")
    axes = list(range(r)) if axes is None else [normalize_axis(a, r, node) for a in axes]
    out = list(t.shape)
    for a, s in zip(axes, shape):
        out[a] = s
    return [TensorType(t.dtype, tuple(out))]


@register_op("CenterCropPad", inputs=["input_data", "shape"], attrs={"axes": None}, infer=_ccp_infer)
def center_crop_pad(inputs, attrs, ctx):
    """Crop (centered) or zero-pad (centered) each of ``axes`` to ``shape``; the odd element goes to the end."""
    x, shape = inputs
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    axes = attrs.get("axes")
    axes = list(range(x.ndim)) if axes is None else [normalize_axis(a, x.ndim, ctx.node) for a in axes]
    if len(axes) != len(shape):
        raise ShapeError(f"CenterCropPad: {len(shape)} sizes for {len(axes)} axes")
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    out_shape = list(x.shape)
    for a, s in zip(axes, shape):
        dim = x.shape[a]
        out_shape[a] = s
        if s < dim:
            b = (dim - s) // 2
            src[a] = slice(b, b + s)
        elif s > dim:
            b = (s - dim) // 2
            dst[a] = slice(b, b + dim)
    out = np.zeros(out_shape, x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return [out]


def _unpool_out(x_shape, attrs):
    ks = list(attrs["kernel_shape"])
    strides, _, pb, pe = spatial_attrs(attrs, ks)
    return list(x_shape[:2]) + [(d - 1) * s + k - b - e for d, s, k, b, e in zip(x_shape[2:], strides, ks, pb, pe)]


def _unpool_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None]
    if node.input(2) is not None:
        shape = values_of(node.input(2))
        return [TensorType(t.dtype, None if shape is None else tuple(shape))]
    if t.shape is None or not t.is_static:
        return [TensorType(t.dtype, None if t.shape is None else (None,) * len(t.shape))]
    return [TensorType(t.dtype, tuple(_unpool_out(t.shape, attrs)))]


@register_op("MaxUnpool", inputs=["X", "I", "?output_shape"],
             attrs={"kernel_shape": REQUIRED, "pads": None, "strides": None}, infer=_unpool_infer)
def max_unpool(inputs, attrs, ctx):
    """Scatter each pooled value back to the flat position MaxPool's Indices recorded (positions in the
    shape the pool geometry gives); zeros elsewhere, and zeros padding at the end up to ``output_shape``."""
    x, idx = inputs[:2]
    shape = _unpool_out(x.shape, attrs)
    out = np.zeros(math.prod(shape), x.dtype)
    flat = np.asarray(idx).astype(np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= out.size):
        raise ShapeError(f"MaxUnpool: indices out of range for output shape {shape}")
    out[flat] = x.reshape(-1)
    out = out.reshape(shape)
    if len(inputs) > 2 and inputs[2] is not None:
        want = [int(v) for v in np.asarray(inputs[2]).reshape(-1)]
        if len(want) != len(shape) or any(w < s for w, s in zip(want, shape)):
            raise ShapeError(f"MaxUnpool: output_shape {want} is smaller than the unpooled {shape}")
        out = np.pad(out, [(0, w - s) for w, s in zip(want, shape)])
    return [out]


# ---------------------------------------------------------------------------
# DeformConv


def _deform_infer(node: Node, attrs: dict):
    x, w, off = in_type(node, 0), in_type(node, 1), in_type(node, 2)
    if x is None:
        return [None]
    if x.shape is None or w is None or w.shape is None or off is None or off.shape is None:
        return [TensorType(x.dtype, None)]
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], *off.shape[2:]))]


def _bilinear_zero(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (N, C, H, W) at float positions (N, C, ...); zero outside."""
    n, c, h, w = img.shape
    y0, x0 = np.floor(y), np.floor(x)
    ty, tx = y - y0, x - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ni = np.arange(n).reshape((n,) + (1,) * (y.ndim - 1))
    ci = np.arange(c).reshape((1, c) + (1,) * (y.ndim - 2))
    out = np.zeros(y.shape, img.dtype)
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            vals = img[ni, ci, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out += np.where(ok, vals * wy * wx, 0)
    return out


@register_op("DeformConv", inputs=["X", "W", "offset", "?B", "?mask"],
             attrs={"dilations": None, "group": 1, "kernel_shape": None, "offset_group": 1, "pads": None,
                    "strides": None}, infer=_deform_infer)
def deform_conv(inputs, attrs, ctx):
    """2-D deformable convolution: each kernel tap reads the input at its offset position (bilinear,
    zero outside), scaled by the optional mask, then one grouped GEMM as in Conv."""
    x, w, off = inputs[:3]
    b = inputs[3] if len(inputs) > 3 else None
    mask = inputs[4] if len(inputs) > 4 else None
    if x.ndim != 4:
        raise UnsupportedOpError(f"DeformConv of a {x.ndim - 2}-D input (only 2-D is implemented)")
    work = np.float64 if x.dtype == np.float64 else np.float32
    xf, wf, of = x.astype(work), w.astype(work), off.astype(work)
    n, c, h, wd = x.shape
    m = w.shape[0]
    ks = list(attrs.get("kernel_shape") or w.shape[2:])
    kh, kw = ks
    g, og = int(attrs["group"]), int(attrs["offset_group"])
    strides, dil, _, _ = spatial_attrs(attrs, ks)
    out, pb, _ = geometry((h, wd), ks, attrs)
    oh, ow = out
    k = kh * kw
    of = of.reshape(n, og, k, 2, oh, ow)
    ky = np.repeat(np.arange(kh) * dil[0], kw)           # per tap
    kx = np.tile(np.arange(kw) * dil[1], kh)
    py = (np.arange(oh) * strides[0] - pb[0])[None, :, None] + ky[:, None, None]   # (K, OH, 1)
    px = (np.arange(ow) * strides[1] - pb[1])[None, None, :] + kx[:, None, None]   # (K, 1, OW)
    cg_off = c // og
    ys = py[None, None] + of[:, :, :, 0]                  # (N, OG, K, OH, OW)
    xs = px[None, None] + of[:, :, :, 1]
    ys = np.repeat(ys, cg_off, axis=1)                    # (N, C, K, OH, OW)
    xs = np.repeat(xs, cg_off, axis=1)
    cols = _bilinear_zero(xf, ys, xs)
    if mask is not None:
        mk = mask.astype(work).reshape(n, og, k, oh, ow)
        cols = cols * np.repeat(mk, cg_off, axis=1)
    cg, mg = c // g, m // g
    cols = cols.reshape(n, g, cg * k, oh * ow)
    y = np.matmul(wf.reshape(g, mg, cg * k), cols).reshape(n, m, oh, ow)
    if b is not None:
        y = y + b.astype(work).reshape(1, m, 1, 1)
    return [y.astype(x.dtype)]
