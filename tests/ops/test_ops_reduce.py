"""Reductions and ArgMax/ArgMin against onnx's reference, in both the attribute and the input form of axes."""
import numpy as np
import pytest
from op_oracle import check_op, rand

I64 = np.int64
REDUCES = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def _axes_input_opset(op):
    return 13 if op == "ReduceSum" else 18


def _data(op):
    # positive data where a log is taken of the sum
    return rand(2, 3, 4, lo=0.1, hi=1.0) if op == "ReduceLogSum" else rand(2, 3, 4)


@pytest.mark.parametrize("op", REDUCES)
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, -1], 0), (None, 1), (None, 0), ([-2], 0)])
def test_reduce_axes_as_input(op, axes, keepdims):
    inputs = [_data(op)] + ([] if axes is None else [np.array(axes, I64)])
    check_op(op, inputs, {"keepdims": keepdims}, opset=_axes_input_opset(op))


@pytest.mark.parametrize("op", REDUCES)
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), (None, 0)])
def test_reduce_axes_as_attribute(op, axes, keepdims):
    attrs = {"keepdims": keepdims} if axes is None else {"axes": axes, "keepdims": keepdims}
    check_op(op, [_data(op)], attrs, opset=11 if op == "ReduceSum" else 13)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"])
def test_reduce_noop_with_empty_axes(op):
    # nothing is reduced, but the pointwise part (abs, square, log) still applies
    opset = _axes_input_opset(op)
    check_op(op, [rand(2, 3)], {"noop_with_empty_axes": 1}, opset=opset)
    check_op(op, [rand(2, 3), np.array([], I64)], {"noop_with_empty_axes": 1}, opset=opset)
    check_op(op, [rand(2, 3), np.array([], I64)], {"noop_with_empty_axes": 0}, opset=opset)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
def test_reduce_integers(op):
    x = (np.arange(24).reshape(2, 3, 4) % 7 - 3).astype(np.int32)
    check_op(op, [x, np.array([1], I64)], opset=_axes_input_opset(op))


def test_reduce_inference_symbolic_and_unknown_axes():
    x = rand(2, 3, 4)
    check_op("ReduceMean", [x, np.array([-1], I64)], opset=18, in_shapes={0: ("B", "S", 4)},
             expect_shapes=[("B", "S", 1)])
    check_op("ReduceSum", [x, np.array([1], I64)], {"keepdims": 0}, opset=13, in_shapes={0: ("B", "S", 4)},
             expect_shapes=[("B", 4)])
    # axes computed at run time: with keepdims only the rank is known
    check_op("ReduceSum", [x, np.array([1], I64)], opset=13, consts=set(), expect_shapes=[(None, None, None)],
             exact_types=False)


def test_reduce_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1001.0]], np.float32)
    check_op("ReduceLogSumExp", [x, np.array([1], I64)], opset=18)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keepdims,last", [(0, 1, 0), (1, 0, 0), (-1, 1, 1), (2, 0, 1)])
def test_arg_reductions(op, axis, keepdims, last):
    x = np.round(rand(2, 3, 4) * 2)  # many ties, so select_last_index matters
    check_op(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last})


def test_arg_reduction_symbolic():
    check_op("ArgMax", [rand(2, 5)], {"axis": 1, "keepdims": 0}, in_shapes={0: ("B", 5)}, expect_shapes=[("B",)])


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims,select_last_index", [(1, 1), (0, 0)])
def test_arg_of_a_tensor_without_rows_is_empty(op, keepdims, select_last_index):
    got = check_op(op, [np.zeros((0, 0, 1), np.float32)], {"axis": 1, "keepdims": keepdims,
                                                          "select_last_index": select_last_index}, oracle="ort")
    assert got[0].shape == ((0, 1, 1) if keepdims else (0, 1))
