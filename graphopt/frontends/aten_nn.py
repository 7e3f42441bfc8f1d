"""ATen converters for neural-network layers: convolution, matrix products,
normalizations, pooling, resizing, embedding and attention.

Norm layers map to the ONNX op of opset 17 that computes them
(BatchNormalization, LayerNormalization); group norm, which has no opset-17
op, becomes ``Reshape(N, G, -1) -> InstanceNormalization -> Reshape`` with the
per-channel affine applied afterwards. ``scaled_dot_product_attention`` (when a
decomposition table leaves it in the graph) becomes MatMul/Softmax/MatMul.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Value
from .aten_math import _to_bool, reduce
from .aten_table import converter


def _ints(x, n: int) -> list[int]:
    x = list(x) if isinstance(x, (list, tuple)) else [x]
    return [int(v) for v in (x * n if len(x) == 1 else x)]


# ---------------------------------------------------------------------------
# convolution


@converter("aten.convolution.default", "aten._convolution.default")
def convolution(cx, x, w, b, stride, padding, dilation, transposed, output_padding, groups, *rest):
    k = cx.rank(w) - 2
    if isinstance(padding, str):
        cx.unsupported(f"string padding {padding!r}")
    pads = _ints(padding, k)
    attrs = dict(strides=_ints(stride, k), pads=pads + pads, dilations=_ints(dilation, k), group=int(groups),
                 kernel_shape=[int(d) for d in w.shape[2:]])
    if any(not isinstance(d, int) for d in w.shape):
        cx.unsupported("a convolution weight of dynamic shape")
    if transposed:
        out_pad = _ints(output_padding, k)
        if any(out_pad):
            attrs["output_padding"] = out_pad
        return cx.op("ConvTranspose", x, w, b, **attrs)
    return cx.op("Conv", x, w, b, **attrs)


@converter("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default")
def conv_nd(cx, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    return convolution(cx, x, w, b, stride, padding, dilation, False, 0, groups)


# ---------------------------------------------------------------------------
# matrix products


def _transposed_param(cx, arg_index: int):
    """The weight under ``permute(w, [1, 0])`` when the FX argument is one (for Gemm's transB)."""
    node = cx.node.args[arg_index]
    if getattr(node, "target", None) is None or str(node.target) not in ("aten.permute.default", "aten.t.default"):
        return None
    if str(node.target) == "aten.permute.default" and list(node.args[1]) != [1, 0]:
        return None
    src = node.args[0]
    return cx.env_value(src)


@converter("aten.addmm.default")
def addmm(cx, bias, a, b, *, beta=1, alpha=1):
    dt = cx.out_dtype()
    wt = _transposed_param(cx, 2)
    if wt is not None and wt.is_const:
        return cx.op("Gemm", a, wt, cx.cast(bias, dt), alpha=float(alpha), beta=float(beta), transB=1)
    return cx.op("Gemm", a, b, cx.cast(bias, dt), alpha=float(alpha), beta=float(beta))


@converter("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def matmul(cx, a, b):
    return cx.op("MatMul", a, b)


@converter("aten.baddbmm.default")
def baddbmm(cx, bias, a, b, *, beta=1, alpha=1):
    prod = cx.op("MatMul", a, b)
    if alpha != 1:
        prod = cx.op("Mul", prod, cx.const(alpha, prod.dtype))
    if beta == 0:
        return prod
    if beta != 1:
        bias = cx.op("Mul", bias, cx.const(beta, bias.dtype))
    return cx.op("Add", bias, prod)


@converter("aten.linear.default")
def linear(cx, x, w, b=None):
    if cx.rank(x) == 2 and cx.rank(w) == 2:
        return cx.op("Gemm", x, w, b, transB=1)
    y = cx.op("MatMul", x, cx.op("Transpose", w, perm=[1, 0]) if cx.rank(w) == 2 else w)
    return y if b is None else cx.op("Add", y, b)


@converter("aten.dot.default", "aten.vdot.default")
def dot(cx, a, b):
    return cx.op("MatMul", a, b)


# ---------------------------------------------------------------------------
# normalization


def _channel_params(cx, x, w, b, channels):
    dt = x.dtype
    w = cx.const(np.ones(channels), dt) if w is None else cx.cast(w, dt)
    b = cx.const(np.zeros(channels), dt) if b is None else cx.cast(b, dt)
    return w, b


def _channels(cx, x):
    c = cx.dim(x, 1)
    if not isinstance(c, int):
        cx.unsupported("normalization over a dynamic channel dim")
    return c


@converter("aten._native_batch_norm_legit_no_training.default")
def batch_norm_no_training(cx, x, w, b, mean, var, momentum, eps):
    c = _channels(cx, x)
    w, b = _channel_params(cx, x, w, b, c)
    y = cx.op("BatchNormalization", x, w, b, mean, var, epsilon=float(eps))
    return y, None, None


@converter("aten.native_batch_norm.default", "aten._native_batch_norm_legit.default",
           "aten._native_batch_norm_legit_functional.default")
def native_batch_norm(cx, x, w, b, mean, var, training, momentum, eps):
    if training or mean is None:
        return _batch_stats_norm(cx, x, w, b, eps), None, None
    return batch_norm_no_training(cx, x, w, b, mean, var, momentum, eps)


@converter("aten._native_batch_norm_legit.no_stats")
def batch_norm_no_stats(cx, x, w, b, training, momentum, eps):
    return _batch_stats_norm(cx, x, w, b, eps), None, None


def _batch_stats_norm(cx, x, w, b, eps):
    """Batch norm with the batch's own statistics (``track_running_stats=False``)."""
    r = cx.rank(x)
    axes = [0] + list(range(2, r))
    mean = reduce(cx, "ReduceMean", x, axes, True)
    d = cx.op("Sub", x, mean)
    var = reduce(cx, "ReduceMean", cx.op("Mul", d, d), axes, True)
    y = cx.op("Div", d, cx.op("Sqrt", cx.op("Add", var, cx.const(eps, x.dtype))))
    return _affine(cx, y, w, b, r)


def _affine(cx, y, w, b, rank):
    shape = cx.const([-1] + [1] * (rank - 2), "int64")
    if w is not None:
        y = cx.op("Mul", y, cx.op("Reshape", cx.cast(w, y.dtype), shape))
    if b is not None:
        y = cx.op("Add", y, cx.op("Reshape", cx.cast(b, y.dtype), shape))
    return y


@converter("aten.batch_norm.default")
def batch_norm(cx, x, w, b, mean, var, training, momentum, eps, cudnn_enabled=False):
    return native_batch_norm(cx, x, w, b, mean, var, training, momentum, eps)[0]


@converter("aten.native_layer_norm.default")
def native_layer_norm(cx, x, normalized_shape, w, b, eps):
    shape = [int(d) for d in normalized_shape]
    dt = x.dtype
    w = cx.const(np.ones(shape), dt) if w is None else cx.cast(w, dt)
    want_stats = cx.uses_output(1) or cx.uses_output(2)
    outs = cx.op("LayerNormalization", x, w, None if b is None else cx.cast(b, dt), axis=-len(shape),
                 epsilon=float(eps), num_outputs=3 if want_stats else 1)
    return tuple(outs) if want_stats else (outs, None, None)


@converter("aten.layer_norm.default")
def layer_norm(cx, x, normalized_shape, w=None, b=None, eps=1e-5, cudnn_enable=True):
    return native_layer_norm(cx, x, normalized_shape, w, b, eps)[0]


@converter("aten.native_group_norm.default")
def native_group_norm(cx, x, w, b, n, c, hxw, group, eps):
    if cx.uses_output(1) or cx.uses_output(2):
        cx.unsupported("the mean/rstd outputs of group norm")
    return _group_norm(cx, x, int(group), w, b, eps), None, None


@converter("aten.group_norm.default")
def group_norm(cx, x, num_groups, w=None, b=None, eps=1e-5, cudnn_enabled=True):
    return _group_norm(cx, x, int(num_groups), w, b, eps)


def _group_norm(cx, x, groups, w, b, eps):
    r = cx.rank(x)
    dt = x.dtype
    grouped = cx.op("Reshape", x, cx.const([0, groups, -1], "int64"))
    normed = cx.op("InstanceNormalization", grouped, cx.const(np.ones(groups), dt),
                   cx.const(np.zeros(groups), dt), epsilon=float(eps))
    shape = cx.ints([0] + [cx.dim(x, i) for i in range(1, r)])
    y = cx.op("Reshape", normed, shape)
    return _affine(cx, y, w, b, r)


# ---------------------------------------------------------------------------
# pooling


def _pool_attrs(k, kernel_size, stride, padding, ceil_mode, dilation=None):
    kernel = _ints(kernel_size, k)
    strides = _ints(stride, k) if stride not in (None, [], ()) else kernel
    pads = _ints(padding, k)
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads + pads, ceil_mode=int(bool(ceil_mode)))
    if dilation is not None and any(d != 1 for d in _ints(dilation, k)):
        attrs["dilations"] = _ints(dilation, k)
    return attrs


def _max_pool(k):
    def conv(cx, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        if cx.uses_output(1):
            cx.unsupported("the indices output of max pooling")
        y = cx.op("MaxPool", x, **_pool_attrs(k, kernel_size, stride, padding, ceil_mode, dilation))
        return y, None

    def conv_values(cx, *args, **kwargs):
        return conv(cx, *args, **kwargs)[0]

    return conv, conv_values


for _k in (1, 2, 3):
    _with_idx, _plain = _max_pool(_k)
    converter(f"aten.max_pool{_k}d_with_indices.default")(_with_idx)
    converter(f"aten.max_pool{_k}d.default")(_plain)


def _avg_pool(k):
    def conv(cx, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
        if divisor_override is not None:
            cx.unsupported("avg_pool with divisor_override")
        attrs = _pool_attrs(k, kernel_size, stride, padding, ceil_mode)
        return cx.op("AveragePool", x, count_include_pad=int(bool(count_include_pad)), **attrs)

    return conv


for _k in (1, 2, 3):
    converter(f"aten.avg_pool{_k}d.default")(_avg_pool(_k))


def _adaptive(pool_op, global_op, k):
    def conv(cx, x, output_size):
        out = _ints(output_size, k)
        spatial = [cx.dim(x, i) for i in range(cx.rank(x) - k, cx.rank(x))]
        if all(o == 1 for o in out):
            y = cx.op(global_op, x)
        elif all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
            kernel = [s // o for s, o in zip(spatial, out)]
            y = cx.op(pool_op, x, kernel_shape=kernel, strides=kernel)
        else:
            cx.unsupported(f"adaptive pooling from {spatial} to {out} (sizes that do not divide evenly)")
        if pool_op == "MaxPool":
            if cx.uses_output(1):
                cx.unsupported("the indices output of adaptive max pooling")
            return y, None
        return y

    return conv


for _k in (1, 2, 3):
    converter(f"aten.adaptive_avg_pool{_k}d.default", f"aten._adaptive_avg_pool{_k}d.default")(
        _adaptive("AveragePool", "GlobalAveragePool", _k))
    converter(f"aten.adaptive_max_pool{_k}d.default")(_adaptive("MaxPool", "GlobalMaxPool", _k))


# ---------------------------------------------------------------------------
# resizing


def _resize(cx, x, output_size, scales, mode, ctm):
    k = len(output_size) if output_size is not None else len(scales)
    if scales is not None and all(s is not None for s in scales):
        sc = cx.const(np.asarray([1.0, 1.0] + [float(s) for s in scales], np.float32), "float32")
        return cx.op("Resize", x, None, sc, mode=mode, coordinate_transformation_mode=ctm, nearest_mode="floor")
    out_shape = cx.out_shape()
    if out_shape is None or len(out_shape) != k + 2:
        cx.unsupported("resize without a known output size")
    sizes = cx.ints([cx.dim(x, 0), cx.dim(x, 1)] + [int(s) if not isinstance(s, Value) else s
                                                     for s in output_size])
    return cx.op("Resize", x, None, None, sizes, mode=mode, coordinate_transformation_mode=ctm,
                 nearest_mode="floor")


@converter("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec", "aten.upsample_nearest3d.vec")
def upsample_nearest_vec(cx, x, output_size, scale_factors):
    return _resize(cx, x, output_size, scale_factors, "nearest", "asymmetric")


@converter("aten.upsample_nearest2d.default")
def upsample_nearest2d(cx, x, output_size, scales_h=None, scales_w=None):
    scales = None if scales_h is None or scales_w is None else [scales_h, scales_w]
    return _resize(cx, x, output_size, scales, "nearest", "asymmetric")


@converter("aten.upsample_bilinear2d.vec", "aten.upsample_linear1d.vec", "aten.upsample_trilinear3d.vec")
def upsample_linear_vec(cx, x, output_size, align_corners, scale_factors):
    ctm = "align_corners" if align_corners else "pytorch_half_pixel"
    return _resize(cx, x, output_size, None if align_corners else scale_factors, "linear", ctm)


@converter("aten.upsample_bilinear2d.default")
def upsample_bilinear2d(cx, x, output_size, align_corners, scales_h=None, scales_w=None):
    ctm = "align_corners" if align_corners else "pytorch_half_pixel"
    scales = None if align_corners or scales_h is None or scales_w is None else [scales_h, scales_w]
    return _resize(cx, x, output_size, scales, "linear", ctm)


# ---------------------------------------------------------------------------
# embedding and attention


@converter("aten.embedding.default")
def embedding(cx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return cx.op("Gather", weight, cx.cast(indices, "int64"), axis=0)


def attention(cx, q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v over the last two dims."""
    dt = q.dtype
    r = cx.rank(q)
    e = cx.dim(q, -1)
    if enable_gqa:
        hq, hk = cx.dim(q, -3), cx.dim(k, -3)
        if not (isinstance(hq, int) and isinstance(hk, int)):
            cx.unsupported("grouped-query attention over dynamic head counts")
        if hq != hk:
            reps = hq // hk
            k, v = (_repeat_heads(cx, t, reps) for t in (k, v))
    if scale is None:
        scale = 1.0 / math.sqrt(e) if isinstance(e, int) else None
    kt = cx.op("Transpose", k, perm=list(range(r - 2)) + [r - 1, r - 2])
    scores = cx.op("MatMul", q, kt)
    if scale is not None:
        scores = cx.op("Mul", scores, cx.const(scale, dt))
    else:
        scores = cx.op("Div", scores, cx.op("Sqrt", cx.cast(e, dt)))
    if is_causal:
        L, S = cx.dim(q, -2), cx.dim(k, -2)
        if isinstance(L, int) and isinstance(S, int):
            mask = cx.const(np.tril(np.ones((L, S), bool)), "bool")
        else:
            rows = cx.op("Unsqueeze", cx.op("Range", cx.scalar(0), cx.scalar(L), cx.scalar(1)),
                         cx.const([1], "int64"))
            cols = cx.op("Range", cx.scalar(0), cx.scalar(S), cx.scalar(1))
            mask = cx.op("LessOrEqual", cols, rows)
        scores = cx.op("Where", mask, scores, cx.const(-np.inf, dt))
    if attn_mask is not None:
        if attn_mask.dtype == "bool":
            scores = cx.op("Where", _to_bool(cx, attn_mask), scores, cx.const(-np.inf, dt))
        else:
            scores = cx.op("Add", scores, cx.cast(attn_mask, dt))
    probs = cx.op("Softmax", scores, axis=-1)
    return cx.op("MatMul", probs, v)


def _repeat_heads(cx, t, reps):
    r = cx.rank(t)
    ax = cx.const([r - 2], "int64")
    expanded = cx.op("Expand", cx.op("Unsqueeze", t, ax),
                     cx.ints([1] * (r - 2) + [reps, 1, 1]))
    dims = [cx.dim(t, i) for i in range(r)]
    h = dims[-3] * reps
    return cx.op("Reshape", expanded, cx.ints(dims[:-3] + [h] + dims[-2:]))


@converter("aten.scaled_dot_product_attention.default")
def sdpa(cx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    return attention(cx, q, k, v, attn_mask, is_causal, scale, enable_gqa)


@converter("aten._scaled_dot_product_flash_attention_for_cpu.default")
def sdpa_flash_cpu(cx, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    if cx.uses_output(1):
        cx.unsupported("the logsumexp output of flash attention")
    return attention(cx, q, k, v, attn_mask, is_causal, scale), None


@converter("aten._scaled_dot_product_efficient_attention.default")
def sdpa_efficient(cx, q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    return (attention(cx, q, k, v, attn_bias, is_causal, scale), None, None, None)

