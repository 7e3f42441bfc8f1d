"""Normalizations and the softmax family against onnx's reference (ORT where noted)."""
import numpy as np
import pytest
from op_oracle import check_op, rand

from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.plugins.cpu import run_reference


@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (2, 3), (1, 3, 6)])
def test_batch_normalization(xs):
    c = xs[1]
    var = rand(c, seed=4, lo=0.1, hi=2.0)
    check_op("BatchNormalization", [rand(*xs), rand(c, seed=1), rand(c, seed=2), rand(c, seed=3), var],
             {"epsilon": 1e-3})


def test_batch_normalization_opset9_and_float64():
    args = [rand(2, 3, 4, dtype=np.float64)] + [rand(3, seed=s, dtype=np.float64, lo=0.5) for s in range(1, 5)]
    check_op("BatchNormalization", args, opset=9, oracle="ort")  # the reference's opset-9 form is off


def test_batch_normalization_training_mode_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", (1, 2, 3))
    ps = [b.const(np.ones(2, np.float32)) for _ in range(4)]
    b.output(b.op("BatchNormalization", x, *ps, training_mode=1), "y")
    with pytest.raises(UnsupportedOpError, match="training_mode=1"):
        run_reference(b.graph, {"x": np.zeros((1, 2, 3), np.float32)})


@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (1, 2, 7)])
def test_instance_normalization(xs):
    c = xs[1]
    check_op("InstanceNormalization", [rand(*xs), rand(c, seed=1), rand(c, seed=2)], {"epsilon": 1e-4})


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(axis, with_bias):
    xs = (2, 3, 4)
    norm_shape = xs[axis:] if axis >= 0 else xs[len(xs) + axis:]
    inputs = [rand(*xs), rand(*norm_shape, seed=1)] + ([rand(*norm_shape, seed=2)] if with_bias else [])
    check_op("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, n_outputs=3)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_layer_normalization_statistics_are_stash_type(dtype):
    # Mean and InvStdDev come in stash_type (float32) whatever X is, as ORT does (the reference keeps X's)
    check_op("LayerNormalization", [rand(2, 3, 4, dtype=dtype), rand(4, seed=1, dtype=dtype)], n_outputs=3,
             oracle="ort")


def test_layer_normalization_symbolic_batch():
    check_op("LayerNormalization", [rand(2, 5, 8), rand(8, seed=1)], n_outputs=3, consts={1},
             in_shapes={0: ("B", "S", 8)}, expect_shapes=[("B", "S", 8), ("B", "S", 1), ("B", "S", 1)])


@pytest.mark.parametrize("opset,scale_len", [(18, 2), (21, 4)])
def test_group_normalization(opset, scale_len):
    x = rand(2, 4, 3, 3)
    check_op("GroupNormalization", [x, rand(scale_len, seed=1), rand(scale_len, seed=2)], {"num_groups": 2},
             opset=opset)


@pytest.mark.parametrize("p,axis", [(2, -1), (2, 0), (1, 1)])
def test_lp_normalization(p, axis):
    # positive data: the reference's p=1 norm forgets the absolute value
    x = rand(3, 4, lo=0.1, hi=1.0)
    x[1] = 0  # zero rows give 0, not NaN
    check_op("LpNormalization", [x], {"p": p, "axis": axis})


def test_lp_normalization_p1_takes_absolute_values_as_ort():
    check_op("LpNormalization", [rand(3, 4)], {"p": 1, "axis": -1}, oracle="ort")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, -2])
def test_softmax_family_opset13(op, axis):
    attrs = {} if axis is None else {"axis": axis}
    x = rand(2, 3, 4)
    x[0, 1, 2] = x[0, 1, 3]  # a tie for Hardmax: the first one wins
    check_op(op, [x], attrs, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 2, -1])
def test_softmax_family_opset11_coerces_to_2d(op, axis):
    # before opset 13 the input is flattened to 2-D at axis (default 1): the reference lacks that form
    attrs = {} if axis is None else {"axis": axis}
    check_op(op, [rand(2, 3, 4)], attrs, opset=11, oracle="ort")


def test_softmax_keeps_types():
    check_op("Softmax", [rand(2, 5, dtype=np.float16)], opset=13)
    check_op("Softmax", [rand(2, 5)], in_shapes={0: ("N", 5)}, expect_shapes=[("N", 5)])


def test_lrn():
    # the reference sums a shifted channel window; ORT follows the spec
    check_op("LRN", [rand(2, 5, 3, 3)], {"size": 3, "alpha": 1e-2, "beta": 0.5, "bias": 2.0}, oracle="ort")
    check_op("LRN", [rand(1, 6, 2, 2)], {"size": 5}, oracle="ort")


def test_kernel_errors_name_the_node():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output(b.op("LayerNormalization", x, b.const(np.ones(3, np.float32)), axis=5, name="ln"), "y")
    with pytest.raises(GraphoptError, match="ln"):
        run_reference(b.graph, {"x": np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family_of_an_empty_tensor_is_empty(op):
    got = check_op(op, [np.zeros((0, 3), np.float32)], {"axis": 0}, oracle="ort")
    assert got[0].shape == (0, 3)
