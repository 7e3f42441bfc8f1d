"""Strided copies (Transpose, Expand, Slice, Concat slots, Split slots, DepthToSpace and
SpaceToDepth: elementwise identities over ``View``s, no index kernels) and Pad (``movement.py``).

>>> [l.kernel.name[:6] for l in lower_graph(concat_graph).launches]   # doctest: +SKIP
['go_ew_', 'go_ew_']
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node
from graphopt.ops.registry import node_opset

from ..ew import make_elementwise, render_elementwise
from ..movement import make_pad, render_pad
from ..scalar import broadcast_strides, contiguous_strides, identity
from ..specs import View
from .common import known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

@lowering("Transpose", check=known_dtypes)
def lower_transpose(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    perm = node.attr("perm") or list(range(len(xs)))[::-1]
    st = contiguous_strides(xs)
    oshape = tuple(xs[p] for p in perm)
    spec = make_elementwise(oshape, View.contiguous(y.dtype, oshape), [View(x.dtype, tuple(st[p] for p in perm))],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


@lowering("Expand", check=known_dtypes)
def lower_expand(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    oshape = static_shape(y, node)
    spec = make_elementwise(oshape, View.contiguous(y.dtype, oshape),
                            [View(x.dtype, broadcast_strides(static_shape(x, node), oshape))], identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


def _slice_params(node: Node, lw: Lowerer, rank: int):
    if node_opset(node) < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts = lw.require_const(node, 1, "starts")
        ends = lw.require_const(node, 2, "ends")
        axes = lw.optional_const(node, 3, "axes")
        steps = lw.optional_const(node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    steps = [1] * len(axes) if steps is None else [int(s) for s in np.ravel(steps)]
    return [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)], axes, steps


@lowering("Slice", check=known_dtypes)
def lower_slice(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    st = list(contiguous_strides(xs))
    shape, strides, offset = list(xs), list(st), 0
    for s, e, a, step in zip(*_slice_params(node, lw, len(xs))):
        if step == 0:
            raise UnsupportedOpError(f"node {node.name!r} (Slice): step 0")
        start, stop, step = slice(s, e, step).indices(xs[a])
        shape[a] = len(range(start, stop, step))
        offset += start * st[a] if shape[a] else 0
        strides[a] = st[a] * step
    spec = make_elementwise(shape, View.contiguous(y.dtype, shape), [View(x.dtype, tuple(strides), offset)],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


@lowering("Concat", check=known_dtypes)
def lower_concat(node: Node, lw: Lowerer) -> None:
    y = node.output
    oshape = static_shape(y, node)
    axis = node.attr("axis") % len(oshape)
    ost = contiguous_strides(oshape)
    at = 0
    for x in node.inputs:
        if x is None:
            continue
        xs = static_shape(x, node)
        spec = make_elementwise(xs, View(y.dtype, ost, at * ost[axis]), [View.contiguous(x.dtype, xs)],
                                identity(y.dtype))
        lw.emit(node, render_elementwise(spec), spec, [y, x])
        at += xs[axis]


@lowering("Split", check=known_dtypes)
def lower_split(node: Node, lw: Lowerer) -> None:
    x = node.input(0)
    xs = static_shape(x, node)
    axis = node.attr("axis", 0) % len(xs)
    st = contiguous_strides(xs)
    at = 0
    for y in node.outputs:
        ys = static_shape(y, node)
        spec = make_elementwise(ys, View.contiguous(y.dtype, ys), [View(x.dtype, st, at * st[axis])],
                                identity(y.dtype))
        lw.emit(node, render_elementwise(spec), spec, [y, x])
        at += ys[axis]


@lowering("Pad", check=known_dtypes)
def lower_pad(node: Node, lw: Lowerer) -> None:
    x = node.input(0)
    xs = static_shape(x, node)
    r = len(xs)
    runtime = None  # a constant value computed at run time: the kernel reads it
    if node_opset(node) < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pads = [int(p) for p in np.ravel(lw.require_const(node, 1, "pads"))]
        v = node.input(2)
        cv = None if v is None else lw.const(v)
        if v is not None and cv is None and int(np.prod(static_shape(v, node))) > 0:
            if v.dtype != x.dtype:
                raise UnsupportedOpError(f"node {node.name!r} (Pad): constant_value of {v.dtype} for {x.dtype} data")
            runtime = v
        value = 0.0 if cv is None or cv.size == 0 else float(np.ravel(cv)[0])
        axes = lw.optional_const(node, 3, "axes")
        if axes is not None:
            ax = [int(a) % r for a in np.ravel(axes)]
            full = [0] * (2 * r)
            for i, a in enumerate(ax):
                full[a], full[r + a] = pads[i], pads[len(ax) + i]
            pads = full
    mode = node.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    spec = make_pad(xs, x.dtype, pads, mode, value, value_arg=runtime is not None and mode == "constant")
    lw.emit(node, render_pad(spec), spec, [node.output, x] + ([runtime] if spec.value_arg else []))


def _blocks_view(node: Node, x_shape, b: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """DepthToSpace / SpaceToDepth as a strided copy: the output as a 6-D iteration shape and the
    input's strides in that order (the reference's reshape-transpose-reshape, read in place)."""
    n, c, h, w = x_shape
    mode = node.attr("mode", "DCR")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if node.op_type == "DepthToSpace":
        co = c // (b * b)
        src = (n, b, b, co, h, w) if mode == "DCR" else (n, co, b, b, h, w)
        perm = (0, 3, 4, 1, 5, 2) if mode == "DCR" else (0, 1, 4, 2, 5, 3)
    else:
        src = (n, c, h // b, b, w // b, b)
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    st = contiguous_strides(src)
    return tuple(src[p] for p in perm), tuple(st[p] for p in perm)


def _blocks_check(node: Node) -> str | None:
    mode = node.attr("mode", "DCR")
    if (mode.decode() if isinstance(mode, bytes) else mode) not in ("DCR", "CRD"):
        return f"{node.op_type} mode {mode!r}"
    return known_dtypes(node)


@lowering("DepthToSpace", "SpaceToDepth", check=_blocks_check)
def lower_depth_space(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    shape, strides = _blocks_view(node, static_shape(x, node), int(node.attr("blocksize")))
    spec = make_elementwise(shape, View.contiguous(y.dtype, shape), [View(x.dtype, strides)], identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])
