"""TMA loads for the wgmma mainloop: ``cp.async.bulk.tensor.2d`` boxes into the 128-byte-swizzled
stages, counted in by one mbarrier per stage.

One thread (``tid == 0``) arms a stage's mbarrier with ``mbarrier.arrive.expect_tx`` (the bytes of
the A and B tiles) and issues the boxes; the tensor-memory accelerator copies each box (zeros
outside the tensor, the 128-byte swizzle applied to the shared address) and counts its bytes
off the mbarrier (``complete_tx``). Every thread waits with ``mbarrier.try_wait.parity`` on the
phase of that use of the stage (``(i / stages) & 1`` for the ``i``-th k-tile), then the
warpgroups run their wgmma. One ``__syncthreads`` per k-tile still guards the refill: the stage
of k-tile ``kt - 1`` is reloaded only after every warpgroup's ``wgmma.wait_group 0`` for it.

Boxes: a K-major operand is one box of ``{64 k, rows}`` (128-byte rows, the wgmma layout); an
M/N-major one is ``rows / 64`` boxes of ``{64 m/n, 64 k}``, each landing as its 8 KB block.

The tensor map (``CUtensorMap``, 128 bytes) is made on the host once the operand's address is
known: on a GPU by ``device.encode_tensor_map`` (the driver's ``cuTensorMapEncodeTiled``), under
emulation by ``emu_tensor_map`` (graphopt's own record that the twin in ``cuda_emu.h`` reads; the
driver's map is opaque). Either is copied to device memory and passed by pointer (the PTX ISA
allows a tensor map in ``.global``), since CuPy passes only arrays and scalars to a RawKernel.
The kernel declares its two maps as ``TensorMapArg``s (``kernel.DerivedArg``) over its ``a`` and
``b`` parameters, so the backends' launch plans make them from the buffers' addresses: once at
plan time for fixed buffers, at each run for the emulation's new input and output arrays.

The MatMul/Gemm lowering asks for TMA (``prefer_tma``) wherever the engine is wgmma and
``tma_suits`` finds nothing against it, unless ``GRAPHOPT_CUDA_TMA=0``.

>>> spec = make_tc_matmul(256, 256, 128, engine="wgmma", tma=True)     # doctest: +SKIP
>>> [m.box for m in operand_maps(spec)]                                  # doctest: +SKIP
[(64, 128), (64, 64)]
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace

import numpy as np

from .kernel import DerivedArg, Helper
from .swizzle import LINE

MAGIC = b"GOTMAP01"
TMA_ENV = "GRAPHOPT_CUDA_TMA"  # "0" (or off/false/no): the lowering keeps cp.async stages
BOX_K = 64  # 128 bytes of 16-bit elements: the widest box row the 128-byte swizzle allows

TMA_HELPER = Helper("go_tma", """\
// mbarrier and TMA: PTX on sm_90a, the twins of cuda_emu.h on the host
__device__ __forceinline__ void go_tma_begin() {  // tid 0, before the mbarriers are initialized
#if !defined(__CUDA_ARCH__)
    go_emu::tma_begin();
#endif
}
__device__ __forceinline__ void go_mbar_init(unsigned long long* bar, unsigned count) {
#if defined(__CUDA_ARCH__)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\\n" :: "r"(go_smem_addr(bar)), "r"(count) : "memory");
#else
    go_emu::mbar_init(bar, count);
#endif
}
__device__ __forceinline__ void go_mbar_init_fence() {  // the initialized mbarriers visible to the async proxy
#if defined(__CUDA_ARCH__)
    asm volatile("fence.mbarrier_init.release.cluster;\\n" ::: "memory");
#endif
}
__device__ __forceinline__ void go_mbar_expect_tx(unsigned long long* bar, unsigned bytes) {  // one arrival + bytes to come
#if defined(__CUDA_ARCH__)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\\n" :: "r"(go_smem_addr(bar)), "r"(bytes)
                 : "memory");
#else
    go_emu::mbar_arrive_expect_tx(bar, bytes);
#endif
}
__device__ __forceinline__ void go_mbar_wait(unsigned long long* bar, unsigned parity) {  // the phase of this parity completed
#if defined(__CUDA_ARCH__)
    asm volatile("{\\n.reg .pred P1;\\nWAIT:\\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\\n"
                 "@!P1 bra WAIT;\\n}\\n" :: "r"(go_smem_addr(bar)), "r"(parity) : "memory");
#else
    while (!go_emu::mbar_try_wait(bar, parity)) {}
#endif
}
// A tensor map copied into global memory before the launch (by the generic proxy) made visible to
// the tensormap proxy the TMA unit reads it through.
__device__ __forceinline__ void go_tma_acquire(const void* map) {
#if defined(__CUDA_ARCH__)
    asm volatile("fence.proxy.tensormap::generic.acquire.sys [%0], 128;\\n" :: "l"(map) : "memory");
#endif
}
// The box of the tensor map `map` (in global memory) at element coordinates (x inner, y outer)
// into shared memory at dst, its bytes counted off `bar`.
__device__ __forceinline__ void go_tma_load_2d(void* dst, const void* map, int x, int y, unsigned long long* bar) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\\n"
                 :: "r"(go_smem_addr(dst)), "l"(map), "r"(x), "r"(y), "r"(go_smem_addr(bar)) : "memory");
#else
    go_emu::tma_load_2d(dst, map, x, y, bar);
#endif
}
""")


@dataclass(frozen=True)
class TensorMapSpec:
    """One operand's 2-D tensor map: ``dims`` (inner, outer) in elements, ``stride`` bytes between
    outer rows, ``box`` (inner, outer) elements, from element ``offset`` of the operand."""

    operand: str  # "a" or "b"
    kmajor: bool  # k is the inner dim (one box of all the tile's rows); else m/n (a box per 64)
    dtype: str
    dims: tuple[int, int]
    stride: int
    box: tuple[int, int]
    offset: int


def tma_suits(spec) -> str | None:
    """Why ``spec`` cannot load by TMA, or None: a 2-D (unbatched) wgmma GEMM whose operands'
    rows are 16-byte aligned (``wgmma.wgmma_suits``) and whose tile rows fit a box (at most 256)."""
    from .wgmma import wgmma_suits

    if spec.batch:
        return "a batched GEMM (3-D tensor maps are not built)"
    if not wgmma_suits(spec.M, spec.N, spec.K, spec.a, spec.b, 0):
        return "an operand whose rows are not 16-byte aligned"
    for m in operand_maps(spec):  # cuTensorMapEncodeTiled: a positive row stride, a multiple of 16 bytes
        if m.stride <= 0 or m.stride % 16 or (2 * m.offset) % 16:
            return (f"operand {m.operand.upper()}'s tensor map would have a row stride of {m.stride} bytes from "
                    f"element {m.offset} (the driver wants a positive multiple of 16, 16-byte aligned)")
    return None


def tma_enabled() -> bool:
    """Whether the lowering may ask for TMA loads: ``GRAPHOPT_CUDA_TMA`` unset or 1/on/true/yes.

    >>> tma_enabled() in (True, False)
    True
    """
    v = os.environ.get(TMA_ENV, "1").strip().lower()
    if v in ("1", "on", "true", "yes", "auto", ""):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    from graphopt.errors import GraphoptError

    raise GraphoptError(f"{TMA_ENV}={v!r}: expected 1 or 0")


def prefer_tma(spec):
    """``spec`` with TMA loads where it is a wgmma GEMM that ``tma_suits`` and ``tma_enabled()``;
    else ``spec`` itself (cp.async stages).

    >>> prefer_tma(make_tc_matmul(256, 256, 128, engine="wgmma")).tma     # doctest: +SKIP
    True
    """
    if spec.engine != "wgmma" or spec.tma or not tma_enabled() or tma_suits(spec) is not None:
        return spec
    return replace(spec, tma=True)


def operand_maps(spec) -> list[TensorMapSpec]:
    """The tensor maps of ``spec``'s A and B (K-major: box ``{64 k, rows}``; M/N-major ``{64, 64}``)."""
    out = []
    for name, view, mn, rows in (("a", spec.a, spec.M, spec.tile.bm), ("b", spec.b, spec.N, spec.tile.bn)):
        s_mn, s_k = (view.strides[0], view.strides[1]) if name == "a" else (view.strides[1], view.strides[0])
        esize = 2
        if s_k == 1 and (s_mn != 1 or mn == 1):  # K-major, as mainloop.view_operand decides
            out.append(TensorMapSpec(name, True, view.dtype, (spec.K, mn), s_mn * esize, (BOX_K, rows), view.offset))
        else:
            out.append(TensorMapSpec(name, False, view.dtype, (mn, spec.K), s_k * esize, (BOX_K, BOX_K), view.offset))
    return out


def emu_tensor_map(ptr: int, m: TensorMapSpec) -> np.ndarray:
    """The 128-byte record the emulation's TMA twin reads for map ``m`` over the operand at host
    address ``ptr`` (a uint8 array, to be passed by pointer)."""
    rec = struct.pack("<8sQQQQIIII", MAGIC, ptr + 2 * m.offset, m.dims[0], m.dims[1], m.stride, m.box[0], m.box[1], 2,
                      LINE)
    out = np.zeros(128, np.uint8)
    out[:len(rec)] = np.frombuffer(rec, np.uint8)
    return out


def render_tma_loads(spec, stage_h: int, a_h: int, s: str, kt: str) -> list[str]:
    """tid 0's lines that arm stage ``s``'s mbarrier and load k-tile ``kt`` (expressions) into it."""
    t = spec.tile
    lines = [f"go_mbar_expect_tx(&go_mbar[{s}], {(t.bm + t.bn) * LINE}u);"]
    for m, origin, off in zip(operand_maps(spec), ("m0", "n0"), (0, a_h)):
        dst = f"smem_h + ({s}) * {stage_h} + {off}"
        if m.kmajor:  # one box of all the tile's rows
            lines.append(f"go_tma_load_2d({dst}, tma_{m.operand}, ({kt}) * {BOX_K}, (int){origin}, &go_mbar[{s}]);")
        else:  # M/N-major: a box per 64 of m/n, each its own 8 KB block
            rows = t.bm if m.operand == "a" else t.bn
            for blk in range(rows // BOX_K):
                lines.append(f"go_tma_load_2d({dst} + {blk * BOX_K * LINE // 2}, tma_{m.operand}, (int){origin} + "
                             f"{blk * BOX_K}, ({kt}) * {BOX_K}, &go_mbar[{s}]);")
    return lines


@dataclass(frozen=True)
class TensorMapArg(DerivedArg):
    """The kernel parameter ``tma_a`` / ``tma_b``: ``map`` over the buffer parameter ``source``."""

    source: int
    map: TensorMapSpec

    def host_value(self, address: int) -> np.ndarray:
        return emu_tensor_map(address, self.map)

    def device_value(self, address: int, stream):
        from . import device

        m = self.map
        return device.upload(device.encode_tensor_map(address + 2 * m.offset, m.dtype, m.dims, m.stride, m.box),
                             stream)


# the buffer parameters the maps describe: (y, a, b, ...) in render_tc_matmul
OPERAND_PARAMS = {"a": 1, "b": 2}


def tensor_map_args(spec) -> tuple[TensorMapArg, ...]:
    """The derived parameters of a TMA GEMM kernel (after every buffer): A's map, then B's."""
    return tuple(TensorMapArg(OPERAND_PARAMS[m.operand], m) for m in operand_maps(spec))


def device_tensor_maps(spec, a_address: int, b_address: int, stream) -> list:
    """The tensor maps of ``spec``'s A and B over the device operands at those addresses, encoded by
    the driver and uploaded to device memory on ``stream``: the last two kernel arguments."""
    return [d.device_value(addr, stream) for addr, d in zip((a_address, b_address), tensor_map_args(spec))]
