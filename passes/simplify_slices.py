"""Undo slicing that is put back together, as a list of rules.

    Concat(Slice(x, a, b), Slice(x, b, c), axis=k)   [both along k, step 1]   => Slice(x, a, c)
    Concat(Slice(x, 0, b), Slice(x, b, end), axis=k)                          => x
    Concat(Split(x, axis=k)[0], ..., Split(x, axis=k)[n-1], axis=k)           => x
    Concat(..., Split(x)[i], Split(x)[i+1], ...)                              => Concat(..., Slice(x, s_i, e_i+1), ...)
    Slice(Concat(a, b, c, axis=k), start, end, axes=[k])  [exactly b's range] => b
    Concat(a, e, axis=k)   [e has size 0 along k]                             => a

A run of Concat inputs merges when its pieces cut one tensor along the Concat's
axis back to back; the run becomes ``x`` when it covers the whole axis, or one
Slice otherwise; a new Slice is written only when the Slices or the Split it
replaces have no other reader (so the node count never grows). Ranges are
compared after ONNX clamping, with the dim when it is static; on a symbolic dim
a start must be >= 0 and "to the end" is an end >= INT_MAX.

Squeeze/Unsqueeze/Slice of constants are left to fold_constants, a lone Concat
input and a whole-axis Slice to eliminate_noops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.shape_ops import split_sizes
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Match, P, Rule

from ._rewrite_util import rules_result
from .eliminate_noops import bypass, const_ints

END = None  # a piece that runs to the end of its axis
_TO_END = 2 ** 31 - 1  # exporters write INT_MAX (or INT64_MAX) for "to the end"


@dataclass
class Piece:
    """``src[start:end]`` along ``axis`` (``end`` None: to the end), produced by ``node``."""

    src: Value
    axis: int
    start: int
    end: int | None
    node: Node


def _axis(a: int, rank: int) -> int | None:
    a = a + rank if a < 0 else a
    return a if 0 <= a < rank else None


def _bound(i: int, dim) -> int | None:
    """A start/end index clamped against ``dim``; END for "to the end"; None when a
    symbolic dim leaves it unknown."""
    if isinstance(dim, int):
        i = min(max(i + dim if i < 0 else i, 0), dim)
        return END if i == dim else i
    if i >= _TO_END:
        return END
    return i if i >= 0 else -1


def slice_piece(node: Node) -> Piece | None:
    """A single-axis, step-1 Slice as a ``Piece``, or None."""
    x = node.input(0)
    parts = [const_ints(node, i, name) for i, name in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    if x is None or x.shape is None or not all(k for k, _ in parts):
        return None
    starts, ends, axes, steps = (v for _, v in parts)
    if starts is None or ends is None or len(starts) != 1 or (steps is not None and steps != [1]):
        return None
    axis = _axis(axes[0] if axes else 0, len(x.shape))
    if axis is None:
        return None
    dim = x.shape[axis]
    start, end = _bound(starts[0], dim), _bound(ends[0], dim)
    if start == -1 or end == -1:
        return None
    return Piece(x, axis, 0 if start is END else start, end, node)


def split_pieces(node: Node) -> list[Piece] | None:
    """One ``Piece`` per output of a Split whose sizes are known."""
    x = node.input(0)
    if x is None or x.shape is None:
        return None
    axis = _axis(int(node.attrs.get("axis", 0)), len(x.shape))
    if axis is None:
        return None
    known, split = const_ints(node, 1, "split")
    dim = x.shape[axis]
    if not known or (split is None and not isinstance(dim, int)):
        return None
    try:
        sizes = split_sizes(sum(split) if split is not None else dim, len(node.outputs), split,
                            node.attrs.get("num_outputs"))
    except Exception:  # a malformed Split is not ours to judge
        return None
    out, at = [], 0
    for i, s in enumerate(sizes):
        out.append(Piece(x, axis, at, END if i == len(sizes) - 1 else at + s, node))
        at += s
    return out


def _piece_of(v: Value, kinds: tuple[str, ...]) -> Piece | None:
    n = v.producer
    if n is None or n.op_type not in kinds or n.domain not in ("", "ai.onnx"):
        return None
    if n.op_type == "Slice":
        return slice_piece(n)
    pieces = split_pieces(n)
    return None if pieces is None else pieces[v.index]


def _concat_axis(node: Node) -> int | None:
    out = node.output
    if out.shape is None:
        return None
    return _axis(int(node.attrs.get("axis", 0)), len(out.shape))


# -- Concat of pieces ------------------------------------------------------------------

def _runs(concat: Node, axis: int, kinds: tuple[str, ...]) -> list[tuple[int, int]]:
    """[i, j) ranges of Concat inputs that cut one tensor along ``axis`` back to back."""
    pieces = [None if v is None else _piece_of(v, kinds) for v in concat.inputs]
    runs, i = [], 0
    while i < len(pieces):
        j = i + 1
        while (j < len(pieces) and pieces[i] is not None and pieces[j] is not None
               and pieces[j].src is pieces[i].src and pieces[j].axis == axis == pieces[i].axis
               and pieces[j - 1].end is not END and pieces[j].start == pieces[j - 1].end):
            j += 1
        if j - i > 1 or (pieces[i] is not None and pieces[i].axis == axis and pieces[i].start == 0
                         and pieces[i].end is END):
            runs.append((i, j))
        i = j
    return runs


def _all_freed(concat: Node, run: list[Value]) -> bool:
    """Whether every producer of ``run`` has no reader left once the Concat stops reading ``run``."""
    inside = {}
    for v in run:
        inside[v] = inside.get(v, 0) + 1
    return all(not o.is_graph_output and o.num_uses == inside.get(o, 0) and all(u is concat for u in o.users)
               for n in dict.fromkeys(v.producer for v in run) for o in n.outputs)


def _merge(kinds: tuple[str, ...]):
    def rw(g: Graph, m: Match) -> bool | str:
        concat = m.root
        axis = _concat_axis(concat)
        if axis is None:
            return False
        runs = _runs(concat, axis, kinds)
        if not runs:
            return False
        ins = list(concat.inputs)
        new_ins, last, changed, why = [], 0, False, None
        for i, j in runs:
            run = ins[i:j]
            first, final = _piece_of(run[0], kinds), _piece_of(run[-1], kinds)
            whole = first.start == 0 and final.end is END
            if not whole and not _all_freed(concat, run):  # the new Slice must replace what it reads
                why = f"the {concat.input(i).producer.op_type} outputs have other readers"
                continue
            new_ins.extend(ins[last:i])
            if whole:
                new_ins.append(first.src)
            else:
                new_ins.append(_new_slice(g, concat, first.src, axis, first.start, final.end))
            last, changed = j, True
        if not changed:
            return why if why else False
        new_ins.extend(ins[last:])
        if len(new_ins) == 1:
            return bypass(g, concat, new_ins[0])
        concat.set_inputs(new_ins)
        return True
    return rw


def _new_slice(g: Graph, before: Node, x: Value, axis: int, start: int, end: int | None) -> Value:
    ints = [g.add_initializer(f"{before.name}_{name}", np.array([v], np.int64))
            for name, v in (("starts", start), ("ends", _TO_END if end is END else end), ("axes", axis))]
    out_type = None
    if x.type is not None and x.shape is not None:
        dim = x.shape[axis]
        shape = list(x.shape)
        shape[axis] = end - start if end is not END else dim - start if isinstance(dim, int) else None
        out_type = TensorType(x.dtype, tuple(shape))
    return g.make_node("Slice", [x, *ints], before=before, output_types=[out_type]).output


# -- Concat with empty inputs -------------------------------------------------------------

def _drop_empty(g: Graph, m: Match) -> bool | str:
    concat = m.root
    axis = _concat_axis(concat)
    if axis is None:
        return False
    keep = [v for v in concat.inputs
            if v is None or v.shape is None or len(v.shape) != len(concat.output.shape) or v.shape[axis] != 0]
    if len(keep) == len(concat.inputs) or not keep:
        return False
    if len(keep) == 1:
        return bypass(g, concat, keep[0])
    concat.set_inputs(keep)
    return True


# -- Slice of a Concat -----------------------------------------------------------------------

def _pick(g: Graph, m: Match) -> bool | str:
    sl, concat = m.root, m.node("concat")
    piece = slice_piece(sl)
    axis = _concat_axis(concat)
    if piece is None or axis is None or piece.axis != axis:
        return False
    at = 0
    for k, v in enumerate(concat.inputs):
        size = None if v.shape is None else v.shape[axis]
        if at == piece.start:
            if (piece.end is END and k == len(concat.inputs) - 1) or \
                    (isinstance(size, int) and piece.end == at + size):
                return bypass(g, sl, v)
            return False
        if not isinstance(size, int):
            return "Concat input sizes along the axis not static"
        at += size
        if at > piece.start:
            return False
    return False


RULES = [
    Rule("concat_empty_inputs_to_concat", P("Concat"), _drop_empty),
    Rule("concat_split_outputs_to_input", P("Concat"), _merge(("Split",))),
    Rule("concat_adjacent_slices_to_slice", P("Concat"), _merge(("Slice",))),
    Rule("slice_of_concat_to_input", P("Slice", P("Concat", name="concat")), _pick, allow_shared=True),
]


@register_pass("simplify_slices", opt_level=2, kind="graph", order=27)
def simplify_slices(graph: Graph, ctx: PassContext) -> PassResult:
    """Concat(Slice(x, a, b), Slice(x, b, c)) => Slice(x, a, c); Concat(Split(x)) => x; Slice(Concat) => input."""
    return rules_result(graph, RULES)


__all__ = ["Piece", "RULES", "simplify_slices", "slice_piece", "split_pieces"]
