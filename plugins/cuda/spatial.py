"""Window kernels, one thread per output element: depthwise convolution and
MaxPool / AveragePool / global pools (any number of spatial dims, strides, pads,
dilations), over NCHW or channels-last (NHWC) tensors.

A depthwise convolution (one input channel per group) has no reduction worth
a GEMM tile: each thread walks its window directly, with the same epilogue as
the implicit-GEMM convolution. Window loops have constant bounds, so the
compiler unrolls the small ones. Threads walk the output in its own memory
order: channels-last puts the channel fastest, so a warp's loads at one window
position are 32 neighbouring channels (coalesced), where NCHW neighbours are
neighbouring pixels. A global pool over channels-last data is a window pool
whose window is the whole image.

>>> spec = make_pool("max", (1, 3, 8, 8), (2, 2), (4, 4), strides=(2, 2))   # doctest: +SKIP
>>> spec = make_pool("avg", (1, 8, 8, 3), (8, 8), (1, 1), layout="NHWC")   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import _epilogue_helpers, _epilogue_lines, _epilogue_params, _scaled
from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import contiguous_strides, decompose, half_helpers, index_type, load, offset_expr, store
from .specs import Epilogue, OnePerElement, kernel_name
from .specs import prod as _prod

THREADS = OnePerElement.THREADS


@dataclass(frozen=True)
class WindowGeometry:
    n: int
    c_in: int
    c_out: int
    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    out_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begin pads
    pads_end: tuple[int, ...]
    dilations: tuple[int, ...]
    channels_last: bool = False  # x and y are (n, *spatial, c) instead of (n, c, *spatial)

    @property
    def numel_out(self) -> int:
        return self.n * self.c_out * _prod(self.out_spatial)

    def shape(self, spatial: Sequence[int], c: int) -> tuple[int, ...]:
        """A tensor's dims in this layout."""
        return (self.n, *spatial, c) if self.channels_last else (self.n, c, *spatial)


def geometry(x_shape: Sequence[int], c_out: int | None, kernel: Sequence[int], out_spatial: Sequence[int],
             strides=None, pads=None, dilations=None, layout: str = "NCHW") -> WindowGeometry:
    """The window of ``x_shape`` (in ``layout``); ``c_out=None`` keeps the input's channels."""
    dims = [int(d) for d in x_shape]
    n, c, sp = (dims[0], dims[-1], dims[1:-1]) if layout == "NHWC" else (dims[0], dims[1], dims[2:])
    nd = len(sp)
    pads = tuple(pads or (0,) * (2 * nd))
    if len(pads) == nd:
        pads = pads + pads
    return WindowGeometry(n, c, c if c_out is None else int(c_out), tuple(sp), tuple(int(k) for k in kernel),
                          tuple(int(d) for d in out_spatial), tuple(strides or (1,) * nd), pads[:nd], pads[nd:],
                          tuple(dilations or (1,) * nd), layout == "NHWC")


@dataclass(frozen=True)
class DepthwiseSpec(OnePerElement):
    geo: WindowGeometry
    alpha: float
    epilogue: Epilogue  # operand strides over the output's (n, c, *spatial)
    index_t: str
    dtype: str = "float32"  # of x, w and y

    @property
    def work(self) -> int:
        return self.geo.numel_out


@dataclass(frozen=True)
class PoolSpec(OnePerElement):
    kind: str  # "max" | "avg"
    geo: WindowGeometry
    count_include_pad: bool
    index_t: str
    dtype: str = "float32"  # of x and y

    @property
    def work(self) -> int:
        return self.geo.numel_out


def make_depthwise(x_shape, w_shape, out_spatial, *, strides=None, pads=None, dilations=None, alpha=1.0,
                   epilogue: Epilogue | None = None, dtype: str = "float32", layout: str = "NCHW") -> DepthwiseSpec:
    """``w_shape`` is ``[C_out, 1, *kernel]`` (NCHW) or ``[C_out, *kernel, 1]`` (NHWC): the same memory."""
    kernel = w_shape[1:-1] if layout == "NHWC" else w_shape[2:]
    geo = geometry(x_shape, w_shape[0], kernel, out_spatial, strides, pads, dilations, layout)
    idx = index_type(geo.numel_out, geo.n * geo.c_in * _prod(geo.in_spatial))
    return DepthwiseSpec(geo, float(alpha), epilogue or Epilogue(), idx, dtype)


def make_pool(kind: str, x_shape, kernel, out_spatial, *, strides=None, pads=None, dilations=None,
              count_include_pad: bool = False, dtype: str = "float32", layout: str = "NCHW") -> PoolSpec:
    geo = geometry(x_shape, None, kernel, out_spatial, strides, pads, dilations, layout)
    idx = index_type(geo.numel_out, geo.n * geo.c_in * _prod(geo.in_spatial))
    return PoolSpec(kind, geo, bool(count_include_pad), idx, dtype)


def _window_loops(geo: WindowGeometry, I: str, body: list[str], pad_count: bool = False) -> list[str]:
    """Nested loops over the window; ``inb`` says whether the input position exists."""
    nd = len(geo.in_spatial)
    lines: list[str] = []
    ind = ""
    unroll = _prod(geo.kernel) <= 64  # not a global pool's whole image
    for d in range(nd):
        if unroll:
            lines.append(f"{ind}#pragma unroll")
        lines.append(f"{ind}for (int k{d} = 0; k{d} < {geo.kernel[d]}; ++k{d}) {{")
        ind += "    "
        lines.append(f"{ind}const {I} i{d} = o{d} * {geo.strides[d]} - {geo.pads[d]} + k{d} * {geo.dilations[d]};")
    conds = " && ".join(f"i{d} >= 0 && i{d} < {geo.in_spatial[d]}" for d in range(nd)) or "true"
    lines.append(f"{ind}const bool inb = {conds};")
    if pad_count:
        pc = " && ".join(f"i{d} < {geo.in_spatial[d] + geo.pads_end[d]}" for d in range(nd)) or "true"
        lines.append(f"{ind}const bool inpad = {pc};")
    lines += [ind + s for s in body]
    for d in range(nd):
        ind = ind[:-4]
        lines.append(f"{ind}}}")
    return lines


def _out_loop(geo: WindowGeometry, I: str, inner: list[str]) -> list[str]:
    """A grid-stride loop over the output in its memory order: coordinates ``c0..`` of the
    output's dims, and ``nb``, ``ch``, ``o0..`` (image, channel, output position)."""
    nd = len(geo.out_spatial)
    L = [f"for ({I} i = ({I})blockIdx.x * {THREADS} + threadIdx.x; i < {geo.numel_out}; "
         f"i += ({I})gridDim.x * {THREADS}) {{"]
    L += ["    " + s for s in decompose("i", geo.shape(geo.out_spatial, geo.c_out), "c", I)]
    first, ch = (1, f"c{nd + 1}") if geo.channels_last else (2, "c1")
    L += [f"    const {I} nb = c0, ch = {ch};"] + [f"    const {I} o{d} = c{first + d};" for d in range(nd)]
    L += ["    " + s for s in inner]
    L.append("}")
    return L


def _in_offset(geo: WindowGeometry, channel: str) -> str:
    nd = len(geo.in_spatial)
    xs = contiguous_strides(geo.shape(geo.in_spatial, geo.c_in))
    cs, ss = (xs[-1], xs[1:-1]) if geo.channels_last else (xs[1], xs[2:])
    return offset_expr(["nb", channel, *(f"i{d}" for d in range(nd))], (xs[0], cs, *ss))


def _layout(geo: WindowGeometry) -> str:
    return "NHWC" if geo.channels_last else "NCHW"


def render_depthwise(spec: DepthwiseSpec) -> Kernel:
    geo = spec.geo
    I = spec.index_t
    name = kernel_name("dw", spec)
    mult = geo.c_out // geo.c_in
    ksz = _prod(geo.kernel)
    T, dt = ctype_of(spec.dtype), spec.dtype
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*"), Param("w", f"const {T}*")]
    params += _epilogue_params(spec.epilogue)
    kpos = " + ".join(f"k{d} * {_prod(geo.kernel[d + 1:])}" for d in range(len(geo.kernel))) or "0"
    inner = [f"const {I} ic = ch / {mult};", "float acc = 0.0f;"]
    xe, we = load(dt, f"x[{_in_offset(geo, 'ic')}]"), load(dt, f"w[ch * {ksz} + {kpos}]")
    inner += _window_loops(geo, I, [f"if (inb) acc = fmaf({xe}, {we}, acc);"])
    coords = [f"c{d}" for d in range(len(geo.out_spatial) + 2)]  # the output's dims, in its layout
    inner += _epilogue_lines(spec.epilogue, coords, _scaled("acc", spec.alpha))
    inner.append(f"y[i] = {store(dt, 'v')};")
    src = kernel_source(name, THREADS, params, _out_loop(geo, I, inner),
                        f"depthwise conv {geo.c_in}->{geo.c_out} channels, kernel {list(geo.kernel)}, {_layout(geo)}")
    return Kernel(name, src, tuple(params), tuple(_epilogue_helpers(spec.epilogue, dt)), False, spec)


def render_pool(spec: PoolSpec) -> Kernel:
    geo = spec.geo
    I = spec.index_t
    name = kernel_name("pool", spec)
    dt = spec.dtype
    params = [Param("y", f"{ctype_of(dt)}*"), Param("x", f"const {ctype_of(dt)}*")]
    xe = load(dt, f"x[{_in_offset(geo, 'ch')}]")
    if spec.kind == "max":
        inner = ["float acc = -GO_INF;"]
        inner += _window_loops(geo, I, [f"if (inb) {{ const float t = {xe}; if (t > acc || t != t) acc = t; }}"])
        inner.append(f"y[i] = {store(dt, 'acc')};")
    else:
        inner = ["float acc = 0.0f;", "int cnt = 0;"]
        count = "inpad" if spec.count_include_pad else "inb"
        inner += _window_loops(geo, I, [f"if (inb) acc += {xe};", f"cnt += {count} ? 1 : 0;"],
                               pad_count=spec.count_include_pad)
        inner.append(f"y[i] = {store(dt, 'cnt ? acc / (float)cnt : 0.0f')};")
    src = kernel_source(name, THREADS, params, _out_loop(geo, I, inner),
                        f"{spec.kind} pool, kernel {list(geo.kernel)}, strides {list(geo.strides)}, {_layout(geo)}")
    return Kernel(name, src, tuple(params), half_helpers(dt), False, spec)
