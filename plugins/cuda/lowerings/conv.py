"""Conv and ``ai.graphopt::FusedConv``: float32 as an NCHW implicit GEMM (``gemm.py``) or an
NHWC one (``conv_nhwc.py``) on SIMT cores; float16/bfloat16 as an implicit GEMM on tensor
cores in either layout (``tc_conv.py``); depthwise on the window kernel (``spatial.py``), and a
1x1 convolution as a batched GEMM (``matmul.py``'s SIMT or tensor-core spec); ConvTranspose as
a gather per output pixel (``index_kernels.py``).

>>> lower_graph(conv_graph).launches[0].kernel.name      # doctest: +SKIP
'go_conv_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node, Value
from graphopt.ops.nn import _convt_geometry as convt_geometry
from graphopt.ops.registry import get_schema
from graphopt.ops.windows import spatial_attrs

from ..conv_nhwc import make_conv_nhwc, render_conv_nhwc
from ..gemm import make_conv, render_conv
from ..index_kernels import conv_transpose_body, ptr
from ..spatial import make_depthwise, render_depthwise
from ..specs import Epilogue, View
from ..tc_conv import make_tc_conv, render_tc_conv
from ..tc_gemm import MMA_HELPERS
from .common import FUSED_DOMAIN, emit_index_kernel, layout_of, spatial_dims, window_attrs, window_floats
from .matmul import (bias_fn, epilogue_check, fold_batch_into_m, gemm_epilogue, matmul_spec, render_matmul,
                     splitk_args)
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def _conv_check(node: Node) -> str | None:
    why = window_floats(node) or epilogue_check(node, 3)
    if why:
        return why
    if layout_of(node) not in ("NCHW", "NHWC"):
        return f"{node.qualified_op} with layout {node.attr('layout')!r} (the CUDA kernels take NCHW or NHWC)"
    x = node.input(0)
    if x.type is not None and x.type.rank is not None and x.type.rank < 3:
        return "Conv needs at least one spatial dim"
    kinds = {v.dtype for v in (x, node.input(1), node.output)}
    if len(kinds) > 1:  # the kernels load and store one storage type (a bias may differ: the epilogue reads it)
        return f"{node.qualified_op} on {'/'.join(sorted(kinds))} (input, weight and output of one dtype)"
    return None


@lowering("Conv", check=_conv_check)
@lowering("FusedConv", domain=FUSED_DOMAIN, check=_conv_check)
def lower_conv(node: Node, lw: Lowerer) -> None:
    """NCHW: implicit GEMM (``gemm.py``); NHWC (``FusedConv[layout="NHWC"]``, W as
    ``[O, *kernel, C/group]``): implicit GEMM over channels-last data (``conv_nhwc.py``).
    Either way depthwise runs on the window kernel and a pointwise conv is a batched GEMM."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    y = node.output
    layout = layout_of(node)
    nhwc = layout == "NHWC"
    xs, ws, ys = static_shape(x, node), static_shape(w, node), static_shape(y, node)
    ksp, osp = spatial_dims(ws, layout), spatial_dims(ys, layout)
    strides, pads, dilations = window_attrs(node, xs, ksp, osp, layout)
    groups = int(node.attr("group", 1))
    dt = y.dtype
    chan = (0,) * (len(ys) - 1) + (1,) if nhwc else (0, 1) + (0,) * (len(ys) - 2)
    base = None if b is None else (bias_fn(b.dtype), View(b.dtype, chan), b)
    ep, ep_args = gemm_epilogue(node, 3, ys, base)
    args = [y, x, w, *ep_args]
    if groups > 1 and ws[-1 if nhwc else 1] == 1:  # depthwise: one input channel per group
        spec = make_depthwise(xs, ws, osp, strides=strides, pads=pads, dilations=dilations, epilogue=ep, dtype=dt,
                              layout=layout)
        lw.emit(node, render_depthwise(spec), spec, args)
        return
    if groups == 1 and all(k == 1 for k in ksp) and set(strides) == {1} and not any(pads):
        ops = [_pixels_view(v, osp, nhwc) for v in ep.operands]
        if all(v is not None for v in ops):
            _emit_pointwise_conv(node, lw, xs[0], int(np.prod(osp)), ws[0], int(np.prod(ws[1:])),
                                 Epilogue(ep.fn, tuple(ops)), nhwc, args)
            return
        if not nhwc:
            raise UnsupportedOpError(f"node {node.name!r}: an epilogue operand does not walk the pixels in order")
    if dt in MMA_HELPERS:  # float16 / bfloat16: an implicit GEMM on tensor cores, either layout
        spec = make_tc_conv(xs, ws, osp, strides=strides, pads=pads[:len(strides)], dilations=dilations,
                            groups=groups, epilogue=ep, dtype=dt, layout=layout)
        lw.emit(node, render_tc_conv(spec), spec, [*args, *splitk_args(lw, spec)])
        return
    if nhwc:
        spec = make_conv_nhwc(xs, ws, osp, strides=strides, pads=pads[:len(strides)], dilations=dilations,
                              groups=groups, epilogue=ep, dtype=dt)
        lw.emit(node, render_conv_nhwc(spec), spec, args)
        return
    spec = make_conv(xs, ws, osp, strides=strides, pads=pads[:len(strides)], dilations=dilations, groups=groups,
                     epilogue=ep, dtype=dt)
    lw.emit(node, render_conv(spec), spec, args)


def _emit_pointwise_conv(node: Node, lw: Lowerer, n: int, pix: int, k: int, c: int, ep: Epilogue, nhwc: bool,
                         args: list[Value]) -> None:
    """A 1x1 convolution as a GEMM batched over images, no im2col index math:
    NCHW ``y[n] = W[K, C] @ x[n][C, pixels]``; NHWC ``y[n] = x[n][pixels, C] @ W[K, C]^T``."""
    y, x, w = args[:3]
    dt = y.dtype
    def unbatched(views):  # one image: the batch dim of extent 1 addresses nothing
        return [View(v.dtype, v.strides[1:], v.offset) for v in views]

    if nhwc:  # the images' pixels are one taller M over the shared weight (2-D: TMA can load it)
        av, cv = View(dt, (pix * c, c, 1)), View(dt, (pix * k, k, 1))
        folded = fold_batch_into_m((n,), pix, View(dt, (0, 1, c)), [av, cv, *ep.operands])
        if folded is None and n == 1:
            folded = unbatched([av, cv, *ep.operands])
        if folded is not None:
            (av, cv, *ops) = folded
            spec = matmul_spec(dt, n * pix, k, c, (), a=av, b=View(dt, (1, c)), c=cv, epilogue=Epilogue(ep.fn, tuple(ops)))
        else:
            spec = matmul_spec(dt, pix, k, c, (n,), a=av, b=View(dt, (0, 1, c)), c=cv, epilogue=ep)
        lw.emit(node, render_matmul(spec), spec, [y, x, w, *args[3:], *splitk_args(lw, spec)])
        return
    if n == 1:
        spec = matmul_spec(dt, k, pix, c, (), a=View(dt, (c, 1)), b=View(dt, (pix, 1)), c=View(dt, (pix, 1)),
                            epilogue=Epilogue(ep.fn, tuple(unbatched(ep.operands))))
    else:
        spec = matmul_spec(dt, k, pix, c, (n,), a=View(dt, (0, c, 1)), b=View(dt, (c * pix, pix, 1)),
                            c=View(dt, (k * pix, pix, 1)), epilogue=ep)
    lw.emit(node, render_matmul(spec), spec, [y, w, x, *args[3:], *splitk_args(lw, spec)])  # A: weight, B: image


def _pixels_view(v: View, spatial, nhwc: bool) -> View | None:
    """A view over the output's (n, c, *spatial) (NCHW) or (n, *spatial, c) (NHWC) as one over the
    pointwise GEMM's (n, pixel, c) / (n, c, pixel); None when its spatial dims do not nest like a
    contiguous tensor's (a per-channel bias and a residual in the output's layout do)."""
    sp_strides = v.strides[1:-1] if nhwc else v.strides[2:]
    inner = sp_strides[-1]
    if any(st != inner * int(np.prod(spatial[i + 1:])) for i, st in enumerate(sp_strides)):
        return None
    if nhwc:
        return View(v.dtype, (v.strides[0], inner, v.strides[-1]), v.offset)
    return View(v.dtype, v.strides[:2] + (inner,), v.offset)


@lowering("ConvTranspose", check=lambda n: window_floats(n) or _transpose_rank(n))
def lower_conv_transpose(node: Node, lw: Lowerer) -> None:
    """A gather per output pixel over the input pixels and taps that reach it (the reference's
    geometry: output sizes and begin pads from ``output_shape``/``auto_pad``/``pads``)."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    y = node.output
    xs, ws, ys = static_shape(x, node), static_shape(w, node), static_shape(y, node)
    attrs = get_schema("ConvTranspose").resolve_attrs(node.attrs)
    ks = list(ws[2:])
    out, begins = convt_geometry(xs[2:], ks, attrs)
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    body = conv_transpose_body(xs, ws, ys, strides, dilations, begins, int(attrs.get("group", 1)), b is not None,
                               y.dtype)
    params = [ptr("y", y.dtype, False), ptr("x", x.dtype), ptr("w", w.dtype)] + ([ptr("b", b.dtype)] if b else [])
    emit_index_kernel(lw, node, "convt", ys, params, body, f"ConvTranspose {list(xs)} * {list(ws)} -> {list(ys)}",
                      [y, x, w, *([b] if b is not None else [])], [y.dtype])


def _transpose_rank(node: Node) -> str | None:
    x = node.input(0)
    if x.type is not None and x.type.rank is not None and x.type.rank < 3:
        return "ConvTranspose needs at least one spatial dim"
    return None
