"""merge_parallel_matmuls: Q/K/V (and gate/up) projections of one input become one MatMul
(+ one bias Add) and a Split; outputs equal the unmerged graph's on the reference
(rtol 1e-4 / atol 1e-5: a wider GEMM may sum in another order)."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

from pass_helpers import ops

RNG = np.random.default_rng(0)


def W(*shape):
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def merge(g, **ctx):
    return run_passes(g, ["merge_parallel_matmuls", "eliminate_dead_code"], fixed_point=False, **ctx).records[0]


def qkv(opset=17, bias=(True, True, True), widths=(8, 4, 4)):
    b = GraphBuilder(opset=opset)
    x = b.input("x", ("batch", "seq", 8))
    for name, n, has_bias in zip("qkv", widths, bias):
        y = b.op("MatMul", x, W(8, n))
        b.output(b.op("Add", y, W(n)) if has_bias else y, name)
    return b.graph


def test_qkv_with_biases_becomes_one_matmul_add_split():
    g = qkv()
    g0 = g.clone()
    rec = merge(g)
    assert rec.stats == {"parallel_matmuls_to_matmul_split": 1, "matmuls_merged": 3}
    assert ops(g) == ["MatMul", "Add", "Split"]
    mm, add, split = g.nodes
    assert mm.input(1).const.shape == (8, 16) and add.input(1).const.shape == (16,)
    assert split.input(1).const.tolist() == [8, 4, 4] and split.attrs["axis"] == -1
    assert [v.name for v in g.outputs] == ["q", "k", "v"] and [v.shape for v in g.outputs] == [
        ("batch", "seq", 8), ("batch", "seq", 4), ("batch", "seq", 4)]
    assert_same_outputs(g0, g, batch=3)


def test_opset_11_writes_split_as_an_attribute_and_bias_groups_apart():
    g = qkv(opset=11, bias=(True, True, False))
    g0 = g.clone()
    merge(g)
    assert sorted(ops(g)) == ["Add", "MatMul", "MatMul", "Split"]  # q and k merged, v alone
    split = next(n for n in g if n.op_type == "Split")
    assert split.attrs["split"] == [8, 4] and len(split.inputs) == 1
    assert_same_outputs(g0, g)


def test_shared_weight_and_different_inputs_are_left():
    b = GraphBuilder(opset=17)
    x, z = b.input("x", (2, 8)), b.input("z", (2, 8))
    w = b.const(W(8, 4), "w")
    b.output(b.op("MatMul", x, w), "a")
    b.output(b.op("MatMul", x, W(8, 4)), "b")
    b.output(b.op("MatMul", z, w), "c")  # w is read twice: merging would copy it
    b.output(b.op("MatMul", z, W(8, 4)), "d")
    rec = merge(b.graph)
    assert not rec.modified and ops(b.graph) == ["MatMul"] * 4
    assert {why for _, why in rec.refused} == {"weight is shared: merging would copy it"}
