"""Compiler target 1: NVRTC on a real GPU, through CuPy.

The translation unit is compiled by NVRTC for the device's compute capability
and loaded with ``cupy.RawModule``. Binaries are cached by content: the key is
(source, options, compute capability, NVRTC version, graphopt version), so a
new driver/toolkit or a new graphopt never reuses a stale binary.

>>> module = load_module(translation_unit(kernels))    # doctest: +SKIP
>>> fn = module.get_function(kernels[0].name)           # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

from graphopt.errors import GraphoptError

from graphopt.buildcache import cached_file, content_key, graphopt_version

NVRTC_OPTIONS = ("-std=c++17", "--use_fast_math=false", "-lineinfo")


def cupy_available() -> tuple[bool, str]:
    try:
        import cupy
    except Exception:  # ImportError, or a CuPy built for another CUDA
        return False, "CuPy is not installed (pip install cupy-cuda13x)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if n == 0:
        return False, "no CUDA device"
    return True, ""


def load_module(source: str):
    """Compile ``source`` with NVRTC (or fetch the cached binary) and load it."""
    import cupy
    from cupy_backends.cuda.libs import nvrtc

    cc = str(cupy.cuda.Device().compute_capability)  # "90" on an H100
    use_cubin = hasattr(nvrtc, "getCUBIN")  # older CuPy only exposes PTX, which the driver JIT-compiles
    arch = f"-arch={'sm' if use_cubin else 'compute'}_{cc}"
    options = (*NVRTC_OPTIONS, arch)
    key = content_key("nvrtc", source, " ".join(options), cc, ".".join(map(str, nvrtc.getVersion())),
                      graphopt_version())

    def build(tmp: Path) -> None:
        prog = nvrtc.createProgram(source, "graphopt_kernels.cu", (), ())
        try:
            try:
                nvrtc.compileProgram(prog, list(options))
            except Exception as exc:
                log = nvrtc.getProgramLog(prog)
                raise GraphoptError(f"NVRTC failed on the generated kernels: {exc}\n{log[:4000]}") from exc
            if use_cubin:
                tmp.write_bytes(bytes(nvrtc.getCUBIN(prog)))
            else:
                tmp.write_text(nvrtc.getPTX(prog))
        finally:
            nvrtc.destroyProgram(prog)

    path = cached_file("cuda-nvrtc", key, ".cubin" if use_cubin else ".ptx", build)
    return cupy.RawModule(path=str(path))
