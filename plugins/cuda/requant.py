"""Fixed-point requantization for the int8 kernels, bit-exact with
``graphopt.ops.quant`` (the fused-op contract in docs/quantization.md).

At compile time each output channel's real multiplier ``M = x_scale * w_scale[c] / y_scale``
becomes ``m0 * 2**-shift`` with the reference's own ``quantize_multiplier``; at run
time the kernel computes ``round_half_even(acc * m0 / 2**shift) + y_zp`` in 64-bit
integers (``go_rshift_rhe``), clamps for Relu / Clip in the quantized domain and
saturates. Without ``y_scale`` the output is ``float32(double(acc) * scale[c])``, the
reference's float64 product rounded once.

Per-channel integers travel in one table ``qp[c] = (cc, m0, shift, b_zp)``: ``cc``
is what is added to the accumulator (bias and zero-point corrections folded at
compile time), ``b_zp`` the weight's zero point (see ``int8_gemm``).

>>> m0, shift = quantize_multiplier(np.array([0.5]))
>>> int(m0[0]), int(shift[0])
(1073741824, 31)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ops.quant import QRANGE, quantize, quantize_multiplier

from .kernel import Helper, ctype_of
from .scalar import c_float

RSHIFT_HELPER = Helper("go_rshift_rhe", """\
// p / 2**s rounded to the nearest integer, ties to even (graphopt.ops.quant.rshift_round_half_even), s >= 1
__device__ __forceinline__ long long go_rshift_rhe(long long p, int s) {
    s = s < 62 ? s : 62;
    const long long q = p >> s;                 // floor: arithmetic shift
    const long long r = p & ((1LL << s) - 1);   // p - q * 2**s
    const long long half = 1LL << (s - 1);
    return q + ((r > half || (r == half && (q & 1))) ? 1 : 0);
}
""")

INT32_LIMIT = 2 ** 31


@dataclass(frozen=True)
class QuantOut:
    """How an int32 accumulator becomes the output: requantized to ``dtype`` (int8/uint8)
    with ``zero_point`` and a quantized-domain ``activation``, or dequantized (float32)."""

    dtype: str
    zero_point: int = 0
    activation: str = ""  # "", "Relu", "Clip"
    lo: float | None = None  # Clip bounds: quantized integers, or float32 values for a float output
    hi: float | None = None

    @property
    def dequantized(self) -> bool:
        return self.dtype == "float32"


def _f32(a) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float64)


def quant_out(attrs: dict, y_scale: np.ndarray | None, y_zp: np.ndarray | None) -> QuantOut:
    """The output stage of a fused int8 node, as ``graphopt.ops.quant.requantize`` does it."""
    act = attrs.get("activation") or ""
    if act not in ("", "Relu", "Clip"):
        raise UnsupportedOpError(f"fused activation {act!r}")
    lo, hi = attrs.get("act_min"), attrs.get("act_max")
    if y_scale is None:
        f = (lambda b: None if b is None else float(np.float32(b)))
        return QuantOut("float32", 0, act, f(lo), f(hi)) if act == "Clip" else QuantOut("float32", 0, act)
    dt = "uint8" if y_zp is None else str(np.asarray(y_zp).dtype)
    if dt not in ("uint8", "int8"):
        raise UnsupportedOpError(f"output quantized to {dt} (int8/uint8 only)")
    zp = 0 if y_zp is None else int(np.asarray(y_zp).reshape(()))
    if act != "Clip":
        return QuantOut(dt, zp, act)
    ys = np.asarray(y_scale, np.float32)

    def q(b):
        return None if b is None else int(quantize(np.float32(b), ys, y_zp, dtype=dt))

    return QuantOut(dt, zp, act, q(lo), q(hi))


def channel_multipliers(acc_scale: np.ndarray, y_scale) -> tuple[np.ndarray, np.ndarray]:
    """(m0, shift) per channel for ``acc_scale / y_scale`` (acc_scale in float64, from float32 scales)."""
    mult = acc_scale / _f32(y_scale)
    return quantize_multiplier(mult)


def wrap_int32(a) -> np.ndarray:
    """int64 values modulo 2**32 as int32 (two's complement), as the accumulator wraps."""
    a = np.asarray(a, np.int64)
    return ((a + INT32_LIMIT) % (2 * INT32_LIMIT) - INT32_LIMIT).astype(np.int32)


def channel_table(n: int, cc=0, m0=0, shift=31, b_zp=0) -> np.ndarray:
    """The per-channel integer table ``qp`` of shape (n, 4): (cc, m0, shift, b_zp)."""
    t = np.zeros((n, 4), np.int32)
    t[:, 0] = wrap_int32(np.broadcast_to(np.asarray(cc, np.int64), (n,)))
    t[:, 1] = np.broadcast_to(np.asarray(m0, np.int64), (n,))
    t[:, 2] = np.broadcast_to(np.asarray(shift, np.int64), (n,))
    t[:, 3] = np.broadcast_to(np.asarray(b_zp, np.int64), (n,))
    return t


def check_accumulator(bound: int, what: str) -> None:
    """The kernels accumulate in wrapping int32; the reference in exact integers (clipped to int32
    for requantization). They agree when the largest possible |accumulator| fits."""
    if bound >= INT32_LIMIT:
        raise UnsupportedOpError(f"{what}: the int32 accumulator could overflow (bound {bound} >= 2**31)")


def finish_lines(q: QuantOut, acc: str, ch: str) -> list[str]:
    """C lines defining ``v`` (the output's C type) from the int32 accumulator ``acc`` of channel ``ch``;
    reads ``qp`` (requantized) or ``fs`` (dequantized)."""
    if q.dequantized:
        lines = [f"float v = (float)((double)({acc}) * fs[{ch}]);"]
        if q.activation == "Relu":
            lines.append("v = v < 0.0f ? 0.0f : v;")
        if q.lo is not None:
            lines.append(f"v = v < {c_float(q.lo)} ? {c_float(q.lo)} : v;")
        if q.hi is not None:
            lines.append(f"v = v > {c_float(q.hi)} ? {c_float(q.hi)} : v;")
        return lines
    lines = [f"long long q = go_rshift_rhe((long long)({acc}) * qp[{ch} * 4 + 1], qp[{ch} * 4 + 2]) + {q.zero_point};"]
    return lines + clamp_lines(q, "q") + [f"const {ctype_of(q.dtype)} v = ({ctype_of(q.dtype)})q;"]


def clamp_lines(q: QuantOut, var: str) -> list[str]:
    """Relu / Clip in the quantized domain, then saturation, in the reference's order."""
    lines = []
    if q.activation == "Relu":
        lines.append(f"{var} = {var} < {q.zero_point} ? {q.zero_point} : {var};")
    if q.lo is not None:
        lines.append(f"{var} = {var} < {int(q.lo)} ? {int(q.lo)} : {var};")
    if q.hi is not None:
        lines.append(f"{var} = {var} > {int(q.hi)} ? {int(q.hi)} : {var};")
    lo, hi = QRANGE[q.dtype]
    lines.append(f"{var} = {var} < {lo} ? {lo} : ({var} > {hi} ? {hi} : {var});")
    return lines
