"""Resize and Upsample: tap tables computed at compile time by the reference's
``axis_taps``, one thread per output walking them (``resize.py``).

>>> lower_graph(resize_graph).launches[0].kernel.name     # doctest: +SKIP
'go_resize_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node
from graphopt.ops.registry import node_opset

from ..resize import make_resize, render_resize
from .common import emit_copy, float_only, known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def _resize_check(node: Node) -> str | None:
    mode = node.attr("mode", "nearest")
    if node.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        return "Resize with tf_crop_and_resize"
    if mode != "nearest":
        return float_only(node)
    return known_dtypes(node)


@lowering("Resize", "Upsample", check=_resize_check)
def lower_resize(node: Node, lw: Lowerer) -> None:
    from graphopt.ops import resize as ref

    x, y = node.input(0), node.output
    xs, ys = static_shape(x, node), static_shape(y, node)
    mode = node.attr("mode", "nearest")
    if node.op_type == "Upsample" or node_opset(node) < 11:  # asymmetric coordinates, nearest floors/ceils
        scales = lw.const(node.input(1)) if node.input(1) is not None else node.attr("scales")
        if scales is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): scales must be a constant")
        sc = [float(v) for v in np.ravel(scales)]
        mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
        kw = dict(mode=mode, nearest_mode="simple")
        ctm = "asymmetric"
    else:
        scales, sizes = lw.const(node.input(2)), lw.const(node.input(3))
        if (node.input(2) is not None and scales is None) or (node.input(3) is not None and sizes is None):
            raise UnsupportedOpError(f"node {node.name!r} (Resize): scales and sizes must be constants")
        _, sc, _ = ref._plan(xs, ref._opt([None, None, scales], 2), ref._opt([None, None, None, sizes], 3),
                             node.attr("axes"), node.attr("keep_aspect_ratio_policy", "stretch"))
        ctm = node.attr("coordinate_transformation_mode", "half_pixel")
        kw = dict(mode=mode, nearest_mode=node.attr("nearest_mode", "round_prefer_floor"),
                  cubic_a=node.attr("cubic_coeff_a", -0.75), exclude_outside=bool(node.attr("exclude_outside", 0)),
                  antialias=bool(node.attr("antialias", 0)))
    taps, tables = [0] * len(xs), []
    for a, (n_in, n_out) in enumerate(zip(xs, ys)):
        if n_out == n_in and sc[a] == 1.0:
            continue
        idx, w = ref.axis_taps(ref.source_coords(ctm, n_out, n_in, sc[a]), n_in, sc[a], **kw)
        taps[a] = idx.shape[1]
        tables.append(lw.new_const(f"{node.name}_taps{a}", idx.astype(np.int32)))
        if mode != "nearest":
            tables.append(lw.new_const(f"{node.name}_weights{a}", w.astype(np.float32)))
    if not any(taps):
        emit_copy(node, lw, x, y)
        return
    if 0 in xs and 0 not in ys:
        raise UnsupportedOpError(f"node {node.name!r} (Resize): an empty input resized to a non-empty output")
    spec = make_resize(xs, ys, x.dtype, taps, weighted=mode != "nearest")
    lw.emit(node, render_resize(spec), spec, [y, x, *tables])
