"""graphopt's fused ops (domain ``ai.graphopt``): what the lowering passes write.

Each row has a schema, shape inference and a NumPy kernel, so the CPU reference
runs every graph a lowering pass produces. Fused pointwise work is a scalar
expression (``graphopt.expr``) in a string attribute:

* ``FusedElementwise(*inputs) -> *outputs``, attr ``expr``: one expression per
  output over the inputs (``in0``, ``in1``...), NumPy broadcasting
  (``fuse_elementwise``).
* ``FusedConv(X, W, ?B, *extra)``, ``FusedConvTranspose(X, W, ?B, *extra)``,
  ``FusedGemm(A, B, ?C, *extra)``, ``FusedMatMul(A, B, *extra)``: the base op,
  then attr ``epilogue``, an expression over the accumulator ``acc`` (``in0``)
  and the extra operands (``in1``... = the node's inputs after the base op's),
  which broadcast to the accumulator's shape without growing it
  (``fuse_conv_epilogue``). An empty epilogue is the identity. ``FusedConv`` also
  has ``layout``: ``"NCHW"`` (ONNX's) or ``"NHWC"``, where X and the result are
  channels-last and W is ``[O, *kernel, I/group]`` (``convert_layout_nhwc``).
* ``FusedRowReduce(*operands, *inputs) -> *results, *extras``: attr ``prologue``,
  expressions over the inputs (``in0``... = the node's inputs after the row op's own
  operands) whose first result is the row ``x``; the row op ``kind`` (``softmax``,
  ``log_softmax``, ``layernorm`` with attr ``epsilon`` and own operands Scale, ?B,
  ``reduce_mean``/``reduce_sum``/``reduce_max`` with attr ``keepdims``) over x's last axis,
  computed by that op's registry kernel; then attr ``epilogue``, expressions over its result
  ``acc`` (``in0``) and the inputs (``in1``... = ``in0``... of the prologue) that keep acc's
  shape (empty: ``acc``). The epilogue's results are the first outputs, the prologue's
  further results (values also read outside, x's shape) the rest (``fuse_row_reduce``).
* ``MaxPool``, ``AveragePool``, ``GlobalAveragePool``, ``GlobalMaxPool`` with
  ``layout="NHWC"``: ONNX's attributes over a channels-last tensor.
* ``Attention(Q, K, V, ?mask)``: ``softmax(scale * Q K^T + mask) V`` over the last
  two axes; attrs ``scale``, ``mask_type`` (``"none"`` | ``"additive"``),
  ``k_transposed`` (K given as ``[..., D, Sk]``) and the head layout: ``"BHSD"``
  (``[..., S, D]`` per head) or ``"BSHD"`` (heads packed as ``[B, S, H*D]`` or
  ``[B, S, H, D]``, with ``num_heads``) (``fuse_attention``).

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (2, 3)); y = b.input("y", (3,))
>>> out = b.op("FusedElementwise", x, y, domain="ai.graphopt", expr="relu(add(in0, in1))")
>>> out.type
TensorType(dtype='float32', shape=(2, 3))
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..expr import Input, dtype_of, evaluate_many, inputs_used, parse_exprs
from ..ir import Node, TensorType, Value
from . import nn as _nn
from .nn import compute_dtype
from .norm import _softmax
from .registry import REQUIRED, KernelContext, broadcast_shapes, get_schema, in_type, register_op

FUSED_DOMAIN = "ai.graphopt"
LAYOUTS = ("NCHW", "NHWC")


def channels_last_perm(rank: int) -> tuple[int, ...]:
    """``(0, 2, ..., rank-1, 1)``: NCHW -> NHWC (``x.transpose(perm)``)."""
    return (0, *range(2, rank), 1)


def channels_first_perm(rank: int) -> tuple[int, ...]:
    """``(0, rank-1, 1, ..., rank-2)``: NHWC -> NCHW."""
    return (0, rank - 1, *range(1, rank - 1))


def _permuted(t: TensorType | None, perm) -> TensorType | None:
    if t is None or t.shape is None or len(t.shape) != len(perm):
        return t
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _proxy(op_type: str, node: Node, perms: dict[int, tuple[int, ...]], n_inputs: int) -> Node:
    """A stand-in ONNX node whose first ``n_inputs`` inputs have ``node``'s types,
    permuted where ``perms`` says (to run the ONNX op's own inference)."""
    ins = []
    for i in range(n_inputs):
        t = in_type(node, i)
        ins.append(None if node.input(i) is None else Value(f"in{i}", _permuted(t, perms[i]) if i in perms else t))
    return Node(op_type, ins, [Value("out")], dict(node.attrs))


def _base_attrs(attrs: dict, drop=("epilogue", "layout")) -> dict:
    return {k: v for k, v in attrs.items() if k not in drop}


# ---------------------------------------------------------------------------
# FusedElementwise


def _exprs(text: str, n_outputs: int, where: str):
    exprs = parse_exprs(text) if text else [Input(0)]
    if len(exprs) != n_outputs:
        raise ShapeError(f"{where}: expression {text!r} has {len(exprs)} results for {n_outputs} outputs")
    return exprs


def _elementwise_infer(node: Node, attrs: dict):
    exprs = _exprs(attrs["expr"], len(node.outputs), f"node {node.name!r}")
    return _expr_types(exprs, [in_type(node, i) for i in range(len(node.inputs))])


def _expr_types(exprs, types: list[TensorType | None]) -> list[TensorType | None]:
    """Each expression's type over inputs of ``types`` (NumPy broadcasting), None where one is unknown."""
    out = []
    for e in exprs:
        used = inputs_used(e)
        if any(i >= len(types) or types[i] is None for i in used):
            out.append(None)
            continue
        dt = dtype_of(e, [t.dtype for t in types])
        out.append(TensorType(dt, broadcast_shapes(*[types[i].shape for i in used]) if used else ()))
    return out


def _finish(results, exprs, inputs):
    outs = []
    for r, e in zip(results, exprs):
        shape = np.broadcast_shapes(*[np.shape(inputs[i]) for i in inputs_used(e)])
        if r.shape != shape:
            r = np.broadcast_to(r, shape)
        if any(r is x for x in inputs) or not r.flags.writeable:
            r = np.array(r)
        outs.append(r)
    return outs


@register_op("FusedElementwise", domain=FUSED_DOMAIN, inputs=["*inputs"], outputs=["*outputs"],
             attrs={"expr": REQUIRED}, infer=_elementwise_infer, elementwise=True)
def fused_elementwise(inputs, attrs, ctx):
    """Pointwise expressions over broadcast inputs, one per output (shared parts computed once)."""
    n_out = len(ctx.node.outputs) if ctx.node is not None else len(parse_exprs(attrs["expr"]))
    exprs = _exprs(attrs["expr"], n_out, "FusedElementwise")
    return _finish(evaluate_many(exprs, inputs), exprs, inputs)


# ---------------------------------------------------------------------------
# base op + epilogue


def _epilogue_op(op_type: str, base_op: str, base_inputs: list[str], run_base, layouts: bool = False):
    """Register ``op_type``: ``base_op`` on the first inputs, then the ``epilogue`` expression."""
    n_base = len(base_inputs)
    attrs = {**get_schema(base_op).attrs, "epilogue": ""}
    if layouts:
        attrs["layout"] = "NCHW"

    def nhwc_rank(attrs, rank):
        """The rank when the node is channels-last, None for ONNX's layout."""
        if attrs.get("layout", "NCHW") == "NCHW":
            return None
        if attrs["layout"] != "NHWC":
            raise ShapeError(f"{op_type}: unknown layout {attrs['layout']!r} (known: {', '.join(LAYOUTS)})")
        return rank

    def infer(node: Node, attrs: dict):
        x = in_type(node, 0)
        rank = nhwc_rank(attrs, None if x is None or x.shape is None else len(x.shape))
        base = get_schema(base_op)
        if rank is None:
            proxy = _proxy(base_op, node, {}, n_base)
        elif node.input(1) is None or in_type(node, 1) is None or in_type(node, 1).shape is None:
            return [None]
        else:
            proxy = _proxy(base_op, node, {0: channels_first_perm(rank), 1: channels_first_perm(rank)}, n_base)
        acc = base.infer(proxy, base.resolve_attrs(_base_attrs(attrs)))[0]
        if acc is None:
            return [None]
        if rank is not None:
            acc = _permuted(acc, channels_last_perm(rank))
        extra = [in_type(node, i) for i in range(n_base, len(node.inputs))]
        (e,) = _exprs(attrs["epilogue"], 1, f"node {node.name!r}")
        dt = dtype_of(e, [acc.dtype] + [None if t is None else t.dtype for t in extra])
        return [TensorType(dt or acc.dtype, acc.shape)]

    def kernel(inputs, attrs, ctx):
        base_in = list(inputs[:n_base]) + [None] * (n_base - len(inputs[:n_base]))
        rank = nhwc_rank(attrs, np.ndim(inputs[0]))
        if rank is not None:
            base_in[0] = np.ascontiguousarray(np.transpose(base_in[0], channels_first_perm(rank)))
            base_in[1] = np.ascontiguousarray(np.transpose(base_in[1], channels_first_perm(rank)))
        acc = run_base(base_in, _base_attrs(attrs), ctx)
        if rank is not None:
            acc = np.ascontiguousarray(np.transpose(acc, channels_last_perm(rank)))
        (e,) = _exprs(attrs["epilogue"], 1, op_type)
        if e == Input(0):
            return [acc]
        (y,) = evaluate_many([e], [acc, *inputs[n_base:]])
        return [np.array(np.broadcast_to(y, acc.shape))]  # ascontiguousarray would make a 0-d result 1-d

    kernel.__doc__ = f"{base_op}, then the epilogue expression over its result (acc) and the extra inputs."
    kernel.__name__ = op_type.lower()
    register_op(op_type, domain=FUSED_DOMAIN, inputs=[*base_inputs, "*extra"], attrs=attrs, infer=infer)(kernel)


def _registry_kernel(op_type: str):
    def run(inputs, attrs, ctx):
        s = get_schema(op_type)
        return s.kernel(inputs, s.resolve_attrs(attrs), KernelContext(opset=ctx.opset if ctx else 17))[0]

    return run


_epilogue_op("FusedConv", "Conv", ["X", "W", "?B"], lambda i, a, c: _nn.conv(i[0], i[1], i[2], a), layouts=True)
_epilogue_op("FusedConvTranspose", "ConvTranspose", ["X", "W", "?B"], _registry_kernel("ConvTranspose"))
_epilogue_op("FusedGemm", "Gemm", ["A", "B", "?C"], _registry_kernel("Gemm"))
_epilogue_op("FusedMatMul", "MatMul", ["A", "B"], _registry_kernel("MatMul"))


# ---------------------------------------------------------------------------
# FusedRowReduce

# kind -> the registry op that defines it; each runs over the last axis only
ROW_KINDS = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "layernorm": "LayerNormalization",
             "reduce_mean": "ReduceMean", "reduce_sum": "ReduceSum", "reduce_max": "ReduceMax"}


def row_op(attrs: dict) -> tuple[str, int]:
    """``(registry op, number of its own operands)`` of a FusedRowReduce's ``kind``: the own
    operands (LayerNormalization's Scale and B) are the node's first inputs."""
    op = ROW_KINDS.get(attrs["kind"])
    if op is None:
        raise ShapeError(f"FusedRowReduce: unknown kind {attrs['kind']!r} (known: {', '.join(ROW_KINDS)})")
    return op, 2 if op == "LayerNormalization" else 0


def row_exprs(attrs: dict, n_outputs: int | None, where: str = "FusedRowReduce") -> tuple[list, list]:
    """``(prologue, epilogue)`` expressions; ``n_outputs`` (when known) must be their count of results."""
    pro = parse_exprs(attrs["prologue"])
    epi = parse_exprs(attrs["epilogue"]) if attrs["epilogue"] else [Input(0)]
    if n_outputs is not None and len(epi) + len(pro) - 1 != n_outputs:
        raise ShapeError(f"{where}: {len(epi)} epilogue and {len(pro) - 1} extra prologue results "
                         f"for {n_outputs} outputs")
    return pro, epi


def row_result_shape(op: str, attrs: dict, x_shape):
    """The shape of the row op's result (``acc``) for a row input of ``x_shape``."""
    if x_shape is None or not op.startswith("Reduce"):
        return x_shape
    return tuple(x_shape[:-1]) + ((1,) if attrs["keepdims"] else ())


def _row_base_attrs(op: str, attrs: dict) -> dict:
    if op == "LayerNormalization":
        return {"axis": -1, "epsilon": attrs["epsilon"]}
    if op.startswith("Reduce"):
        return {"axes": [-1], "keepdims": attrs["keepdims"]}
    return {"axis": -1}


def _row_infer(node: Node, attrs: dict):
    op, n_own = row_op(attrs)
    pro, epi = row_exprs(attrs, len(node.outputs), f"node {node.name!r}")
    ext = [in_type(node, i) for i in range(n_own, len(node.inputs))]
    pro_types = _expr_types(pro, ext)
    x = pro_types[0]
    if x is None:
        return [None] * len(epi) + pro_types[1:]
    if x.shape is not None and not x.shape:
        raise ShapeError(f"node {node.name!r}: FusedRowReduce needs a row input of rank 1 or more")
    acc = TensorType(x.dtype, row_result_shape(op, attrs, x.shape))
    ext_dts = [None if t is None else t.dtype for t in ext]
    return [TensorType(dtype_of(e, [acc.dtype, *ext_dts]) or acc.dtype, acc.shape) for e in epi] + pro_types[1:]


@register_op("FusedRowReduce", domain=FUSED_DOMAIN, inputs=["*inputs"], outputs=["*outputs"],
             attrs={"kind": REQUIRED, "prologue": REQUIRED, "epilogue": "", "epsilon": 1e-5, "keepdims": 1},
             infer=_row_infer)
def fused_row_reduce(inputs, attrs, ctx):
    """The prologue over the inputs, the registry's row op (``kind``) over its first result's last
    axis, then the epilogue over that result (``acc``) and the inputs; the prologue's further results
    are outputs after the epilogue's."""
    op, n_own = row_op(attrs)
    n_out = len(ctx.node.outputs) if ctx is not None and ctx.node is not None else None
    pro, epi = row_exprs(attrs, n_out)
    ext = list(inputs[n_own:])
    x, *extras = _finish(evaluate_many(pro, ext), pro, ext)
    s = get_schema(op)
    own = list(inputs[:n_own]) + [None] * (n_own - len(inputs[:n_own]))
    acc = s.kernel([x, *own], s.resolve_attrs(_row_base_attrs(op, attrs)), KernelContext(opset=17))[0]
    if epi == [Input(0)]:
        return [acc, *extras]
    outs = [np.array(np.broadcast_to(y, acc.shape)) for y in evaluate_many(epi, [acc, *ext])]
    return outs + extras


# ---------------------------------------------------------------------------
# channels-last pools


def _channels_last_op(op_type: str):
    base = get_schema(op_type)

    def infer(node: Node, attrs: dict):
        x = in_type(node, 0)
        if x is None or x.shape is None:
            return [None]
        rank = len(x.shape)
        t = base.infer(_proxy(op_type, node, {0: channels_first_perm(rank)}, 1), base.resolve_attrs(
            _base_attrs(attrs)))[0]
        return [_permuted(t, channels_last_perm(rank))]

    def kernel(inputs, attrs, ctx):
        x = inputs[0]
        if attrs.get("layout", "NHWC") != "NHWC":
            raise ShapeError(f"ai.graphopt::{op_type} takes layout='NHWC', not {attrs.get('layout')!r}")
        xc = np.ascontiguousarray(np.transpose(x, channels_first_perm(x.ndim)))
        y = base.kernel([xc], base.resolve_attrs(_base_attrs(attrs)), KernelContext(opset=ctx.opset))[0]
        return [np.ascontiguousarray(np.transpose(y, channels_last_perm(x.ndim)))]

    kernel.__doc__ = f"ONNX {op_type} over a channels-last (NHWC) tensor."
    register_op(op_type, domain=FUSED_DOMAIN, inputs=["X"], attrs={**base.attrs, "layout": "NHWC"},
                infer=infer)(kernel)


for _op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
    _channels_last_op(_op)


# ---------------------------------------------------------------------------
# Attention

ATTENTION_LAYOUTS = ("BHSD", "BSHD")


def _split_heads(x: np.ndarray, heads: int, layout: str) -> np.ndarray:
    """``[..., S, D]`` per head from the op's layout."""
    if layout == "BHSD":
        return x
    if x.ndim == 3:
        b, s, hd = x.shape
        if hd % heads:
            raise ShapeError(f"Attention: hidden size {hd} is not a multiple of num_heads={heads}")
        x = x.reshape(b, s, heads, hd // heads)
    return x.transpose(0, 2, 1, 3)


def _attention_check(node: Node | None, attrs: dict, has_mask: bool) -> None:
    if attrs["layout"] not in ATTENTION_LAYOUTS:
        raise ShapeError(f"Attention: unknown layout {attrs['layout']!r} (known: {', '.join(ATTENTION_LAYOUTS)})")
    if attrs["layout"] == "BSHD" and int(attrs["num_heads"]) < 1:
        raise ShapeError("Attention with layout 'BSHD' needs num_heads >= 1")
    if attrs["layout"] == "BSHD" and attrs["k_transposed"]:
        raise ShapeError("Attention: k_transposed applies to layout 'BHSD' only")
    if attrs["mask_type"] not in ("none", "additive") or (attrs["mask_type"] == "additive") != has_mask:
        raise ShapeError(f"Attention: mask_type {attrs['mask_type']!r} but the mask input is "
                         f"{'given' if has_mask else 'absent'}")


def _attention_infer(node: Node, attrs: dict):
    _attention_check(node, attrs, node.input(3) is not None)
    q, v = in_type(node, 0), in_type(node, 2)
    if q is None or v is None or q.shape is None or v.shape is None:
        return [None if q is None else TensorType(q.dtype, None)]
    if attrs["layout"] == "BHSD":
        k = in_type(node, 1)
        batch = broadcast_shapes(q.shape[:-2], v.shape[:-2], (() if k is None or k.shape is None else k.shape[:-2]))
        return [TensorType(q.dtype, (*batch, q.shape[-2], v.shape[-1]))]
    return [TensorType(q.dtype, (*q.shape[:-1], v.shape[-1]))]


@register_op("Attention", domain=FUSED_DOMAIN, inputs=["Q", "K", "V", "?mask"],
             attrs={"scale": REQUIRED, "num_heads": 0, "layout": "BHSD", "k_transposed": 0, "mask_type": "none"},
             infer=_attention_infer)
def attention(inputs, attrs, ctx):
    """``softmax(scale * Q @ K^T + mask, axis=-1) @ V`` per head, in float32 for half inputs."""
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    _attention_check(ctx.node, attrs, mask is not None)
    out_dtype = q.dtype
    dt = compute_dtype(q.dtype)
    layout, heads = attrs["layout"], int(attrs["num_heads"])
    qh = _split_heads(q.astype(dt, copy=False), heads, layout)
    vh = _split_heads(v.astype(dt, copy=False), heads, layout)
    if attrs["k_transposed"]:
        kt = k.astype(dt, copy=False)
    else:
        kt = np.swapaxes(_split_heads(k.astype(dt, copy=False), heads, layout), -1, -2)
    s = np.matmul(qh, kt) * dt.type(attrs["scale"])
    if mask is not None:
        s = s + mask.astype(dt, copy=False)
    o = np.matmul(_softmax(s, -1), vh)
    if layout == "BSHD":
        o = o.transpose(0, 2, 1, 3)
        if q.ndim == 3:
            o = o.reshape(o.shape[0], o.shape[1], -1)
    return [np.ascontiguousarray(o).astype(out_dtype, copy=False)]


# ---------------------------------------------------------------------------
# LayerNormalization over the channels of a channels-first tensor (the lowering pass
# lower_channel_layernorm: Transpose(NCHW -> NHWC), LayerNormalization(axis=-1), Transpose back)

@register_op("ChannelLayerNormalization", domain=FUSED_DOMAIN, inputs=["X", "Scale", "?B"],
             attrs={"epsilon": 1e-5, "stash_type": 1}, infer=lambda node, attrs: [in_type(node, 0)])
def channel_layer_normalization(inputs, attrs, ctx):
    """ONNX LayerNormalization(axis=-1) of the channels-last view of a channels-first tensor
    ``[N, C, *spatial]``: each position normalized over its C channels, ``Scale`` and ``B`` of
    shape ``[C]`` (timm's LayerNorm2d, ConvNeXt's blocks)."""
    x = inputs[0]
    if x.ndim < 3:
        raise ShapeError(f"ai.graphopt::ChannelLayerNormalization takes [N, C, *spatial], not {list(x.shape)}")
    xl = np.ascontiguousarray(np.transpose(x, channels_last_perm(x.ndim)))
    y = _registry_kernel("LayerNormalization")([xl, *inputs[1:]], {**attrs, "axis": -1}, ctx)
    return [np.ascontiguousarray(np.transpose(y, channels_first_perm(x.ndim)))]


# ---------------------------------------------------------------------------
# RMSNormalization and RotaryEmbedding at any opset (the lowering passes fuse_rmsnorm, fuse_rotary)

@register_op("RMSNormalization", domain=FUSED_DOMAIN, inputs=["X", "scale"],
             attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1}, infer=lambda node, attrs: [in_type(node, 0)])
def rms_normalization(inputs, attrs, ctx):
    """ONNX's RMSNormalization (opset 23), for models of any opset: ``x / sqrt(mean(x^2) + eps) * scale``."""
    return [_registry_kernel("RMSNormalization")(inputs, attrs, ctx)]


def _rotary_infer(node: Node, attrs: dict):
    x, cos, sin = (in_type(node, i) for i in range(3))
    if x is None or x.shape is None or cos is None or sin is None or cos.shape is None or sin.shape is None:
        return [None if x is None else TensorType(x.dtype, None)]
    rd = int(attrs["rotary_dim"]) or x.shape[-1]
    rot = (*x.shape[:-1], rd)
    if broadcast_shapes(rot, cos.shape, sin.shape) != rot:
        raise ShapeError(f"RotaryEmbedding: cos {cos.shape} and sin {sin.shape} do not broadcast into {rot}")
    return [x]


@register_op("RotaryEmbedding", domain=FUSED_DOMAIN, inputs=["X", "cos", "sin"], attrs={"rotary_dim": 0},
             infer=_rotary_infer)
def rotary_embedding(inputs, attrs, ctx):
    """``x * cos + rotate_half(x) * sin`` over the first ``rotary_dim`` features of the last axis
    (all when 0; the rest pass through), ``rotate_half(r) = concat(-r[half:], r[:half])``: the
    rotary embedding as transformers computes it, with ``cos``/``sin`` of the full rotary width
    (its two halves equal) broadcast into ``x``, e.g. [1, 1, S, D] for X [B, H, S, D]."""
    x, cos, sin = inputs
    rd = int(attrs["rotary_dim"]) or x.shape[-1]
    if rd % 2 or rd > x.shape[-1]:
        raise ShapeError(f"RotaryEmbedding: rotary_dim {rd} for a last axis of {x.shape[-1]}")
    r, h = x[..., :rd], rd // 2
    y = r * cos + np.concatenate([-r[..., h:], r[..., :h]], axis=-1) * sin
    if rd < x.shape[-1]:
        y = np.concatenate([y, x[..., rd:]], axis=-1)
    return [y.astype(x.dtype, copy=False)]
