"""lower_batchnorm: an unfolded BatchNormalization becomes a per-channel Mul and Add (and, in
the CPU backend's pipeline, part of the elementwise group around it); refusals name the node."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes
from pass_helpers import ops, refusals

RNG = np.random.default_rng(3)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(c, dtype=np.float32):
    return tuple(a.astype(dtype) for a in (RNG.uniform(0.5, 2, c), rand(c), rand(c), RNG.uniform(0.2, 2, c)))


@pytest.mark.parametrize("shape,dtype", [((2, 4, 5, 5), np.float32), ((1, 3, 7), np.float32), ((3, 6), np.float32),
                                         ((1, 4, 3, 3), np.float64), ((1, 2, 4, 4), np.float16)])
def test_batchnorm_becomes_mul_add_with_the_same_numbers(shape, dtype):
    # DenseNet's pre-activation: BN -> Mul -> Add -> Relu after a Concat, nothing to fold into
    b = GraphBuilder()
    dt = np.dtype(dtype).name
    x = b.input("x", shape, dt)
    c = shape[1]
    y = b.op("BatchNormalization", b.op("Concat", x, x, axis=0), *bn_params(c, dtype), epsilon=1e-3)
    tail = (1,) * (len(shape) - 2)
    y = b.op("Relu", b.op("Add", b.op("Mul", y, rand(c, *tail).astype(dtype)), rand(c, *tail).astype(dtype)))
    b.output(y, "y")
    before = b.graph.clone()
    rec = run_passes(b.graph, ["lower_batchnorm"], fixed_point=False).records[0]
    assert rec.modified and "BatchNormalization" not in ops(b.graph)
    assert ops(b.graph).count("Mul") == 2 and ops(b.graph).count("Add") == 2
    tol = {"float16": dict(rtol=2e-3, atol=2e-3), "float32": dict(rtol=1e-5, atol=1e-5)}.get(dt, dict(rtol=1e-12))
    assert_same_outputs(before, b.graph, **tol)
    run_passes(b.graph, ["fuse_elementwise"], fixed_point=False)  # ... and then one pass over memory
    assert ops(b.graph) == ["Concat", "FusedElementwise"]
    assert_same_outputs(before, b.graph, **tol)


def test_the_cpu_backend_runs_it_before_fusing_elementwise():
    from graphopt.plugins.cpu import CpuBackend
    import graphopt

    b = GraphBuilder()
    x = b.input("x", (1, 4, 6, 6))
    b.output(b.op("Relu", b.op("BatchNormalization", b.op("Sigmoid", x), *bn_params(4))), "y")
    ctx = type("Ctx", (), {"level": 2})()
    assert CpuBackend().lowering_pipeline(ctx).index("lower_batchnorm") < \
        CpuBackend().lowering_pipeline(ctx).index("fuse_elementwise")
    model = graphopt.compile(b.graph.clone(), backend="cpu", level=2)
    assert [n.op_type for n in model.graph] == ["FusedElementwise"]
    feeds = {"x": rand(1, 4, 6, 6)}
    np.testing.assert_allclose(model.run(feeds)[0], graphopt.compile(b.graph, backend="cpu", level=0).run(feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_refusals_name_the_node():
    def training(b):
        x = b.input("x", (2, 3, 4, 4))
        return b.op("BatchNormalization", x, *bn_params(3), training_mode=1, num_outputs=3)[0]

    def runtime_stats(b):
        x, m = b.input("x", (2, 3, 4, 4)), b.input("m", (3,))
        s, bb, _, v = bn_params(3)
        return b.op("BatchNormalization", x, s, bb, m, v)

    assert any("training mode" in why for why in refusals(training, ["lower_batchnorm"]))
    assert any("parameters not constant" in why for why in refusals(runtime_stats, ["lower_batchnorm"]))
