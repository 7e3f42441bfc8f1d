"""Flash attention on tensor cores: ``softmax(scale * Q K^T + bias) V`` for float16/bfloat16
heads, one pass over the keys, the score matrix never in memory.

A block owns ``16 * warps`` query rows, a warp 16 of them. The warp's Q rows live in
registers as ``mma.m16n8k16`` A fragments for the whole kernel. Per tile of ``bc`` keys
the block stages K as ``Ks[key][d]`` (the ``col`` layout the B operand of ``Q K^T``
wants) and V as ``Vs[key][dv]`` in shared memory, double-buffered: the next tile's
16-byte ``cp.async`` copies (``mainloop.py``'s helper and its twin; element loads where a
view's rows are not 16-byte runs) are in flight while the warps work on this one; each
warp then

1. computes its ``16 x bc`` scores with ``mma.sync`` (float32 accumulators), scales
   them in float32 and adds the bias element (any strided view: a key-padding mask
   ``[B, 1, 1, S]`` or a full ``[B, H, Sq, Sk]`` one); keys past the end and, for a
   causal spec, keys after ``row + offset`` get ``-inf``;
2. updates the running row max and sum (online softmax; a row's four lanes combine
   with two ``__shfl_xor_sync``), rescales its output accumulators;
3. converts the probabilities to the input type and reuses the score accumulators,
   register for register, as the A fragments of ``P V`` (the ``m16n8`` C layout of two
   neighbouring key octets *is* the ``m16k16`` A layout), B fragments from ``Vs`` by
   ``ldmatrix.trans`` (two output octets a load; its twin under emulation).

A causal spec stops each block at its last row's last visible key, so the tiles
above the diagonal are never loaded. The MMA is ``tc_gemm``'s helper, with its
portable twin under emulation, so the emulation checks every index around it against
the CPU reference. Probabilities are rounded to the input type before ``P V`` (as
every flash kernel does), the rest is float32: results agree with the reference at
the input type's tolerance.

>>> spec = make_flash_attention((2, 12), sq=128, sk=128, d=64, dv=64)   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .half import CONVERSIONS
from .kernel import Helper, Kernel, kernel_source
from .attention import AttentionProblem, attention_problem, heads_setup
from .scalar import c_float, half_helpers, load, offset_expr, store
from .specs import View, ceil_div, kernel_name, prod, round_up
from .mainloop import CP_ASYNC_HELPER, LDSM_HELPER, SMEM_ADDR_HELPER
from .tc_gemm import MMA_HELPERS

MAX_HEAD_DIM = 128  # Q fragments and output accumulators stay in registers up to this width
FLASH_DTYPES = tuple(MMA_HELPERS)


@dataclass(frozen=True)
class FlashTile:
    """``warps`` warps of 16 query rows each; ``bc`` keys per shared-memory tile."""

    warps: int
    bc: int

    @property
    def br(self) -> int:
        return 16 * self.warps

    @property
    def threads(self) -> int:
        return 32 * self.warps


@dataclass(frozen=True)
class FlashAttentionSpec(AttentionProblem):
    causal_offset: int  # with ``causal``, key j is masked for row i when j > i + causal_offset
    tile: FlashTile
    vec_k: bool  # 16-byte loads of K rows
    vec_v: bool  # 16-byte loads of V rows
    index_t: str

    def grid(self) -> tuple[int, int, int]:
        return (max(ceil_div(self.sq, self.tile.br), 1), prod(self.batch), 1)

    def block(self) -> tuple[int, int, int]:
        return (self.tile.threads, 1, 1)

    @property
    def dp(self) -> int:  # d padded to the MMA's k step
        return round_up(max(self.d, 1), 16)

    @property
    def dvp(self) -> int:  # dv padded to the MMA's n step
        return round_up(max(self.dv, 1), 8)


def flash_supported(dtype: str, d: int, dv: int) -> str | None:
    """None when the tensor-core kernel takes heads of ``dtype`` and widths ``d``/``dv``, else why not."""
    if dtype not in FLASH_DTYPES:
        return f"flash attention runs on {' and '.join(FLASH_DTYPES)} heads, not {dtype}"
    if max(d, dv) > MAX_HEAD_DIM:
        return f"head width {max(d, dv)} is over the flash kernel's {MAX_HEAD_DIM}"
    return None


def _vec8(view: View, nb: int) -> bool:
    """Rows of 8 consecutive 16-bit elements at 16-byte aligned offsets (the buffers are)."""
    *outer, row, col = view.strides
    return col == 1 and all(s % 8 == 0 for s in (*outer[:nb], row)) and view.offset % 8 == 0


def default_flash_tile(batch: Sequence[int], sq: int, d: int, dv: int, sms: int = 132) -> FlashTile:
    """4 warps (64 rows) a block when that still fills the GPU, fewer when the grid would be
    small (batch 1, short sequences); 64-key tiles up to head width 64 for blocks of 2 or more
    warps, else 32 (registers past width 64; a one-warp block's two 64-key tiles of shared memory
    would leave fewer than 8 warps resident on an SM)."""
    nb = prod(batch)
    warps = 4
    while warps > 1 and ceil_div(sq, 16 * warps) * nb < sms:
        warps //= 2
    return FlashTile(warps, 64 if max(d, dv) <= 64 and warps > 1 else 32)


def make_flash_attention(batch: Sequence[int], sq: int, sk: int, d: int, dv: int, *, q: View | None = None,
                         k: View | None = None, v: View | None = None, out: View | None = None,
                         bias: View | None = None, scale: float | None = None, causal: bool = False,
                         causal_offset: int = 0, tile: FlashTile | None = None,
                         dtype: str = "float16") -> FlashAttentionSpec:
    """A flash-attention spec; views default to contiguous ``[*batch, S, D]`` tensors of ``dtype``."""
    p, idx = attention_problem(batch, sq, sk, d, dv, q, k, v, out, bias, scale, causal, dtype)
    why = flash_supported(p.q.dtype, d, dv)
    if why is None and not (p.k.dtype == p.v.dtype == p.q.dtype):
        why = f"flash attention needs Q, K and V of one type, not {p.q.dtype}/{p.k.dtype}/{p.v.dtype}"
    if why:
        raise ValueError(why)
    nb = len(p.batch)
    return FlashAttentionSpec(**vars(p), causal_offset=int(causal_offset),
                              tile=tile or default_flash_tile(p.batch, sq, d, dv),
                              vec_k=d % 8 == 0 and _vec8(p.k, nb), vec_v=dv % 8 == 0 and _vec8(p.v, nb), index_t=idx)


def _pack_helper(dtype: str) -> Helper:
    narrow = CONVERSIONS[dtype][1]
    name = f"go_pack2_{narrow}"
    return Helper(name, f"""\
__device__ __forceinline__ unsigned {name}(float lo, float hi) {{  // two values rounded, lo in the low half
    return (unsigned){narrow}(lo) | ((unsigned){narrow}(hi) << 16);
}}
""")


LDS_H2_HELPER = Helper("go_lds_h2", """\
__device__ __forceinline__ unsigned go_lds_h2(const unsigned short* p) {  // two 16-bit values, p 4-byte aligned
#if defined(__CUDA_ARCH__)
    return *reinterpret_cast<const unsigned*>(p);
#else  // the host compiler may not read 16-bit storage through a 32-bit pointer (strict aliasing)
    return (unsigned)p[0] | ((unsigned)p[1] << 16);
#endif
}
""")

def _stage(buf: str, ptr: str, base: str, rows: str, width: int, padded: int, row_stride: int, col_stride: int,
           limit: str, vec: bool, nt: int, I: str) -> list[str]:
    """Lines copying ``rows`` rows (keys ``j1 ..``) of ``width`` columns into ``buf[key][c]``, zeros past
    ``limit`` keys and past ``width`` (up to ``padded``): 16-byte ``cp.async`` copies (zero-filled
    out of range, nothing read) when ``vec``, else plain element loads."""
    if vec:
        per = padded // 8
        return [f"for (int l = threadIdx.x; l < {rows} * {per}; l += {nt}) {{",
                f"    const int r = l / {per}, c = (l % {per}) * 8;",
                f"    const {I} key = j1 + r;",
                f"    const bool in = key < {limit} && c < {width};",
                f"    go_cp_async<16>(&{buf}[r][c], in ? (const void*)&{ptr}[{base} + key * {row_stride} + c] : "
                f"(const void*){ptr}, in ? 16 : 0);",
                "}"]
    return [f"for (int l = threadIdx.x; l < {rows} * {padded}; l += {nt}) {{",
            f"    const int r = l / {padded}, c = l % {padded};",
            f"    const {I} key = j1 + r;",
            f"    {buf}[r][c] = (key < {limit} && c < {width}) ? "
            f"{ptr}[{base} + {offset_expr(['key', 'c'], (row_stride, col_stride))}] : (unsigned short)0;",
            "}"]


def render_flash_attention(spec: FlashAttentionSpec) -> Kernel:
    name = kernel_name("flash", spec)
    I = spec.index_t
    t = spec.tile
    BC, NT, DP, DVP = t.bc, t.threads, spec.dp, spec.dvp
    KS, NJ, NO = DP // 16, BC // 8, DVP // 8  # Q k-steps, score octets, output octets
    dt = spec.q.dtype
    mma = MMA_HELPERS[dt]
    pack = _pack_helper(dt)
    params, setup, st = heads_setup(spec, I)
    (qs, qd), (ks, kd), (vs, vd), (os_, od) = st["q"], st["k"], st["v"], st["out"]
    L = [f"__shared__ __align__(16) unsigned short Ks[2][{BC}][{DP + 8}];",  # +8: fragment loads hit 32 banks
         f"__shared__ __align__(16) unsigned short Vs[2][{BC}][{DVP + 8}];",  # two tiles: the next one lands
         "go_cp_async_begin();",
         "const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;",
         f"const {I} r0 = ({I})blockIdx.x * {t.br};",
         f"const {I} rw = r0 + warp * 16;  // this warp's first row"]
    L += setup
    q_at = f"q[qb + {offset_expr(['rr', 'cc'], (qs, qd))}]"
    L += [f"unsigned qf[{KS}][4];  // A fragments of the warp's 16 rows: rows g, g+8 x k 2t, 2t+1, 2t+8, 2t+9",
          "#pragma unroll",
          f"for (int kk = 0; kk < {KS}; ++kk)",
          "    #pragma unroll",
          "    for (int r = 0; r < 4; ++r) {",
          f"        const {I} rr = rw + g + (r & 1) * 8;",
          "        const int c0 = kk * 16 + 2 * t4 + (r >> 1) * 8;",
          "        unsigned w = 0;",
          "        for (int e = 0; e < 2; ++e) {",
          "            const int cc = c0 + e;",
          f"            if (rr < {spec.sq} && cc < {spec.d}) w |= (unsigned){q_at} << (16 * e);",
          "        }",
          "        qf[kk][r] = w;",
          "    }",
          "float m[2] = {-GO_INF, -GO_INF}, l[2] = {0.0f, 0.0f};  // rows g, g+8: running max, this lane's sum",
          f"float o[{NO}][4];",
          "#pragma unroll",
          f"for (int n = 0; n < {NO}; ++n) for (int r = 0; r < 4; ++r) o[n][r] = 0.0f;"]
    if spec.causal:  # the last key any row of this block sees
        L.append(f"const {I} kend_c = r0 + {t.br} + ({spec.causal_offset});")
        L.append(f"const {I} kend = kend_c < 0 ? 0 : (kend_c < {spec.sk} ? kend_c : {spec.sk});")
    else:
        L.append(f"const {I} kend = {spec.sk};")

    def stage(b: str) -> list[str]:
        return (_stage(f"Ks[{b}]", "k", "kb", str(BC), spec.d, DP, ks, kd, str(spec.sk), spec.vec_k, NT, I)
                + _stage(f"Vs[{b}]", "v", "vb", str(BC), spec.dv, DVP, vs, vd, str(spec.sk), spec.vec_v, NT, I))

    L += ["if (kend > 0) {", f"    const {I} j1 = 0;", *("    " + x for x in stage("0")), "}",
          "go_cp_async_commit();",
          f"for ({I} j0 = 0; j0 < kend; j0 += {BC}) {{"]
    body = [f"const int cur = (int)((j0 / {BC}) & 1);",
            "__syncthreads();  // every warp is done with the buffer the next tile goes to",
            f"if (j0 + {BC} < kend) {{  // the next tile's copies overlap this tile's math",
            f"    const {I} j1 = j0 + {BC};",
            *("    " + x for x in stage("cur ^ 1")),
            "}",
            "go_cp_async_commit();",
            "go_cp_async_wait<1>();  // this thread's copies of the current tile have landed",
            "__syncthreads();  // and every thread's",
             f"float s[{NJ}][4];",
             "#pragma unroll",
             f"for (int j = 0; j < {NJ}; ++j) {{",
             "    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;",
             "    #pragma unroll",
             f"    for (int kk = 0; kk < {KS}; ++kk) {{",
             "        unsigned bf[2];",
             "        bf[0] = go_lds_h2(&Ks[cur][j * 8 + g][kk * 16 + 2 * t4]);",
             "        bf[1] = go_lds_h2(&Ks[cur][j * 8 + g][kk * 16 + 2 * t4 + 8]);",
             f"        {mma.name}(s[j], qf[kk], bf);",
             "    }",
             "}",
             "float mx[2] = {-GO_INF, -GO_INF};",
             "#pragma unroll",
             f"for (int j = 0; j < {NJ}; ++j)",
             "    #pragma unroll",
             "    for (int r = 0; r < 4; ++r) {",
             f"        const {I} row = rw + g + (r >> 1) * 8, key = j0 + j * 8 + 2 * t4 + (r & 1);",
             f"        float x = s[j][r] * {c_float(spec.scale)};"]
    if spec.bias is not None:
        b_at = load(spec.bias.dtype, f"bias[bb + {offset_expr(['row', 'key'], st['bias'])}]")
        body.append(f"        if (row < {spec.sq} && key < {spec.sk}) x += {b_at};")
    masked = f"key >= {spec.sk}"
    if spec.causal:
        masked += f" || key > row + ({spec.causal_offset})"
    body += [f"        if ({masked}) x = -GO_INF;",
             "        s[j][r] = x;",
             "        mx[r >> 1] = fmaxf(mx[r >> 1], x);",
             "    }",
             "float corr[2];",
             "#pragma unroll",
             "for (int h = 0; h < 2; ++h) {  // a row's 16 scores of this tile sit on the 4 lanes of a quad",
             "    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));",
             "    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));",
             "    const float mn = fmaxf(m[h], mx[h]);",
             "    corr[h] = (mn == -GO_INF) ? 1.0f : expf(m[h] - mn);  // nothing seen yet: nothing to rescale",
             "    m[h] = mn;",
             "    l[h] *= corr[h];",
             "}",
             "#pragma unroll",
             f"for (int j = 0; j < {NJ}; ++j)",
             "    #pragma unroll",
             "    for (int r = 0; r < 4; ++r) {",
             "        const float x = s[j][r], mr = m[r >> 1];",
             "        const float p = (x == -GO_INF) ? 0.0f : expf(x - mr);",
             "        s[j][r] = p;",
             "        l[r >> 1] += p;",
             "    }",
             "#pragma unroll",
             f"for (int n = 0; n < {NO}; ++n) {{",
             "    o[n][0] *= corr[0]; o[n][1] *= corr[0]; o[n][2] *= corr[1]; o[n][3] *= corr[1];",
             "}",
             "#pragma unroll",
             f"for (int kk = 0; kk < {NJ // 2}; ++kk) {{",
             "    unsigned pa[4];  // the C fragments of key octets 2kk, 2kk+1 are the A fragment of keys 16kk..",
             f"    pa[0] = {pack.name}(s[2 * kk][0], s[2 * kk][1]);",
             f"    pa[1] = {pack.name}(s[2 * kk][2], s[2 * kk][3]);",
             f"    pa[2] = {pack.name}(s[2 * kk + 1][0], s[2 * kk + 1][1]);",
             f"    pa[3] = {pack.name}(s[2 * kk + 1][2], s[2 * kk + 1][3]);",
             "    #pragma unroll",
             f"    for (int n = 0; n < {NO}; n += 2) {{",
             "        // B fragments of output octets n, n+1 (keys 2t, 2t+1 and +8 of column g) by one ldmatrix.trans:",
             "        // lane 8q+i gives row i of matrix q (keys +8 for odd q, columns +8 for q >= 2); past dv it",
             "        // reads the row's padding, whose fragment is never used",
             "        unsigned vf[4];",
             "        go_ldsm_x4_trans(vf, &Vs[cur][kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)][(n + (lane >> 4)) * 8]);",
             f"        {mma.name}(o[n], pa, vf);",
             f"        if (n + 1 < {NO}) {mma.name}(o[n + 1], pa, vf + 2);",
             "    }",
             "}"]
    L += ["    " + s for s in body]
    L += ["}",
          "#pragma unroll",
          "for (int h = 0; h < 2; ++h) {",
          "    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);",
          "    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);",
          "}",
          "const float inv[2] = {1.0f / l[0], 1.0f / l[1]};  // a row masked at every key: 0 * inf = NaN",
          "#pragma unroll",
          f"for (int n = 0; n < {NO}; ++n)",
          "    #pragma unroll",
          "    for (int r = 0; r < 4; ++r) {",
          f"        const {I} row = rw + g + (r >> 1) * 8;",
          "        const int c = n * 8 + 2 * t4 + (r & 1);",
          f"        if (row < {spec.sq} && c < {spec.dv}) y[ob + {offset_expr(['row', 'c'], (os_, od))}] = "
          f"{store(spec.out.dtype, 'o[n][r] * inv[r >> 1]')};",
          "    }"]
    mask_words = (f"{'causal (offset ' + str(spec.causal_offset) + '), ' if spec.causal else ''}"
                  f"{'bias, ' if spec.bias is not None else ''}")
    src = kernel_source(name, NT, params, L,
                        f"flash attention {list(spec.batch)} x {spec.sq}x{spec.sk}, d {spec.d}/{spec.dv}, {dt}, "
                        f"{mask_words}{t.br} rows x {BC} keys a tile, mma.sync m16n8k16",
                        min_blocks=1)  # the registers it needs: ptxas's occupancy target would spill
    dts = [dt, spec.out.dtype] + ([spec.bias.dtype] if spec.bias is not None else [])
    helpers = tuple(dict.fromkeys((*half_helpers(*dts), LDS_H2_HELPER, SMEM_ADDR_HELPER, CP_ASYNC_HELPER,
                                   LDSM_HELPER, mma, pack)))
    return Kernel(name, src, tuple(params), helpers, True, spec)
