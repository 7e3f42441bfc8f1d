"""Pointwise functions as C statements: what every renderer's fused work is made of.

A ``ScalarFn`` maps ``arity`` scalar C variables to one result variable. The
elementwise renderer applies it per element; GEMM, convolution and reduction
renderers apply it as an epilogue in registers. Its ``key`` names it in kernel
hashes; ``emit(inputs, out)`` returns the C statements that define ``out``.

>>> f = ScalarFn.from_template("relu", 1, "float32", "({0} < 0.0f ? 0.0f : {0})")
>>> f.emit(["a0"], "v")
['const float v = (a0 < 0.0f ? 0.0f : a0);']

Also here: C literals, and the index arithmetic (a flat index decomposed into
coordinates of a static shape, strided offsets) shared by all renderers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .half import CONVERSIONS, HELPERS_OF
from .kernel import Helper, ctype_of


@dataclass(frozen=True)
class ScalarFn:
    """C statements computing ``len(out_dtypes)`` results from ``arity`` scalar variables."""

    key: str
    arity: int
    out_dtypes: tuple[str, ...]
    emitter: Callable[[Sequence[str], Sequence[str]], list[str]] = field(compare=False, hash=False, repr=False)
    helpers: tuple[Helper, ...] = ()

    @property
    def out_dtype(self) -> str:
        return self.out_dtypes[0]

    def emit(self, inputs: Sequence[str], out: str) -> list[str]:
        """Statements defining the single result as ``out``."""
        if len(self.out_dtypes) != 1:
            raise ValueError(f"{self.key} has {len(self.out_dtypes)} results: use emit_many")
        return self.emit_many(inputs, [out])

    def emit_many(self, inputs: Sequence[str], outs: Sequence[str]) -> list[str]:
        """Statements defining every result, as ``outs``."""
        if len(inputs) != self.arity or len(outs) != len(self.out_dtypes):
            raise ValueError(f"{self.key} maps {self.arity} inputs to {len(self.out_dtypes)} results, "
                             f"got {len(inputs)} and {len(outs)}")
        return self.emitter(list(inputs), list(outs))

    @staticmethod
    def from_template(key: str, arity: int, out_dtype: str, template: str) -> "ScalarFn":
        """A one-expression function: ``template`` uses ``{0}``, ``{1}``... for the inputs."""
        ct = ctype_of(out_dtype)

        def emitter(ins, outs):
            return [f"const {ct} {outs[0]} = {template.format(*ins)};"]

        return ScalarFn(f"{key}:{template}", arity, (out_dtype,), emitter)

    def then(self, outer: "ScalarFn") -> "ScalarFn":
        """``outer(self(x...), y...)``: the result feeds input 0 of ``outer``; its other
        ``outer.arity - 1`` inputs follow this function's inputs."""
        inner = self

        def emitter(ins, outs):
            mid = f"{outs[0]}_i"
            return inner.emit(ins[:inner.arity], mid) + outer.emit([mid, *ins[inner.arity:]], outs[0])

        return ScalarFn(f"({outer.key})o({inner.key})", inner.arity + outer.arity - 1, outer.out_dtypes,
                        emitter, tuple(dict.fromkeys(inner.helpers + outer.helpers)))


def identity(dtype: str) -> ScalarFn:
    """A move. Over float16 this copies bits: see ``load``."""
    return ScalarFn.from_template("id", 1, dtype, "{0}")


# -- storage and compute types ------------------------------------------------------------
# float16 and bfloat16 are storage types only: kernels keep them as their bits (``unsigned
# short``) and compute in float32, converting on every load and store. A ScalarFn whose
# out_dtype is one of them does no arithmetic (a move), so its operands are copied as bits.

HALF_TYPES = tuple(CONVERSIONS)  # the 16-bit float storage types


def compute_dtype(dtype: str) -> str:
    return "float32" if dtype in CONVERSIONS else dtype


def load(dtype: str, expr: str) -> str:
    """The compute-type value of a storage element ``expr`` of ``dtype``."""
    return f"{CONVERSIONS[dtype][0]}({expr})" if dtype in CONVERSIONS else expr


def store(dtype: str, expr: str) -> str:
    """The storage element of ``dtype`` for a compute-type value ``expr``."""
    return f"{CONVERSIONS[dtype][1]}({expr})" if dtype in CONVERSIONS else expr


def half_helpers(*dtypes: str) -> tuple[Helper, ...]:
    """The conversion helpers the 16-bit float types among ``dtypes`` need."""
    return tuple(h for d in HALF_TYPES if d in dtypes for h in HELPERS_OF[d])


def c_float(v: float, dtype: str = "float32") -> str:
    """A C literal for ``v`` in ``dtype`` (infinities and NaN through the prelude's macros)."""
    v = float(v)
    if math.isnan(v):
        return "GO_NAN"
    if math.isinf(v):
        return "GO_INF" if v > 0 else "(-GO_INF)"
    if dtype == "float32":
        return f"{float(np.float32(v))!r}f"
    return repr(v)


def c_literal(v, dtype: str) -> str:
    if dtype in ("float32", "float64", *HALF_TYPES):
        return c_float(v, compute_dtype(dtype))
    if dtype == "bool":
        return "true" if v else "false"
    if dtype in ("int64", "uint64"):
        return f"{int(v)}LL" if dtype == "int64" else f"{int(v)}ULL"
    return str(int(v))


# -- index arithmetic ----------------------------------------------------------------------


def decompose(flat: str, shape: Sequence[int], prefix: str, index_t: str) -> list[str]:
    """C lines splitting ``flat`` into coordinates ``{prefix}0..`` of a row-major ``shape``."""
    n = len(shape)
    if n == 0:
        return []
    if n == 1:
        return [f"const {index_t} {prefix}0 = {flat};"]
    lines = [f"{index_t} {prefix}_r = {flat};"]
    for d in range(n - 1, 0, -1):
        lines.append(f"const {index_t} {prefix}{d} = {prefix}_r % {shape[d]}; {prefix}_r /= {shape[d]};")
    lines.append(f"const {index_t} {prefix}0 = {prefix}_r;")
    return lines


def offset_expr(coords: Sequence[str], strides: Sequence[int], offset: int = 0) -> str:
    """``offset + sum(coord * stride)``, leaving out zero strides."""
    terms = [str(offset)] if offset else []
    for c, s in zip(coords, strides):
        if s == 1:
            terms.append(c)
        elif s != 0:
            terms.append(f"{c} * {s}")
    return " + ".join(terms) if terms else "0"


def max_extent(shape: Sequence[int], strides: Sequence[int], offset: int = 0) -> int:
    """The largest |offset| a view reaches (to choose 32- or 64-bit indexing)."""
    hi = offset + sum((d - 1) * s for d, s in zip(shape, strides) if d > 0 and s > 0)
    lo = offset + sum((d - 1) * s for d, s in zip(shape, strides) if d > 0 and s < 0)
    return max(abs(hi), abs(lo))


def index_type(*extents: int) -> str:
    return "int" if max(extents, default=0) < 2**31 - 1 else "long long"


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(int(d), 1)
    return tuple(reversed(out))


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int],
                      strides: Sequence[int] | None = None) -> tuple[int, ...]:
    """Strides of a tensor of ``shape`` read at the coordinates of ``out_shape`` (NumPy broadcasting)."""
    strides = contiguous_strides(shape) if strides is None else tuple(strides)
    pad = len(out_shape) - len(shape)
    out = [0] * pad
    for d, s in zip(shape, strides):
        out.append(0 if d == 1 else s)
    return tuple(out)
