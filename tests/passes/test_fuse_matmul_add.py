"""fuse_matmul_add: MatMul(2-D a, constant W) + bias becomes Gemm, 2-D Transposes on Gemm
inputs become transA/transB; rank > 2, growing broadcasts, shared MatMuls and
non-constant weights are refused with a reason.

Tolerance: the float32 default (rtol 1e-4 / atol 1e-5): Gemm adds the bias after the
same dot products.
"""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

RNG = np.random.default_rng(0)


def ops(g):
    return [n.op_type for n in g]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def fuse(g, **ctx):
    return run_passes(g, ["fuse_matmul_add", "eliminate_dead_code"], **ctx).records[0]


# (name, build(b) -> y, Gemm attributes expected)
CASES = [
    ("bias_row", lambda b: b.op("Add", b.op("MatMul", b.input("a", ("m", 6)), rand(6, 5)), rand(5)), {}),
    ("bias_first", lambda b: b.op("Add", rand(1, 5), b.op("MatMul", b.input("a", (3, 6)), rand(6, 5))), {}),
    ("bias_matrix", lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5)), rand(3, 5)), {}),
    ("bias_column", lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5)), rand(3, 1)), {}),
    ("bias_scalar", lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5)), np.float32(2)), {}),
    ("residual_input", lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5)),
                                      b.input("r", (3, 5))), {}),
    ("transposed_const_weight", lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)),
                                                           b.op("Transpose", b.const(rand(5, 6), "w"),
                                                                perm=[1, 0])), rand(5)), {"transB": 1}),
    ("transposed_input", lambda b: b.op("Add", b.op("MatMul", b.op("Transpose", b.input("a", (6, 3))), rand(6, 5)),
                                        rand(5)), {"transA": 1}),
]


@pytest.mark.parametrize("name,build,attrs", CASES, ids=[c[0] for c in CASES])
def test_matmul_add_becomes_gemm(name, build, attrs):
    b = GraphBuilder(opset=17)
    b.output(build(b), "y")
    g0 = b.graph.clone()
    rec = fuse(b.graph)
    assert rec.modified and rec.stats["matmul_add_to_gemm"] == 1
    assert ops(b.graph) == ["Gemm"]
    gemm = b.graph.nodes[0]
    assert {k: v for k, v in gemm.attrs.items() if v} == attrs
    assert b.graph.outputs[0].name == "y" and gemm.output.shape == g0.outputs[0].shape
    assert_same_outputs(g0, b.graph)


def test_transposes_on_an_existing_gemm_become_flags():
    b = GraphBuilder(opset=17)
    a = b.op("Transpose", b.input("a", (6, 3)), perm=[1, 0])
    w = b.op("Transpose", b.input("w", (6, 5)))  # default perm reverses: [1, 0] on a matrix
    b.output(b.op("Gemm", a, w, rand(5), transB=1, alpha=0.5), "y")
    g0 = b.graph.clone()
    rec = fuse(b.graph)
    assert rec.stats == {"transpose_gemm_a_to_gemm": 1, "transpose_gemm_b_to_gemm": 1}
    assert ops(b.graph) == ["Gemm"]
    assert b.graph.nodes[0].attrs == {"transA": 1, "transB": 0, "alpha": 0.5}
    assert_same_outputs(g0, b.graph)


def refused(build, *extra_outputs):
    """The refusal reasons for the graph ``build(b)`` (plus ``extra_outputs(b)`` read too)."""
    b = GraphBuilder(opset=17)
    b.output(build(b), "y")
    for k, more in enumerate(extra_outputs):
        b.output(more(b), f"z{k}")
    before = ops(b.graph)
    rec = fuse(b.graph)
    assert not rec.modified and ops(b.graph) == before
    return {why for (_, why) in rec.refused}


def test_bias_that_grows_the_output_is_refused():
    assert refused(lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5)), rand(2, 3, 5))) == {
        "Add operand broadcasts beyond the MatMul output"}


def test_matmul_with_other_users_is_refused():
    def build(b):
        return b.op("Add", b.op("MatMul", b.input("a", (3, 6)), rand(6, 5), name="mm"), rand(5))
    assert refused(build, lambda b: b.op("Relu", b.graph.nodes[0].output)) == {"MatMul 'mm' has 2 users"}


def test_rank_3_input_is_left_to_the_runtime():
    assert refused(lambda b: b.op("Add", b.op("MatMul", b.input("x", ("b", 16, 64)), rand(64, 32)), rand(32))) == {
        "MatMul input is rank 3: Gemm is 2-D"}


def test_weight_not_constant_is_refused():
    assert refused(lambda b: b.op("Add", b.op("MatMul", b.input("a", (3, 6)), b.input("w", (6, 5))),
                                  rand(5))) == {"weight not constant"}


def test_integer_matmul_is_refused():
    def build(b):
        mm = b.op("MatMul", b.input("a", (3, 6), "int32"), np.ones((6, 5), np.int32))
        return b.op("Add", mm, np.ones(5, np.int32))
    assert refused(build) == {"int32 MatMul"}


def conv1d(b, x, k, n, trans_b=False, bias=True, back=None):
    """GPT-2's Conv1D as the TorchScript exporter writes it: x.view(-1, K) -> Gemm -> view back."""
    flat = b.op("Reshape", x, np.array([-1, k], np.int64))
    w = rand(n, k) if trans_b else rand(k, n)
    args = [flat, w] + ([rand(n)] if bias else [])
    y = b.op("Gemm", *args, **({"transB": 1} if trans_b else {}))
    return b.op("Reshape", y, np.array(back or [2, 5, n], np.int64))


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_between_reshapes_becomes_a_3d_matmul(trans_b, bias):
    b = GraphBuilder()
    b.output(conv1d(b, b.input("x", (2, 5, 6)), 6, 4, trans_b=trans_b, bias=bias), "y")
    g0 = b.graph.clone()
    rec = fuse(b.graph)
    assert rec.stats == {"reshaped_gemm_to_matmul_add": 1}
    assert ops(b.graph) == (["MatMul", "Add"] if bias else ["MatMul"])
    assert b.graph.nodes[0].input(0).name == "x"
    assert_same_outputs(g0, b.graph)


def test_merged_heads_keep_one_reshape():
    # attention's output [B, S, H, D] flattened to [B*S, H*D] for c_proj: the heads merge, the rows stay
    b = GraphBuilder()
    b.output(conv1d(b, b.input("x", (2, 5, 3, 2)), 6, 4), "y")
    g0 = b.graph.clone()
    fuse(b.graph)
    assert ops(b.graph) == ["Reshape", "MatMul", "Add"]
    assert b.graph.nodes[0].input(1).const.tolist() == [0, 0, 6]
    assert_same_outputs(g0, b.graph)


def test_gemm_between_reshapes_that_do_not_restore_the_rows_is_left():
    b = GraphBuilder()
    b.output(conv1d(b, b.input("x", (2, 5, 6)), 6, 4, back=[5, 2, 4]), "y")
    rec = fuse(b.graph)
    assert ops(b.graph) == ["Reshape", "Gemm", "Reshape"]
    assert ("reshaped_gemm_to_matmul_add", "the outer Reshape does not restore the leading axes") in rec.refused
