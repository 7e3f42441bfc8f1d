"""Shape and data-movement ops against onnx's reference, plus shape inference with
symbolic dims and shape values computed from Shape."""
import numpy as np
import pytest
from op_oracle import check_op, rand

from graphopt.builder import GraphBuilder
from graphopt.errors import ShapeError
from graphopt.plugins.cpu import run_reference

I64 = np.int64
INT_MAX = np.iinfo(np.int64).max


@pytest.mark.parametrize("xs,shape,allowzero", [
    ((2, 3, 4), [4, -1], 0), ((2, 3, 4), [0, -1], 0), ((2, 3, 4), [0, 0, 2, 2], 0), ((2, 3, 4), [-1], 0),
    ((2, 0, 4), [0, 4], 1), ((2, 3, 4), [2, 12], 1), ((6,), [1, 2, 1, 3], 0)])
def test_reshape(xs, shape, allowzero):
    check_op("Reshape", [rand(*xs), np.array(shape, I64)], {"allowzero": allowzero})


def test_reshape_symbolic():
    x = rand(2, 3, 4)
    check_op("Reshape", [x, np.array([0, 12], I64)], in_shapes={0: ("B", 3, 4)}, expect_shapes=[("B", 12)])
    check_op("Reshape", [x, np.array([-1, 12], I64)], in_shapes={0: ("B", 3, 4)}, expect_shapes=[("B", 12)])
    check_op("Reshape", [x, np.array([0, 0, -1], I64)], in_shapes={0: ("B", "S", 4)},
             expect_shapes=[("B", "S", 4)])
    # a shape computed at run time: only its length is known
    check_op("Reshape", [x, np.array([6, 4], I64)], consts=set(), expect_shapes=[(None, None)], exact_types=False)


def test_reshape_with_a_shape_computed_from_shape_keeps_the_symbolic_batch():
    # y = Reshape(x, Concat(Shape(x)[0:1], [-1])): (B, 3, 4) -> (B, 12)
    b = GraphBuilder(opset=17)
    x = b.input("x", ("B", 3, 4))
    s = b.op("Shape", x)
    first = b.op("Slice", s, np.array([0], I64), np.array([1], I64))
    tgt = b.op("Concat", first, np.array([-1], I64), axis=0)
    y = b.op("Reshape", x, tgt)
    assert y.type.shape == ("B", 12)
    # the same through Gather + Unsqueeze, and Shape's start attribute
    g = b.op("Unsqueeze", b.op("Gather", s, np.array(0, I64)), np.array([0], I64))
    z = b.op("Reshape", x, b.op("Concat", g, b.op("Shape", x, start=-1), np.array([3], I64), axis=0))
    assert z.type.shape == ("B", 4, 3)
    b.output(y, "y")
    b.output(z, "z")
    xv = rand(5, 3, 4)
    got = run_reference(b.graph, {"x": xv})
    np.testing.assert_array_equal(got[0], xv.reshape(5, 12))
    np.testing.assert_array_equal(got[1], xv.reshape(5, 4, 3))


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check_op("Flatten", [rand(2, 3, 4)], {"axis": axis})


def test_flatten_symbolic():
    check_op("Flatten", [rand(2, 8, 1, 1)], in_shapes={0: ("N", 8, 1, 1)}, expect_shapes=[("N", 8)])
    check_op("Flatten", [rand(2, 3, 4)], {"axis": 2}, in_shapes={0: ("N", 3, 4)}, expect_shapes=[(None, 4)])


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1], [1, 2, 0]])
def test_transpose(perm):
    check_op("Transpose", [rand(2, 3, 4)], {} if perm is None else {"perm": perm})


def test_transpose_symbolic():
    check_op("Transpose", [rand(2, 3, 4)], {"perm": [0, 2, 1]}, in_shapes={0: ("B", "S", 4)},
             expect_shapes=[("B", 4, "S")])


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("xs,axes", [((1, 3, 1, 2), [0]), ((1, 3, 1, 2), [-2, 0]), ((1, 3, 1, 2), None)])
def test_squeeze(opset, xs, axes):
    x = rand(*xs)
    if opset < 13:
        check_op("Squeeze", [x], {} if axes is None else {"axes": axes}, opset=opset)
    else:
        check_op("Squeeze", [x] + ([] if axes is None else [np.array(axes, I64)]), opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [-1], [1, 3], [0, -1]])
def test_unsqueeze(opset, axes):
    x = rand(3, 2)
    if opset < 13:
        check_op("Unsqueeze", [x], {"axes": axes}, opset=opset)
    else:
        check_op("Unsqueeze", [x, np.array(axes, I64)], opset=opset)


def test_squeeze_unsqueeze_symbolic():
    check_op("Unsqueeze", [rand(2, 3), np.array([1, -1], I64)], in_shapes={0: ("B", 3)},
             expect_shapes=[("B", 1, 3, 1)])
    check_op("Squeeze", [rand(2, 1, 3), np.array([1], I64)], in_shapes={0: ("B", 1, 3)}, expect_shapes=[("B", 3)])
    # which symbolic dims are 1 is unknown: no axes means no known shape
    check_op("Squeeze", [rand(2, 1, 3)], in_shapes={0: ("B", 1, 3)}, expect_shapes=[None])


def test_squeeze_of_a_dim_that_is_not_one_is_a_shape_error():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    node_out = b.op("Squeeze", x, np.array([0], I64))
    from graphopt.ops.registry import infer_node

    with pytest.raises(ShapeError, match="axis 0 has size 2"):
        infer_node(node_out.producer, strict=True)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    check_op("Concat", [rand(*s, seed=i) for i, s in enumerate(shapes)], {"axis": axis})


def test_concat_uneven_and_symbolic():
    check_op("Concat", [rand(2, 1), rand(2, 3, seed=1)], {"axis": 1})
    check_op("Concat", [rand(2, 1), rand(2, 3, seed=1)], {"axis": 1}, in_shapes={0: ("B", 1), 1: ("B", 3)},
             expect_shapes=[("B", 4)])
    check_op("Concat", [rand(2, 3), rand(4, 3, seed=1)], {"axis": 0}, in_shapes={0: ("B", 3)},
             expect_shapes=[(None, 3)])


@pytest.mark.parametrize("opset,split,n,attrs", [
    (11, [1, 3, 2], 3, {}), (13, [1, 3, 2], 3, {}), (13, None, 3, {}), (11, None, 2, {}),
    (18, None, 4, {"num_outputs": 4}), (18, None, 3, {"num_outputs": 3})])
def test_split(opset, split, n, attrs):
    x = rand(6, 2)
    attrs = dict(attrs)
    inputs = [x]
    if split is not None:
        if opset < 13:
            attrs["split"] = split
        else:
            inputs.append(np.array(split, I64))
    check_op("Split", inputs, attrs, n_outputs=n, opset=opset)


def test_split_negative_axis_uneven_num_outputs():
    check_op("Split", [rand(2, 7)], {"axis": -1, "num_outputs": 3}, n_outputs=3, opset=18)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([0, 1], [2, 3], None, None), ([1], [INT_MAX], [1], None), ([-1], [-INT_MAX], [0], [-1]),
    ([5], [-100], [1], [-2]), ([-3, 0], [100, 4], [0, -1], [2, 3]), ([2], [1], [0], [1]),
    ([10], [0], [0], [-1]), ([0], [-1], [-1], None)])
def test_slice(starts, ends, axes, steps):
    inputs = [rand(4, 6), np.array(starts, I64), np.array(ends, I64)]
    if axes is not None or steps is not None:
        inputs.append(None if axes is None else np.array(axes, I64))
    if steps is not None:
        inputs.append(np.array(steps, I64))
    check_op("Slice", inputs)


def test_slice_opset9_attributes():
    check_op("Slice", [rand(4, 6)], {"starts": [1, -2], "ends": [3, 1000], "axes": [0, 1]}, opset=9)


def test_slice_symbolic():
    x = rand(2, 6)
    check_op("Slice", [x, np.array([1], I64), np.array([3], I64), np.array([1], I64)], in_shapes={0: ("B", 6)},
             expect_shapes=[("B", 2)])
    check_op("Slice", [x, np.array([0], I64), np.array([1], I64), np.array([0], I64)], in_shapes={0: ("B", 6)},
             expect_shapes=[(None, 6)])


@pytest.mark.parametrize("axis,idx", [(0, [0, -1, 2]), (1, [[1, -6], [0, 5]]), (-1, 3), (0, [])])
def test_gather(axis, idx):
    check_op("Gather", [rand(3, 6), np.array(idx, I64).reshape(np.shape(idx))], {"axis": axis})


def test_gather_int32_indices_and_symbolic():
    check_op("Gather", [rand(3, 6), np.array([2, 0], np.int32)], {"axis": 1}, in_shapes={0: ("B", 6)},
             expect_shapes=[("B", 2)])


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"end": -1}, {"start": -2, "end": 10}, {"start": 3, "end": 1}])
def test_shape(attrs):
    check_op("Shape", [rand(2, 3, 4)], attrs, opset=15)


def test_size():
    check_op("Size", [rand(2, 3, 4)])
    check_op("Size", [rand(2, 3)], in_shapes={0: ("B", 3)}, expect_shapes=[()])


@pytest.mark.parametrize("value", [None, np.array([2.5], np.float32), np.array([7], I64), np.array([1], np.int32)])
def test_constant_of_shape(value):
    check_op("ConstantOfShape", [np.array([2, 3], I64)], {} if value is None else {"value": value})


def test_constant_of_shape_from_a_shape_value():
    b = GraphBuilder()
    x = b.input("x", ("B", 3))
    y = b.op("ConstantOfShape", b.op("Shape", x), value=np.array([1.0], np.float32))
    assert y.type.shape == ("B", 3) and y.type.dtype == "float32"


@pytest.mark.parametrize("xs,shape", [((3, 1), [2, 1, 6]), ((3, 1), [3, 4]), ((1,), [2, 3]), ((2, 3), [1, 1]),
                                      ((2, 1, 3), [4, 1])])
def test_expand(xs, shape):
    check_op("Expand", [rand(*xs), np.array(shape, I64)])


def test_expand_symbolic():
    check_op("Expand", [rand(2, 1), np.array([1, 4], I64)], in_shapes={0: ("B", 1)}, expect_shapes=[("B", 4)])


@pytest.mark.parametrize("start,limit,delta", [(0, 5, 1), (3, 10, 3), (10, 4, -2), (5, 5, 1), (5, 1, 1),
                                               (0.5, 2.0, 0.3), (1.0, -1.0, -0.25)])
def test_range(start, limit, delta):
    dt = I64 if isinstance(start, int) else np.float32
    check_op("Range", [np.array(start, dt), np.array(limit, dt), np.array(delta, dt)], consts={0, 1, 2})


def test_range_of_run_time_values_has_unknown_length():
    check_op("Range", [np.array(0.0, np.float32), np.array(2.0, np.float32), np.array(0.5, np.float32)],
             consts=set(), expect_shapes=[(None,)], exact_types=False)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[1, 2, 0, 1], [0, 0, 2, 2], [1, -1, -1, 2]])
def test_pad(mode, pads):
    inputs = [rand(3, 4), np.array(pads, I64)]
    if mode == "constant":
        inputs.append(np.array(1.5, np.float32))
    # the reference hands negative pads (cropping) to np.pad, which refuses them
    check_op("Pad", inputs, {"mode": mode}, consts={1}, oracle="ort" if min(pads) < 0 else "ref")


def test_pad_wrap_and_axes():
    check_op("Pad", [rand(3, 4), np.array([2, 1, 1, 3], I64)], {"mode": "wrap"}, opset=19, consts={1})
    check_op("Pad", [rand(2, 3, 4), np.array([1, 2, 0, 1], I64), None, np.array([0, -1], I64)], opset=18,
             consts={1, 3})


def test_pad_opset2_attributes():
    # the attribute form of opset < 11, checked against NumPy (the oracles do not load such old opsets)
    b = GraphBuilder(opset=7)
    x = b.input("x", (2, 3))
    y = b.op("Pad", x, pads=[0, 1, 1, 0], value=2.0)
    b.output(y, "y")
    assert y.type.shape == (3, 4)
    xv = rand(2, 3)
    np.testing.assert_array_equal(run_reference(b.graph, {"x": xv})[0],
                                  np.pad(xv, [(0, 1), (1, 0)], constant_values=2.0))


def test_pad_symbolic():
    check_op("Pad", [rand(2, 3), np.array([0, 1, 0, 1], I64)], in_shapes={0: ("B", 3)}, expect_shapes=[("B", 5)])


@pytest.mark.parametrize("reps", [[1, 1], [2, 3], [3, 1]])
def test_tile(reps):
    check_op("Tile", [rand(2, 3), np.array(reps, I64)])
    check_op("Tile", [rand(2, 3), np.array(reps, I64)], in_shapes={0: ("B", 3)},
             expect_shapes=[("B" if reps[0] == 1 else None, 3 * reps[1])])


@pytest.mark.parametrize("attrs", [{"value": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                   {"value": np.array(3, I64)}, {"value_float": 1.5},
                                   {"value_floats": [1.0, 2.0]}, {"value_int": 4}, {"value_ints": [1, 2, 3]}])
def test_constant(attrs):
    check_op("Constant", [], attrs)


@pytest.mark.parametrize("xs,attrs", [((3, 3), {}), ((3, 5), {"k": 2}), ((4, 2), {"k": -1}),
                                      ((3, 4), {"dtype": 7}), ((2, 3), {"dtype": 9, "k": 1})])
def test_eye_like(xs, attrs):
    check_op("EyeLike", [rand(*xs)], attrs)


def test_transpose_of_a_scalar_stays_a_scalar():
    got = check_op("Transpose", [np.asarray(rand(1)[0])], oracle="ort")
    assert got[0].shape == ()


@pytest.mark.parametrize("xs,idx_shape,axis", [((2, 1), (1, 3), 1), ((5, 2, 8, 8), (5, 1, 4, 3), 2),
                                                ((3, 4), (2, 2), 0)])
def test_gather_elements_indices_shorter_than_data_off_the_axis(xs, idx_shape, axis):
    # the result has the shape of the indices (onnxruntime reads data only where they reach)
    n = xs[axis]
    idx = np.random.default_rng(0).integers(-n, n, idx_shape).astype(np.int64)
    got = check_op("GatherElements", [rand(*xs), idx], {"axis": axis}, oracle="ort")
    assert got[0].shape == idx_shape


@pytest.mark.parametrize("start,end,step", [(-6, -6, -2), (-10, -10, -1), (-5, 0, -1), (-1, -100, -3)])
def test_slice_negative_step_from_before_the_first_element(start, end, step):
    # a start before index 0 clamps to 0 for a negative step (Python would read -1 as the last element)
    got = check_op("Slice", [rand(4, 3), np.array([start], I64), np.array([end], I64), np.array([0], I64),
                             np.array([step], I64)], oracle="ort")
    assert got[0].shape[1] == 3


@pytest.mark.parametrize("exclusive,reverse", [(1, 0), (1, 1), (0, 1)])
def test_cumsum_along_an_empty_axis(exclusive, reverse):
    got = check_op("CumSum", [np.zeros((0, 3), np.float32), np.array(0, I64)],
                   {"exclusive": exclusive, "reverse": reverse}, oracle="ort")
    assert got[0].shape == (0, 3)



@pytest.mark.parametrize("zdt,zero", [(np.int8, 0), (np.uint8, 128), (np.int8, 5)])
def test_quantize_linear_saturates_nan_to_the_lowest_value_as_onnxruntime(zdt, zero):
    x = np.array([np.nan, -np.inf, 1.0, -1.0], np.float32)
    got = check_op("QuantizeLinear", [x, np.float32(0.02), np.asarray(zero, zdt)], consts={1, 2}, oracle="ort",
                   opset=19)
    assert got[0][0] == np.iinfo(zdt).min
