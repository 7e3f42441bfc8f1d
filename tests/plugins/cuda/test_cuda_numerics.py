"""Numerics of fused CUDA kernels on cuda-emu against the CPU reference.

* A Cast to a narrower float inside a fused elementwise kernel rounds as that type does
  (``Cast(float32->float16) -> Cast(float16->float32)`` is not the identity);
* a differential test: random graphs of pointwise, broadcast, cast, reduction, softmax,
  layer-norm, matmul and data-movement ops, compiled at -O0 (one kernel per node) and
  -O2 (elementwise, row-reduce and epilogue fusion), against the CPU reference at -O0.
Every graph of the module is built in one ``kernel_batch`` (one host compile).
"""
import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch

pytestmark = needs_emu

# float32 per op is rtol 1e-4 / atol 1e-5; a random chain of up to a dozen ops (with a float16
# round trip that can flip one half ulp under reassociation) is held to 1e-4 / 1e-4
DIFF_TOL = dict(rtol=1e-4, atol=1e-4)


def _cast_roundtrip(narrow: int):
    """x -> Cast(narrow) -> Cast(float32) -> Mul(1.0): a chain fuse_elementwise makes one kernel."""
    b = GraphBuilder()
    x = b.input("x", (5, 67))
    y = b.op("Cast", b.op("Cast", x, to=narrow), to=1)
    b.output(b.op("Mul", y, np.float32(1.0)), "y")
    return b.graph


@pytest.mark.parametrize("narrow,np_narrow", [(10, np.float16), (16, "bfloat16")], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("level", [0, 2])
def test_cast_through_a_narrower_float_rounds_inside_a_fused_kernel(narrow, np_narrow, level):
    if np_narrow == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        np_narrow = ml_dtypes.bfloat16
    g = _cast_roundtrip(narrow)
    x = np.random.default_rng(0).standard_normal((5, 67)).astype(np.float32) * 3
    m = graphopt.compile(g, backend="cuda-emu", level=level)
    if level == 2:  # the two Casts and the Mul are one fused kernel
        assert m.stats["launches"] == 1 and m.stats["kernels"] == 1, m.stats
    got, = m(x)
    want = x.astype(np_narrow).astype(np.float32)
    assert not np.array_equal(want, x)  # the round trip does change these values
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, run_reference(g, {"x": x})[0])


# -- differential: random graphs -------------------------------------------------------------------

B, N = 6, 37
UNARY = ["Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Floor", "Erf", "Softsign", "HardSigmoid", "LeakyRelu",
         "Elu", "Gelu"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


def _random_graph(seed: int):
    """A random DAG over (B, N) tensors (and (1, N), (B, 1) broadcasts); bounded values."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=20)
    pool = [b.input("x0", (B, N)), b.input("x1", (B, N)), b.input("r", (1, N))]
    col = b.input("c", (B, 1))
    for _ in range(int(rng.integers(6, 13))):
        pick = lambda: pool[int(rng.integers(len(pool)))]  # noqa: E731
        kind = rng.choice(["unary", "binary", "binary", "div", "cast", "where", "row", "matmul", "move"])
        if kind == "unary":
            op = str(rng.choice(UNARY))
            v = b.op(op, pick())
        elif kind == "binary":
            v = b.op(str(rng.choice(BINARY)), pick(), pick() if rng.random() < 0.7 else col)
        elif kind == "div":  # a denominator kept away from zero
            v = b.op("Div", pick(), b.op("Add", b.op("Abs", pick()), np.float32(1.0)))
        elif kind == "cast":
            narrow = int(rng.choice([10, 16]))
            v = b.op("Cast", b.op("Cast", pick(), to=narrow), to=1)
        elif kind == "where":
            v = b.op("Where", b.op("Greater", pick(), pick()), pick(), pick())
        elif kind == "row":
            x = pick()
            op = str(rng.choice(["Softmax", "LayerNormalization", "ReduceMean", "ReduceMax"]))
            if op == "LayerNormalization":
                v = b.op(op, x, rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32),
                         axis=-1)
            elif op == "Softmax":
                v = b.op(op, b.op("Mul", x, np.float32(2.0)), axis=-1)
            else:
                v = b.op(op, x, np.array([-1], np.int64), keepdims=1)  # (B, 1): broadcasts back
        elif kind == "matmul":
            w = (rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
            v = b.op("MatMul", pick(), w)
        else:
            x = pick()
            if x.type.shape != (B, N):
                continue
            t = b.op("Transpose", x, perm=[1, 0])
            v = b.op("Transpose", b.op("Mul", t, np.float32(0.5)), perm=[1, 0])
        pool.append(v)
    outs = pool[4:] if len(pool) > 4 else pool[-1:]
    b.output(pool[-1], "y")
    if len(outs) > 2:  # an intermediate read outside too: fusion must keep it
        b.output(outs[len(outs) // 2], "mid")
    feeds = {n: np.random.default_rng(seed + 1000 + i).standard_normal(v.type.shape).astype(np.float32)
             for i, (n, v) in enumerate((v.name, v) for v in b.graph.inputs)}
    return b.graph, feeds


SEEDS = list(range(10))


@pytest.fixture(scope="module")
def differential():
    out = {}
    with kernel_batch():
        for seed in SEEDS:
            g, feeds = _random_graph(seed)
            want = run_reference(g, feeds)
            for level in (0, 2):
                out[seed, level] = (graphopt.compile(g, backend="cuda-emu", level=level), feeds, want, g)
    return out


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_matches_the_cpu_reference(differential, seed, level):
    m, feeds, want, g = differential[seed, level]
    got = m.run(feeds)
    assert len(got) == len(want)
    for v, a, r in zip(g.outputs, got, want):
        assert a.shape == r.shape and a.dtype == r.dtype, v.name
        np.testing.assert_allclose(a, r, **DIFF_TOL, err_msg=f"seed {seed} -O{level}: output {v.name}")


def test_fusion_happened_in_the_differential_graphs(differential):
    """-O2 launches fewer kernels than -O0 over the set: the fused paths are what is compared."""
    o0 = sum(differential[s, 0][0].stats["launches"] for s in SEEDS)
    o2 = sum(differential[s, 2][0].stats["launches"] for s in SEEDS)
    assert o2 < o0 * 0.8, (o0, o2)
