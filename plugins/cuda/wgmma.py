"""The Hopper mainloop of the float16/bfloat16 GEMM: ``wgmma.mma_async`` on warpgroups, its A and B
read by the tensor cores straight from 128-byte-swizzled shared memory through matrix descriptors.

What a block does (sm_90a only; the cubin of such a kernel is built for ``sm_90a``):

* **Warpgroups.** A block is one or two warpgroups (128 threads each); warpgroup ``g`` owns rows
  ``64g .. 64g + 63`` of the block tile and all of its ``BN`` columns, one
  ``wgmma.mma_async.sync.aligned.m64nBNk16.f32.{f16,bf16}.{f16,bf16}`` per 16 of k. Its
  accumulator fragment is ``m16n8``'s repeated: thread (warp ``w`` of the group, lane ``g4 =
  lane/4``, ``q = lane%4``) holds ``D[16w + g4 + 8h][8j + 2q + e]`` in ``d[4j + 2h + e]``, so the
  accumulators are kept as ``acc[1][BN/8][4]`` and the mma.sync kernel's epilogue, split-K fixup
  and stores (``tc_gemm.fragment_store``, ``mainloop.splitk_lines``) run unchanged on a tile
  that says each warp owns 16 rows (``TcTile(bm, bn, 64, bm/16, 1)``).
* **Shared layout.** ``BK = 64``: a k-slice of one m/n row is 128 bytes, one swizzle row. An
  operand whose k is contiguous (K-major, ``imm-trans 0``) is kept a 128-byte line per m/n row;
  one whose m/n is contiguous (M/N-major, ``imm-trans 1``: ``transA``, row-major ``[K, N]``
  weights) a line per k, 64 of m/n in it, each 64 of m/n in its own 8 KB block. Within each line
  the 16-byte chunk ``c`` sits at ``c ^ (line % 8)`` (``swizzle.py``), which on a 1024-byte
  aligned stage is the hardware's 128-byte swizzle (address bits 4-6 ^= bits 7-9).
* **Descriptors** (PTX ISA "Matrix Descriptor Format"): start address, leading and stride byte
  offsets (each ``>> 4`` in 14 bits), base offset 0, swizzle mode 1. K-major: stride offset
  1024 (eight 128-byte rows), leading offset unused (1, as CUTLASS sets it); a k step of 16 adds
  32 bytes to the start. M/N-major: leading offset 8 KB (the next 64 of m/n), stride offset 1024
  (the next 8 of k); a k step of 16 adds 2 KB.
* **Pipeline.** The stages are filled by the same ``cp.async`` copies as the mma.sync mainloop
  (``stages - 1`` k-tiles in flight), a ``fence.proxy.async`` makes each thread's landed copies
  visible to the tensor cores' async proxy, one ``__syncthreads`` per k-tile; then
  ``wgmma.fence``, four ``wgmma.mma_async``, ``commit_group``, the next stage's copies issued
  while the tensor cores run, and ``wait_group 0`` before the loop goes on, so the stage the
  next iteration refills is no longer read.

With ``tma`` (``wgmma_tma.py``) the stages are loaded instead by TMA boxes counted in on one
mbarrier per stage.

Portable twins (``emu/cuda_emu.h``): the descriptor is decoded as the hardware does, A and B are
read from the emulated shared memory through the swizzle, the result lands in the fragment
layout above, and only at the ``wait_group`` that covers it.

**First contact.** No GPU has run this path yet. ``engine()`` picks the kernel family for new
GEMM and convolution specs: ``GRAPHOPT_CUDA_MMA=wgmma`` or ``mma`` forces one; otherwise
mma.sync, unless ``engage()`` ran on a device of compute capability 9.0 and its self-check (a
small GEMM through both mainloops, compared bit for bit) passed; even then a GEMM whose operands
cannot be copied 16 bytes at a time stays on mma.sync (``wgmma_suits``), and so does a
convolution that is not channels-last with 16-byte copies (``tc_conv.wgmma_refusal``);
``choose_engine`` applies these rules for both. A failed launch or a mismatch keeps
mma.sync for the process, with one warning line.

>>> t, split = choose_wgmma_schedule(4096, 4096, 4096, 1)
>>> (t.bm, t.bn, t.threads, split)
(128, 128, 256, 1)
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

from .kernel import Helper
from .mainloop import (MAX_SPLIT, MIN_KTILES_PER_SPLIT, STATIC_SMEM_LIMIT, Gpu, Mainloop, Operand, TcTile,
                       choose_schedule, copy_lines, cp_async_prologue, normal_split, target_gpu)
from .specs import ceil_div
from .swizzle import LINE, swizzle_chunk_c

BK = 64  # one 128-byte swizzle row of 16-bit elements
LINE_H = LINE // 2  # halves per line
MN_BLOCK = 64  # m/n per line of an M/N-major operand
ALIGN = 1024  # the 128-byte swizzle pattern repeats every 1024 bytes: stages start on that boundary

# warps_m = bm / 16: each warp of a warpgroup owns 16 rows, all bn columns (see the module docstring)
WG_TILES = {
    "128x128": TcTile(128, 128, BK, 8, 1, 4),  # two warpgroups, 64 accumulators a thread, 129 KB
    "64x128": TcTile(64, 128, BK, 4, 1, 4),    # one warpgroup
    "64x64": TcTile(64, 64, BK, 4, 1, 4),      # one warpgroup, 32 accumulators a thread
}


def wg_smem_bytes(t: TcTile) -> int:
    """Shared memory of the pipeline: ``stages`` x (A tile + B tile) of 128-byte lines, plus the
    slack that lets the first stage start on a 1024-byte boundary."""
    return t.stages * (t.bm + t.bn) * LINE + ALIGN


def choose_wgmma_schedule(M: int, N: int, K: int, nz: int, gpu: Gpu | None = None) -> tuple[TcTile, int]:
    """(tile, split) as ``mainloop.choose_schedule`` picks them, from ``WG_TILES``: the biggest tile
    whose blocks fill every SM, else the smallest with K split over more blocks."""
    gpu = gpu or target_gpu()
    names = ["128x128", "64x128", "64x64"] if N > 64 else ["64x64"]

    def fit(t: TcTile) -> TcTile:
        while t.stages > 2 and wg_smem_bytes(t) > gpu.smem_per_block:
            t = replace(t, stages=t.stages - 1)
        return t

    for name in names:
        t = WG_TILES[name]
        if M >= t.bm and N >= t.bn and ceil_div(M, t.bm) * ceil_div(N, t.bn) * nz >= gpu.sm_count:
            return fit(t), 1
    t = fit(WG_TILES[names[-1]])
    blocks = ceil_div(M, t.bm) * ceil_div(N, t.bn) * nz
    ktiles = ceil_div(K, BK)
    split = max(1, min(gpu.sm_count // blocks, ktiles // MIN_KTILES_PER_SPLIT, MAX_SPLIT))
    return t, normal_split(ktiles, split)


def wg_tile_fits(t: TcTile) -> bool:
    """Whether the wgmma mainloop takes tile ``t``: 64 of k a stage, one or two warpgroups of 64
    rows (16 a warp), ``bn`` a multiple of 16 up to 256, two stages at least (``WG_TILES`` do).

    >>> wg_tile_fits(WG_TILES["64x64"]), wg_tile_fits(TcTile(64, 64, 32, 2, 2, 4))
    (True, False)
    """
    return (t.bk == BK and t.bm in (64, 128) and t.bn % 16 == 0 and 16 <= t.bn <= 256 and t.stages >= 2
            and t.wm == 16 and t.warps_n == 1)


# ---------------------------------------------------------------------------------------------
# Instruction helpers: PTX on sm_90a, the twins of cuda_emu.h on the host

WG_HELPER = Helper("go_wg", """\
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "graphopt: a wgmma kernel compiles for sm_90a only"
#endif
// The block's shared window as descriptors address it: .shared addresses on the device; on the
// host the twin's window (cuda_emu.h), set once per block from the block's shared array.
__device__ __forceinline__ void go_wg_window(const void* p) {
#if !defined(__CUDA_ARCH__)
    go_emu::wg_set_window(p);
#endif
}
__device__ __forceinline__ unsigned go_wg_addr(const void* p) {
#if defined(__CUDA_ARCH__)
    return go_smem_addr(p);
#else
    return go_emu::wg_smem_addr(p);
#endif
}
// A shared-memory matrix descriptor: start address, leading and stride dimension byte offsets
// (each (x & 0x3FFFF) >> 4, 14 bits), base offset 0, swizzle mode 1 (128 bytes).
__device__ __forceinline__ unsigned long long go_wg_desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16)
         | ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void go_wg_begin() {  // the twin's queue starts empty in every block
#if !defined(__CUDA_ARCH__)
    go_emu::wg_begin();
#endif
}
__device__ __forceinline__ void go_wg_fence() {  // registers and shared memory ready for the wgmma that follow
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory");
#endif
}
__device__ __forceinline__ void go_wg_commit() {
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.commit_group.sync.aligned;\\n" ::: "memory");
#else
    go_emu::wg_commit();
#endif
}
template <int N>
__device__ __forceinline__ void go_wg_wait() {  // at most N committed wgmma groups still in flight
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.wait_group.sync.aligned %0;\\n" :: "n"(N) : "memory");
#else
    go_emu::wg_wait(N);
#endif
}
__device__ __forceinline__ void go_wg_keep(float& r) {  // the compiler may not move accesses to r across this
#if defined(__CUDA_ARCH__)
    asm volatile("" : "+f"(r) :: "memory");
#endif
}
// This thread's writes to shared memory (cp.async, st.shared: the generic proxy) made visible to
// the async proxy, through which wgmma reads its operands.
__device__ __forceinline__ void go_fence_proxy_async() {
#if defined(__CUDA_ARCH__)
    asm volatile("fence.proxy.async.shared::cta;\\n" ::: "memory");
#endif
}
""")

_PTX_TYPE = {"float16": "f16", "bfloat16": "bf16"}


def wgmma_helper(n: int, dtype: str, trans_a: bool, trans_b: bool) -> Helper:
    """``D(64 x n) += A(64 x 16) * B(16 x n)`` of one warpgroup, A and B through descriptors;
    ``trans_*``: the operand is M/N-major (``imm-trans`` 1)."""
    from .half import CONVERSIONS

    t = _PTX_TYPE[dtype]
    name = f"go_wgmma_m64n{n}k16_{t}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
    regs = ", ".join(f"%{i}" for i in range(n // 2))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(n // 2))
    ta, tb = int(trans_a), int(trans_b)
    src = (f"// D(64 x {n}) += A(64 x 16) * B(16 x {n}), {t}, f32 accumulators ({n // 2} a thread), A {'M' if ta else 'K'}"
           f"-major, B {'N' if tb else 'K'}-major in shared memory\n"
           f"__device__ __forceinline__ void {name}(float* d, unsigned long long da, unsigned long long db) {{\n"
           "#if defined(__CUDA_ARCH__)\n"
           '    asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %' + str(n // 2 + 2) + ', 0;\\n"\n'
           f'                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t} "\n'
           f'                 "{{{regs}}}, %{n // 2}, %{n // 2 + 1}, p, 1, 1, {ta}, {tb};\\n}}\\n"\n'
           f'                 : {outs}\n'
           '                 : "l"(da), "l"(db), "n"(1));\n'
           "#else\n"
           f"    go_emu::wg_mma(da, db, d, {n}, {str(bool(ta)).lower()}, {str(bool(tb)).lower()}, "
           f"{CONVERSIONS[dtype][0]});\n"
           "#endif\n}\n")
    return Helper(name, src)


# ---------------------------------------------------------------------------------------------
# The mainloop


def _copy_grid(vec: int, rows: int, cols: int, NT: int) -> list[tuple[int, str, str, bool]]:
    """Per copy ``u`` of a thread into a ``rows x cols`` tile, ``vec`` elements a copy: (u, row,
    col, guarded), C expressions over ``tid``; consecutive threads take consecutive copies."""
    per_row = cols // vec
    total = rows * per_row
    return [(u, f"((tid + {u * NT}) / {per_row})", f"((tid + {u * NT}) % {per_row}) * {vec}", (u + 1) * NT > total)
            for u in range(ceil_div(total, NT))]


def _tile_offset(op: Operand, row: str, col: str) -> str:
    """The element offset, in an operand's tile, of the copy at (row, col) of ``_copy_grid``:
    K-major rows are lines; M/N-major rows are k, and each 64 of m/n is its own block of lines."""
    if op.kmajor:
        line, c = row, col
    else:
        line, c = f"(({col}) / {MN_BLOCK}) * {BK} + ({row})", f"(({col}) % {MN_BLOCK})"
    return f"{swizzle_chunk_c(line, f'({c}) / 8', LINE // 16)} * 8 + (({c}) % 8)"


def _descriptor(op: Operand, base: str, ks: int) -> str:
    """The descriptor of k-step ``ks`` (16 of k) of an operand tile starting at byte ``base``."""
    if op.kmajor:
        return f"go_wg_desc({base} + {ks * 32}u, 16u, {8 * LINE}u)"
    return f"go_wg_desc({base} + {ks * 16 * LINE}u, {MN_BLOCK * 2 * BK}u, {8 * LINE}u)"


def render_wgmma_mainloop(t: TcTile, K: int, A: Operand, B: Operand, dtype: str, I: str,
                          k_range: tuple[str, str] | None = None, tma=None) -> tuple[Mainloop, Helper]:
    """C lines that leave ``acc[1][BN/8][4]`` (float) holding this thread's part of the block's
    sums over the k-tiles ``k_range``, and the wgmma helper they call. Expects ``tid`` and the
    tile origin (``m0``, ``n0``) from the caller's prologue, as ``mainloop.render_mainloop``.
    ``tma``: the GEMM spec, when its stages are loaded by TMA (``wgmma_tma.py``; the kernel then
    takes the tensor maps ``tma_a``, ``tma_b``) rather than by ``cp.async``."""
    BM, BN, NT, S = t.bm, t.bn, t.threads, t.stages
    assert wg_tile_fits(t), t
    assert (A.kmajor or BM % MN_BLOCK == 0) and (B.kmajor or BN % MN_BLOCK == 0), t  # M/N-major: whole 64-blocks
    mma = wgmma_helper(BN, dtype, not A.kmajor, not B.kmajor)
    a_h, stage_h = BM * LINE_H, (BM + BN) * LINE_H
    smem = wg_smem_bytes(t)
    dynamic = smem > STATIC_SMEM_LIMIT
    decl = f"__shared__ __align__(128) unsigned char go_smem[{smem}];"
    L = (["#if defined(__CUDA_ARCH__)  // sized at launch: more than a static array may hold",
          "extern __shared__ __align__(128) unsigned char go_smem[];", "#else", decl, "#endif"]
         if dynamic else [decl])
    L += ["go_wg_window(go_smem);",
          f"unsigned char* const wg_base = go_smem + (({ALIGN}u - (go_wg_addr(go_smem) & {ALIGN - 1}u)) & {ALIGN - 1}u);",
          "unsigned short* const smem_h = reinterpret_cast<unsigned short*>(wg_base);",
          "const unsigned smem_s = go_wg_addr(wg_base);  // the first stage's shared address, 1024-byte aligned"]
    kt0, kt1 = k_range or ("0", str(ceil_div(K, BK)))
    L += [f"const int kt_begin = {kt0}, kt_end = {kt1};"]
    loads = []
    if tma is not None:
        L += [f"__shared__ __align__(8) unsigned long long go_mbar[{S}];  // stage s's k-tile has landed",
              "if (tid == 0) {", "    go_tma_begin();",
              f"    for (int s = 0; s < {S}; ++s) go_mbar_init(&go_mbar[s], 1);",
              "    go_mbar_init_fence();", "    go_tma_acquire(tma_a);", "    go_tma_acquire(tma_b);", "}",
              "__syncthreads();"]
    for op, off, rows, cols, nm in ((A, 0, BM if A.kmajor else BK, BK if A.kmajor else BM, "a"),
                                    (B, a_h, BN if B.kmajor else BK, BK if B.kmajor else BN, "b")):
        if tma is not None:
            break
        cps = _copy_grid(op.vec, rows, cols, NT)
        for u, row, col, guarded in cps:
            L.append(f"const int {nm}r{u} = {row}, {nm}c{u} = {col};")
            L += op.setup(u, f"{nm}r{u}" if op.kmajor else f"{nm}c{u}")
            L.append(f"const int {nm}o{u} = {off} + {_tile_offset(op, f'{nm}r{u}', f'{nm}c{u}')};")
            if guarded:
                L.append(f"const bool {nm}g{u} = tid + {u * NT} < {rows * cols // op.vec};")
        loads.append((op, cps, nm))

    def load_stage(s: str, kt: str) -> list[str]:
        if tma is not None:
            from .wgmma_tma import render_tma_loads

            return ["if (tid == 0) {", *("    " + x for x in render_tma_loads(tma, stage_h, a_h, s, kt)), "}"]
        out = []
        for op, cps, nm in loads:
            for u, _, _, guarded in cps:
                out += copy_lines(op, u, nm, guarded, f"{kt} * {BK}", f"smem_h + {s} * {stage_h} + {nm}o{u}")
        return out

    NI = BN // 8
    a_wg = f"(tid >> 7) * {64 * LINE if A.kmajor else MN_BLOCK * BK * 2}"  # this warpgroup's 64 rows of A
    issue = [f"go_wg_fence();",
             f"const unsigned st_s = smem_s + (unsigned)((kt - kt_begin) % {S}) * {stage_h * 2}u;",
             f"const unsigned a_s = st_s + {a_wg}, b_s = st_s + {a_h * 2}u;"]
    for ks in range(BK // 16):
        issue.append(f"{mma.name}(&acc[0][0][0], {_descriptor(A, 'a_s', ks)}, {_descriptor(B, 'b_s', ks)});")
    issue.append("go_wg_commit();")
    keep = ["#pragma unroll", f"for (int j = 0; j < {NI}; ++j)", "    #pragma unroll",
            "    for (int r = 0; r < 4; ++r) go_wg_keep(acc[0][j][r]);"]
    if tma is not None:
        L += [f"float acc[1][{NI}][4];", "#pragma unroll",
              f"for (int j = 0; j < {NI}; ++j) acc[0][j][0] = acc[0][j][1] = acc[0][j][2] = acc[0][j][3] = 0.0f;",
              "go_wg_begin();",
              f"// prologue: the first {S - 1} k-tiles in flight",
              "#pragma unroll",
              f"for (int s = 0; s < {S - 1}; ++s) {{",
              "    if (kt_begin + s < kt_end) {",
              *("        " + x for x in load_stage("s", "(kt_begin + s)")),
              "    }",
              "}",
              "#pragma unroll 1",
              "for (int kt = kt_begin; kt < kt_end; ++kt) {",
              "    __syncthreads();  // every warpgroup's wgmma of k-tile kt - 1 is complete: its stage may be refilled",
              "    {",
              f"        const int kn = kt + {S - 1};",
              "        if (kn < kt_end) {",
              f"            const int sn = (kn - kt_begin) % {S};",
              *("            " + x for x in load_stage("sn", "kn")),
              "        }",
              "    }",
              f"    go_mbar_wait(&go_mbar[(kt - kt_begin) % {S}], (unsigned)((kt - kt_begin) / {S}) & 1u);",
              *("    " + x for x in keep),
              *("    " + x for x in issue),
              "    go_wg_wait<0>();",
              *("    " + x for x in keep),
              "}"]
        return Mainloop(L, smem, dynamic), mma
    L += [f"float acc[1][{NI}][4];", "#pragma unroll",
          f"for (int j = 0; j < {NI}; ++j) acc[0][j][0] = acc[0][j][1] = acc[0][j][2] = acc[0][j][3] = 0.0f;",
          "go_cp_async_begin();", "go_wg_begin();",
          *cp_async_prologue(S, load_stage),
          "#pragma unroll 1",
          "for (int kt = kt_begin; kt < kt_end; ++kt) {",
          f"    go_cp_async_wait<{S - 2}>();  // this thread's copies of k-tile kt have landed",
          "    go_fence_proxy_async();  // ... and are visible to the tensor cores",
          "    __syncthreads();  // everyone's are; and every wgmma of k-tile kt - 1 is complete",
          *("    " + x for x in keep),
          *("    " + x for x in issue),
          "    {  // refill the stage of k-tile kt - 1 while the tensor cores run",
          f"        const int kn = kt + {S - 1};",
          "        if (kn < kt_end) {",
          f"            const int sn = (kn - kt_begin) % {S};",
          *("            " + x for x in load_stage("sn", "kn")),
          "        }",
          "        go_cp_async_commit();",
          "    }",
          "    go_wg_wait<0>();",
          *("    " + x for x in keep),
          "}",
          "go_cp_async_wait<0>();  // nothing left in flight (an empty group at most)"]
    return Mainloop(L, smem, dynamic), mma


def wgmma_suits(M: int, N: int, K: int, a, b, nb: int) -> bool:
    """Whether both operands (views over ``nb`` batch dims + (m, k) / (k, n)) are copied 16 bytes at
    a time. Narrower copies of a 64-wide k-tile keep a pointer per copy live through the loop
    (16 a thread per operand at 4 bytes), past 255 registers: such GEMMs stay on mma.sync unless
    wgmma is asked for by name."""
    from .mainloop import view_operand

    ops = (view_operand("a", "0", a.strides[nb], a.strides[nb + 1], M, K, "0", "int", a.strides[:nb], a.offset),
           view_operand("b", "0", b.strides[nb + 1], b.strides[nb], N, K, "0", "int", b.strides[:nb], b.offset))
    return all(op.vec == 8 for op in ops)


# ---------------------------------------------------------------------------------------------
# Which mainloop new GEMM specs get

ENGINE_ENV = "GRAPHOPT_CUDA_MMA"  # "wgmma" or "mma" forces one; unset or "auto": the device decides
_engaged: dict[str, str] = {}  # "engine" -> what engage() decided for this process


def engine() -> str:
    """``"wgmma"`` or ``"mma"``: the mainloop a new GEMM or convolution spec gets where it suits
    (``choose_engine``).

    >>> engine() in ("wgmma", "mma")
    True
    """
    forced = os.environ.get(ENGINE_ENV, "auto").strip().lower()
    if forced in ("wgmma", "mma"):
        return forced
    if forced != "auto":
        from graphopt.errors import GraphoptError

        raise GraphoptError(f"{ENGINE_ENV}={forced!r}: expected 'wgmma', 'mma' or 'auto'")
    return _engaged.get("engine", "mma")


ENGINES = ("mma", "wgmma")


def choose_engine(named: str | None, refusal: Callable[[], str | None], tile: TcTile | None = None) -> str:
    """The mainloop of a new tensor-core spec (GEMM or convolution): ``named`` when given; else the
    process's (``engine()``), but mma.sync where ``refusal()`` gives a reason wgmma does not suit
    the problem or a ``tile`` given is not one the wgmma mainloop takes (``wg_tile_fits``).

    >>> choose_engine(None, lambda: "C/group = 3: no 16-byte copies") in ENGINES
    True
    """
    if named is None:
        named = engine()
        if named == "wgmma" and ((tile is not None and not wg_tile_fits(tile)) or refusal()):
            named = "mma"
    if named not in ENGINES:
        raise ValueError(f"tensor-core engine {named!r} (mma or wgmma)")
    return named


def choose_engine_schedule(named: str, M: int, N: int, K: int, nz: int) -> tuple[TcTile, int]:
    """(tile, split) from ``named``'s table: ``choose_wgmma_schedule`` or ``mainloop.choose_schedule``."""
    return (choose_wgmma_schedule if named == "wgmma" else choose_schedule)(M, N, K, nz)


@contextmanager
def engine_forced(name: str):
    """Within the block, new GEMM and convolution specs get ``name``'s mainloop (as
    ``GRAPHOPT_CUDA_MMA=name``): the sm_90a audit lowers models this way."""
    old = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENGINE_ENV, None)
        else:
            os.environ[ENGINE_ENV] = old


def reset_engine() -> None:
    """Forget what ``engage`` decided (tests)."""
    _engaged.clear()


def selfcheck_gemms(dtype: str = "float16") -> list:
    """The first-contact GEMMs: [(wgmma spec, mma.sync spec, A, B)], A and B stored as the specs'
    views read them. Integer-valued inputs make every product and sum exact in float32, so the two
    kernels must agree bit for bit. Between them: both majors of both operands (K-major A with
    N-major B; M-major A with K-major B), one and two warpgroups, several k-tiles, ragged edges.
    """
    import numpy as np

    from .specs import View
    from .tc_gemm import make_tc_matmul

    rng = np.random.default_rng(13)
    out = []
    for M, N, K, trans, tile in ((100, 72, 200, False, None), (72, 136, 136, True, WG_TILES["128x128"])):
        a = rng.integers(-3, 4, (K, M) if trans else (M, K)).astype(np.float16)
        b = rng.integers(-3, 4, (N, K) if trans else (K, N)).astype(np.float16)
        views = dict(a=View(dtype, (1, M) if trans else (K, 1)), b=View(dtype, (1, K) if trans else (N, 1)))
        out.append((make_tc_matmul(M, N, K, dtype=dtype, engine="wgmma", tile=tile, **views),
                    make_tc_matmul(M, N, K, dtype=dtype, engine="mma", **views), a, b))
    return out


def engage(run_gemm=None) -> str:
    """Decide, once per process, whether new GEMM specs use wgmma: on a device of compute
    capability 9.0, run ``selfcheck_gemms`` through both mainloops and compare. ``run_gemm(spec,
    a, b) -> numpy array`` launches one spec on the device (the default compiles, loads and runs it
    through ``device.py``). Any failure keeps mma.sync, with one warning line. Returns the engine.

    >>> engage(lambda spec, a, b: a.astype("float32") @ b.astype("float32"))   # doctest: +SKIP
    'wgmma'
    """
    if "engine" in _engaged:
        return _engaged["engine"]
    from . import device

    choice = "mma"
    cc = device.compute_capability()
    if cc == "90":
        import numpy as np

        run_gemm = run_gemm or device_gemm
        try:
            for i, (wg, ref, a, b) in enumerate(selfcheck_gemms()):
                got, want = np.asarray(run_gemm(wg, a, b)), np.asarray(run_gemm(ref, a, b))
                if not np.array_equal(got, want):
                    warnings.warn(f"graphopt: the wgmma GEMM self-check {i + 1} ({wg.M}x{wg.N}x{wg.K}) differs from "
                                  f"mma.sync in {int(np.sum(got != want))} of {want.size} elements on this GPU; "
                                  "using mma.sync for this process", RuntimeWarning, stacklevel=2)
                    break
            else:
                choice = "wgmma"
        except Exception as exc:  # a launch that fails must not take the process with it
            first = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"graphopt: the wgmma GEMM self-check failed on this GPU ({type(exc).__name__}: {first}); "
                          "using mma.sync for this process", RuntimeWarning, stacklevel=2)
    _engaged["engine"] = choice
    return choice


def device_gemm(spec, a, b):
    """Run one GEMM spec (no epilogue, no split) on the current device through the seam."""
    import numpy as np

    from . import device
    from .backend import CudaExecutable
    from .tc_gemm import render_tc_matmul

    k = render_tc_matmul(spec)
    fn = CudaExecutable.load_functions([k])[k.name]  # as the backend loads its kernels
    s = device.new_stream()
    y = device.empty((spec.M, spec.N), spec.c.dtype)  # the specs' outputs are contiguous
    args = [y, device.upload(a, s), device.upload(b, s)]
    ws, ctr = spec.workspace
    if ws:
        args += [device.upload(np.zeros(ws, np.float32), s), device.upload(np.zeros(ctr, np.int32), s)]
    device.launch(fn, spec.grid(), spec.block(), tuple(args), s)
    return device.download(y, s)
