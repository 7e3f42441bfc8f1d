"""CUDA lowerings of the quantized ops: graphopt's fused int8 ops (what
``lower_qdq_int8`` writes: QConv, QGemm, QMatMul, QAdd) and ONNX
QuantizeLinear / DequantizeLinear, which stay at the edges of int8 islands.

Everything that depends only on constants is done here, once: weights are
shifted to int8 and packed four to a word (``int8.py``; ``int8_tc.pick_int8_gemm``
puts a GEMM on tensor cores where they pay), per-channel
multipliers come from the reference's ``quantize_multiplier``, and bias and
zero-point corrections are folded into one int32 per output channel
(``requant.py``). A node whose accumulator could leave int32 is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node, Value
from graphopt.ops.quant import QRANGE

from ..ew import make_elementwise, render_elementwise
from ..int8 import make_int8_depthwise, render_int8_depthwise, shifted_zp
from ..int8_tc import pick_int8_gemm, render_int8
from ..kernel import ctype_of
from ..requant import (RSHIFT_HELPER, QuantOut, channel_multipliers, channel_table, check_accumulator, clamp_lines,
                      quant_out)
from ..scalar import ScalarFn, broadcast_strides, c_float, contiguous_strides
from ..spatial import geometry
from ..specs import View, ceil_div, prod
from .common import FUSED_DOMAIN, window_attrs
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

_Q8 = ("int8", "uint8")


def _centered_max(dtype: str, zp: int) -> int:
    """The largest |v - zp| over the values of ``dtype``."""
    lo, hi = QRANGE[dtype]
    return max(zp - lo, hi - zp)


def _scalar_int(a: np.ndarray | None) -> int:
    return 0 if a is None else int(np.asarray(a).reshape(-1)[0])


def _fused_check(node: Node) -> str | None:
    x, w = node.input(0), node.input(3)
    for v, what in ((x, "input"), (w, "weight")):
        if v.dtype not in _Q8:
            return f"{node.op_type} {what} is {v.dtype} (int8/uint8 only)"
    for i in (1, 2):
        v = node.input(i)
        if v is not None and v.type is not None and v.type.is_static and v.type.numel() != 1:
            return f"{node.op_type} input is not quantized per tensor"
    if node.op_type in ("QConv", "QGemm") and w.producer is not None and w.producer.op_type != "Constant":
        return f"{node.op_type} weight is computed at run time"
    if node.attr("activation", "") not in ("", "Relu", "Clip"):
        return f"fused activation {node.attr('activation')!r}"
    for v in (x, w):
        if node.op_type == "QMatMul" and v.type is not None and v.type.rank is not None and v.type.rank < 2:
            return "QMatMul of a 1-D operand"
    if node.op_type == "QConv" and x.type is not None and x.type.rank is not None and x.type.rank < 3:
        return "QConv needs at least one spatial dim"
    return None


class _Params:
    """The constant side of a fused int8 node: scales, zero points, bias, output stage."""

    def __init__(self, node: Node, lw: Lowerer, n_out: int):
        self.node = node
        self.x_zp = _scalar_int(lw.optional_const(node, 2, "x_zero_point"))
        xs = lw.require_const(node, 1, "x_scale")
        ws = lw.require_const(node, 4, "w_scale")
        self.w_zp_raw = lw.const(node.input(5))
        if node.input(5) is not None and self.w_zp_raw is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): weight zero point must be a constant")
        ys, yzp = lw.const(node.input(6)), lw.optional_const(node, 7, "y_zero_point")
        if node.input(6) is not None and ys is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): y_scale must be a constant")
        bias = lw.const(node.input(8))
        if node.input(8) is not None and bias is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): bias must be a constant")
        attrs = {k: node.attr(k) for k in ("activation", "act_min", "act_max")}
        self.out: QuantOut = quant_out(attrs, ys, yzp)
        acc_scale = np.broadcast_to(np.asarray(xs, np.float32).astype(np.float64).reshape(-1)[0]
                                    * np.asarray(ws, np.float32).astype(np.float64).reshape(-1), (n_out,))
        self.fs = np.ascontiguousarray(acc_scale, np.float64)
        self.m0, self.shift = (0, 31) if self.out.dequantized else channel_multipliers(acc_scale, ys)
        self.bias = np.zeros(n_out, np.int64) if bias is None else \
            np.broadcast_to(np.asarray(bias, np.int64).reshape(-1), (n_out,)).copy()
        self.n_out = n_out

    def w_zp(self, dtype: str) -> np.ndarray:
        """The weight's zero point per output channel (raw)."""
        z = np.zeros((), np.int64) if self.w_zp_raw is None else np.asarray(self.w_zp_raw, np.int64).reshape(-1)
        return np.broadcast_to(z, (self.n_out,)).copy()

    def tables(self, lw: Lowerer, cc, b_zp) -> list[Value]:
        """The per-channel ``qp`` table (and ``fs`` for a dequantized output) as constants."""
        name = self.node.name
        vals = [lw.new_const(f"{name}_qp", channel_table(self.n_out, cc, self.m0, self.shift, b_zp))]
        if self.out.dequantized:
            vals.append(lw.new_const(f"{name}_fs", self.fs))
        return vals


def _const_weights(node: Node, p: _Params, w_nk: np.ndarray, w_dtype: str, a_dtype: str, lw: Lowerer):
    """Shift and pack an (N, K) constant weight; fold bias and zero-point terms per column.
    Returns (packed words, qp/fs tables, whether the row sums of A are needed)."""
    n, K = w_nk.shape
    w_s = w_nk.astype(np.int64) - (128 if w_dtype == "uint8" else 0)
    wz = p.w_zp(w_dtype)
    bz = wz - (128 if w_dtype == "uint8" else 0)
    az = shifted_zp(p.x_zp, a_dtype)
    cc = p.bias - az * w_s.sum(axis=1) + K * az * bz
    check_accumulator(_centered_max(a_dtype, p.x_zp) * int(np.abs(w_nk.astype(np.int64) - wz[:, None]).sum(axis=1).max(
        initial=0)) + int(np.abs(p.bias).max(initial=0)), f"node {node.name!r} ({node.op_type})")
    K4 = ceil_div(K, 4)
    packed = np.zeros((n, 4 * K4), np.int8)
    packed[:, :K] = w_s.astype(np.int8)
    words = lw.new_const(f"{node.name}_packed_w", packed.view("<i4").astype(np.int32))
    return words, p.tables(lw, cc, bz), bool(np.any(bz != 0))


@lowering("QConv", domain=FUSED_DOMAIN, check=_fused_check)
def lower_qconv(node: Node, lw: Lowerer) -> None:
    x, w, y = node.input(0), node.input(3), node.output
    xs, ws, ys = static_shape(x, node), static_shape(w, node), static_shape(y, node)
    strides, pads, dilations = window_attrs(node, xs, ws[2:], ys[2:])
    groups = int(node.attr("group", 1))
    wc = lw.require_const(node, 3, "weight")
    p = _Params(node, lw, ws[0])
    if groups > 1 and ws[1] == 1:  # depthwise: a direct window loop, centered int32 weights
        centered = wc.reshape(ws[0], -1).astype(np.int64) - p.w_zp(w.dtype)[:, None]
        check_accumulator(_centered_max(x.dtype, p.x_zp) * int(np.abs(centered).sum(axis=1).max(initial=0))
                          + int(np.abs(p.bias).max(initial=0)), f"node {node.name!r} (QConv)")
        spec = make_int8_depthwise(xs, ws, ys[2:], x_dtype=x.dtype, x_zp=p.x_zp, out=p.out, strides=strides,
                                   pads=pads, dilations=dilations)
        wv = lw.new_const(f"{node.name}_centered_w", centered.astype(np.int32))
        lw.emit(node, render_int8_depthwise(spec), spec, [y, x, wv, *p.tables(lw, p.bias, 0)])
        return
    geo = geometry(xs, ws[0], ws[2:], ys[2:], strides, pads, dilations)
    words, tables, row_sums = _const_weights(node, p, wc.reshape(ws[0], -1), w.dtype, x.dtype, lw)
    spec = pick_int8_gemm(0, 0, 0, conv=geo, groups=groups, out=p.out, a_zp=p.x_zp, a_dtype=x.dtype,
                          row_sums=row_sums)
    lw.emit(node, render_int8(spec), spec, [y, x, words, *tables])


@lowering("QGemm", domain=FUSED_DOMAIN, check=_fused_check)
def lower_qgemm(node: Node, lw: Lowerer) -> None:
    a, w, y = node.input(0), node.input(3), node.output
    M, K = static_shape(a, node)
    wc = lw.require_const(node, 3, "weight")
    w_nk = wc if node.attr("transB", 0) else wc.T
    p = _Params(node, lw, w_nk.shape[0])
    words, tables, row_sums = _const_weights(node, p, w_nk, w.dtype, a.dtype, lw)
    spec = pick_int8_gemm(M, w_nk.shape[0], K, out=p.out, a=View.contiguous(a.dtype, (M, K)), a_zp=p.x_zp,
                          row_sums=row_sums)
    lw.emit(node, render_int8(spec), spec, [y, a, words, *tables])


@lowering("QMatMul", domain=FUSED_DOMAIN, check=_fused_check)
def lower_qmatmul(node: Node, lw: Lowerer) -> None:
    a, b, y = node.input(0), node.input(3), node.output
    ash, bsh = static_shape(a, node), static_shape(b, node)
    K, N = bsh[-2:]
    bc = lw.const(b)
    if bc is not None and len(bsh) == 2:  # a weight: rows of every batch are one GEMM's rows
        M = prod(ash[:-1])
        p = _Params(node, lw, N)
        words, tables, row_sums = _const_weights(node, p, bc.T, b.dtype, a.dtype, lw)
        spec = pick_int8_gemm(M, N, K, out=p.out, a=View.contiguous(a.dtype, (M, K)), a_zp=p.x_zp,
                              row_sums=row_sums)
        lw.emit(node, render_int8(spec), spec, [y, a, words, *tables])
        return
    M = ash[-2]
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    av = View(a.dtype, broadcast_strides(ash[:-2], batch, ast[:-2]) + ast[-2:])
    bv = View(b.dtype, broadcast_strides(bsh[:-2], batch, bst[:-2]) + bst[-2:])
    p = _Params(node, lw, N)
    bz = p.w_zp(b.dtype) - (128 if b.dtype == "uint8" else 0)
    az = shifted_zp(p.x_zp, a.dtype)
    bz_raw = p.w_zp(b.dtype)
    check_accumulator(_centered_max(a.dtype, p.x_zp) * K * max(_centered_max(b.dtype, int(z)) for z in bz_raw)
                      + int(np.abs(p.bias).max(initial=0)), f"node {node.name!r} (QMatMul)")
    spec = pick_int8_gemm(M, N, K, batch, out=p.out, a=av, a_zp=p.x_zp, b=bv,
                          c=View.contiguous(y.dtype, (*batch, M, N)), row_sums=bool(np.any(bz != 0)),
                          col_sums=az != 0)
    lw.emit(node, render_int8(spec), spec, [y, a, b, *p.tables(lw, p.bias + K * az * bz, bz)])


# -- elementwise: QAdd, QuantizeLinear, DequantizeLinear -------------------------------------------


def _qadd_fn(a_dt: str, b_dt: str, az: int, bz: int, m0a: int, m0b: int, shift: int, q: QuantOut) -> ScalarFn:
    T = ctype_of(q.dtype)

    def emitter(ins, outs):
        o = outs[0]
        return [f"long long {o}_q = go_rshift_rhe((long long)((int){ins[0]} - {az}) * {m0a}LL"
                f" + (long long)((int){ins[1]} - {bz}) * {m0b}LL, {shift}) + {q.zero_point};",
                *clamp_lines(q, f"{o}_q"), f"const {T} {o} = ({T}){o}_q;"]

    return ScalarFn(f"qadd:{a_dt},{b_dt},{az},{bz},{m0a},{m0b},{shift},{q}", 2, (q.dtype,), emitter, (RSHIFT_HELPER,))


def _qadd_check(node: Node) -> str | None:
    for i in (0, 3):
        if node.input(i).dtype not in _Q8:
            return f"QAdd input is {node.input(i).dtype} (int8/uint8 only)"
    if node.attr("activation", "") not in ("", "Relu", "Clip"):
        return f"fused activation {node.attr('activation')!r}"
    return None


def _f64(a) -> float:
    return float(np.asarray(a, np.float32).reshape(-1)[0])


@lowering("QAdd", domain=FUSED_DOMAIN, check=_qadd_check)
def lower_qadd(node: Node, lw: Lowerer) -> None:
    a, b, y = node.input(0), node.input(3), node.output
    consts = [lw.require_const(node, i, "scale or zero point") for i in (1, 2, 4, 5, 6, 7)]
    a_s, a_z, b_s, b_z, y_s, y_z = consts
    # the reference's multipliers: a_scale/y_scale and b_scale/y_scale sharing one shift
    ma, mb = _f64(a_s) / _f64(y_s), _f64(b_s) / _f64(y_s)
    big = max(ma, mb)
    if big == 0:
        m0a = m0b = 0
        shift = 31
    else:
        shift = 31 - int(np.frexp(big)[1])
        if shift < 1:
            raise UnsupportedOpError(f"node {node.name!r} (QAdd): scale ratio >= 2**30")
        m0a, m0b = int(np.rint(ma * 2.0 ** shift)), int(np.rint(mb * 2.0 ** shift))
    attrs = {k: node.attr(k) for k in ("activation", "act_min", "act_max")}
    q = quant_out(attrs, y_s, y_z)
    fn = _qadd_fn(a.dtype, b.dtype, _scalar_int(a_z), _scalar_int(b_z), m0a, m0b, shift, q)
    oshape = static_shape(y, node)
    views = [View(v.dtype, broadcast_strides(static_shape(v, node), oshape)) for v in (a, b)]
    spec = make_elementwise(oshape, View.contiguous(y.dtype, oshape), views, fn)
    lw.emit(node, render_elementwise(spec), spec, [y, a, b])


def _axis_view(node: Node, v: Value, xshape) -> View:
    """A scale or zero point (scalar or per axis) read at the coordinates of ``x``."""
    shape = static_shape(v, node)
    strides = [0] * len(xshape)
    if prod(shape) > 1:
        strides[node.attr("axis", 1) % len(xshape)] = 1
    return View(v.dtype, tuple(strides))


def _qdq_check(node: Node) -> str | None:
    if node.attr("block_size", 0):
        return f"{node.op_type} with block_size (blocked quantization)"
    s = node.input(1)
    if s.dtype != "float32":
        return f"{node.op_type} with a {s.dtype} scale (float32 only)"
    if s.type is not None and s.type.rank is not None and s.type.rank > 1:
        return f"{node.op_type} with a {s.type.rank}-D scale"
    if node.op_type == "QuantizeLinear":
        if node.input(0).dtype != "float32" or node.attr("precision", 0):
            return f"QuantizeLinear of {node.input(0).dtype} (float32 only)"
        if node.output.dtype not in ("int8", "uint8", "int16", "uint16"):
            return f"QuantizeLinear to {node.output.dtype} (8- and 16-bit integers only)"
    else:
        if node.input(0).dtype not in ("int8", "uint8", "int16", "uint16", "int32"):
            return f"DequantizeLinear of {node.input(0).dtype}"
        if node.output.dtype != "float32":
            return f"DequantizeLinear to {node.output.dtype} (float32 only)"
    return None


def _quantize_fn(out_dt: str, zp_dt: str | None) -> ScalarFn:
    lo, hi = QRANGE[out_dt]
    T = ctype_of(out_dt)

    def emitter(ins, outs):
        o = outs[0]
        zp = f" + (float){ins[2]}" if zp_dt else ""
        return [f"float {o}_r = rintf({ins[0]} / {ins[1]});",  # the division in float32, as the reference
                f"{o}_r = ({o}_r != {o}_r ? -GO_INF : {o}_r){zp};",  # NaN saturates to the lowest value
                f"const {T} {o} = ({T})({o}_r < {c_float(lo)} ? {c_float(lo)} : ({o}_r > {c_float(hi)} ? "
                f"{c_float(hi)} : {o}_r));"]

    return ScalarFn(f"quantize:{out_dt},{zp_dt}", 3 if zp_dt else 2, (out_dt,), emitter)


def _dequantize_fn(x_dt: str, zp_dt: str | None) -> ScalarFn:
    def emitter(ins, outs):
        centered = f"((float){ins[0]} - (float){ins[2]})" if zp_dt else f"(float){ins[0]}"
        return [f"const float {outs[0]} = {centered} * {ins[1]};"]

    return ScalarFn(f"dequantize:{x_dt},{zp_dt}", 3 if zp_dt else 2, ("float32",), emitter)


@lowering("QuantizeLinear", "DequantizeLinear", check=_qdq_check)
def lower_qdq(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xshape = static_shape(x, node)
    params = [v for v in node.inputs[1:3] if v is not None]
    zp_dt = params[1].dtype if len(params) > 1 else None
    fn = _quantize_fn(y.dtype, zp_dt) if node.op_type == "QuantizeLinear" else _dequantize_fn(x.dtype, zp_dt)
    views = [View.contiguous(x.dtype, xshape), *(_axis_view(node, v, xshape) for v in params)]
    spec = make_elementwise(xshape, View.contiguous(y.dtype, xshape), views, fn)
    lw.emit(node, render_elementwise(spec), spec, [y, x, *params])
