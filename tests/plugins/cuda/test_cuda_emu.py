"""The emulation header: threadIdx/blockIdx numbering, __shared__ + __syncthreads as a
block barrier, warp shuffles (xor/down/up/broadcast, sub-warp widths, warp-divergent
code), atomicAdd across blocks, launch errors. Hand-written CUDA source, compiled unchanged."""
import os

import numpy as np
import pytest

from cuda_harness import Guarded, aligned, needs_emu
from graphopt.errors import GraphoptError
from graphopt.plugins.cuda.compile_emu import build_library, emu_source, kernel_batch, register_kernels
from graphopt.plugins.cuda.kernel import Kernel, Param

pytestmark = needs_emu


def K(name, body, params, barrier=True):
    sig = ", ".join(f"{t} {n}" for n, t in params)
    src = f'extern "C" __global__ void {name}({sig}) {{\n{body}\n}}\n'
    return Kernel(name, src, tuple(Param(n, t) for n, t in params), (), barrier)


KERNELS = [
    K("t_ids", """
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    y[b * nt + t] = b * 1000 + t;""", [("y", "int*")], barrier=False),
    K("t_reverse", """
    __shared__ float s[128];
    const int i = blockIdx.x * 128 + threadIdx.x;
    s[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = s[127 - threadIdx.x];""", [("y", "float*"), ("x", "const float*")]),
    K("t_shuffles", """
    const int t = threadIdx.x;
    float v = x[blockIdx.x * blockDim.x + t];
    float s = v;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float h = v;
    for (int o = 8; o > 0; o >>= 1) h += __shfl_xor_sync(0xffffffffu, h, o, 16);
    const float d = __shfl_down_sync(0xffffffffu, v, 3);
    const float u = __shfl_up_sync(0xffffffffu, v, 2);
    const float b = __shfl_sync(0xffffffffu, v, 5);
    float* o = y + 5 * (blockIdx.x * blockDim.x + t);
    o[0] = s; o[1] = h; o[2] = d; o[3] = u; o[4] = b;""", [("y", "float*"), ("x", "const float*")]),
    K("t_atomic", """
    atomicAdd(y, x[blockIdx.x * blockDim.x + threadIdx.x]);""", [("y", "float*"), ("x", "const float*")]),
    # shuffles in warp-divergent code (warp-uniform is all CUDA asks); marked barrier-free,
    # which the source scan overrules
    K("t_warp_divergent", """
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    float v = x[i];
    if (t / 32 == 1) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    } else {
        v = -v;
    }
    y[i] = v;""", [("y", "float*"), ("x", "const float*")], barrier=False),
]


@pytest.fixture(scope="module")
def lib():
    return build_library(KERNELS)


def test_thread_and_block_numbering_matches_cuda(lib):
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = 12, 24
    y = Guarded((nb * nt,), np.int32)
    lib.launch("t_ids", grid, block, [y.ptr])
    y.check_guards()
    expect = (np.arange(nb)[:, None] * 1000 + np.arange(nt)[None, :]).reshape(-1)
    np.testing.assert_array_equal(y.array, expect)


def test_shared_memory_and_syncthreads(lib):
    x = aligned(np.arange(512, dtype=np.float32))
    y = Guarded((512,), np.float32)
    lib.launch("t_reverse", (4, 1, 1), (128, 1, 1), [y.ptr, x.ctypes.data])
    y.check_guards()
    np.testing.assert_array_equal(y.array, x.reshape(4, 128)[:, ::-1].reshape(-1))


def test_warp_shuffles_follow_cuda_semantics(lib):
    rng = np.random.default_rng(0)
    x = aligned(rng.standard_normal(2 * 64).astype(np.float32))
    y = Guarded((2 * 64, 5), np.float32)
    lib.launch("t_shuffles", (2, 1, 1), (64, 1, 1), [y.ptr, x.ctypes.data])
    y.check_guards()
    w = x.reshape(-1, 32)  # warps
    lane = np.arange(32)
    full = np.repeat(w.sum(1, keepdims=True), 32, 1)
    half = np.concatenate([np.repeat(w[:, :16].sum(1, keepdims=True), 16, 1),
                           np.repeat(w[:, 16:].sum(1, keepdims=True), 16, 1)], 1)
    down = np.where(lane + 3 < 32, w[:, np.minimum(lane + 3, 31)], w)
    up = np.where(lane >= 2, w[:, np.maximum(lane - 2, 0)], w)
    bcast = np.repeat(w[:, 5:6], 32, 1)
    got = y.array.reshape(-1, 32, 5)
    for i, exp in enumerate([full, half, down, up, bcast]):
        np.testing.assert_allclose(got[:, :, i], exp, rtol=1e-6, atol=1e-6, err_msg=f"shuffle {i}")


def test_atomic_add_across_blocks(lib):
    x = aligned(np.ones(8 * 64, np.float32))
    y = Guarded((1,), np.float32)
    y.array[0] = 0
    lib.launch("t_atomic", (8, 1, 1), (64, 1, 1), [y.ptr, x.ctypes.data])
    assert y.array[0] == 512


def test_shuffles_need_only_warp_uniform_control_flow(lib):
    x = aligned(np.random.default_rng(1).standard_normal(3 * 96).astype(np.float32))
    y = Guarded((3 * 96,), np.float32)
    lib.launch("t_warp_divergent", (3, 1, 1), (96, 1, 1), [y.ptr, x.ctypes.data])
    y.check_guards()
    w = x.reshape(3, 3, 32)
    want = -w.copy()
    want[:, 1, :] = w[:, 1, :].sum(-1, keepdims=True)
    np.testing.assert_allclose(y.array.reshape(3, 3, 32), want, rtol=1e-6, atol=1e-6)


def test_empty_grid_is_a_no_op_and_bad_blocks_are_refused(lib):
    y = Guarded((4,), np.int32)
    lib.launch("t_ids", (0, 1, 1), (4, 1, 1), [y.ptr])
    assert (y.array == 0).all()
    with pytest.raises(GraphoptError, match="bad block size"):
        lib.launch("t_ids", (1, 1, 1), (2048, 1, 1), [y.ptr])
    with pytest.raises(GraphoptError, match="takes 1 arguments"):
        lib.launch("t_ids", (1, 1, 1), (4, 1, 1), [y.ptr, y.ptr])


def test_emulation_source_is_the_cuda_source_plus_wrappers():
    src = emu_source(KERNELS)
    for k in KERNELS:
        assert k.source in src
        assert f"go_emu_launch_{k.name}" in src
    assert "#include" not in src.split("// ---- emulation launch wrappers")[0]


def test_a_batch_compiles_once_at_first_launch(lib):
    with kernel_batch() as batch:
        a = register_kernels(KERNELS[:2])
        b = register_kernels(KERNELS[2:])
    assert a is b is batch and not batch._built
    x = aligned(np.arange(128, dtype=np.float32))
    y = Guarded((128,), np.float32)
    batch.launch("t_reverse", (1, 1, 1), (128, 1, 1), [y.ptr, x.ctypes.data])
    assert set(batch._built) == {k.name for k in KERNELS}  # everything pending was built together
    assert len({id(v) for v in batch._built.values()}) == 1


def test_a_fiber_that_overflows_its_stack_fails_the_launch():
    """Unchecked builds keep no PROT_NONE page per fiber (see ensure_stacks in cuda_emu.h): the
    canary under each stack catches a thread that wrote past its 256 KiB."""
    big = K("t_big_frame", """
    volatile char buf[257 * 1024];
    for (int i = 0; i < (int)sizeof buf; ++i) buf[i] = (char)i;
    __syncthreads();
    y[0] = buf[5];""", [("y", "int*")])
    small = K("t_small_frame", """
    volatile char buf[64 * 1024];
    for (int i = 0; i < (int)sizeof buf; ++i) buf[i] = (char)i;
    __syncthreads();
    y[0] = buf[5];""", [("y", "int*")])
    lib = build_library([big, small])
    y = Guarded((1,), np.int32)
    lib.launch("t_small_frame", (1, 1, 1), (1, 1, 1), [y.ptr])
    assert y.array[0] == 5
    with pytest.raises(GraphoptError, match="t_big_frame .*failed: a thread overflowed its stack"):
        lib.launch("t_big_frame", (1, 1, 1), (1, 1, 1), [y.ptr])


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts Linux memory maps")
def test_fiber_stacks_cost_one_memory_map_per_library_and_thread():
    """A test process loads hundreds of emulation libraries, each with its own per-thread fiber
    stacks; a guard page per fiber made 2,048 maps per library and thread, and after ~30 of them
    the process hit the kernel's limit (65,530) and hung starting a thread."""
    before = _maps()
    for i in range(6):  # distinct sources: six libraries, six sets of stacks
        k = K(f"t_fibers_{i}", f"""
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x] + {i};
    __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x];""", [("y", "float*"), ("x", "const float*")])
        x = aligned(np.arange(64, dtype=np.float32))
        y = Guarded((64,), np.float32)
        build_library([k]).launch(k.name, (4, 1, 1), (64, 1, 1), [y.ptr, x.ctypes.data])
        np.testing.assert_array_equal(y.array, x[::-1] + i)
    assert _maps() - before < 6 * 64
