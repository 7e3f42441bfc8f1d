"""Index-driven reads and writes: Gather (``movement.py``); GatherElements, GatherND,
ScatterElements, ScatterND, OneHot, Tile, Trilu and EyeLike on the index kernels of
``index_kernels.py`` (a scatter is a copy of its data, then the updates in order).

>>> lower_graph(gather_graph).launches[0].kernel.name   # doctest: +SKIP
'go_gather_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node

from ..index_kernels import (REDUCE_EXPR, eye_like_body, gather_elements_body, gather_nd_body, one_hot_body, ptr,
                             scatter_elements_body, scatter_nd_body, tile_body, trilu_body)
from ..movement import make_gather, render_gather
from .common import emit_copy, emit_index_kernel, known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

@lowering("Gather", check=known_dtypes)
def lower_gather(node: Node, lw: Lowerer) -> None:
    data, idx = node.input(0), node.input(1)
    spec = make_gather(static_shape(data, node), data.dtype, static_shape(idx, node), idx.dtype, node.attr("axis", 0))
    lw.emit(node, render_gather(spec), spec, [node.output, data, idx])


def _int_const(lw: Lowerer, node: Node, i: int, what: str, default: int | None = None) -> int:
    if node.input(i) is None:
        if default is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): {what} is missing")
        return default
    return int(np.ravel(lw.require_const(node, i, what))[0])


@lowering("GatherElements", check=known_dtypes)
def lower_gather_elements(node: Node, lw: Lowerer) -> None:
    data, idx, y = node.input(0), node.input(1), node.output
    ds, ish = static_shape(data, node), static_shape(idx, node)
    axis = node.attr("axis", 0) % len(ds)
    emit_index_kernel(lw, node, "gather_el", ish,
                      [ptr("y", y.dtype, False), ptr("x", data.dtype), ptr("ix", idx.dtype)],
          gather_elements_body(ds, ish, axis, data.dtype), f"GatherElements axis {axis} of {list(ds)}",
          [y, data, idx])


@lowering("GatherND", check=known_dtypes)
def lower_gather_nd(node: Node, lw: Lowerer) -> None:
    data, idx, y = node.input(0), node.input(1), node.output
    ds, ish = static_shape(data, node), static_shape(idx, node)
    emit_index_kernel(lw, node, "gather_nd", static_shape(y, node),
          [ptr("y", y.dtype, False), ptr("x", data.dtype), ptr("ix", idx.dtype)],
          gather_nd_body(ds, ish, int(node.attr("batch_dims", 0)), data.dtype),
          f"GatherND of {list(ds)} by {list(ish)}", [y, data, idx])


def _scatter_check(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    red = node.attr("reduction", "none")
    if red not in REDUCE_EXPR and red != "none":
        return f"{node.op_type} reduction {red!r}"
    if red != "none" and node.output.dtype == "bool":
        return f"{node.op_type} reduction {red!r} on bool"
    return None


@lowering("ScatterElements", "Scatter", check=_scatter_check)
def lower_scatter_elements(node: Node, lw: Lowerer) -> None:
    """A copy of data, then one thread per fiber of updates along the axis (the fiber's
    destinations are one fiber of the output: no two threads meet)."""
    data, idx, upd, y = node.input(0), node.input(1), node.input(2), node.output
    ds, us = static_shape(data, node), static_shape(upd, node)
    axis = node.attr("axis", 0) % len(ds)
    emit_copy(node, lw, data, y)
    red = node.attr("reduction", "none")
    emit_index_kernel(lw, node, "scatter_el", us[:axis] + us[axis + 1:],
          [ptr("y", y.dtype, False), ptr("ix", idx.dtype), ptr("u", upd.dtype)],
          scatter_elements_body(ds, us, axis, red, y.dtype), f"ScatterElements ({red}) axis {axis} of {list(ds)}",
          [y, idx, upd], [y.dtype])


@lowering("ScatterND", check=_scatter_check)
def lower_scatter_nd(node: Node, lw: Lowerer) -> None:
    """A copy of data, then one thread per element of a slice, the index tuples in order (so
    repeated indices combine as in the reference)."""
    data, idx, upd, y = node.input(0), node.input(1), node.input(2), node.output
    ds, ish = static_shape(data, node), static_shape(idx, node)
    emit_copy(node, lw, data, y)
    red = node.attr("reduction", "none")
    emit_index_kernel(lw, node, "scatter_nd", ds[ish[-1]:],
                      [ptr("y", y.dtype, False), ptr("ix", idx.dtype), ptr("u", upd.dtype)],
          scatter_nd_body(ds, ish, red, y.dtype), f"ScatterND ({red}) of {list(ds)} by {list(ish)}",
          [y, idx, upd], [y.dtype])


@lowering("OneHot", check=known_dtypes)
def lower_one_hot(node: Node, lw: Lowerer) -> None:
    idx, vals, y = node.input(0), node.input(2), node.output
    ish = static_shape(idx, node)
    depth = int(np.ravel(lw.require_const(node, 1, "depth"))[0])
    axis = node.attr("axis", -1) % (len(ish) + 1)
    emit_index_kernel(lw, node, "one_hot", static_shape(y, node), [ptr("y", y.dtype, False), ptr("ix", idx.dtype),
                                                       ptr("v", vals.dtype)],
          one_hot_body(ish, depth, axis), f"OneHot depth {depth} axis {axis}", [y, idx, vals])


@lowering("Tile", check=known_dtypes)
def lower_tile(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    lw.require_const(node, 1, "repeats")
    emit_index_kernel(lw, node, "tile", static_shape(y, node), [ptr("y", y.dtype, False), ptr("x", x.dtype)],
          tile_body(static_shape(x, node)), f"Tile {list(static_shape(x, node))} -> {list(static_shape(y, node))}",
          [y, x])


@lowering("Trilu", check=known_dtypes)
def lower_trilu(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    shape = static_shape(x, node)
    k = _int_const(lw, node, 1, "k", 0)
    upper = bool(node.attr("upper", 1))
    emit_index_kernel(lw, node, "trilu", shape, [ptr("y", y.dtype, False), ptr("x", x.dtype)],
          trilu_body(upper, k, y.dtype, len(shape)), f"Trilu upper={int(upper)} k={k}", [y, x])


@lowering("EyeLike", check=known_dtypes)
def lower_eye_like(node: Node, lw: Lowerer) -> None:
    y = node.output
    emit_index_kernel(lw, node, "eye", static_shape(y, node), [ptr("y", y.dtype, False)],
          eye_like_body(int(node.attr("k", 0)), y.dtype), "EyeLike", [y], [y.dtype])
