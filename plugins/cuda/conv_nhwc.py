"""Channels-last (NHWC) convolution as an implicit GEMM, on the tiled SIMT core of ``gemm.py``.

Per group ``g`` (``blockIdx.z``), with ``X`` as ``[N, *spatial, C]`` and the weight as
``[O, *kernel, C/group]`` (what ``convert_layout_nhwc`` writes):

    Y[pixel, g*Og + o] = sum_k im2col(X)[pixel, k] * W[g*Og + o, k],   k = (kernel position, c)

so GEMM-M is the output pixels (``N x *out_spatial``), GEMM-N the group's output
channels and GEMM-K ``prod(kernel) x C/group`` with the channel fastest. That
is the order of both operands in memory: a row of the im2col matrix is, per
kernel position, a contiguous run of channels (neighbouring threads stage
neighbouring channels, so the gather is coalesced), a row of W is contiguous,
and the result is stored channel-fastest, the layout of the next NHWC layer.
Strides, pads (zero outside the input), dilations and groups as in ONNX. The
epilogue reads its operands at the output's (n, *spatial, channel) coordinates.

Few output channels per group (stems, grouped convolutions) get a ``64x16``
tile instead of wasting most of a square one.

>>> spec = make_conv_nhwc((1, 8, 8, 3), (16, 3, 3, 3), (8, 8), pads=(1, 1))   # doctest: +SKIP
>>> kernel = render_conv_nhwc(spec)                                           # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import (ConvSpec, Tile, _epilogue_helpers, _epilogue_lines, _epilogue_params, _render_tiled, _scaled,
                   choose_tile, im2col_gather)
from .kernel import Kernel, Param, ctype_of
from .scalar import contiguous_strides, decompose, index_type, load, max_extent, store
from .specs import Epilogue, kernel_name, prod

NARROW_TILE = Tile(64, 16, 16, 4, 2)  # 128 threads; for <= 16 output channels per group


def choose_nhwc_tile(M: int, N: int, groups: int) -> Tile:
    if N <= 16 and M > 32:
        return NARROW_TILE
    return choose_tile(M, N, groups)


@dataclass(frozen=True)
class ConvNhwcSpec(ConvSpec):
    """``ConvSpec``'s geometry over channels-last tensors, its GEMM transposed: M = output
    pixels, N = output channels per group, K = kernel positions x channels per group.
    Epilogue operand strides are over the output's (n, *spatial, k)."""

    @property
    def gemm_mnk(self) -> tuple[int, int, int]:
        return self.n * prod(self.out_spatial), self.k // self.groups, prod(self.kernel) * (self.c // self.groups)


def make_conv_nhwc(x_shape: Sequence[int], w_shape: Sequence[int], out_spatial: Sequence[int], *,
                   strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                   dilations: Sequence[int] | None = None, groups: int = 1, alpha: float = 1.0,
                   epilogue: Epilogue | None = None, tile: Tile | None = None,
                   dtype: str = "float32") -> ConvNhwcSpec:
    """``x_shape`` = ``[N, *spatial, C]``, ``w_shape`` = ``[O, *kernel, C/groups]``; ``pads`` the begin pads."""
    n, *sp, c = (int(d) for d in x_shape)
    k, *ks, _ = (int(d) for d in w_shape)
    nd = len(sp)
    out_spatial = tuple(int(d) for d in out_spatial)
    epilogue = epilogue or Epilogue()
    M, N = n * prod(out_spatial), k // groups
    tile = tile or choose_nhwc_tile(M, N, groups)
    out_shape = (n, *out_spatial, k)
    idx = index_type(n * c * prod(sp), k * (c // max(groups, 1)) * prod(ks), prod(out_shape),
                     *(max_extent(out_shape, v.strides, v.offset) for v in epilogue.operands))
    return ConvNhwcSpec(n, c, k, tuple(sp), tuple(ks), out_spatial, tuple(strides or (1,) * nd),
                        tuple(pads or (0,) * nd)[:nd], tuple(dilations or (1,) * nd), int(groups), float(alpha),
                        epilogue, tile, idx, dtype)


def render_conv_nhwc(spec: ConvNhwcSpec) -> Kernel:
    name = kernel_name("convnhwc", spec)
    I, dt = spec.index_t, spec.dtype
    M, N, K = spec.gemm_mnk
    nd = len(spec.in_spatial)
    cg, opix = spec.c // spec.groups, prod(spec.out_spatial)
    T = ctype_of(dt)
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*"), Param("w", f"const {T}*"),
              *_epilogue_params(spec.epilogue)]
    x_str = contiguous_strides((spec.n, *spec.in_spatial, spec.c))
    pro = [f"const {I} g = blockIdx.z;"]

    def load_a(m, k):  # im2col element (output pixel m) x (kernel position, channel)
        lines = [f"const {I} ci = {k} % {cg};", f"{I} kr = {k} / {cg};",
                 f"const {I} nb = {m} / {opix};", f"{I} pr = {m} % {opix};"]
        gather, terms = im2col_gather(I, spec.kernel, spec.out_spatial, spec.in_spatial, spec.strides, spec.pads,
                                      spec.dilations, x_str[1:-1])
        lines += gather
        elem = f"x[{' + '.join([f'nb * {x_str[0]}', *terms, f'g * {cg} + ci'])}]"
        return lines + [f"if (inb) t = {load(dt, elem)};"]

    def load_b(k, n):  # W[g * Og + n, k]: rows contiguous along k
        return [f"t = {load(dt, f'w[(g * {N} + {n}) * {K} + {k}]')};"]

    def store_y(m, n, acc):
        coords = ["onb", *(f"os{d}" for d in range(nd)), "oc"]
        lines = decompose(m, (spec.n, *spec.out_spatial), "oq", I)
        lines += [f"const {I} onb = oq0;", *(f"const {I} os{d} = oq{d + 1};" for d in range(nd)),
                  f"const {I} oc = g * {N} + {n};"]
        lines += _epilogue_lines(spec.epilogue, coords, _scaled(acc, spec.alpha))
        return lines + [f"y[{m} * {spec.k} + oc] = {store(dt, 'v')};"]

    fn_key = spec.epilogue.fn.key if spec.epilogue.fn else "store"
    k = _render_tiled(name, spec.tile, params, I, M, N, K, pro, load_a, True, load_b, False, store_y,
                      f"NHWC conv implicit gemm {M}x{N}x{K}, groups {spec.groups}, epilogue {fn_key}",
                      _epilogue_helpers(spec.epilogue, dt))
    return Kernel(k.name, k.source, k.params, k.helpers, True, spec)
