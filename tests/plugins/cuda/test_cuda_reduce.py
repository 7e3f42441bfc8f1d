"""Row reductions (warp shuffles + block reduction) under emulation vs NumPy: Softmax,
LogSoftmax, LayerNorm and the Reduce* family over short rows, odd rows, rows past
1024 (block path), middle and multiple axes, strided inputs and empty tensors; float16 and
bfloat16 tensors with float32 math inside."""
import ml_dtypes
import numpy as np

from cuda_harness import Case, kernel_module_tests, needs_emu
from graphopt.plugins.cuda.reduce import make_row_reduce, render_row_reduce
from graphopt.plugins.cuda.scalar import broadcast_strides, contiguous_strides
from graphopt.plugins.cuda.specs import View

F = "float32"
CASES: list[Case] = []


def npdt(dtype):
    return ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)


def np_reduce(kind, x, axes):
    axes = tuple(axes)
    x64 = x.astype(np.float64)
    if kind == "softmax":
        e = np.exp(x64 - x64.max(axis=axes, keepdims=True))
        return e / e.sum(axis=axes, keepdims=True)
    if kind == "logsoftmax":
        s = x64 - x64.max(axis=axes, keepdims=True)
        return s - np.log(np.exp(s).sum(axis=axes, keepdims=True))
    if kind == "logsumexp":
        m = x64.max(axis=axes, keepdims=True)
        return (m + np.log(np.exp(x64 - m).sum(axis=axes, keepdims=True))).squeeze(axis=axes)
    fn = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod,
          "sumsq": lambda a, axis: np.sum(a * a, axis=axis), "l1": lambda a, axis: np.sum(np.abs(a), axis=axis),
          "l2": lambda a, axis: np.sqrt(np.sum(a * a, axis=axis))}[kind]
    return fn(x64, axis=axes)


def reduce_case(kind, shape, axes, *, x_view=None, src_shape=None, rtol=1e-4, atol=1e-5, dtype=F):
    spec = make_row_reduce(kind, shape, axes, x=x_view, dtype=dtype)
    src_shape = src_shape or shape

    def make(rng):
        src = rng.standard_normal(src_shape).astype(npdt(dtype))
        if kind == "prod":
            src = rng.uniform(0.8, 1.2, src_shape).astype(npdt(dtype))
        x = src if x_view is None else np.lib.stride_tricks.as_strided(
            src.reshape(-1)[x_view.offset:], shape, [s * 4 for s in x_view.strides])
        ref = np_reduce(kind, x, axes)
        return ref.shape, npdt(dtype), [src], ref.astype(np.float32)

    CASES.append(Case(f"{kind}-{'x'.join(map(str, shape))}-ax{''.join(map(str, axes))}-{dtype}",
                      render_row_reduce(spec), spec, make, rtol, atol))


for _kind in ("softmax", "logsoftmax"):
    reduce_case(_kind, (5, 37), (1,))          # one warp per row, 4 rows per block, last block partial
    reduce_case(_kind, (3, 1500), (1,))        # block per row
    reduce_case(_kind, (2, 3, 50), (1,))       # middle axis: strided rows
    reduce_case(_kind, (1, 1), (1,))
for _kind in ("sum", "mean", "max", "min", "prod", "sumsq", "l1", "l2", "logsumexp"):
    reduce_case(_kind, (4, 6, 7), (0, 2), rtol=1e-4, atol=1e-4)
reduce_case("mean", (9, 5000), (1,))
reduce_case("sum", (6, 33), (0,))
reduce_case("max", (2, 3, 4, 5), (2, 3))        # GlobalMaxPool-like
reduce_case("mean", (7,), (0,))
reduce_case("sum", (0, 5), (1,))                # no rows: no launch, nothing written
reduce_case("softmax", (3, 70), (1,), dtype="float16", rtol=2e-3, atol=1e-3)  # half in, float32 math, half out
reduce_case("mean", (4, 9), (1,), dtype="float16", rtol=2e-3, atol=1e-3)
reduce_case("softmax", (3, 70), (1,), dtype="bfloat16", rtol=1.6e-2, atol=1.6e-2)
reduce_case("sum", (4, 6, 7), (0, 2), dtype="bfloat16", rtol=1.6e-2, atol=1.6e-2)
# a transposed input view: reduce the rows of x.T where x is (12, 40)
reduce_case("sum", (40, 12), (1,), x_view=View(F, (1, 40)), src_shape=(12, 40))


def layernorm_case(shape, axis, scale_shape, with_bias=True, stats=False, dtype=F):
    r = len(shape)
    norm = shape[axis:]
    aux_in = [View(dtype, broadcast_strides(scale_shape, norm))] + ([View(dtype, broadcast_strides(norm, norm))]
                                                                    if with_bias else [])
    aux_out = [View(F, contiguous_strides(shape[:axis]))] * 2 if stats else []
    spec = make_row_reduce("layernorm", shape, list(range(axis, r)), aux_in=aux_in, aux_out=aux_out, eps=1e-5,
                           dtype=dtype)

    def make(rng):
        x = (rng.standard_normal(shape) * 3 + 1).astype(npdt(dtype))
        g = rng.standard_normal(scale_shape).astype(npdt(dtype))
        b = rng.standard_normal(norm).astype(npdt(dtype))
        axes = tuple(range(axis, r))
        m = x.astype(np.float64).mean(axis=axes, keepdims=True)
        v = ((x.astype(np.float64) - m) ** 2).mean(axis=axes, keepdims=True)
        rstd = 1 / np.sqrt(v + 1e-5)
        y = (x.astype(np.float64) - m) * rstd * g.astype(np.float64) + (b.astype(np.float64) if with_bias else 0)
        extra = [(shape[:axis], F, m.reshape(shape[:axis]).astype(np.float32)),
                 (shape[:axis], F, rstd.reshape(shape[:axis]).astype(np.float32))] if stats else []
        return shape, npdt(dtype), [x, g] + ([b] if with_bias else []), y.astype(np.float32), extra

    tol = {F: (1e-4, 1e-4), "float16": (2e-3, 4e-3), "bfloat16": (1.6e-2, 3.2e-2)}[dtype]
    CASES.append(Case(f"layernorm-{'x'.join(map(str, shape))}-ax{axis}{'-stats' if stats else ''}-{dtype}",
                      render_row_reduce(spec), spec, make, *tol))


layernorm_case((6, 33), 1, (33,))
layernorm_case((2, 3, 1100), 2, (1100,), stats=True)
layernorm_case((4, 3, 5), 1, (1,), with_bias=False)
layernorm_case((5, 48), 1, (48,), stats=True, dtype="float16")  # half tensors, float32 statistics
layernorm_case((5, 48), 1, (48,), stats=True, dtype="bfloat16")


lib, test_reduction_kernel_matches_numpy, test_every_reduction_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=64)


def test_schedule_picks_warp_or_block_per_row():
    short = make_row_reduce("softmax", (100, 77), (1,))
    long = make_row_reduce("softmax", (10, 3000), (1,))
    assert (short.tx, short.rpb) == (32, 4) and short.grid() == (25, 1, 1)
    assert (long.tx, long.rpb) == (128, 1)
    assert "__shfl_xor_sync" in render_row_reduce(short).source or \
        any("__shfl_xor_sync" in h.source for h in render_row_reduce(short).helpers)
    assert any(h.name == "go_block_max" for h in render_row_reduce(long).helpers)


@needs_emu
def test_bfloat16_row_ops_lower_to_row_kernels_without_casts():
    from graphopt.builder import GraphBuilder
    from graphopt.plugin_loader import get_backend
    from graphopt.plugins.cpu import run_reference

    b = GraphBuilder()
    x = b.input("x", (3, 40), "bfloat16")
    w = np.linspace(0.5, 1.5, 40).astype(ml_dtypes.bfloat16)
    ln = b.op("LayerNormalization", x, w, (w - 1).astype(ml_dtypes.bfloat16), axis=-1)
    b.output(b.op("Softmax", ln, axis=-1), "p")
    b.output(b.op("ReduceMean", x, np.array([1], np.int64), keepdims=0), "m")
    exe = get_backend("cuda-emu").compile(b.graph)
    assert [l.node.op_type for l in exe.lowered.launches] == ["LayerNormalization", "Softmax", "ReduceMean"]
    feeds = {"x": (np.random.default_rng(0).standard_normal((3, 40)) * 2).astype(ml_dtypes.bfloat16)}
    for got, want in zip(exe.run(feeds), run_reference(b.graph, feeds)):
        assert got.dtype == want.dtype == ml_dtypes.bfloat16
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1.6e-2, atol=1.6e-2)
