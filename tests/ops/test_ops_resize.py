"""Resize and Upsample against onnx's reference (ORT for the forms the reference lacks)."""
import numpy as np
import pytest
from op_oracle import check_op, rand

F32, I64 = np.float32, np.int64
EMPTY = np.array([], F32)


def _resize(x, attrs, scales=None, sizes=None, roi=None, opset=19, oracle="ref", **kw):
    inputs = [x, EMPTY if roi is None else np.array(roi, F32),
              EMPTY if scales is None else np.array(scales, F32)]
    if sizes is not None:
        inputs.append(np.array(sizes, I64))
    return check_op("Resize", inputs, attrs, opset=opset, consts={1, 2, 3}, oracle=oracle, **kw)


CTMS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 0.5, 0.75]])
def test_resize_nearest(ctm, nearest_mode, scales):
    _resize(rand(1, 2, 4, 4), {"mode": "nearest", "coordinate_transformation_mode": ctm,
                               "nearest_mode": nearest_mode}, scales=scales)


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [[1, 2, 7, 9], [1, 2, 3, 2], [1, 2, 1, 5]])
def test_resize_linear_cubic_sizes(ctm, mode, sizes):
    # pytorch_half_pixel maps a length-1 output to 0 (spec, ORT); the reference uses -0.5
    oracle = "ort" if ctm == "pytorch_half_pixel" and 1 in sizes[2:] else "ref"
    _resize(rand(1, 2, 4, 5), {"mode": mode, "coordinate_transformation_mode": ctm}, sizes=sizes, oracle=oracle)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 0.5, 0.6]])
def test_resize_linear_cubic_scales(mode, scales):
    _resize(rand(1, 1, 5, 5), {"mode": mode}, scales=scales)


def test_resize_align_corners_with_fractional_output_follows_ort():
    # scales whose output length is not scale * input: ORT (and the spec) use the integer output length
    _resize(rand(1, 1, 2, 4), {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
            scales=[1, 1, 1, 0.6], oracle="ort")


@pytest.mark.parametrize("a,exclude", [(-0.5, 0), (-0.75, 1)])
def test_resize_cubic_coefficient_and_exclude_outside(a, exclude):
    _resize(rand(1, 1, 4, 4), {"mode": "cubic", "cubic_coeff_a": a, "exclude_outside": exclude},
            scales=[1, 1, 1.5, 2.0])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [[1, 1, 3, 2], [1, 1, 5, 10], [1, 1, 2, 7]])
def test_resize_antialias(mode, sizes):
    _resize(rand(1, 1, 8, 6), {"mode": mode, "antialias": 1}, sizes=sizes)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(mode):
    _resize(rand(1, 1, 5, 5), {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize",
                               "extrapolation_value": 9.0},
            roi=[0, 0, 0.4, -0.2, 1, 1, 1.2, 0.7], sizes=[1, 1, 3, 4])


def test_resize_axes_and_keep_aspect_ratio():
    x = rand(1, 2, 4, 6)
    for policy in ("stretch", "not_larger", "not_smaller"):
        _resize(x, {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}, sizes=[6, 6])
    _resize(x, {"mode": "nearest", "axes": [-1]}, scales=[2.0], oracle="ort")  # the reference: no negative axes
    _resize(x, {"mode": "linear", "axes": [3, 2], "coordinate_transformation_mode": "tf_crop_and_resize"},
            roi=[0.2, 0.0, 0.8, 1.0], sizes=[5, 3])


def test_resize_uint8_rounds_and_saturates():
    x = (np.arange(16).reshape(1, 1, 4, 4) * 16).astype(np.uint8)
    _resize(x, {"mode": "cubic"}, scales=[1, 1, 1.5, 1.5])


def test_resize_opset13_and_opset11_forms():
    _resize(rand(1, 1, 3, 3), {"mode": "linear"}, scales=[1, 1, 2, 2], opset=13)
    _resize(rand(1, 1, 3, 3), {"mode": "nearest"}, sizes=[1, 1, 5, 4], opset=11, oracle="ort")


@pytest.mark.parametrize("mode,scales", [("nearest", [1, 1, 2, 3]), ("linear", [1, 1, 2, 2]),
                                         ("nearest", [1, 1, 0.5, 0.5]), ("nearest", [1, 1, 1.5, 2.5])])
def test_resize_opset10_and_upsample9(mode, scales):
    x, s = rand(1, 2, 4, 4), np.array(scales, F32)
    check_op("Resize", [x, s], {"mode": mode}, opset=10, consts={1}, oracle="ort")
    if min(scales) >= 1:
        check_op("Upsample", [x, s], {"mode": mode}, opset=9, consts={1}, oracle="ort")


def test_upsample7_scales_attribute_and_float16_resize():
    check_op("Upsample", [rand(1, 2, 3, 3)], {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, opset=7,
             oracle="ort")
    check_op("Upsample", [rand(1, 2, 3, 3)], {"mode": "linear", "scales": [1.0, 1.0, 2.0, 2.0]}, opset=7,
             oracle="ort")
    _resize(rand(1, 1, 4, 4, dtype=np.float16), {"mode": "linear"}, scales=[1, 1, 2, 2], oracle="ort")


def test_resize_inference_keeps_symbolic_batch():
    _resize(rand(2, 3, 4, 4), {"mode": "nearest"}, scales=[1, 1, 2, 2], in_shapes={0: ("N", 3, 4, 4)},
            expect_shapes=[("N", 3, 8, 8)])
    _resize(rand(2, 3, 4, 4), {"mode": "linear"}, sizes=[2, 3, 5, 6], in_shapes={0: ("N", 3, "H", "W")},
            expect_shapes=[(2, 3, 5, 6)])
    _resize(rand(2, 3, 4, 4), {"mode": "linear"}, scales=[1, 1, 2, 2], in_shapes={0: ("N", 3, "H", "W")},
            expect_shapes=[("N", 3, None, None)])
