"""Fold an explicit constant Pad into the pads of the Conv or pool that reads it.

    Conv(Pad(x, p, 0))                       => Conv(x, pads=pads + p)
    AveragePool(Pad(x, p, 0))                => AveragePool(x, pads=pads + p, count_include_pad=1)
    MaxPool(Pad(x, p, -inf))                 => MaxPool(x, pads=pads + p)
    MaxPool(Pad(Relu(y), p, v <= 0))         => MaxPool(Relu(y), pads=pads + p)   [every window keeps a real element]

Only ``mode="constant"`` Pads with constant, non-negative pads on the spatial
axes (not batch or channel) fold. Why each fold is exact:

* Conv pads with zeros: the same as an explicit Pad with value +0.0.
* AveragePool: explicitly padded zeros are data, counted by the divisor; with
  ``count_include_pad=1`` the pool's own zero pads are counted too. A pool with
  ``count_include_pad=0`` and no pads of its own becomes ``count_include_pad=1``;
  one with pads of its own cannot say "count these pads but not those" and stays.
* MaxPool ignores its pads (they act as -inf): so a Pad with -inf folds, and so
  does a Pad with a value <= 0 in front of a Relu's output when every window
  still covers an element of x (the max of the real elements, all >= 0, wins).
  A MaxPool whose Indices output is read stays (the indices would move).

A pool with ``ceil_mode=1`` stays: a last window that would start inside the
explicit end padding exists, but not one that would start in the pool's own
pads, so folding could change the output shape.

The Pad must have no other reader (the pattern machinery refuses ``Pad 'p'
has 2 users``); ``auto_pad`` SAME_* stays (its split of the padding depends on
the input size), VALID becomes NOTSET with the folded pads.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Node, Value
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Match, P, Rule, X

from ._rewrite_util import rules_result
from .eliminate_noops import const_ints


# -- reading the Pad ---------------------------------------------------------------------

def _text(a) -> str:
    return a.decode() if isinstance(a, bytes) else str(a)


def _pad_value(pad: Node) -> float | str:
    if pad.input(1) is None:  # opset < 11: attributes
        return float(pad.attrs.get("value", 0.0))
    v = pad.input(2)
    if v is None:
        return 0.0
    if v.const is None:
        return "pad value not constant"
    return float(np.asarray(v.const).reshape(-1)[0])


def spatial_pads(pad: Node, x: Value) -> tuple[list[int], list[int]] | str:
    """The (begin, end) pads a Pad adds to each spatial axis (2...) of ``x``, or why not."""
    mode = _text(pad.attrs.get("mode", "constant"))
    if mode != "constant":
        return f"Pad mode {mode!r}"
    if x.shape is None:
        return "rank of x unknown"
    rank = len(x.shape)
    if pad.input(1) is None:
        pads = pad.attrs.get("pads", pad.attrs.get("paddings"))
        known, axes_known, axes = pads is not None, True, None
    else:
        known, pads = const_ints(pad, 1, "pads")
        axes_known, axes = const_ints(pad, 3, "")
    if not known or pads is None or not axes_known:
        return "pads not constant"
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        return "pads do not match the axes"
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = int(pads[i]), int(pads[len(axes) + i])
    if any(p < 0 for p in full):
        return "negative pads crop"
    if any(full[a] or full[rank + a] for a in (0, 1)):
        return "Pad pads the batch or channel axis"
    return full[2:rank], full[rank + 2:]


# -- writing the pads --------------------------------------------------------------------

def _own_pads(node: Node, k: int) -> list[int] | str:
    auto = _text(node.attrs.get("auto_pad", "NOTSET"))
    if auto not in ("NOTSET", "VALID"):
        return f"{node.op_type} auto_pad={auto}"
    pads = node.attrs.get("pads")
    if auto == "VALID" or pads is None:
        return [0] * (2 * k)
    return [int(p) for p in pads]


def _fold(node: Node, x: Value, begins: list[int], ends: list[int], own: list[int]) -> bool:
    k = len(begins)
    node.attrs["pads"] = [own[i] + begins[i] for i in range(k)] + [own[k + i] + ends[i] for i in range(k)]
    if "auto_pad" in node.attrs:
        node.attrs["auto_pad"] = "NOTSET"
    node.set_input(0, x)
    return True


def _parts(m: Match) -> tuple[list[int], list[int], list[int], float] | str:
    """(begins, ends, the node's own pads, pad value), or why the Pad cannot fold."""
    pads = spatial_pads(m.node("pad"), m["x"])
    if isinstance(pads, str):
        return pads
    if m.root.attrs.get("ceil_mode", 0):
        return f"{m.root.op_type} ceil_mode=1 (a window may not start in the end pads)"
    own = _own_pads(m.root, len(pads[0]))
    if isinstance(own, str):
        return own
    value = _pad_value(m.node("pad"))
    if isinstance(value, str):
        return value
    return pads[0], pads[1], own, value


def _zero_value(value: float) -> str | None:
    return None if value == 0 and not np.signbit(value) else f"pad value {value:g} is not 0"


def _pad_conv(g: Graph, m: Match) -> bool | str:
    parts = _parts(m)
    if isinstance(parts, str):
        return parts
    begins, ends, own, value = parts
    return _zero_value(value) or _fold(m.root, m["x"], begins, ends, own)


def _pad_average_pool(g: Graph, m: Match) -> bool | str:
    parts = _parts(m)
    if isinstance(parts, str):
        return parts
    begins, ends, own, value = parts
    why = _zero_value(value)
    if why:
        return why
    pool = m.root
    if not pool.attrs.get("count_include_pad", 0):
        if any(own):
            return "AveragePool count_include_pad=0 with pads of its own"
        pool.attrs["count_include_pad"] = 1  # the padded zeros were data: they are counted
    return _fold(pool, m["x"], begins, ends, own)


def _every_window_sees_x(pool: Node, x: Value, begins: list[int], ends: list[int], own: list[int]) -> str | None:
    """Why some window of ``pool`` with the folded pads could cover padding only."""
    k = len(begins)
    xs, ys = x.shape, pool.output.shape
    if ys is None or not all(isinstance(d, int) for d in list(xs[2:]) + list(ys[2:])):
        return "spatial shapes not static"
    if any(d != 1 for d in pool.attrs.get("dilations") or [1] * k):
        return "dilated MaxPool"
    strides = pool.attrs.get("strides") or [1] * k
    for i in range(k):
        first = -(own[i] + begins[i])
        last = first + (ys[2 + i] - 1) * int(strides[i])
        if first + int(pool.attrs["kernel_shape"][i]) - 1 < 0 or last > xs[2 + i] - 1:
            return "a MaxPool window would cover padding only"
    return None


def _pad_max_pool(g: Graph, m: Match) -> bool | str:
    pool, x = m.root, m["x"]
    if len(pool.outputs) > 1 and (pool.outputs[1].num_uses or pool.outputs[1].is_graph_output):
        return "MaxPool Indices are read"
    parts = _parts(m)
    if isinstance(parts, str):
        return parts
    begins, ends, own, value = parts
    if value != -np.inf:
        if x.producer is None or x.producer.op_type != "Relu" or value > 0:
            return f"pad value {value:g} is not -inf (and x is not a Relu output above it)"
        why = _every_window_sees_x(pool, x, begins, ends, own)
        if why:
            return why
    return _fold(pool, x, begins, ends, own)


def _padded(op: str) -> P:
    return P(op, P("Pad", X, name="pad"))


RULES = [
    Rule("pad_conv_to_conv", _padded("Conv"), _pad_conv),
    Rule("pad_averagepool_to_averagepool", _padded("AveragePool"), _pad_average_pool),
    Rule("pad_maxpool_to_maxpool", _padded("MaxPool"), _pad_max_pool),
]


@register_pass("fold_pad", opt_level=2, kind="graph", order=45)
def fold_pad(graph: Graph, ctx: PassContext) -> PassResult:
    """Conv(Pad(x, p)) => Conv(x, pads + p); the same for AveragePool and MaxPool where exact."""
    return rules_result(graph, RULES)


__all__ = ["RULES", "fold_pad", "spatial_pads"]
