"""FusedRowReduce on cuda-emu vs the CPU reference: one row kernel per node, the prologue
evaluated as the row is loaded and the epilogue as it is stored. Row lengths 1, 3, 31, 33,
1000 (not multiples of the warp or block) and 1500 (a block per row), prologue inputs broadcast
over rows and columns, extra outputs, several epilogue results, keepdims, float16; the
fuse_row_reduce output of a BERT-style encoder; an nvcc sm_90 check of every kernel."""
import numpy as np
import pytest

from cuda_harness import assert_ptxas_clean, needs_emu, needs_nvcc
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.testing import run_passes, tolerance_for

pytestmark = needs_emu
GRAPHS = {}


def case(name):
    def deco(fn):
        GRAPHS[name] = fn
        return fn

    return deco


def rnd(*shape, seed=0, dtype="float32", scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def row(b, *inputs, **attrs):
    n = attrs.pop("num_outputs", 1)
    return b.op("FusedRowReduce", *inputs, domain="ai.graphopt", num_outputs=n, **attrs)


def _lengths_case(kind, dtype="float32", **attrs):
    """One node per row length; the prologue adds a per-column bias and a per-row scale."""
    def build():
        b = GraphBuilder()
        feeds = {}
        for k, n in enumerate((1, 3, 31, 33, 1000, 1500)):
            x = b.input(f"x{n}", (2, 3, n), dtype)
            s = b.input(f"s{n}", (2, 3, 1), dtype)  # broadcast along the row
            bias = rnd(n, seed=k, dtype=dtype)       # broadcast over the rows (a constant input)
            own = [rnd(n, seed=10 + k, dtype=dtype), rnd(n, seed=20 + k, dtype=dtype)] if kind == "layernorm" else []
            y = row(b, *own, x, bias, s, kind=kind, prologue="mul(add(in0, in1), in2)", **attrs)
            b.output(y, f"y{n}")
            feeds[f"x{n}"] = rnd(2, 3, n, seed=30 + k, dtype=dtype, scale=2.0)
            feeds[f"s{n}"] = np.abs(rnd(2, 3, 1, seed=40 + k, dtype=dtype)) + np.asarray(0.5, dtype)
        return b.graph, feeds

    return build


for _kind in ("softmax", "log_softmax", "layernorm", "reduce_mean", "reduce_sum", "reduce_max"):
    case(f"{_kind}-lengths")(_lengths_case(_kind))
case("softmax-lengths-float16")(_lengths_case("softmax", "float16"))
case("layernorm-lengths-float16")(_lengths_case("layernorm", "float16", epsilon=1e-3))
case("reduce_mean-lengths-no-keepdims")(_lengths_case("reduce_mean", keepdims=0))


@case("masked-softmax-epilogue")
def masked_softmax():
    # attention scores: scale, a key mask broadcast over heads and queries, then x 2 + residual
    b = GraphBuilder()
    s = b.input("s", (2, 4, 5, 33))
    m = b.input("m", (2, 1, 1, 33))
    r = b.input("r", (4, 1, 33))  # an epilogue operand broadcast over batch and queries
    b.output(row(b, s, m, r, kind="softmax", prologue="add(mul(in0, 0.125), in1)",
                 epilogue="add(mul(acc, 2.0), in3)"), "y")
    mask = np.where(np.random.default_rng(1).random((2, 1, 1, 33)) < 0.3, -1e4, 0).astype(np.float32)
    return b.graph, {"s": rnd(2, 4, 5, 33, seed=2, scale=3.0), "m": mask, "r": rnd(4, 1, 33, seed=3)}


@case("residual-layernorm-extra-output")
def residual_layernorm():
    # pre-LN residual: h = x + f is normalized and written out (the next residual)
    b = GraphBuilder()
    x, f = b.input("x", (3, 7, 64)), b.input("f", (3, 7, 64))
    ln, h = row(b, rnd(64, seed=1) + 1, rnd(64, seed=2), x, f, kind="layernorm", epsilon=1e-6,
                prologue="t0 = add(in0, in1); t0, t0", num_outputs=2)
    b.output(ln, "ln")
    b.output(h, "h")
    return b.graph, {"x": rnd(3, 7, 64, seed=3), "f": rnd(3, 7, 64, seed=4)}


@case("layernorm-no-bias-several-results")
def layernorm_results():
    b = GraphBuilder()
    x = b.input("x", (5, 40))
    outs = row(b, np.full((1,), 0.5, np.float32), None, x, kind="layernorm", prologue="tanh(in0), exp(in0)",
               epilogue="acc, relu(acc)", num_outputs=3)
    for k, o in enumerate(outs):
        b.output(o, f"o{k}")
    return b.graph, {"x": rnd(5, 40, seed=5)}


@case("reduce-epilogue-operands")
def reduce_epilogue():
    # rms-style: sqrt(mean(x*x) + eps) * g[row]; a keepdims result with a per-row epilogue operand
    b = GraphBuilder()
    x, g = b.input("x", (6, 1, 77)), b.input("g", (6, 1, 1))
    b.output(row(b, x, g, kind="reduce_mean", prologue="mul(in0, in0)", epilogue="mul(sqrt(add(acc, 1e-05)), in2)"),
             "y")
    b.output(row(b, x, g, kind="reduce_max", keepdims=0, prologue="abs(in0)", epilogue="acc, neg(acc)",
                 num_outputs=2)[1], "z")
    return b.graph, {"x": rnd(6, 1, 77, seed=6), "g": rnd(6, 1, 1, seed=7)}


def _bert():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from samples.models import load_graph

    g = load_graph("bert_style", level=2)
    run_passes(g, ["fuse_attention", "fuse_elementwise", "fuse_row_reduce", "fuse_conv_epilogue"])
    return g


@pytest.fixture(scope="module")
def compiled():
    """Every case compiled inside one batch: a single host compile for the module."""
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name, build in GRAPHS.items():
            g, feeds = build()
            out[name] = (g, feeds, be.compile(g))
    return out


def check(g, feeds, exe):
    got = exe.run(feeds)
    want = run_reference(g, feeds)
    for v, a, r in zip(g.outputs, got, want):
        assert a.shape == r.shape and a.dtype == r.dtype, v.name
        rtol, atol = tolerance_for(r.dtype)
        if r.dtype == np.float16:  # the kernel computes in float32 and rounds once; the reference per op
            rtol, atol = 4e-3, 4e-3
        np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=rtol, atol=atol,
                                   err_msg=v.name)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_fused_row_kernel_matches_cpu_reference(compiled, name):
    g, feeds, exe = compiled[name]
    n_nodes = sum(n.op_type == "FusedRowReduce" for n in g)
    assert len(exe.lowered.launches) == n_nodes  # one kernel per FusedRowReduce
    check(g, feeds, exe)


def test_bert_after_fuse_row_reduce_matches_cpu_reference():
    g = _bert()
    assert sum(n.op_type == "FusedRowReduce" for n in g) == 5
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 1000, (2, 16)).astype(np.int64),
             "attention_mask": np.ones((2, 16), np.int64)}
    feeds["attention_mask"][1, 12:] = 0
    exe = get_backend("cuda-emu").compile(g)
    got, = exe.run(feeds)
    want, = run_reference(g, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # a whole encoder: reassociation adds up


def test_unsupported_rows_are_refused_with_a_reason():
    from graphopt.plugins.cuda.lower import why_unsupported

    b = GraphBuilder()
    x = b.input("x", (2, 3), "float64")
    y = row(b, x, kind="softmax", prologue="in0")
    b.output(y, "y")
    assert "float64 rows" in why_unsupported(y.producer)


def test_backend_pipeline_runs_fuse_row_reduce_after_fuse_elementwise():
    from graphopt.passmanager import PassContext

    names = get_backend("cuda-emu").lowering_pipeline(PassContext(level=2))
    if "fuse_row_reduce" not in names:
        pytest.skip("plugins/cuda/backend.py PASS_OPS does not list fuse_row_reduce yet")
    assert names.index("fuse_elementwise") < names.index("fuse_row_reduce")


@needs_nvcc
def test_every_fused_row_kernel_compiles_for_sm90(compiled):
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    kernels = list({k.name: k for _, _, exe in compiled.values() for k in exe.lowered.kernels}.values())
    assert_ptxas_clean(nvcc_check(kernels), kernels, max_registers=64)
