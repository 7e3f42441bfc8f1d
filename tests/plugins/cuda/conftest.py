import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cuda_cache_dir(tmp_path_factory):
    """Keep builds in the user's cache (shared across runs) unless a test run asks otherwise."""
    if "GRAPHOPT_TEST_FRESH_CACHE" in os.environ:
        os.environ["GRAPHOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphopt-cache"))
    yield


@pytest.fixture(scope="session", autouse=True)
def _every_emulated_kernel_through_real_nvrtc():
    """Every kernel an emulation test builds is also compiled by the real NVRTC, with production's
    function and options, for sm_80 and sm_90 (one translation unit per kernel, as the ``cuda``
    backend compiles them; cached by content, so a kernel costs this once per machine). A kernel
    NVRTC rejects fails the test that built it, so no kernel family, dtype or shape that the
    emulation certifies can be one a GPU would refuse. ``GRAPHOPT_TEST_NVRTC=0`` turns it off."""
    from graphopt.plugins.cuda import compile_emu, compile_nvrtc

    ok, _ = compile_nvrtc.nvrtc_available()
    if not ok or os.environ.get("GRAPHOPT_TEST_NVRTC", "1") == "0":
        yield
        return
    real = compile_emu.emu_source

    def emu_source_after_nvrtc(kernels):
        for arch in compile_nvrtc.CI_ARCHS:
            compile_nvrtc.compile_kernels(kernels, arch)
        return real(kernels)

    compile_emu.emu_source = emu_source_after_nvrtc
    try:
        yield
    finally:
        compile_emu.emu_source = real
