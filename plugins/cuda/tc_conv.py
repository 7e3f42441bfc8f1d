"""float16 / bfloat16 convolution on tensor cores: an implicit GEMM on ``mainloop.py``'s
pipelined ``mma.sync`` mainloop, or on Hopper (sm_90a) on ``wgmma.py``'s warpgroup mainloop,
channels-last or NCHW, any spatial rank, strides, pads, dilations and groups, the epilogue fused.

* **NHWC** (``FusedConv[layout="NHWC"]``, W as ``[O, *kernel, C/group]``): GEMM-M is the
  output pixels, GEMM-N the group's output channels, GEMM-K ``prod(kernel) x C/group`` with
  the channel fastest. A row of the im2col matrix is, per kernel position, a contiguous run of
  channels, so when ``C/group`` is a multiple of 8 every copy is one 16-byte ``cp.async``
  (a tap outside the image is a copy of 0 source bytes: zero fill, no branch); the pixel's
  coordinates are decoded once per thread before the loop, only the kernel position per
  k-tile. W's rows are contiguous along K (16-byte copies when K is a multiple of 8). The
  output is stored channel-fastest, two channels per 32-bit store.
* **NCHW**: GEMM-M is the group's output channels (W's rows, contiguous along K), GEMM-N the
  output pixels, GEMM-K ``C/group x prod(kernel)``; the im2col operand is gathered element by
  element (neighbouring pixels are not neighbouring bytes once strides and pads enter), the
  same pipeline and tensor cores otherwise. ``-O3`` turns convolutions channels-last, which is
  the fast form.

Few output tiles (late ResNet stages at batch 1: 49 pixels) split K as the GEMM does.

**Engine.** A spec takes the process's engine as a GEMM does (``wgmma.choose_engine``: "wgmma"
once ``wgmma.engage`` agreed on a compute-capability-9.0 GPU, or ``GRAPHOPT_CUDA_MMA``), its
tile and split from that engine's table. wgmma takes an NHWC convolution whose im2col rows and
W rows are both copied 16 bytes at a time (``C/group`` a multiple of 8, hence K too): the same
``Operand`` callbacks fill the 128-byte-swizzled stages with ``cp.async`` and the tensor cores
read them through descriptors; the accumulators, split-K fixup and stores are the mma.sync
kernel's. Everything else stays on mma.sync (``wgmma_refusal`` says why): an NCHW im2col, or a
group of channels not a multiple of 8 (a first convolution over 3), is gathered in narrower
pieces, each copy with its own decoded pixel held in registers through the loop, and a 64-wide
wgmma k-tile gives every thread twice the copies of mma.sync's 32-wide one (the GEMM keeps
narrow copies off wgmma for the same registers), where the mma.sync stem already needs 256
threads (``_more_warps``) to fit.

Depthwise convolutions stay on the window kernel (``spatial.py``): one input channel per
output channel makes each group a GEMM with N = 1 and K = the kernel size (9 for 3x3), so an
``m16n8k16`` fragment would be 1/8 useful along N and 9/16 along K, while the window kernel
already reads each input once and is bound by memory bandwidth, not by arithmetic.

>>> spec = make_tc_conv((1, 8, 8, 16), (32, 3, 3, 16), (8, 8), pads=(1, 1), layout="NHWC", engine="mma")
>>> spec.gemm_mnk, spec.tile.bn
((64, 32, 144), 32)
>>> make_tc_conv((1, 8, 8, 16), (32, 3, 3, 16), (8, 8), pads=(1, 1), engine="wgmma").tile.bk
64
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import ConvSpec, _epilogue_params
from .kernel import Kernel, Param, kernel_source
from .mainloop import Operand, TcTile, normal_split, splitk_lines, splitk_range, vector_width, view_operand
from .scalar import contiguous_strides, decompose, index_type, max_extent
from .specs import Epilogue, ceil_div, kernel_name, prod
from .tc_gemm import ENGINE_NOTES, fragment_store, tc_kernel_helpers, tc_mainloop, tc_prologue, tc_store
from .wgmma import choose_engine, choose_engine_schedule, wg_tile_fits


@dataclass(frozen=True)
class TcConvSpec(ConvSpec):
    """A convolution as an implicit GEMM per group on tensor cores: ``ConvSpec``'s geometry,
    ``tile`` a ``TcTile``, ``layout`` saying which GEMM (see the module docstring), ``split``
    blocks per output tile along K and ``engine`` the mainloop ("mma": mma.sync, ``mainloop.py``;
    "wgmma": warpgroups on sm_90a, ``wgmma.py``). Epilogue operand strides are over the output's
    dims in its layout; ``pads`` are the begin pads."""

    layout: str = "NHWC"
    split: int = 1
    engine: str = "mma"

    @property
    def gemm_mnk(self) -> tuple[int, int, int]:
        pix, kg, cg = self.n * prod(self.out_spatial), self.k // self.groups, self.c // self.groups
        if self.layout == "NHWC":
            return pix, kg, prod(self.kernel) * cg
        return kg, pix, cg * prod(self.kernel)

    @property
    def tiles(self) -> int:
        M, N, _ = self.gemm_mnk
        return ceil_div(M, self.tile.bm) * ceil_div(N, self.tile.bn)

    @property
    def workspace(self) -> tuple[int, int]:
        """(float32 elements, int32 counters) the split-K fixup needs; (0, 0) without a split."""
        if self.split == 1:
            return 0, 0
        return self.groups * self.tiles * self.split * self.tile.bm * self.tile.bn, self.groups * self.tiles

    def grid(self) -> tuple[int, int, int]:
        gx, gy, gz = super().grid()
        return gx, gy, gz * self.split


def make_tc_conv(x_shape: Sequence[int], w_shape: Sequence[int], out_spatial: Sequence[int], *,
                 strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 dilations: Sequence[int] | None = None, groups: int = 1, alpha: float = 1.0,
                 epilogue: Epilogue | None = None, tile: TcTile | None = None, split: int | None = None,
                 dtype: str = "float16", layout: str = "NHWC", engine: str | None = None) -> TcConvSpec:
    """NHWC: ``x_shape`` = ``[N, *spatial, C]``, ``w_shape`` = ``[O, *kernel, C/groups]``;
    NCHW: ``[N, C, *spatial]`` and ``[O, C/groups, *kernel]``. ``engine`` ("mma" or "wgmma")
    from ``wgmma.engine()`` where wgmma suits (``wgmma_refusal``) unless given; naming "wgmma"
    for a convolution it does not suit is an error. ``tile`` and ``split`` from the engine's
    schedule table unless given."""
    if layout == "NHWC":
        n, *sp, c = (int(d) for d in x_shape)
        k, *ks, _ = (int(d) for d in w_shape)
    else:
        n, c, *sp = (int(d) for d in x_shape)
        k, _, *ks = (int(d) for d in w_shape)
    nd = len(sp)
    out_spatial = tuple(int(d) for d in out_spatial)
    epilogue = epilogue or Epilogue()
    spec = TcConvSpec(n, c, k, tuple(sp), tuple(ks), out_spatial, tuple(strides or (1,) * nd),
                      tuple(pads or (0,) * nd)[:nd], tuple(dilations or (1,) * nd), int(groups), float(alpha),
                      epilogue, TcTile(16, 16, 32, 1, 1, 2), "int", dtype, layout)
    M, N, K = spec.gemm_mnk
    engine = choose_engine(engine, lambda: wgmma_refusal(spec, tile), tile)
    why = engine == "wgmma" and wgmma_refusal(spec, tile)  # only where the caller named wgmma
    if why:
        raise ValueError(f"a wgmma convolution: {why}")
    if tile is None:
        tile, auto = choose_engine_schedule(engine, M, N, K, groups)
        split = auto if split is None else split
        if engine == "mma" and (layout != "NHWC" or vector_width(c // max(groups, 1), (c,), 0, 1) < 8):
            tile = _more_warps(tile)
    split = normal_split(ceil_div(K, tile.bk), split or 1)
    out_shape = (n, *out_spatial, k) if layout == "NHWC" else (n, k, *out_spatial)
    idx = index_type(n * c * prod(sp), k * (c // max(groups, 1)) * prod(ks), prod(out_shape),
                     *(max_extent(out_shape, v.strides, v.offset) for v in epilogue.operands))
    return TcConvSpec(**{**spec.__dict__, "tile": tile, "index_t": idx, "split": split, "engine": engine})


def wgmma_refusal(spec: TcConvSpec, tile: TcTile | None = None) -> str | None:
    """Why ``spec``'s convolution (with ``tile``, when one is given) cannot take the wgmma
    mainloop, or None: it must be NHWC with both operands copied 16 bytes at a time.

    >>> wgmma_refusal(make_tc_conv((1, 16, 16, 3), (8, 3, 3, 3), (16, 16), pads=(1, 1), engine="mma"))
    'C/group = 3 is not a multiple of 8: the im2col is copied 1 element at a time'
    """
    if spec.layout != "NHWC":
        return "an NCHW im2col, gathered element by element"
    if tile is not None and not wg_tile_fits(tile):
        return f"a tile the wgmma mainloop does not take ({tile})"
    A, B = _operands(spec, "int")
    if A.vec != 8:
        return f"C/group = {spec.c // spec.groups} is not a multiple of 8: the im2col is copied {A.vec} " \
               f"element{'s' if A.vec > 1 else ''} at a time"
    if B.vec != 8:
        return f"W's rows of K = {spec.gemm_mnk[2]} are copied {B.vec} elements at a time"
    return None


def _more_warps(t: TcTile) -> TcTile:
    """``t`` on 256 threads where it has fewer: an im2col gathered element by element (NCHW, or a
    group of channels not a multiple of 8: a first convolution over 3) keeps each copy's decoded
    pixel in registers, and on 128 threads the stem of ResNet-50 (64x64 tile, K = 147) needed 255
    registers and local memory on sm_80; twice the threads make half the copies each."""
    from dataclasses import replace

    if t.threads >= 256:
        return t
    if t.wm >= 32:
        return replace(t, warps_m=2 * t.warps_m)
    if t.wn >= 32:
        return replace(t, warps_n=2 * t.warps_n)
    return t


def _pixel_setup(spec: TcConvSpec, I: str, p: str, u: int, first: str, limit: int, base: str) -> list[str]:
    """Copy ``u``'s output pixel ``first`` decoded once: valid flag ``{p}v{u}``, the input image
    offset ``{p}img{u}`` (``base`` added) and the window origin ``{p}i{u}_d`` per spatial dim."""
    nd = len(spec.in_spatial)
    L = [f"const {I} {p}q{u} = {first};", f"const bool {p}v{u} = {p}q{u} < {limit};"]
    L += decompose(f"({p}v{u} ? {p}q{u} : 0)", (spec.n, *spec.out_spatial), f"{p}d{u}_", I)
    img = prod(spec.in_spatial) * spec.c
    L.append(f"const {I} {p}img{u} = {p}d{u}_0 * {img} + {base};")
    L += [f"const int {p}i{u}_{d} = (int){p}d{u}_{d + 1} * {spec.strides[d]} - {spec.pads[d]};" for d in range(nd)]
    return L


def _window_fetch(spec: TcConvSpec, I: str, p: str, u: int, kpos: str, x_sp_strides) -> tuple[list[str], str, str]:
    """From a kernel position ``kpos`` (an expression): the input offset terms of copy ``u``'s
    tap and whether it lies inside the image."""
    nd = len(spec.in_spatial)
    L = [f"{I} {p}kr{u} = {kpos};", f"bool {p}in{u} = {p}v{u};"]
    terms = []
    for d in range(nd - 1, -1, -1):
        L += [f"const int {p}t{u}_{d} = {p}i{u}_{d} + (int)({p}kr{u} % {spec.kernel[d]}) * {spec.dilations[d]};",
              f"{p}kr{u} /= {spec.kernel[d]};",
              f"{p}in{u} = {p}in{u} && {p}t{u}_{d} >= 0 && {p}t{u}_{d} < {spec.in_spatial[d]};"]
        terms.append(f"({I}){p}t{u}_{d} * {x_sp_strides[d]}")
    return L, " + ".join(reversed(terms)) or "0", f"{p}in{u}"


def _im2col_nhwc(spec: TcConvSpec, I: str) -> Operand:
    M, _, K = spec.gemm_mnk
    cg = spec.c // spec.groups
    vec = vector_width(cg, (spec.c,), 0, 1)
    x_sp = contiguous_strides((*spec.in_spatial, spec.c))[:-1]

    def setup(u: int, mn: str) -> list[str]:
        return _pixel_setup(spec, I, "a", u, f"m0 + {mn}", M, f"g * {cg}")

    def fetch(u: int, k: str) -> tuple[list[str], str, str]:
        L = [f"const {I} ak{u} = {k};", f"const int ach{u} = (int)(ak{u} % {cg});"]
        lines, off, inside = _window_fetch(spec, I, "a", u, f"ak{u} / {cg}", x_sp)
        return L + lines, f"x + aimg{u} + {off} + ach{u}", f"{inside} && ak{u} < {K}"

    return Operand(True, vec, setup, fetch, "x")


def _im2col_nchw(spec: TcConvSpec, I: str) -> Operand:
    _, N, K = spec.gemm_mnk
    cg, ksz, img = spec.c // spec.groups, prod(spec.kernel), prod(spec.in_spatial)
    x_sp = contiguous_strides(spec.in_spatial)

    def setup(u: int, mn: str) -> list[str]:
        return _pixel_setup(spec, I, "b", u, f"n0 + {mn}", N, f"g * {cg * img}")

    def fetch(u: int, k: str) -> tuple[list[str], str, str]:
        L = [f"const {I} bk{u} = {k};"]
        lines, off, inside = _window_fetch(spec, I, "b", u, f"bk{u} % {ksz}", x_sp)
        return L + lines, f"x + bimg{u} + (bk{u} / {ksz}) * {img} + {off}", f"{inside} && bk{u} < {K}"

    return Operand(False, 1, setup, fetch, "x")


def _w_rows(spec: TcConvSpec) -> int:
    """The weight's rows per group: GEMM-M in NCHW, GEMM-N in NHWC."""
    M, N, _ = spec.gemm_mnk
    return N if spec.layout == "NHWC" else M


def _operands(spec: TcConvSpec, I: str) -> tuple[Operand, Operand]:
    """The implicit GEMM's A and B: (im2col, W) in NHWC, (W, im2col) in NCHW; W's rows are
    contiguous along K."""
    K, rows, nhwc = spec.gemm_mnk[2], _w_rows(spec), spec.layout == "NHWC"
    W = view_operand("w", f"({I})g * {rows * K}", K, 1, rows, K, "n0" if nhwc else "m0", I, (rows * K,), 0, "w")
    return (_im2col_nhwc(spec, I), W) if nhwc else (W, _im2col_nchw(spec, I))


def render_tc_conv(spec: TcConvSpec) -> Kernel:
    name = kernel_name("tcconv", spec)
    t, I, dt = spec.tile, spec.index_t, spec.dtype
    M, N, K = spec.gemm_mnk
    nd = len(spec.in_spatial)
    nhwc = spec.layout == "NHWC"
    params = [Param("y", "unsigned short*"), Param("x", "const unsigned short*"), Param("w", "const unsigned short*"),
              *_epilogue_params(spec.epilogue)]
    if spec.split > 1:
        params += [Param("ws", "float*"), Param("ctr", "int*")]
    L = tc_prologue(t, I)
    if spec.split > 1:
        L += [f"const int g = blockIdx.z / {spec.split}, ks = blockIdx.z % {spec.split};"]
    else:
        L += ["const int g = blockIdx.z;"]
    rows = _w_rows(spec)
    A, B = _operands(spec, I)
    k_range = splitk_range(K, t.bk, spec.split, "ks") if spec.split > 1 else None
    ml, wg_mma = tc_mainloop(spec.engine, t, K, A, B, dt, I, k_range)
    L += ml.lines
    if spec.split > 1:
        L += splitk_lines(t, spec.split, "blockIdx.y * gridDim.x + blockIdx.x", "g", "ks", spec.tiles)
    opix = prod(spec.out_spatial)

    def coords(m: str, n: str) -> tuple[list[str], list[str]]:
        pix, ch = (m, n) if nhwc else (n, m)
        lines = decompose(pix, (spec.n, *spec.out_spatial), "oq", I)
        lines.append(f"const {I} oc = ({I})g * {rows} + {ch};")
        sp = [f"oq{d + 1}" for d in range(nd)]
        return lines, (["oq0", *sp, "oc"] if nhwc else ["oq0", "oc", *sp])

    def offset(m: str, n: str) -> str:
        if nhwc:
            return f"{m} * {spec.k} + ({I})g * {N} + {n}"
        return f"(({n}) / {opix} * {spec.k} + ({I})g * {M} + {m}) * {opix} + ({n}) % {opix}"

    paired = spec.k % 2 == 0 and N % 2 == 0 if nhwc else opix % 2 == 0
    L += fragment_store(t, tc_store(I, M, N, spec.epilogue, spec.alpha, dt, paired, coords, offset))
    fn_key = spec.epilogue.fn.key if spec.epilogue.fn else "store"
    src = kernel_source(name, t.threads, params, L,
                        f"{spec.layout} conv on tensor cores, implicit gemm {M}x{N}x{K}, groups {spec.groups}, {dt}; "
                        f"tile {t.bm}x{t.bn}x{t.bk}, warp tile {t.wm}x{t.wn}, {t.stages} stages, copies of "
                        f"{A.vec}/{B.vec} elements, split-K {spec.split}; {ENGINE_NOTES[spec.engine]}; "
                        f"epilogue {fn_key}", min_blocks=1)
    return Kernel(name, src, tuple(params), tc_kernel_helpers(dt, dt, spec.epilogue, spec.split, wg_mma), True, spec,
                  dyn_smem=ml.smem if ml.dynamic else 0)
