"""Fused attention, ``softmax(scale * Q K^T + bias) V``, in one pass over the keys.

One warp owns one query row (a block holds ``rpb`` rows as ``threadIdx.y``). Per
chunk of 32 keys each lane scores one key against the row's query (staged in
shared memory, pre-scaled), the warp updates the running max and sum (online
softmax), rescales its accumulators, and broadcasts each key's probability with
``__shfl_sync`` so that every lane accumulates its slice of the output dims.
Scores never reach memory. Q, K, V, the additive bias and the output are views
with strides, so the heads can be read straight from a ``[B, S, H, D]`` projection
and written back as ``[B, S, H * D]`` without transposes. ``causal`` masks keys
after the query's position.

>>> spec = make_attention((2, 4), sq=7, sk=7, d=16, dv=16)   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .kernel import Kernel, Param, ctype_of, kernel_source
from .reduce import reduce_helpers
from .scalar import c_float, decompose, half_helpers, index_type, load, max_extent, offset_expr, store
from .specs import View, ceil_div, kernel_name, prod


@dataclass(frozen=True)
class AttentionProblem:
    """What an attention kernel computes, whatever its schedule."""

    batch: tuple[int, ...]  # e.g. (B, H)
    sq: int
    sk: int
    d: int
    dv: int
    q: View  # strides over batch + (sq, d)
    k: View  # strides over batch + (sk, d)
    v: View  # strides over batch + (sk, dv)
    out: View  # strides over batch + (sq, dv)
    bias: View | None  # additive, strides over batch + (sq, sk)
    scale: float
    causal: bool

    @property
    def empty(self) -> bool:
        return self.sq == 0 or self.dv == 0 or prod(self.batch) == 0


def attention_problem(batch: Sequence[int], sq: int, sk: int, d: int, dv: int, q: View | None, k: View | None,
                      v: View | None, out: View | None, bias: View | None, scale: float | None, causal: bool,
                      dtype: str) -> tuple[AttentionProblem, str]:
    """The problem (contiguous ``[*batch, S, D]`` views of ``dtype`` where none is given, scale
    ``1/sqrt(d)`` by default) and the index type its views need."""
    batch = tuple(int(x) for x in batch)
    q = q or View.contiguous(dtype, (*batch, sq, d))
    k = k or View.contiguous(q.dtype, (*batch, sk, d))
    v = v or View.contiguous(q.dtype, (*batch, sk, dv))
    out = out or View.contiguous(q.dtype, (*batch, sq, dv))
    scale = 1.0 / d ** 0.5 if scale is None else float(scale)
    ext = [max_extent((*batch, sq, d), q.strides, q.offset), max_extent((*batch, sk, d), k.strides, k.offset),
           max_extent((*batch, sk, dv), v.strides, v.offset), max_extent((*batch, sq, dv), out.strides, out.offset)]
    if bias is not None:
        ext.append(max_extent((*batch, sq, sk), bias.strides, bias.offset))
    return AttentionProblem(batch, sq, sk, d, dv, q, k, v, out, bias, scale, bool(causal)), index_type(*ext)


@dataclass(frozen=True)
class AttentionSpec(AttentionProblem):
    rpb: int
    index_t: str

    def grid(self) -> tuple[int, int, int]:
        return (max(ceil_div(self.sq, self.rpb), 1), prod(self.batch), 1)

    def block(self) -> tuple[int, int, int]:
        return (32, self.rpb, 1)


def make_attention(batch: Sequence[int], sq: int, sk: int, d: int, dv: int, *, q: View | None = None,
                   k: View | None = None, v: View | None = None, out: View | None = None,
                   bias: View | None = None, scale: float | None = None, causal: bool = False) -> AttentionSpec:
    p, idx = attention_problem(batch, sq, sk, d, dv, q, k, v, out, bias, scale, causal, "float32")
    return AttentionSpec(**vars(p), rpb=max(1, min(4, sq)), index_t=idx)


def heads_setup(spec: AttentionProblem, I: str) -> tuple[list[Param], list[str], dict[str, tuple[int, int]]]:
    """What every attention kernel starts with: its parameters (``y, q, k, v[, bias]``), the lines
    finding this block's batch entry (``blockIdx.y``) and each operand's base offset (``qb``, ``kb``,
    ``vb``, ``ob``, ``bb``), and each operand's (row, column) strides."""
    nb = len(spec.batch)
    views = {"q": spec.q, "k": spec.k, "v": spec.v, "out": spec.out, "bias": spec.bias}
    params = [Param("y", f"{ctype_of(spec.out.dtype)}*")]
    params += [Param(n, f"const {ctype_of(views[n].dtype)}*") for n in ("q", "k", "v", "bias") if views[n] is not None]
    z = [f"z{i}" for i in range(nb)]
    lines = decompose(f"({I})blockIdx.y", spec.batch, "z", I)
    lines += [f"const {I} {n[0]}b = {offset_expr(z, v.strides[:nb], v.offset)};" for n, v in views.items() if v is not None]
    return params, lines, {n: tuple(v.strides[nb:]) for n, v in views.items() if v is not None}


def render_attention(spec: AttentionSpec) -> Kernel:
    name = kernel_name("attn", spec)
    I = spec.index_t
    DVL = ceil_div(spec.dv, 32)  # output dims per lane
    params, setup, st = heads_setup(spec, I)
    (qs, qd), (ks, kd), (vs, vd), (os_, od) = st["q"], st["k"], st["v"], st["out"]
    q_elem = load(spec.q.dtype, f"q[qb + {offset_expr(['row', 'c'], (qs, qd))}]")
    k_elem = load(spec.k.dtype, f"k[kb + {offset_expr(['j', 'c'], (ks, kd))}]")
    v_elem = load(spec.v.dtype, f"v[vb + {offset_expr(['key', 'c'], (vs, vd))}]")
    L = [f"__shared__ float qsh[{spec.rpb}][{max(spec.d, 1)}];",
         "const int lane = threadIdx.x, w = threadIdx.y;",
         f"const {I} row = ({I})blockIdx.x * {spec.rpb} + w;",
         f"const bool active = row < {spec.sq};"]
    L += setup
    L += [f"for (int c = lane; c < {spec.d}; c += 32)",
          f"    qsh[w][c] = active ? {q_elem} * {c_float(spec.scale)} : 0.0f;",
          "__syncthreads();",
          "float m = -GO_INF, l = 0.0f;",
          f"float acc[{DVL}];",
          "#pragma unroll",
          f"for (int t = 0; t < {DVL}; ++t) acc[t] = 0.0f;",
          f"for ({I} j0 = 0; j0 < {spec.sk}; j0 += 32) {{"]
    mask = " && j <= row" if spec.causal else ""
    body = [f"const {I} j = j0 + lane;",
            "float s = -GO_INF;",
            f"if (active && j < {spec.sk}{mask}) {{",
            "    float dot = 0.0f;",
            f"    for (int c = 0; c < {spec.d}; ++c) dot = fmaf(qsh[w][c], {k_elem}, dot);"]
    if spec.bias is not None:
        b_elem = load(spec.bias.dtype, f"bias[bb + {offset_expr(['row', 'j'], st['bias'])}]")
        body.append(f"    dot += {b_elem};")
    body += ["    s = dot;", "}",
             "const float mn = fmaxf(m, go_warp_max(s));",
             "const float corr = (mn == -GO_INF) ? 1.0f : expf(m - mn);",  # nothing seen yet: nothing to rescale
             "const float p = (s == -GO_INF) ? 0.0f : expf(s - mn);",
             "l = l * corr + go_warp_sum(p);",
             "#pragma unroll",
             f"for (int t = 0; t < {DVL}; ++t) acc[t] *= corr;",
             f"const int nk = {spec.sk} - j0 < 32 ? (int)({spec.sk} - j0) : 32;  // the same for the whole block",
             "for (int jj = 0; jj < nk; ++jj) {",
             "    const float pj = __shfl_sync(0xffffffffu, p, jj);",
             "    if (active) {",
             f"        const {I} key = j0 + jj;",
             "        #pragma unroll",
             f"        for (int t = 0; t < {DVL}; ++t) {{",
             "            const int c = lane + 32 * t;",
             f"            if (c < {spec.dv}) acc[t] = fmaf(pj, {v_elem}, acc[t]);",
             "        }",
             "    }",
             "}",
             "m = mn;"]
    L += ["    " + s for s in body]
    L += ["}",
          "if (active) {",
          "    const float inv = 1.0f / l;",
          "    #pragma unroll",
          f"    for (int t = 0; t < {DVL}; ++t) {{",
          "        const int c = lane + 32 * t;",
          f"        if (c < {spec.dv}) y[ob + {offset_expr(['row', 'c'], (os_, od))}] = "
          f"{store(spec.out.dtype, 'acc[t] * inv')};",
          "    }",
          "}"]
    src = kernel_source(name, 32 * spec.rpb, params, L,
                        f"attention {list(spec.batch)} x {spec.sq}x{spec.sk}, d {spec.d}/{spec.dv}, "
                        f"{'causal, ' if spec.causal else ''}{'bias, ' if spec.bias else ''}one warp per query row")
    dts = [v.dtype for v in (spec.q, spec.k, spec.v, spec.out, spec.bias) if v is not None]
    return Kernel(name, src, tuple(params), reduce_helpers({"max", "sum"}, False) + half_helpers(*dts), True, spec)
