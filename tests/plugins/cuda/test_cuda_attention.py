"""Fused attention (online softmax, one warp per query row) under emulation vs NumPy:
several key chunks with a partial last one, head dims that are not multiples of 32,
heads read from a [B, S, H, D] projection and written as [B, S, H*D], a key-padding
bias broadcast over heads and queries, causal masking, a single query."""
import numpy as np

from cuda_harness import Case, kernel_module_tests
from graphopt.plugins.cuda.attention import make_attention, render_attention
from graphopt.plugins.cuda.scalar import contiguous_strides
from graphopt.plugins.cuda.specs import View

F = "float32"
CASES: list[Case] = []


def np_attention(q, k, v, bias, scale, causal):
    s = np.einsum("...qd,...kd->...qk", q.astype(np.float64), k.astype(np.float64)) * scale
    if bias is not None:
        s = s + bias
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("...qk,...kd->...qd", p / p.sum(-1, keepdims=True), v.astype(np.float64))


def attn_case(cid, B, H, sq, sk, d, dv, *, bshd=False, key_bias=False, causal=False):
    if bshd:  # q/k/v as [B, S, H, D] buffers, output as [B, S, H*Dv]
        def view(s, dd):
            st = contiguous_strides((B, s, H, dd))
            return View(F, (st[0], st[2], st[1], st[3]))
        qv, kv, vv = view(sq, d), view(sk, d), view(sk, dv)
        ost = contiguous_strides((B, sq, H, dv))
        ov = View(F, (ost[0], ost[2], ost[1], ost[3]))
    else:
        qv = kv = vv = ov = None
    bias = View(F, (sk, 0, 0, 1)) if key_bias else None
    spec = make_attention((B, H), sq, sk, d, dv, q=qv, k=kv, v=vv, out=ov, bias=bias, causal=causal)

    def make(rng):
        def t(s, dd):
            return rng.standard_normal((B, s, H, dd) if bshd else (B, H, s, dd)).astype(np.float32)
        q, k, v = t(sq, d), t(sk, d), t(sk, dv)
        ins = [q, k, v]
        tr = (lambda a: a.transpose(0, 2, 1, 3)) if bshd else (lambda a: a)
        bias_full = None
        if key_bias:
            mask = np.where(rng.random((B, sk)) < 0.3, -1e4, 0.0).astype(np.float32)
            mask[:, 0] = 0  # every row keeps a key
            ins.append(mask)
            bias_full = mask[:, None, None, :]
        ref = np_attention(tr(q), tr(k), tr(v), bias_full, spec.scale, causal)
        out_shape = (B, sq, H * dv) if bshd else (B, H, sq, dv)
        ref = ref.transpose(0, 2, 1, 3).reshape(out_shape) if bshd else ref
        return out_shape, F, ins, ref.astype(np.float32)

    CASES.append(Case(cid, render_attention(spec), spec, make, 1e-4, 1e-5))


attn_case("small", 1, 2, 5, 5, 8, 8)
attn_case("two-chunks-odd-dims", 2, 2, 6, 45, 20, 36)
attn_case("bshd-layout-key-bias", 2, 3, 7, 9, 16, 16, bshd=True, key_bias=True)
attn_case("causal", 1, 2, 33, 33, 8, 8, causal=True)
attn_case("single-query", 2, 1, 1, 40, 32, 64)

lib, test_attention_matches_numpy, test_every_attention_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=128)
