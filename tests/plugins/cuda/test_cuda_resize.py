"""Resize and Upsample under cuda-emu against the NumPy reference: nearest (every
nearest_mode worth having, integer data, exact), linear and cubic over the common
coordinate transformations, antialiased downscaling, sizes with axes, opset 10 and
Upsample, float16. All graphs in one batch; the kernels also through nvcc for sm_90."""
import numpy as np
import pytest

from cuda_harness import assert_ptxas_clean, needs_emu, needs_nvcc
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch

pytestmark = needs_emu
EMPTY = np.zeros(0, np.float32)
CASES = {  # name -> (x shape, dtype, opset, inputs after x, attrs)
    "nearest_half_pixel_x2": ((1, 2, 5, 7), "float32", 19, [EMPTY, np.array([1, 1, 2, 2], np.float32)], {}),
    "nearest_asymmetric_floor_uint8": ((2, 3, 4, 4), "uint8", 19, [EMPTY, np.array([1, 1, 1.5, 3], np.float32)],
                                       dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
    "nearest_ceil_downscale": ((1, 1, 9, 10), "float32", 19, [EMPTY, np.array([1, 1, 0.5, 0.6], np.float32)],
                               dict(nearest_mode="ceil")),
    "linear_half_pixel_upscale": ((2, 3, 5, 6), "float32", 19, [EMPTY, np.array([1, 1, 1.7, 2.0], np.float32)],
                                  dict(mode="linear")),
    "linear_align_corners_sizes_axes": ((1, 2, 6, 5), "float32", 19, [EMPTY, EMPTY, np.array([9, 4], np.int64)],
                                        dict(mode="linear", coordinate_transformation_mode="align_corners",
                                             axes=[2, 3])),
    "linear_pytorch_half_pixel_3d": ((1, 1, 3, 4, 5), "float32", 19,
                                     [EMPTY, np.array([1, 1, 2, 1.5, 0.8], np.float32)],
                                     dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    "linear_antialias_downscale": ((1, 2, 12, 11), "float32", 19, [EMPTY, np.array([1, 1, 0.4, 0.5], np.float32)],
                                   dict(mode="linear", antialias=1)),
    "cubic_exclude_outside": ((1, 1, 6, 6), "float32", 19, [EMPTY, np.array([1, 1, 1.5, 1.5], np.float32)],
                              dict(mode="cubic", exclude_outside=1)),
    "linear_float16": ((1, 3, 4, 5), "float16", 19, [EMPTY, np.array([1, 1, 2, 2], np.float32)],
                       dict(mode="linear")),
    "opset10_nearest": ((1, 1, 3, 4), "float32", 10, [np.array([1, 1, 2, 1.5], np.float32)], {}),
}


def build(name):
    shape, dtype, opset, rest, attrs = CASES[name]
    b = GraphBuilder(opset=opset)
    x = b.input("x", shape, dtype)
    b.output(b.op("Resize", x, *rest, **attrs), "y")
    rng = np.random.default_rng(0)
    feed = rng.integers(0, 256, shape).astype(dtype) if dtype == "uint8" else rng.standard_normal(shape).astype(dtype)
    return b.graph, {"x": feed}


def upsample():
    b = GraphBuilder(opset=9)
    x = b.input("x", (1, 2, 3, 3))
    b.output(b.op("Upsample", x, np.array([1, 1, 2, 3], np.float32), mode="linear"), "y")
    return b.graph, {"x": np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def compiled():
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name in [*CASES, "upsample_opset9"]:
            g, feeds = build(name) if name in CASES else upsample()
            out[name] = (g, feeds, be.compile(g))
    return out


@pytest.mark.parametrize("name", [*CASES, "upsample_opset9"])
def test_resize_matches_reference(compiled, name):
    g, feeds, exe = compiled[name]
    got, want = exe.run(feeds)[0], run_reference(g, feeds)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert [l.node.op_type for l in exe.lowered.launches] == [g.outputs[0].producer.op_type]
    if "nearest" in name:
        np.testing.assert_array_equal(got, want)  # a gather
    else:
        tol = 1e-3 if got.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)


def test_crop_and_resize_is_refused_by_name():
    b = GraphBuilder(opset=19)
    x = b.input("x", (1, 1, 4, 4))
    b.output(b.op("Resize", x, np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32),
                  np.array([1, 1, 2, 2], np.float32), mode="linear",
                  coordinate_transformation_mode="tf_crop_and_resize"), "y")
    assert not get_backend("cuda-emu").supports(b.graph.outputs[0].producer)


@needs_nvcc
def test_resize_kernels_compile_for_sm90(compiled):
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    kernels = list({k.name: k for _, _, e in compiled.values() for k in e.lowered.kernels}.values())
    assert_ptxas_clean(nvcc_check(kernels), kernels)
