"""Fused attention under emulation vs NumPy.

float32 (online softmax, one warp per query row): several key chunks with a partial
last one, head dims that are not multiples of 32, heads read from a [B, S, H, D]
projection and written as [B, S, H*D], a key-padding bias broadcast over heads and
queries, causal masking, a single query.

float16/bfloat16 flash attention on tensor cores (mma.sync's portable twin under
emulation), at the input type's tolerance: 1 to 4 warps a block, partial key tiles,
head widths that are not multiples of 16 or 8 (scalar staging, zero padding), 16-byte
staging of BSHD heads, K stored transposed, key-padding, full and float16 biases, causal
with and without an offset (a decoder step over a longer key cache), a row masked at
every key (NaN, as the reference), head width 128 in bfloat16."""
import ml_dtypes
import numpy as np

from cuda_harness import Case, kernel_module_tests
from graphopt.plugins.cuda.attention import make_attention, render_attention
from graphopt.plugins.cuda.flash_attention import FlashTile, make_flash_attention, render_flash_attention
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

NP = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOL = {"float16": (1e-3, 1e-3), "bfloat16": (1.6e-2, 1.6e-2)}


def flash_case(cid, B, H, sq, sk, d, dv, *, dtype="float16", bshd=False, bias=None, causal=False, offset=0,
               tile=None, k_transposed=False, dead_row=False):
    """``bias``: None, "keys" ([B, 1, 1, Sk] float32), "full" ([B, H, Sq, Sk] float32) or "full16"
    (the same in the heads' type)."""
    if bshd:  # q/k/v as [B, S, H, D] buffers, output as [B, S, H*Dv]
        def view(s, dd):
            st = contiguous_strides((B, s, H, dd))
            return View(dtype, (st[0], st[2], st[1], st[3]))
        qv, kv, vv, ov = view(sq, d), view(sk, d), view(sk, dv), view(sq, dv)
    else:
        qv = vv = ov = None
        kv = View(dtype, (H * d * sk, d * sk, 1, sk)) if k_transposed else None  # K^T: [B, H, D, Sk]
    bdt = dtype if bias == "full16" else "float32"
    bview = {None: None, "keys": View("float32", (sk, 0, 0, 1)),
             "full": View(bdt, contiguous_strides((B, H, sq, sk))), "full16": View(bdt, contiguous_strides((B, H, sq, sk)))}[bias]
    spec = make_flash_attention((B, H), sq, sk, d, dv, q=qv, k=kv, v=vv, out=ov, bias=bview, causal=causal,
                                causal_offset=offset, tile=tile, dtype=dtype)
    nt = NP[dtype]

    def make(rng):
        def t(s, dd):
            return rng.standard_normal((B, s, H, dd) if bshd else (B, H, s, dd)).astype(nt)
        q, k, v = t(sq, d), t(sk, d), t(sk, dv)
        tr = (lambda a: a.transpose(0, 2, 1, 3)) if bshd else (lambda a: a)
        kin = np.ascontiguousarray(k.swapaxes(-1, -2)) if k_transposed else k
        ins = [q, kin, v]
        full = None
        if bias == "keys":
            m = np.where(rng.random((B, sk)) < 0.3, -1e4, 0.0).astype(np.float32)
            m[:, 0] = 0
            ins.append(m)
            full = m[:, None, None, :].astype(np.float64)
        elif bias in ("full", "full16"):
            m = (rng.standard_normal((B, H, sq, sk)) * 2).astype(np.float32 if bias == "full" else nt)
            if dead_row:
                m[0, 0, min(1, sq - 1)] = -np.inf
            ins.append(m)
            full = m.astype(np.float64)
        f64 = [tr(a).astype(np.float64) for a in (q, k, v)]
        s = np.einsum("...qd,...kd->...qk", f64[0], f64[1]) * spec.scale
        if full is not None:
            s = s + full
        if causal:
            s = np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + offset, s, -np.inf)
        with np.errstate(invalid="ignore"):
            p = np.exp(s - s.max(-1, keepdims=True))
            ref = np.einsum("...qk,...kd->...qd", p / p.sum(-1, keepdims=True), f64[2])
        out_shape = (B, sq, H * dv) if bshd else (B, H, sq, dv)
        ref = ref.transpose(0, 2, 1, 3).reshape(out_shape) if bshd else ref
        return out_shape, nt, ins, ref.astype(np.float32)

    rtol, atol = TOL[dtype]
    CASES.append(Case(cid, render_flash_attention(spec), spec, make, rtol, atol))


flash_case("flash-bshd-keys-4warps", 1, 2, 64, 64, 64, 64, bshd=True, bias="keys", tile=FlashTile(4, 64))
flash_case("flash-odd-widths", 2, 1, 37, 45, 20, 12)
flash_case("flash-causal-2warps", 1, 2, 70, 70, 32, 32, causal=True, tile=FlashTile(2, 64))
flash_case("flash-causal-offset", 2, 1, 5, 40, 16, 16, causal=True, offset=35)
flash_case("flash-full-bias-k-transposed", 1, 2, 20, 33, 16, 24, bias="full", k_transposed=True)
flash_case("flash-half-bias-dead-row", 1, 1, 9, 17, 8, 8, bias="full16", dead_row=True)
flash_case("flash-bf16-d128", 1, 1, 40, 50, 128, 128, dtype="bfloat16", tile=FlashTile(2, 32))

lib, test_attention_matches_numpy, test_every_attention_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=255)


# -- the Attention op's lowering on cuda-emu vs the CPU reference --------------------------------------

import pytest  # noqa: E402

from cuda_harness import needs_emu  # noqa: E402
from graphopt.builder import GraphBuilder  # noqa: E402
from graphopt.plugin_loader import get_backend  # noqa: E402
from graphopt.plugins.cpu import run_reference  # noqa: E402
from graphopt.plugins.cuda.compile_emu import kernel_batch  # noqa: E402
from graphopt.plugins.cuda.lowerings.attention import causal_offset  # noqa: E402


def _causal(sq, sk, offset, fill):
    return np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + offset, 0, fill).astype(np.float32)


def attention_graph(dtype, *, layout="BHSD", mask=None, k_transposed=0, sq=24, sk=24, h=2, d=16):
    """One ``ai.graphopt::Attention`` node on ``dtype`` heads; ``mask``: None, "keys" (an input
    [B, 1, 1, Sk]) or a constant array."""
    nt = NP[dtype]
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    if layout == "BHSD":
        q, v = b.input("q", (2, h, sq, d), dtype), b.input("v", (2, h, sk, d), dtype)
        k = b.input("k", (2, h, d, sk) if k_transposed else (2, h, sk, d), dtype)
        shapes = {"q": (2, h, sq, d), "k": (2, h, d, sk) if k_transposed else (2, h, sk, d), "v": (2, h, sk, d)}
    else:
        q, k, v = (b.input(n, (2, s, h * d), dtype) for n, s in (("q", sq), ("k", sk), ("v", sk)))
        shapes = {"q": (2, sq, h * d), "k": (2, sk, h * d), "v": (2, sk, h * d)}
    feeds = {n: rng.standard_normal(s).astype(nt) for n, s in shapes.items()}
    ins = [q, k, v]
    if isinstance(mask, str):
        ins.append(b.input("mask", (2, 1, 1, sk), "float32"))
        m = np.where(rng.random((2, 1, 1, sk)) < 0.3, -1e4, 0).astype(np.float32)
        m[..., 0] = 0
        feeds["mask"] = m
    elif mask is not None:
        ins.append(mask)
    attrs = {"scale": 0.25, "layout": layout, "k_transposed": k_transposed,
             "mask_type": "none" if mask is None else "additive"}
    if layout == "BSHD":
        attrs["num_heads"] = h
    b.output(b.op("Attention", *ins, domain="ai.graphopt", **attrs), "y")
    return b.graph, feeds


GRAPH_CASES = {
    "f16-bhsd-k-transposed": ("float16", dict(k_transposed=1, sq=20, sk=33)),
    "f16-bshd-key-mask": ("float16", dict(layout="BSHD", mask="keys", d=32)),
    "f16-causal-inf": ("float16", dict(mask=_causal(24, 24, 0, -np.inf))),
    "f16-causal-finite-offset": ("float16", dict(mask=_causal(4, 30, 26, -1e4)[None, None], sq=4, sk=30)),
    "bf16-bshd-causal": ("bfloat16", dict(layout="BSHD", mask=_causal(24, 24, 0, -1e4), d=64)),
    "bf16-wide-heads-warp-kernel": ("bfloat16", dict(d=160, sq=6, sk=9)),
}


@pytest.fixture(scope="module")
def compiled_graphs():
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name, (dtype, kw) in GRAPH_CASES.items():
            g, feeds = attention_graph(dtype, **kw)
            out[name] = (g, feeds, be.compile(g))
    return out


@needs_emu
@pytest.mark.parametrize("name", list(GRAPH_CASES))
def test_attention_lowering_matches_cpu_reference(compiled_graphs, name):
    g, feeds, exe = compiled_graphs[name]
    dtype = GRAPH_CASES[name][0]
    (got,), (want,) = exe.run(feeds), run_reference(g, feeds)
    assert got.dtype == want.dtype == NP[dtype]
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol, atol=atol, err_msg=name)
    (launch,) = exe.lowered.launches
    wide = name.endswith("warp-kernel")
    assert launch.kernel.name.startswith("go_attn_" if wide else "go_flash_")
    if "causal" in name:  # the constant mask became the causal flag: not read at all
        assert launch.kernel.spec.causal and len(launch.args) == 4


def test_causal_offset_recognizes_only_causal_masks():
    assert causal_offset(_causal(5, 5, 0, -np.inf), 5, 5) == 0
    assert causal_offset(_causal(3, 8, 5, -1e9)[None, None], 3, 8) == 5
    assert causal_offset(_causal(6, 6, -2, -np.inf), 6, 6) == -2  # rows 0-1 see nothing: NaN either way
    assert causal_offset(_causal(6, 6, -2, -1e4), 6, 6) is None  # a finite fill gives those rows uniform weights
    assert causal_offset(_causal(5, 5, 0, -10.0), 5, 5) is None  # too small a fill to vanish after exp
    m = _causal(5, 5, 0, -np.inf)
    m[3, 1] = -np.inf
    assert causal_offset(m, 5, 5) is None  # not causal
    per_head = np.stack([_causal(5, 5, 0, -np.inf), _causal(5, 5, 1, -np.inf)])
    assert causal_offset(per_head, 5, 5) is None  # differs across heads
    assert causal_offset(np.zeros((5, 5), np.float32), 5, 5) is None  # no mask at all: keep it (cheap)
