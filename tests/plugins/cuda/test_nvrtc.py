"""The real NVRTC (``cuda-bindings`` over the ``nvidia-cuda-nvrtc`` wheel: no GPU needed) compiles
what the ``cuda`` backend generates, through production's own function and options, to complete
cubins for sm_80 (A100 / A-series) and sm_90 (H100 / H200).

* a wrong option fails, and the backend's compile really uses ``NVRTC_OPTIONS``;
* the cached cubin is NVRTC's whole ELF (CuPy's ``getCUBIN`` drops its last byte), an older
  truncated entry is rebuilt, and NVIDIA's own cuobjdump reads it;
* a cubin lacking a kernel the launch plan names is refused before the driver sees it;
* every sample model at -O2 and -O3 compiles for both architectures. (Every other kernel family
  and dtype the emulation tests build is compiled the same way by test_cuda_device.py's
  ``test_every_case_compiles_for_cuda_on_the_fake_gpu``.)
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

import graphopt
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError
from graphopt.ir import TensorType
from graphopt.ops.registry import infer_graph
from graphopt.plugins.cuda import compile_nvrtc, sass
from graphopt.plugins.cuda.compile_nvrtc import CI_ARCHS, NVRTC_OPTIONS, compile_cubin, compile_kernels, nvrtc_cubin_bytes
from graphopt.plugins.cuda.cubin import read_cubin

_ok, _why = compile_nvrtc.nvrtc_available()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)

SRC = 'extern "C" __global__ void go_test_k(float* __restrict__ y) { y[threadIdx.x] = 2.0f * y[threadIdx.x]; }\n'


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", CI_ARCHS)
def test_production_options_compile_a_complete_cubin(arch, cache):
    path = compile_cubin(SRC, arch)
    info = read_cubin(path.read_bytes())
    assert info.arch == arch and "go_test_k" in info.kernels


def test_a_wrong_option_fails_the_compile():
    with pytest.raises(GraphoptError, match=r"NVRTC_ERROR_INVALID_OPTION.*--use_fast_math=false"):
        nvrtc_cubin_bytes(SRC, "sm_90", (*NVRTC_OPTIONS, "--use_fast_math=false"))
    with pytest.raises(GraphoptError, match=r"NVRTC_ERROR_INVALID_OPTION"):
        nvrtc_cubin_bytes(SRC, "sm_9000")


def test_the_backend_compiles_with_exactly_the_production_options(fake_gpu, monkeypatch):
    """A bad option in ``NVRTC_OPTIONS`` fails ``graphopt.compile(..., backend="cuda")``: the backend has no
    options of its own that could hide one."""
    cp, compiles = fake_gpu
    b = GraphBuilder()
    b.output(b.op("Relu", b.input("x", (4, 8))), "y")
    graphopt.compile(b.graph.clone(), backend="cuda")
    assert compiles == [("sm_90", NVRTC_OPTIONS)]
    monkeypatch.setattr(compile_nvrtc, "NVRTC_OPTIONS", (*NVRTC_OPTIONS, "--use_fast_math=false"))
    with pytest.raises(GraphoptError, match=r"NVRTC rejected the generated kernels for sm_90 \(NVRTC_ERROR_INVALID_OPTION"):
        graphopt.compile(b.graph.clone(), backend="cuda")


def test_the_cached_cubin_is_nvrtcs_whole_elf(cache):
    from cuda.bindings import nvrtc

    path = compile_cubin(SRC, "sm_90")
    err, prog = nvrtc.nvrtcCreateProgram(SRC.encode(), b"graphopt_kernels.cu", 0, [], [])
    opts = [o.encode() for o in (*NVRTC_OPTIONS, "-arch=sm_90")]
    nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    err, size = nvrtc.nvrtcGetCUBINSize(prog)
    nvrtc.nvrtcDestroyProgram(prog)
    assert path.stat().st_size == size  # NVRTC's own count, not one byte short
    if sass.tool("cuobjdump") is None:
        pytest.skip("cuobjdump is not installed (pip install 'graphopt[cuda-tools]')")
    assert "go_test_k" in sass.sass(path)
    assert sass.resource_usage(path)["go_test_k"].local == 0


def test_an_older_truncated_entry_is_rebuilt(cache):
    """A cubin cached with CuPy's one-byte-short ``getCUBIN`` (and a digest that matches those bytes)
    is not a complete ELF: it is compiled again instead of being handed to the driver."""
    from graphopt.buildcache import _digest

    path = compile_cubin(SRC, "sm_90")
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(_digest(path) + "\n")
    again = compile_cubin(SRC, "sm_90")
    assert again == path and again.read_bytes() == whole


def test_read_cubin_refuses_what_is_not_a_whole_cubin_for_the_gpu():
    whole = nvrtc_cubin_bytes(SRC, "sm_80")
    assert read_cubin(whole).arch == "sm_80"
    for data, why in ((whole[:-1], "program headers end"), (whole[:40], "no ELF header"),
                      (b".version 8.0\n.target sm_90\n", "no ELF header"),
                      (open(os.path.realpath("/bin/true"), "rb").read(), "not EM_CUDA")):
        with pytest.raises(GraphoptError, match=why):
            read_cubin(data)


def test_a_cubin_without_a_planned_kernel_is_refused(fake_gpu):
    with pytest.raises(GraphoptError, match=r"the cubin for sm_90 lacks the kernels go_not_there"):
        compile_nvrtc.load_module(SRC, ["go_test_k", "go_not_there"])


SAMPLES = ["mnist_convnet", "vgg_style", "resnet_style", "mobilenet_v2_style", "bert_style", "gpt_style_block"]


@pytest.mark.parametrize("level", [2, 3])
@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_model_compiles_for_sm80_and_sm90(name, level, fake_gpu):
    """Through the ``cuda`` backend on the stand-in (which compiles each kernel for sm_90 and loads its
    cubin, checking that it holds the kernel), then the same translation units for sm_80."""
    pytest.importorskip("torch")
    from samples.models import load_graph
    from test_cuda_models import sample_feeds

    g = load_graph(name).clone()
    feeds = sample_feeds(g)
    for v in g.inputs:  # the batch of the feeds: the shapes the first run would specialize to
        v.type = TensorType(v.dtype, np.shape(feeds[v.name]))
    infer_graph(g)
    kernels = graphopt.compile(g, backend="cuda", level=level).executable.lowered.kernels
    assert kernels
    for arch in CI_ARCHS:  # sm_90 again: taken from the cache the backend's compile filled
        cubins = compile_kernels(kernels, arch)
        assert set(cubins) == {k.name for k in kernels}
        for name, path in cubins.items():
            info = read_cubin(path.read_bytes())
            assert info.arch == arch and name in info.kernels


def test_a_launch_plan_outside_cudas_limits_is_refused_at_compile_time():
    from graphopt.plugins.cuda.kernel import check_launch

    check_launch("go_k", (2**31 - 1, 65535, 65535), (32, 32, 1))
    for grid, block in (((1, 65536, 1), (32, 1, 1)), ((1, 1, 1), (1025, 1, 1)), ((1, 1, 1), (16, 16, 8)),
                        ((0, 1, 1), (32, 1, 1))):
        with pytest.raises(GraphoptError, match=r"^kernel go_k: grid .* is outside CUDA's launch limits"):
            check_launch("go_k", grid, block)
