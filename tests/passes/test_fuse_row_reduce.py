"""fuse_row_reduce: a last-axis Softmax/LogSoftmax/LayerNormalization/ReduceMean/Sum/Max takes in
the pointwise node before it (prologue) and after it (epilogue) as one FusedRowReduce; values read
outside become extra outputs; non-last axes, cycles, shape-changing epilogues and outside values of
another shape are refused; the numbers stay the same."""
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.passmanager import default_pipeline
from graphopt.testing import assert_same_outputs, run_passes

rng = np.random.default_rng(0)


def fuse(g, passes=("fuse_elementwise", "fuse_row_reduce"), **ctx):
    before = g.clone()
    report = run_passes(g, list(passes), **ctx)
    return before, next(r for r in report.records if r.name == "fuse_row_reduce")


def ops(g):
    return Counter(n.op_type for n in g)


def only_fused(g):
    (node,) = [n for n in g if n.op_type == "FusedRowReduce"]
    return node


def test_scaled_masked_softmax_with_a_broadcast_mask_becomes_one_node():
    b = GraphBuilder()
    s = b.input("s", ("n", 4, 8, 8))
    mask = b.input("mask", ("n", 1, 1, 8))  # broadcast over heads and query rows, never across a row
    y = b.op("Softmax", b.op("Add", b.op("Mul", s, np.float32(0.125)), mask), axis=-1)
    b.output(b.op("Mul", y, np.float32(2.0)), "y")
    before, rec = fuse(b.graph)
    assert rec.stats == {"rows_fused": 1, "prologues": 1, "epilogues": 1}
    (node,) = b.graph.nodes
    assert node.qualified_op == "ai.graphopt::FusedRowReduce"
    assert node.attrs["kind"] == "softmax"
    assert node.attrs["prologue"] == "add(mul(in0, 0.125), in1)"
    assert node.attrs["epilogue"] == "mul(acc, 2.0)"
    assert [v.name for v in node.inputs] == ["s", "mask"] and node.output.name == "y"
    assert node.output.type.shape == ("n", 4, 8, 8)
    assert_same_outputs(before, b.graph, batch=2)


def test_residual_add_layernorm_keeps_the_residual_as_an_extra_output():
    # pre-LayerNorm block: h = x + f(x) is normalized and also the next residual
    b = GraphBuilder()
    x = b.input("x", (2, 5, 16))
    f = b.op("MatMul", x, rng.standard_normal((16, 16)).astype(np.float32))
    h = b.op("Add", x, f)
    ln = b.op("LayerNormalization", h, rng.standard_normal(16).astype(np.float32),
              rng.standard_normal(16).astype(np.float32), axis=-1, epsilon=1e-6)
    g = b.op("MatMul", ln, rng.standard_normal((16, 16)).astype(np.float32))
    b.output(b.op("Add", h, g), "y")
    before, rec = fuse(b.graph)
    assert rec.stats == {"rows_fused": 1, "prologues": 1, "epilogues": 0}
    node = only_fused(b.graph)
    assert node.attrs["kind"] == "layernorm" and node.attrs["epsilon"] == pytest.approx(1e-6)
    assert node.attrs["prologue"] == "add(in0, in1), add(in0, in1)"  # x, then x again as the extra output
    assert len(node.outputs) == 2 and node.inputs[0].is_const and node.inputs[1].is_const  # Scale, B first
    assert [n.op_type for n in b.graph] == ["MatMul", "FusedRowReduce", "MatMul", "Add"]
    assert_same_outputs(before, b.graph)


def test_layernorm_without_bias_and_a_fused_elementwise_prologue():
    b = GraphBuilder()
    x, r = b.input("x", (3, 33)), b.input("r", (3, 33))
    t = b.op("Tanh", b.op("Add", b.op("Mul", x, np.float32(0.5)), r))
    b.output(b.op("LayerNormalization", t, np.full((33,), 1.5, np.float32), axis=1), "y")
    before, rec = fuse(b.graph)
    node = only_fused(b.graph)
    assert len(b.graph) == 1 and node.input(1) is None  # the absent B keeps its slot
    assert node.attrs["prologue"] == "tanh(add(mul(in0, 0.5), in1))"
    assert_same_outputs(before, b.graph)


@pytest.mark.parametrize("op,keepdims", [("ReduceMean", 1), ("ReduceSum", 0), ("ReduceMax", 1)])
def test_last_axis_reductions_with_prologue_and_epilogue(op, keepdims):
    b = GraphBuilder(opset=18)
    x = b.input("x", (4, 6, 31))
    sq = b.op("Mul", x, x)
    red = b.op(op, sq, np.array([-1], np.int64), keepdims=keepdims)
    b.output(b.op("Sqrt", b.op("Add", red, np.float32(1e-5))), "y")
    before, rec = fuse(b.graph)
    node = only_fused(b.graph)
    assert len(b.graph) == 1 and node.attrs["keepdims"] == keepdims
    assert node.attrs["kind"] == {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}[op]
    assert node.attrs["epilogue"] == "sqrt(add(acc, 1e-05))"
    assert node.output.type.shape == ((4, 6, 1) if keepdims else (4, 6))
    assert_same_outputs(before, b.graph)


def test_old_opset_reduce_axes_attribute_and_log_softmax():
    b = GraphBuilder(opset=11)
    x = b.input("x", (2, 7))
    m = b.op("ReduceMean", b.op("Abs", x), axes=[1], keepdims=1)
    ls = b.op("LogSoftmax", b.op("Neg", x), axis=1)  # opset < 13: axis 1 of a 2-D input is the last axis
    b.output(m, "m")
    b.output(ls, "ls")
    before, rec = fuse(b.graph)
    assert ops(b.graph) == Counter({"FusedRowReduce": 2}) and rec.stats["rows_fused"] == 2
    assert_same_outputs(before, b.graph)


def test_row_result_read_outside_is_an_output_of_the_epilogue():
    b = GraphBuilder()
    x = b.input("x", (2, 9))
    sm = b.op("Softmax", b.op("Relu", x), axis=-1)
    b.output(b.op("Log", sm), "logp")
    b.output(sm, "p")
    before, rec = fuse(b.graph)
    node = only_fused(b.graph)
    assert node.attrs["epilogue"] == "acc, log(acc)"
    assert [v.name for v in b.graph.outputs] == ["logp", "p"]
    assert_same_outputs(before, b.graph)


def test_a_cast_reader_is_taken_among_several_pointwise_readers():
    # mixed precision: a float32 LayerNorm read by the residual Add and, through a Cast, by a float16 MatMul
    b = GraphBuilder()
    x = b.input("x", (2, 5, 16))
    ln = b.op("LayerNormalization", x, rng.standard_normal(16).astype(np.float32),
              rng.standard_normal(16).astype(np.float32), axis=-1)
    h = b.op("MatMul", b.op("Cast", ln, to=10), rng.standard_normal((16, 16)).astype(np.float16))
    b.output(b.op("Add", ln, b.op("Cast", h, to=1)), "y")
    before, rec = fuse(b.graph)
    node = only_fused(b.graph)
    assert node.attrs["epilogue"] == "acc, cast<float16>(acc)"
    assert [v.dtype for v in node.outputs] == ["float32", "float16"]
    assert not any(n.op_type == "Cast" and n.input(0).producer is node for n in b.graph)
    assert_same_outputs(before, b.graph)


def test_not_the_last_axis_is_refused():
    b = GraphBuilder()
    x = b.input("x", (2, 5, 4))
    b.output(b.op("Softmax", b.op("Exp", x), axis=1), "s")
    b.output(b.op("ReduceSum", b.op("Neg", x), np.array([0, 2], np.int64)), "r")
    b.output(b.op("LayerNormalization", b.op("Relu", x), np.ones((5, 4), np.float32), axis=1), "l")
    _, rec = fuse(b.graph)
    assert not rec.modified and "FusedRowReduce" not in ops(b.graph)
    assert rec.refused == {("fuse_row_reduce", "Softmax over axis 1, not the last"): 1,
                           ("fuse_row_reduce", "ReduceSum over axes [0, 2], not the last only"): 1,
                           ("fuse_row_reduce", "LayerNormalization from axis 1, not the last only"): 1}


def test_outside_value_of_another_shape_keeps_the_prologue_out():
    # the group computes t = 2*b (shape (8,)) read by a MatMul too: the row kernel writes rows
    # of (3, 8), so t cannot be its extra output; the prologue stays a FusedElementwise
    b = GraphBuilder()
    x, bias = b.input("x", (3, 8)), b.input("b", (8,))
    t = b.op("Mul", bias, np.float32(2.0))
    sm = b.op("Softmax", b.op("Add", x, t), axis=-1)
    b.output(b.op("Exp", sm), "y")
    b.output(b.op("MatMul", t, np.ones((8, 2), np.float32)), "m")
    before, rec = fuse(b.graph)
    [(rule, why)] = rec.refused
    assert why.startswith("FusedElementwise value") and why.endswith("is read outside and does not have the row's shape")
    assert rec.stats == {"rows_fused": 1, "prologues": 0, "epilogues": 1}
    assert ops(b.graph) == Counter({"FusedElementwise": 1, "FusedRowReduce": 1, "MatMul": 1})
    assert_same_outputs(before, b.graph)


def test_cycle_through_an_outside_node_is_refused():
    # h feeds the LayerNorm and a MatMul whose result is the LayerNorm's scale
    b = GraphBuilder()
    x = b.input("x", (4,))
    h = b.op("Exp", x)
    w = b.op("MatMul", b.op("Unsqueeze", h, np.array([0], np.int64)), np.ones((4, 4), np.float32))
    scale = b.op("Reshape", w, np.array([4], np.int64))
    b.output(b.op("LayerNormalization", h, scale), "y")
    before, rec = fuse(b.graph)
    assert not rec.modified and "FusedRowReduce" not in ops(b.graph)
    assert rec.refused == {("fuse_row_reduce", "fusing Exp into LayerNormalization would create a cycle "
                                                "through Unsqueeze"): 1}
    assert_same_outputs(before, b.graph)


def test_prologue_that_also_computes_the_scale_is_refused():
    b = GraphBuilder()
    x, g = b.input("x", (2, 8)), b.input("g", (8,))
    f = b.op("FusedElementwise", x, g, domain="ai.graphopt", expr="add(in0, 1.0), exp(in1)", num_outputs=2)
    b.output(b.op("LayerNormalization", f[0], f[1]), "y")
    before, rec = fuse(b.graph, passes=("fuse_row_reduce",))
    assert not rec.modified and ops(b.graph) == Counter({"FusedElementwise": 1, "LayerNormalization": 1})
    assert rec.refused == {("fuse_row_reduce", "LayerNormalization reads a value of FusedElementwise as an "
                                                "operand besides its input"): 1}


def test_epilogue_that_broadcasts_the_result_up_is_refused():
    # x - mean(x): the Sub has the row's shape, not the mean's; it stays its own kernel
    b = GraphBuilder(opset=18)
    x = b.input("x", (3, 10))
    ax = np.array([-1], np.int64)
    mean = b.op("ReduceMean", b.op("Mul", x, np.float32(3.0)), ax, keepdims=1)
    b.output(b.op("Sub", x, mean), "d")
    before, rec = fuse(b.graph)
    assert ("fuse_row_reduce", "Sub after ReduceMean changes the row result's shape") in rec.refused
    assert ops(b.graph) == Counter({"FusedRowReduce": 1, "Sub": 1})
    assert only_fused(b.graph).attrs["epilogue"] == ""
    assert_same_outputs(before, b.graph)


def test_layernorm_with_used_statistics_and_a_bare_row_op_are_left_alone():
    b = GraphBuilder()
    x = b.input("x", (2, 6))
    ln = b.op("LayerNormalization", b.op("Relu", x), np.ones(6, np.float32), num_outputs=2)
    b.output(ln[0], "y")
    b.output(ln[1], "mean")
    b.output(b.op("Softmax", x, axis=-1), "s")
    _, rec = fuse(b.graph, passes=("fuse_row_reduce",))
    assert not rec.modified and ops(b.graph) == Counter({"LayerNormalization": 1, "Relu": 1, "Softmax": 1})
    assert rec.refused == {("fuse_row_reduce", "LayerNormalization Mean/InvStdDev are used"): 1}


def test_second_run_changes_nothing_and_level_1_does_not_fuse():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output(b.op("Softmax", b.op("Exp", x)), "y")
    _, rec = fuse(b.graph, level=1)
    assert not rec.modified and ops(b.graph) == Counter({"Exp": 1, "Softmax": 1})
    fuse(b.graph)
    _, rec = fuse(b.graph)
    assert not rec.modified and ops(b.graph) == Counter({"FusedRowReduce": 1})
    names = [p.name for p in default_pipeline(2, "lowering")]
    assert names.index("fuse_elementwise") < names.index("fuse_row_reduce")
    assert "fuse_row_reduce" not in [p.name for p in default_pipeline(1, "lowering")]


def test_float16_rows_keep_their_dtype():
    b = GraphBuilder()
    x = b.input("x", (4, 40), "float16")
    y = b.op("Softmax", b.op("Mul", x, np.float16(0.5)), axis=-1)
    b.output(b.op("Add", y, np.float16(1.0)), "y")
    before, _ = fuse(b.graph)
    node = only_fused(b.graph)
    assert node.output.dtype == "float16" and node.attrs["prologue"] == "mul(in0, 0.5:float16)"
    assert_same_outputs(before, b.graph)


# -- the samples ---------------------------------------------------------------------------------

# the CUDA backend's lowering pipeline with fuse_row_reduce after fuse_elementwise
PIPELINE = ["fuse_attention", "fuse_conv_epilogue", "fuse_elementwise", "fuse_row_reduce"]


def _bert():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from samples.models import load_graph

    return load_graph("bert_style", level=2)


def test_bert_residual_add_and_layernorm_are_one_node_in_every_layer():
    # without GEMM epilogues each residual Add (with the output projection's bias) joins its LayerNorm
    g = _bert()
    n_ln = ops(g)["LayerNormalization"]
    before, rec = fuse(g, passes=("fuse_attention", "fuse_elementwise", "fuse_row_reduce"))
    fused = [n for n in g if n.op_type == "FusedRowReduce"]
    assert n_ln == 5 and len(fused) == 5 and "LayerNormalization" not in ops(g)
    assert all(n.attrs["kind"] == "layernorm" and n.attrs["prologue"].startswith("add(add(") for n in fused)
    assert not any(n.op_type in ("Add", "FusedElementwise") and any(u.op_type == "FusedRowReduce" for v in n.outputs
                                                                    for u in v.users) for n in g)
    assert_same_outputs(before, g, batch=2)


def test_bert_with_the_backend_pipeline_leaves_no_add_kernel_before_a_layernorm():
    # with GEMM epilogues the residual Add is already in the output projection's FusedMatMul;
    # the embeddings' Add chain (no GEMM there) joins its LayerNorm
    g = _bert()
    before, rec = fuse(g, passes=PIPELINE)
    assert rec.stats == {"rows_fused": 1, "prologues": 1, "epilogues": 0}
    for n in g:
        if n.op_type in ("LayerNormalization", "FusedRowReduce"):
            src = n.inputs[-1] if n.op_type == "FusedRowReduce" else n.input(0)
            assert src.producer is None or src.producer.op_type in ("FusedMatMul", "Gather")
    assert ops(g)["FusedRowReduce"] == 1 and ops(g)["LayerNormalization"] == 4
    assert_same_outputs(before, g, batch=2)
