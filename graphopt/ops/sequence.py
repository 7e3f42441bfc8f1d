"""Sequence and optional ops: SequenceEmpty/Construct/At/Insert/Erase/Length,
SplitToSequence, ConcatFromSequence, SequenceMap, Optional, OptionalHasElement,
OptionalGetElement.

At run time a sequence is a Python list of arrays and an empty optional is
``None``; the IR gives such values no ``TensorType`` (their ONNX type stays in
``value.meta["onnx_type"]``), so inference answers ``None`` for them. Each op
returns a new list: sequences are values, never mutated in place.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import REQUIRED, normalize_axis, register_op
from .shape_ops import split_sizes


def _no_type(node: Node, attrs: dict):
    return [None] * len(node.outputs)


def _seq(x, op: str) -> list:
    if not isinstance(x, list):
        raise ShapeError(f"{op} expects a sequence, got {type(x).__name__}")
    return x


def _position(p, n: int, op: str, insert: bool = False) -> int:
    i = int(np.asarray(p).reshape(-1)[0])
    hi = n if insert else n - 1
    if not -n <= i <= hi:
        raise ShapeError(f"{op}: position {i} is out of range for a sequence of {n}")
    return i + n if i < 0 else i


@register_op("SequenceEmpty", attrs={"dtype": None}, infer=_no_type)
def sequence_empty(inputs, attrs, ctx):
    return [[]]


@register_op("SequenceConstruct", inputs=["*inputs"], infer=_no_type)
def sequence_construct(inputs, attrs, ctx):
    return [list(inputs)]


@register_op("SequenceAt", inputs=["input_sequence", "position"], infer=_no_type)
def sequence_at(inputs, attrs, ctx):
    seq = _seq(inputs[0], "SequenceAt")
    return [seq[_position(inputs[1], len(seq), "SequenceAt")]]


@register_op("SequenceInsert", inputs=["input_sequence", "tensor", "?position"], infer=_no_type)
def sequence_insert(inputs, attrs, ctx):
    seq = list(_seq(inputs[0], "SequenceInsert"))
    pos = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    i = len(seq) if pos is None else _position(pos, len(seq), "SequenceInsert", insert=True)
    seq.insert(i, inputs[1])
    return [seq]


@register_op("SequenceErase", inputs=["input_sequence", "?position"], infer=_no_type)
def sequence_erase(inputs, attrs, ctx):
    seq = list(_seq(inputs[0], "SequenceErase"))
    pos = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    i = len(seq) - 1 if pos is None else _position(pos, len(seq), "SequenceErase")
    del seq[i]
    return [seq]


@register_op("SequenceLength", inputs=["input_sequence"], infer=lambda node, attrs: [TensorType("int64", ())])
def sequence_length(inputs, attrs, ctx):
    return [np.array(len(_seq(inputs[0], "SequenceLength")), np.int64)]


@register_op("SplitToSequence", inputs=["input", "?split"], attrs={"axis": 0, "keepdims": 1}, infer=_no_type)
def split_to_sequence(inputs, attrs, ctx):
    """Pieces of ``split`` lengths (a scalar: chunks of that size, the last smaller); without
    ``split``, pieces of one (squeezed unless ``keepdims``)."""
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    split = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    dim = x.shape[axis]
    if split is None:
        pieces = [np.take(x, [i], axis=axis) for i in range(dim)]
        if not attrs["keepdims"]:
            pieces = [np.squeeze(p, axis=axis) for p in pieces]
        return [pieces]
    split = np.asarray(split)
    if split.ndim == 0:
        chunk = int(split)
        if chunk <= 0:
            raise ShapeError(f"SplitToSequence: split of {chunk}")
        sizes = [min(chunk, dim - i) for i in range(0, dim, chunk)]
    else:
        sizes = split_sizes(dim, len(split), [int(s) for s in split], None)
    bounds = np.cumsum(sizes)[:-1]
    return [[p.copy() for p in np.split(x, bounds, axis=axis)]]


@register_op("ConcatFromSequence", inputs=["input_sequence"], attrs={"axis": REQUIRED, "new_axis": 0},
             infer=_no_type)
def concat_from_sequence(inputs, attrs, ctx):
    """Concatenate (or, with ``new_axis``, stack) the tensors of a sequence."""
    seq = _seq(inputs[0], "ConcatFromSequence")
    if not seq:
        raise ShapeError("ConcatFromSequence of an empty sequence")
    if attrs["new_axis"]:
        return [np.stack(seq, axis=normalize_axis(attrs["axis"], seq[0].ndim + 1, ctx.node))]
    return [np.concatenate(seq, axis=normalize_axis(attrs["axis"], seq[0].ndim, ctx.node))]


@register_op("SequenceMap", inputs=["input_sequence", "*additional_inputs"], outputs=["*out_sequence"],
             attrs={"body": REQUIRED}, infer=_no_type)
def sequence_map(inputs, attrs, ctx):
    """Run ``body`` once per element; sequence inputs give their i-th element, tensors themselves."""
    if ctx.run_subgraph is None:
        raise ShapeError("SequenceMap: no subgraph runner in this context")
    seq = _seq(inputs[0], "SequenceMap")
    extra = list(inputs[1:])
    for e in extra:
        if isinstance(e, list) and len(e) != len(seq):
            raise ShapeError(f"SequenceMap: sequences of lengths {len(seq)} and {len(e)}")
    body = attrs["body"]
    outs: list[list] = [[] for _ in body.outputs]
    for i in range(len(seq)):
        args = [seq[i]] + [e[i] if isinstance(e, list) else e for e in extra]
        for acc, v in zip(outs, ctx.run_subgraph(body, args, getattr(ctx, "outer_env", None))):
            acc.append(v)
    return outs


@register_op("Optional", inputs=["?input"], attrs={"type": None}, infer=_no_type)
def optional(inputs, attrs, ctx):
    """An optional holding the input, or an empty one (None)."""
    return [inputs[0] if inputs else None]


@register_op("OptionalHasElement", inputs=["?input"], infer=lambda node, attrs: [TensorType("bool", ())])
def optional_has_element(inputs, attrs, ctx):
    return [np.array(bool(inputs) and inputs[0] is not None)]


@register_op("OptionalGetElement", inputs=["input"], infer=_no_type)
def optional_get_element(inputs, attrs, ctx):
    if inputs[0] is None:
        raise ShapeError("OptionalGetElement of an empty optional")
    return [inputs[0]]
