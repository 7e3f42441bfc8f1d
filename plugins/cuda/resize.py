"""Resize / Upsample: one thread per output element over per-axis tap tables.

Resizing is separable (``graphopt.ops.resize``): along each resized axis, every
output index reads a few source indices with weights (nearest: one tap of
weight 1; linear: two; cubic: four; antialiased downscaling: more). Those
tables depend only on shapes and attributes, so the lowering computes them at
compile time with the reference's own ``axis_taps`` and the kernel only walks
them: taps of the first resized axis innermost, so the sum nests in the
reference's axis order. Nearest is a pure gather (any dtype, exact).

>>> spec = make_resize((1, 1, 2, 2), (1, 1, 4, 4), "float32", taps=(0, 0, 2, 2))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import contiguous_strides, decompose, half_helpers, index_type, load, store
from .specs import OnePerElement, kernel_name, prod


@dataclass(frozen=True)
class ResizeSpec(OnePerElement):
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str
    taps: tuple[int, ...]  # per axis: 0 = not resized, else taps per output index
    weighted: bool  # False: nearest (one tap, a gather)
    index_t: str

    @property
    def work(self) -> int:
        return prod(self.out_shape)

    @property
    def axes(self) -> list[int]:
        return [a for a, t in enumerate(self.taps) if t]


def make_resize(in_shape, out_shape, dtype: str, taps, weighted: bool) -> ResizeSpec:
    in_shape, out_shape = tuple(int(d) for d in in_shape), tuple(int(d) for d in out_shape)
    return ResizeSpec(in_shape, out_shape, dtype, tuple(int(t) for t in taps), bool(weighted),
                      index_type(prod(in_shape), prod(out_shape)))


def render_resize(spec: ResizeSpec) -> Kernel:
    name = kernel_name("resize", spec)
    T = ctype_of(spec.dtype)
    I = spec.index_t
    axes = spec.axes
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*")]
    for a in axes:
        params.append(Param(f"ix{a}", "const int*"))
        if spec.weighted:
            params.append(Param(f"w{a}", "const float*"))
    xs = contiguous_strides(spec.in_shape)
    coords = [f"j{a}" if a in axes else f"c{a}" for a in range(len(spec.in_shape))]
    src = " + ".join(f"({I}){c} * {s}" for c, s in zip(coords, xs)) or "0"
    L = [f"for ({I} i = ({I})blockIdx.x * {spec.THREADS} + threadIdx.x; i < {spec.work}; "
         f"i += ({I})gridDim.x * {spec.THREADS}) {{"]
    L += ["    " + s for s in decompose("i", spec.out_shape, "c", I)]
    if not spec.weighted:  # nearest: the element itself, moved as its storage type
        L += [f"    const int j{a} = ix{a}[c{a}];" for a in axes]
        L += [f"    y[i] = x[{src}];", "}"]
    else:
        body = [f"s{axes[0]} += w{axes[0]}[c{axes[0]} * {spec.taps[axes[0]]} + t{axes[0]}] * {load(spec.dtype, f'x[{src}]')};"]
        for k, a in enumerate(axes):  # wrap: axis a's taps around the sums of the axes before it
            tap = f"c{a} * {spec.taps[a]} + t{a}"
            head = [f"for (int t{a} = 0; t{a} < {spec.taps[a]}; ++t{a}) {{", f"    const int j{a} = ix{a}[{tap}];"]
            if k:
                prev = axes[k - 1]
                body = [f"float s{prev} = 0.0f;", *body, f"s{a} += w{a}[{tap}] * s{prev};"]
            body = head + ["    " + s for s in body] + ["}"]
        last = axes[-1]
        L += ["    " + s for s in [f"float s{last} = 0.0f;", *body, f"y[i] = {store(spec.dtype, f's{last}')};"]]
        L.append("}")
    src_text = kernel_source(name, spec.THREADS, params, L,
                             f"resize {list(spec.in_shape)} -> {list(spec.out_shape)}, taps {list(spec.taps)}")
    return Kernel(name, src_text, tuple(params), half_helpers(spec.dtype), False, spec)
