"""Pooling, Gather and Pad kernels under emulation vs NumPy: pads, strides, dilation,
ceil-mode windows that hang past the input, count_include_pad, negative indices,
every pad mode, other dtypes."""
import itertools

import numpy as np

from cuda_harness import Case, kernel_module_tests
from graphopt.plugins.cuda.movement import make_gather, make_pad, render_gather, render_pad
from graphopt.plugins.cuda.spatial import make_pool, render_pool

F = "float32"
CASES: list[Case] = []


def pool_ref(kind, x, kernel, strides, pads, dil, out_sp, count_include_pad):
    n, c, *sp = x.shape
    nd = len(sp)
    y = np.zeros((n, c, *out_sp))
    for o in itertools.product(*(range(d) for d in out_sp)):
        vals, cnt = [], 0
        for k in itertools.product(*(range(d) for d in kernel)):
            i = [o[d] * strides[d] - pads[d] + k[d] * dil[d] for d in range(nd)]
            inside = all(0 <= i[d] < sp[d] for d in range(nd))
            in_pad = all(i[d] < sp[d] + pads[nd + d] for d in range(nd))
            if inside:
                vals.append(x[(slice(None), slice(None), *i)])
            cnt += (in_pad if count_include_pad else inside)
        if kind == "max":
            y[(slice(None), slice(None), *o)] = np.max(vals, axis=0) if vals else -np.inf
        else:
            y[(slice(None), slice(None), *o)] = np.sum(vals, axis=0) / cnt if cnt else 0
    return y


def pool_case(cid, kind, x_shape, kernel, strides=None, pads=None, dil=None, ceil=False, cip=False, dtype=F):
    nd = len(kernel)
    strides, dil, pads = strides or [1] * nd, dil or [1] * nd, pads or [0] * (2 * nd)
    rnd = np.ceil if ceil else np.floor
    out_sp = [int(rnd((x_shape[2 + i] + pads[i] + pads[nd + i] - dil[i] * (kernel[i] - 1) - 1) / strides[i])) + 1
              for i in range(nd)]
    spec = make_pool(kind, x_shape, kernel, out_sp, strides=strides, pads=pads, dilations=dil, count_include_pad=cip,
                     dtype=dtype)

    def make(rng):
        x = rng.standard_normal(x_shape).astype(dtype)
        ref = pool_ref(kind, x.astype(np.float64), kernel, strides, pads, dil, out_sp, cip)
        return ref.shape, dtype, [x], ref.astype(dtype)

    CASES.append(Case(cid, render_pool(spec), spec, make, *((1e-4, 1e-5) if dtype == F else (2e-3, 1e-3))))


pool_case("max3x3-s2-p1", "max", (2, 3, 9, 10), [3, 3], [2, 2], [1, 1, 1, 1])
pool_case("max2x2-dil2", "max", (1, 2, 8, 7), [2, 2], [1, 1], dil=[2, 2])
pool_case("max-ceil", "max", (1, 2, 7, 7), [3, 3], [2, 2], ceil=True)
pool_case("avg3x3-exclude-pad", "avg", (2, 3, 6, 7), [3, 3], [1, 1], [1, 1, 1, 1])
pool_case("avg3x3-include-pad", "avg", (2, 3, 6, 7), [3, 3], [2, 2], [1, 0, 1, 1], cip=True)
pool_case("avg-ceil-include-pad", "avg", (1, 2, 6, 6), [3, 3], [2, 2], [1, 1, 1, 1], ceil=True, cip=True)
pool_case("avg1d", "avg", (2, 4, 11), [4], [3])
pool_case("avg-float16", "avg", (1, 3, 6, 5), [2, 2], [2, 1], [0, 1, 1, 0], dtype="float16")
pool_case("max3d", "max", (1, 2, 4, 5, 6), [2, 2, 3], [2, 1, 2])


def gather_case(cid, data_shape, dtype, idx, axis):
    spec = make_gather(data_shape, dtype, np.shape(idx), "int64", axis)

    def make(rng):
        data = (rng.standard_normal(data_shape) * 10).astype(dtype)
        ix = np.asarray(idx, np.int64)
        n = data_shape[axis]
        ok = (ix >= -n) & (ix < n)
        ref = np.take(data, np.where(ok, ix, 0), axis=axis)
        ref = np.where(np.expand_dims(ok, tuple(range(ok.ndim, ok.ndim + len(data_shape) - axis - 1))), ref, 0)
        return ref.shape, dtype, [data, ix], ref

    CASES.append(Case(cid, render_gather(spec), spec, make))


gather_case("gather-rows", (7, 5), F, [3, 0, 6, 3], 0)
gather_case("gather-negative-2d-indices", (4, 6, 3), F, [[-1, 2], [0, -6]], 1)
gather_case("gather-scalar-index", (5, 4), F, 2, 1)
gather_case("gather-int64-data", (10,), "int64", [9, 0, 4], 0)
gather_case("gather-out-of-range-reads-zero", (4, 3), F, [1, 9, -7], 0)
gather_case("gather-embedding", (50, 16), F, [[1, 7, 49], [0, 0, 3]], 0)


def pad_case(cid, shape, dtype, pads, mode, value=0.0):
    spec = make_pad(shape, dtype, pads, mode, value)
    r = len(shape)

    def make(rng):
        x = (rng.standard_normal(shape) * 5).astype(dtype)
        xx = x
        begin, end = list(pads[:r]), list(pads[r:])
        crop = tuple(slice(max(-b, 0), n - max(-e, 0)) for b, e, n in zip(begin, end, shape))
        xx = xx[crop]
        pw = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
        if mode == "constant":
            ref = np.pad(xx, pw, mode="constant", constant_values=value)
        else:
            ref = np.pad(xx, pw, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
        return ref.shape, dtype, [x], ref.astype(dtype)

    CASES.append(Case(cid, render_pad(spec), spec, make))


pad_case("pad-constant", (2, 3, 4), F, [0, 1, 2, 0, 2, 1], "constant", 1.5)
pad_case("pad-reflect", (3, 5), F, [1, 2, 2, 3], "reflect")
pad_case("pad-edge", (2, 2, 3), F, [0, 0, 2, 1, 3, 0], "edge")
pad_case("pad-wrap", (4, 3), F, [1, 2, 3, 1], "wrap")
pad_case("pad-negative-crops", (5, 6), F, [-1, 2, 1, -2], "constant")
pad_case("pad-int64", (3, 3), "int64", [1, 1, 1, 1], "constant", 7)


lib, test_spatial_kernel_matches_numpy, test_every_spatial_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=64)
