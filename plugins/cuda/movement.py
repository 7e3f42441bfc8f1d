"""Data movement that is not a strided view: Gather and Pad.

(Transpose, Slice, Expand, Concat and Split are strided copies rendered by
``ew.py``; Reshape, Flatten, Squeeze and Unsqueeze are no-op views handled by
the launch plan.) One thread per output element, any dtype.

>>> spec = make_gather((5, 4), "float32", (3,), "int64", axis=0)   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graphopt.dtypes import to_numpy

from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import HALF_TYPES, c_literal, contiguous_strides, decompose, index_type
from .specs import OnePerElement, kernel_name
from .specs import prod as _prod

THREADS = OnePerElement.THREADS


@dataclass(frozen=True)
class GatherSpec(OnePerElement):
    data_shape: tuple[int, ...]
    dtype: str
    indices_shape: tuple[int, ...]
    indices_dtype: str
    axis: int
    index_t: str

    @property
    def out_shape(self) -> tuple[int, ...]:
        a = self.axis
        return self.data_shape[:a] + self.indices_shape + self.data_shape[a + 1:]

    @property
    def work(self) -> int:
        return _prod(self.out_shape)


def make_gather(data_shape, dtype, indices_shape, indices_dtype, axis: int) -> GatherSpec:
    data_shape = tuple(int(d) for d in data_shape)
    axis = axis % len(data_shape)
    idx = index_type(_prod(data_shape), _prod(data_shape[:axis] + tuple(indices_shape) + data_shape[axis + 1:]))
    return GatherSpec(data_shape, dtype, tuple(int(d) for d in indices_shape), indices_dtype, axis, idx)


def render_gather(spec: GatherSpec) -> Kernel:
    name = kernel_name("gather", spec)
    I = spec.index_t
    T = ctype_of(spec.dtype)
    a = spec.axis
    out = spec.out_shape
    ni = len(spec.indices_shape)
    ds = contiguous_strides(spec.data_shape)
    its = contiguous_strides(spec.indices_shape)
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*"), Param("ix", f"const {ctype_of(spec.indices_dtype)}*")]
    L = [f"for ({I} i = ({I})blockIdx.x * {THREADS} + threadIdx.x; i < {_prod(out)}; i += ({I})gridDim.x * {THREADS}) {{"]
    L += ["    " + s for s in decompose("i", out, "c", I)]
    iterm = " + ".join(f"c{a + d} * {its[d]}" for d in range(ni)) or "0"
    L.append(f"    long long j = (long long)ix[{iterm}];")
    L.append(f"    if (j < 0) j += {spec.data_shape[a]};")
    terms = [f"c{d} * {ds[d]}" for d in range(a)] + [f"({I})j * {ds[a]}"]
    terms += [f"c{a + ni + d - a - 1} * {ds[d]}" for d in range(a + 1, len(spec.data_shape))]
    # an index outside the axis (an error in ONNX) reads nothing and yields zero instead of faulting
    L.append(f"    y[i] = (j >= 0 && j < {spec.data_shape[a]}) ? x[{' + '.join(terms)}] : ({T})0;")
    L.append("}")
    src = kernel_source(name, THREADS, params, L,
                        f"gather axis {a} of {list(spec.data_shape)} by {list(spec.indices_shape)}")
    return Kernel(name, src, tuple(params), (), False, spec)


@dataclass(frozen=True)
class PadSpec(OnePerElement):
    in_shape: tuple[int, ...]
    dtype: str
    pads_begin: tuple[int, ...]  # may be negative (a crop)
    pads_end: tuple[int, ...]
    mode: str  # constant | reflect | edge | wrap
    value: float
    index_t: str
    value_arg: bool = False  # the value is read from a third argument (computed at run time), not baked in

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(d + b + e for d, b, e in zip(self.in_shape, self.pads_begin, self.pads_end))

    @property
    def work(self) -> int:
        return _prod(self.out_shape)


def make_pad(in_shape, dtype, pads: Sequence[int], mode: str = "constant", value: float = 0.0,
             value_arg: bool = False) -> PadSpec:
    """``value_arg``: the constant is the first element of a third tensor argument."""
    r = len(in_shape)
    pads = tuple(int(p) for p in pads)
    spec = PadSpec(tuple(int(d) for d in in_shape), dtype, pads[:r], pads[r:], mode, float(value), "int",
                   bool(value_arg))
    return PadSpec(**{**spec.__dict__, "index_t": index_type(_prod(spec.out_shape), _prod(spec.in_shape))})


def _fill(value: float, dtype: str) -> str:
    """The pad value as a C literal of the storage type: a 16-bit float's bits (the kernel only moves)."""
    if dtype in HALF_TYPES:
        return hex(int(np.array(value, np.float32).astype(to_numpy(dtype)).view(np.uint16)))
    return c_literal(value, dtype)


def render_pad(spec: PadSpec) -> Kernel:
    name = kernel_name("pad", spec)
    I = spec.index_t
    T = ctype_of(spec.dtype)
    out = spec.out_shape
    xs = contiguous_strides(spec.in_shape)
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*")] + ([Param("cv", f"const {T}*")] if spec.value_arg else [])
    L = [f"for ({I} i = ({I})blockIdx.x * {THREADS} + threadIdx.x; i < {_prod(out)}; i += ({I})gridDim.x * {THREADS}) {{"]
    L += ["    " + s for s in decompose("i", out, "c", I)]
    L.append("    bool inb = true;")
    terms = []
    for d, n in enumerate(spec.in_shape):
        L.append(f"    {I} s{d} = c{d} - {spec.pads_begin[d]};")
        if spec.mode == "reflect":
            L.append(f"    if (s{d} < 0) s{d} = -s{d}; if (s{d} >= {n}) s{d} = {2 * (n - 1)} - s{d};")
        elif spec.mode == "edge":
            L.append(f"    s{d} = s{d} < 0 ? 0 : (s{d} >= {n} ? {n - 1} : s{d});")
        elif spec.mode == "wrap":
            L.append(f"    s{d} = ((s{d} % {max(n, 1)}) + {max(n, 1)}) % {max(n, 1)};")
        else:
            L.append(f"    inb = inb && s{d} >= 0 && s{d} < {n};")
        terms.append(f"s{d} * {xs[d]}")
    fill = "cv[0]" if spec.value_arg else f"({T}){_fill(spec.value, spec.dtype)}"
    L.append(f"    y[i] = inb ? x[{' + '.join(terms) or '0'}] : {fill};")
    L.append("}")
    src = kernel_source(name, THREADS, params, L, f"pad ({spec.mode}) {list(spec.in_shape)} -> {list(out)}")
    return Kernel(name, src, tuple(params), (), False, spec)
