"""Conv, ConvTranspose, Gemm, MatMul and the pools against onnx's reference (or ORT where noted)."""
import numpy as np
import pytest
from op_oracle import check_op, rand

from graphopt.builder import GraphBuilder
from graphopt.ops.nn import conv

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((1, 3, 7, 7), (4, 3, 3, 3), {}),
    ((2, 4, 7, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 0, 1, 2], "strides": [2, 1]}),
    ((1, 4, 9, 9), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),                      # depthwise
    ((1, 4, 9, 9), (8, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # depth multiplier 2
    ((1, 2, 8, 8), (3, 2, 3, 3), {"dilations": [2, 1], "pads": [2, 1, 2, 1]}),
    ((1, 2, 7, 8), (3, 2, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 3]}),
    ((1, 2, 7, 8), (3, 2, 4, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 2, 7, 8), (3, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 3, 10), (4, 3, 3), {"strides": [2], "dilations": [2], "pads": [1, 2]}),           # 1-D
    ((1, 2, 5, 6, 4), (3, 2, 2, 3, 1), {"pads": [1, 0, 0, 0, 1, 0], "strides": [1, 2, 1]}),  # 3-D
    ((1, 4, 5, 5), (2, 4, 1, 1), {}),                                                        # pointwise
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
def test_conv(xs, ws, attrs, bias):
    inputs = [rand(*xs), rand(*ws, seed=1)] + ([rand(ws[0], seed=2)] if bias else [])
    check_op("Conv", inputs, attrs)


def test_conv_keeps_symbolic_batch_and_same_sized_spatial_dims():
    x, w = rand(2, 4, 7, 7), rand(8, 4, 3, 3, seed=1)
    check_op("Conv", [x, w], {"pads": [1, 1, 1, 1]}, consts={1}, in_shapes={0: ("N", 4, "H", "W")},
             expect_shapes=[("N", 8, "H", "W")])
    check_op("Conv", [x, w], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, consts={1},
             in_shapes={0: ("N", 4, "H", "W")}, expect_shapes=[("N", 8, None, None)])
    check_op("Conv", [x, w], {"auto_pad": "SAME_UPPER"}, consts={1}, in_shapes={0: ("N", 4, 7, "W")},
             expect_shapes=[("N", 8, 7, "W")])


def test_conv_float16_is_computed_in_float32():
    x, w = rand(1, 3, 6, 6, dtype=np.float16), rand(4, 3, 3, 3, dtype=np.float16, seed=1)
    check_op("Conv", [x, w], {"pads": [1, 1, 1, 1]})


CONVT_CASES = [
    ((1, 2, 3, 3), (2, 3, 3, 3), {}),
    ((1, 2, 3, 4), (2, 3, 3, 3), {"strides": [2, 3], "pads": [1, 0, 1, 1]}),
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [3, 2], "output_padding": [1, 1]}),
    ((1, 4, 3, 3), (4, 2, 2, 2), {"group": 2, "strides": [2, 2]}),
    ((1, 2, 4, 4), (2, 1, 3, 3), {"group": 2, "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 1, 3, 3), (1, 2, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((2, 3, 5), (3, 2, 3), {"strides": [2], "pads": [1, 2]}),
    ((1, 1, 2, 2, 2), (1, 2, 2, 2, 2), {"strides": [2, 1, 2]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
def test_conv_transpose(xs, ws, attrs):
    g = attrs.get("group", 1)
    inputs = [rand(*xs), rand(*ws, seed=1), rand(ws[1] * g, seed=2)]
    # the reference mixes up groups with more than one output channel each
    check_op("ConvTranspose", inputs, attrs, oracle="ort" if g > 1 else "ref")


@pytest.mark.parametrize("attrs", [{"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                                   {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
                                   {"strides": [2, 2], "output_shape": [6, 5]}])
def test_conv_transpose_auto_pad_and_output_shape_as_ort(attrs):
    # the reference pads output_shape at the start only; ORT splits it as the spec says
    check_op("ConvTranspose", [rand(1, 2, 3, 3), rand(2, 3, 2, 3, seed=1)], attrs, oracle="ort")


@pytest.mark.parametrize("ta,tb,c_shape", [(0, 0, (4, 5)), (1, 0, (5,)), (0, 1, (1, 5)), (1, 1, (4, 1)),
                                           (0, 0, ()), (0, 0, None)])
def test_gemm(ta, tb, c_shape):
    a = rand(3, 4) if ta else rand(4, 3)
    b = rand(5, 3, seed=1) if tb else rand(3, 5, seed=1)
    inputs = [a, b] + ([] if c_shape is None else [rand(*c_shape, seed=2)])
    check_op("Gemm", inputs, {"alpha": 0.5, "beta": 2.0, "transA": ta, "transB": tb})


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 1, 3, 4), (5, 4, 2)), ((2, 3, 4), (4, 6))])
def test_matmul(sa, sb):
    check_op("MatMul", [rand(*sa), rand(*sb, seed=1)])


def test_matmul_integer_and_symbolic_batch():
    check_op("MatMul", [np.arange(12, dtype=np.int32).reshape(3, 4), np.ones((4, 2), np.int32)])
    check_op("MatMul", [rand(2, 3, 4), rand(4, 6, seed=1)], consts={1}, in_shapes={0: ("B", "S", 4)},
             expect_shapes=[("B", "S", 6)])


@pytest.mark.parametrize("eq,shapes", [("ij,jk->ik", [(2, 3), (3, 4)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
                                       ("...ij,...jk", [(2, 1, 3, 4), (5, 4, 2)]), ("ii->i", [(3, 3)]),
                                       ("ij->", [(2, 3)]), ("i,j->ij", [(3,), (4,)]), ("bhqd,bhkd->bhqk",
                                                                                       [(1, 2, 3, 4), (1, 2, 5, 4)]),
                                       ("ji", [(2, 3)])])
def test_einsum(eq, shapes):
    check_op("Einsum", [rand(*s, seed=i) for i, s in enumerate(shapes)], {"equation": eq}, opset=12)


def test_einsum_symbolic():
    check_op("Einsum", [rand(2, 3, 4), rand(4, 5, seed=1)], {"equation": "bij,jk->bik"}, consts={1},
             in_shapes={0: ("B", "S", 4)}, expect_shapes=[("B", "S", 5)])


POOL_CASES = [
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0], "ceil_mode": 1}),
    ((1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 1], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 7, 6), {"kernel_shape": [3, 3], "auto_pad": "VALID"}),
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ((1, 1, 4, 5, 6), {"kernel_shape": [2, 2, 3], "strides": [2, 2, 2]}),
]


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_max_pool(xs, attrs):
    # the reference's strided SAME_LOWER output is floor(n / stride); the spec (and ORT) say ceil
    check_op("MaxPool", [rand(*xs)], attrs, oracle="ort" if attrs.get("auto_pad") == "SAME_LOWER" else "ref")


@pytest.mark.parametrize("attrs", [{"kernel_shape": [3, 3], "dilations": [2, 2], "strides": [1, 1]},
                                   {"kernel_shape": [2, 2], "dilations": [2, 1], "strides": [2, 2],
                                    "pads": [1, 1, 1, 1], "ceil_mode": 1}])
def test_max_pool_dilated(attrs):
    check_op("MaxPool", [rand(1, 2, 8, 8)], attrs)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("attrs", [{"kernel_shape": [2, 2], "strides": [2, 2]},
                                   {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}])
def test_max_pool_indices(attrs, storage_order):
    check_op("MaxPool", [rand(2, 3, 5, 6)], {**attrs, "storage_order": storage_order}, n_outputs=2,
             oracle="ort")


def test_max_pool_int8_and_uint8():
    x = (np.arange(2 * 36).reshape(1, 2, 6, 6) % 17 - 8).astype(np.int8)
    check_op("MaxPool", [x], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, oracle="ort")
    check_op("MaxPool", [np.abs(x).astype(np.uint8)], {"kernel_shape": [2, 2]}, oracle="ort")


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_average_pool(xs, attrs, count_include_pad):
    check_op("AveragePool", [rand(*xs)], {**attrs, "count_include_pad": count_include_pad})


def test_average_pool_ceil_mode_counts_as_ort():
    # ceil_mode's extra tail is never counted, count_include_pad or not (ORT, PyTorch)
    for cip in (0, 1):
        check_op("AveragePool", [rand(1, 1, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                      "ceil_mode": 1, "count_include_pad": cip}, oracle="ort")


def test_pools_keep_symbolic_dims():
    x = rand(2, 3, 8, 8)
    check_op("MaxPool", [x], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, in_shapes={0: ("N", 3, "H", "W")},
             expect_shapes=[("N", 3, "H", "W")])
    check_op("GlobalAveragePool", [x], in_shapes={0: ("N", "C", "H", "W")}, expect_shapes=[("N", "C", 1, 1)])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (1, 2, 7), (1, 2, 3, 4, 2)])
def test_global_pools(op, xs):
    check_op(op, [rand(*xs)], oracle="ort")  # the reference's GlobalMaxPool assumes 4-D


def test_lp_pools():
    check_op("LpPool", [rand(1, 2, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "p": 3})
    check_op("GlobalLpPool", [rand(1, 2, 5, 4)], {"p": 2}, oracle="ort")  # not in the reference


def test_pool_geometry_that_does_not_fit_is_a_shape_error():
    from graphopt.errors import ShapeError

    b = GraphBuilder()
    x = b.input("x", (1, 1, 2, 2))
    with pytest.raises(ShapeError, match="does not fit"):
        conv(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 3, 3), np.float32), None, {})
    b.op("MaxPool", x, kernel_shape=[4, 4])  # inference refuses quietly: the type stays unknown
    assert b.graph.nodes[-1].output.type is None
    b.op("MaxPool", x, kernel_shape=[3, 3])  # one short of fitting: empty, as onnxruntime says
    assert b.graph.nodes[-1].output.shape == (1, 1, 0, 0)


@pytest.mark.parametrize("op,extra", [("MaxPool", {}), ("AveragePool", {}), ("AveragePool", {"count_include_pad": 1}),
                                      ("LpPool", {})])
@pytest.mark.parametrize("size,kernel,stride,dilation", [(2, 3, 2, 1), (3, 4, 3, 1), (4, 3, 3, 2), (2, 3, 1, 1),
                                                         (1, 3, 2, 1), (2, 5, 2, 1)])
def test_pool_window_wider_than_the_input_as_onnxruntime(op, extra, size, kernel, stride, dilation):
    # ONNX's shape inference and onnxruntime divide (size - window) by the stride truncating toward
    # zero: a window less than one stride too wide gives one output over the input it covers, else 0
    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, 1], "dilations": [dilation, 1],
             "auto_pad": "VALID", **extra}
    got = check_op(op, [rand(1, 2, size, kernel + 1)], attrs, oracle="ort", opset=19)  # pools dilate from 19
    assert got[0].shape[2] == (1 if size - ((kernel - 1) * dilation + 1) > -stride else 0)


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("opset", [11, 18, 19])
def test_average_pool_counts_a_too_wide_window_as_onnxruntime_per_opset(opset, ceil_mode):
    # count_include_pad: AveragePool-11 without ceil_mode counts the whole window, otherwise the
    # input it covers (the native 2-D kernel and the registry's divide by the same counts)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "count_include_pad": 1, "ceil_mode": ceil_mode}
    got = check_op("AveragePool", [rand(1, 4, 5, 1)], attrs, oracle="ort", opset=opset)
    assert got[0].shape == (1, 4, 2 + ceil_mode, 1)
    check_op("AveragePool", [rand(1, 2, 1)], {**attrs, "kernel_shape": [2], "strides": [2]}, oracle="ort",
             opset=opset)


def test_max_pool_indices_of_no_window_at_all():
    got = check_op("MaxPool", [rand(5, 1, 1, 2)], {"kernel_shape": [2, 1]}, n_outputs=2, oracle="ort")
    assert got[0].shape == got[1].shape == (5, 1, 0, 2)


@pytest.mark.parametrize("n,k,stride,dilation,out_pad,auto_pad", [(5, 2, 3, 1, 0, "SAME_UPPER"), (5, 1, 3, 2, 1, "SAME_LOWER"),
                                                                  (2, 3, 3, 2, 1, "SAME_LOWER"), (5, 5, 3, 1, 0, "SAME_UPPER")])
def test_conv_transpose_same_never_pads_negatively(n, k, stride, dilation, out_pad, auto_pad):
    # SAME asks for n * stride, unless the full result is shorter: then it is that (onnxruntime)
    attrs = {"auto_pad": auto_pad, "strides": [stride], "dilations": [dilation]}
    if out_pad:
        attrs["output_padding"] = [out_pad]
    got = check_op("ConvTranspose", [rand(1, 2, n), rand(2, 3, k, seed=1)], attrs, oracle="ort")
    assert got[0].shape[-1] == min(n * stride, (n - 1) * stride + out_pad + (k - 1) * dilation + 1)


def test_pool_window_too_wide_by_a_stride_or_more_is_refused_as_onnxruntime_does():
    from graphopt.errors import ShapeError
    from graphopt.ops.nn import max_pool
    from graphopt.ops.registry import KernelContext

    with pytest.raises(ShapeError, match="does not fit"):
        max_pool([np.zeros((1, 1, 2), np.float32)], {"kernel_shape": [4], "auto_pad": "VALID", "ceil_mode": 0,
                                                    "strides": [1], "dilations": None, "pads": None,
                                                    "storage_order": 0}, KernelContext())


def test_fused_matmul_of_two_vectors_keeps_the_scalar_shape():
    from graphopt.ops.registry import KernelContext, get_schema

    s = get_schema("FusedMatMul", "ai.graphopt")
    a, b, c = rand(5), rand(5), np.asarray(rand(1)[0])
    (y,) = s.kernel([a, b, c], s.resolve_attrs({"epilogue": "relu(add(acc, in1))"}), KernelContext())
    assert y.shape == () and np.allclose(y, max(float(a @ b) + float(c), 0.0), rtol=1e-5)
