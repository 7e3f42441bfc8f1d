"""`CompiledModel` on the `cuda` backend with device arrays, on the CuPy stand-in: CuPy arrays in
give CuPy arrays out, (stand-in) CUDA torch tensors in give torch tensors out through DLPack
with no host copy, NumPy stays NumPy, ``return_numpy=True`` forces NumPy; outputs are fresh
arrays unless ``reuse_outputs``; feeds are checked with one-line errors; our stream waits for
the caller's and the caller's for ours."""
import numpy as np
import pytest
import torch

import graphopt
from cuda_harness import needs_emu
from fake_cupy import FakeArray, fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.errors import InputError
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference

pytestmark = needs_emu


class CudaTensorStandIn(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0 and refuses every way to the host."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    def __dlpack_device__(self):
        return (2, 0)

    def cpu(self, *a, **k):
        raise AssertionError("a CUDA tensor was copied to the host")

    def numpy(self, *a, **k):
        raise AssertionError("a CUDA tensor was copied to the host")


def on_cuda(x: np.ndarray) -> CudaTensorStandIn:
    return torch.from_numpy(x).as_subclass(CudaTensorStandIn)


def graph(batch=4):
    b = GraphBuilder()
    x = b.input("x", (batch, 8))
    w = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    b.output(b.op("Relu", b.op("MatMul", x, w)), "y")
    b.output(b.op("Sigmoid", x), "s")
    return b.graph


def x_(seed=0, batch=4):
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def check(outs, x, g=None):
    for got, want in zip(outs, run_reference(g or graph(), {"x": x})):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_cupy_in_cupy_out_fresh_arrays(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cuda")
    exe = m.executable
    outs = m(cp.asarray(x_(0)))
    assert all(isinstance(o, FakeArray) for o in outs)
    check([o.get() for o in outs], x_(0))  # get() on the caller's stream, which waits for ours
    kept = [o.get() for o in outs]
    assert {o.ptr for o in outs}.isdisjoint(b.ptr for b in exe.outputs.values())  # copies, not our buffers
    m(cp.asarray(x_(1)))  # the next run (a CUDA-graph replay) leaves earlier results alone
    for o, k in zip(outs, kept):
        np.testing.assert_array_equal(o.get(), k)
    # ordered on the caller's stream both ways
    ours, caller = exe.stream.name, cp.null_stream.name
    assert (ours, caller) in cp.stream_waits and (caller, ours) in cp.stream_waits


def test_reuse_outputs_hands_out_the_executables_buffers(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cuda", reuse_outputs=True)
    y, _s = m(cp.asarray(x_(0)))
    assert y.ptr in {b.ptr for b in m.executable.outputs.values()}
    m(cp.asarray(x_(1)))
    check([y.get()], x_(1))  # aliasing, as documented: the next run overwrote it


def test_torch_cuda_tensors_go_through_dlpack_without_host_copies(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cuda")
    x = x_(2)
    outs = m(on_cuda(x))
    assert cp.dlpack_imports == 1
    assert all(type(o) is torch.Tensor for o in outs)
    check([o.numpy() for o in outs], x)
    # with reuse_outputs the tensor's memory *is* the executable's output buffer: DLPack, no copy
    m2 = graphopt.compile(graph(), backend="cuda", reuse_outputs=True)
    y, _ = m2(on_cuda(x))
    assert y.data_ptr() in {b.ptr for b in m2.executable.outputs.values()}


def test_return_numpy_and_host_inputs(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cuda")
    outs = m(on_cuda(x_(3)), return_numpy=True)
    assert all(type(o) is np.ndarray for o in outs)
    check(outs, x_(3))
    outs = m(cp.asarray(x_(3)), return_numpy=True)
    assert all(type(o) is np.ndarray for o in outs)
    imports = cp.dlpack_imports
    outs = m(x_(4))  # NumPy in: the host path
    assert all(type(o) is np.ndarray for o in outs) and cp.dlpack_imports == imports
    check(outs, x_(4))
    outs = m(torch.from_numpy(x_(5)))  # a CPU tensor: as before, through NumPy, torch CPU tensors back
    assert all(type(o) is torch.Tensor and o.device.type == "cpu" for o in outs)
    check([o.numpy() for o in outs], x_(5))


def test_feeds_are_checked_with_one_line_errors(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cuda")
    with pytest.raises(InputError, match=r"^input 'x' has dtype float64, the model expects float32$"):
        m(cp.asarray(x_(0).astype(np.float64)))
    with pytest.raises(InputError, match=r"^input 'x' has shape \(4, 9\)"):
        m(on_cuda(np.zeros((4, 9), np.float32)))
    with pytest.raises(InputError, match=r"^input 'x' has dtype bfloat16, the model expects float32$"):
        m(torch.zeros((4, 8), dtype=torch.bfloat16).as_subclass(CudaTensorStandIn))
    with pytest.raises(InputError, match=r"^missing input 'x'"):
        m.executable.run_device({})

    class OtherDevice(CudaTensorStandIn):
        def __dlpack_device__(self):
            return (2, 1)

    with pytest.raises(InputError, match=r"^input 'x' is on device 1, the model was compiled for device 0$"):
        m(torch.from_numpy(x_(0)).as_subclass(OtherDevice))


def test_host_only_backends_refuse_device_arrays_by_name(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(graph(), backend="cpu")
    assert not hasattr(m.executable, "run_device")
    with pytest.raises(InputError, match=r"^input 'x' is a fake_cupy.FakeArray in device memory; backend 'cpu'"):
        m(cp.asarray(x_(0)))


def test_dynamic_batch_specializes_on_device_arrays(fake_gpu):
    cp, _ = fake_gpu
    g = graph(batch="n")
    m = graphopt.compile(g, backend="cuda")
    for batch in (2, 5):
        x = x_(batch, batch=batch)
        check([o.get() for o in m(cp.asarray(x))], x, g)
    assert m.stats["specializations"] == 2
    assert not hasattr(get_backend("cuda-emu").compile(g), "run_device")  # emulation takes host arrays only
