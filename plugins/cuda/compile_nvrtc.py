"""Compiler target 1: NVRTC, to a cubin for one SM architecture.

The translation unit is compiled by NVRTC (NVIDIA's ``cuda-bindings`` package over the
NVRTC library of the ``nvidia-cuda-nvrtc`` wheel or the CUDA toolkit) to machine code for
the device's compute capability. Neither needs a GPU, so CI compiles every generated
translation unit with exactly the options below for ``sm_80`` and ``sm_90``.

The whole cubin is taken at NVRTC's own size (CuPy 14's ``nvrtc.getCUBIN`` drops the last
byte, a NUL it mistakes for a string terminator: the ELF's program headers end there), and
checked (``cubin.read_cubin``: a complete ELF for the requested SM, holding every kernel
the launch plan names) before it is cached or loaded. A wgmma kernel (Hopper's warpgroup MMA,
``wgmma.py``) compiles for ``sm_90a``, the arch-specific target, whatever arch is asked for
(``kernel_arch``): it runs on compute capability 9.0 alone. Binaries are cached by content: the
key is (source, options, NVRTC version, graphopt version), the arch being one of the
options, so a new toolkit or a new graphopt never reuses a stale binary.

>>> path = compile_cubin(translation_unit(kernels), "sm_90")    # doctest: +SKIP
>>> read_cubin(path.read_bytes()).kernels                       # doctest: +SKIP
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

from graphopt.buildcache import cached_file, content_key, graphopt_version
from graphopt.errors import GraphoptError

from .cubin import read_cubin

# Production's options, besides -arch. Fast math stays off (NVRTC's default): the kernels
# must round as the NumPy reference does. Line info costs nothing at run time and lets a
# profiler map SASS back to the generated source.
NVRTC_OPTIONS = ("-std=c++17", "-lineinfo")
CI_ARCHS = ("sm_80", "sm_90")  # A100/A-series and H100/H200: every translation unit is compiled for both in CI
INSTALL_HINT = "pip install 'graphopt[cuda]'"


class NvrtcUnavailable(GraphoptError):
    """No NVRTC library or no Python binding for it."""


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NvrtcUnavailable(f"NVRTC's Python binding (cuda-bindings) is not installed ({INSTALL_HINT})") from exc
    return nvrtc


@functools.lru_cache(maxsize=1)
def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library in use; ``NvrtcUnavailable`` when there is none."""
    nvrtc = _nvrtc()
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the binding is there, the library is not
        raise NvrtcUnavailable(f"the NVRTC library could not be loaded ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}; {INSTALL_HINT})") from None
    _ok(err, "nvrtcVersion")
    return int(major), int(minor)


def nvrtc_available() -> tuple[bool, str]:
    try:
        major, minor = nvrtc_version()
    except NvrtcUnavailable as exc:
        return False, str(exc)
    return True, f"NVRTC {major}.{minor}"


def _ok(err, what: str) -> None:
    if int(err) != 0:
        raise GraphoptError(f"NVRTC {what} failed: {_name(err)}")


def _name(err) -> str:
    return getattr(err, "name", None) or f"error {int(err)}"


def _log(nvrtc, prog) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if int(err) != 0 or size <= 1:
        return ""
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\0").decode(errors="replace")


def nvrtc_cubin_bytes(source: str, arch: str, options: Iterable[str] | None = None,
                      name: str = "graphopt_kernels.cu") -> bytes:
    """Compile ``source`` for ``arch`` ("sm_90") with ``options`` (production's ``NVRTC_OPTIONS``
    by default) and return the complete, checked cubin."""
    nvrtc = _nvrtc()
    opts = [o.encode() for o in (*(NVRTC_OPTIONS if options is None else options), f"-arch={arch}")]
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _ok(err, "nvrtcCreateProgram")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(err) != 0:
            log = _log(nvrtc, prog)
            raise GraphoptError(f"NVRTC rejected the generated kernels for {arch} ({_name(err)}; options "
                                f"{' '.join(o.decode() for o in opts)})" + (f":\n{log[:4000]}" if log else ""))
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _ok(err, "nvrtcGetCUBINSize")
        buf = b" " * size
        (err,) = nvrtc.nvrtcGetCUBIN(prog, buf)
        _ok(err, "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    info = read_cubin(buf, f"NVRTC's cubin for {arch}")
    if info.arch != arch:
        raise GraphoptError(f"NVRTC wrote a cubin for {info.arch} when {arch} was asked for")
    return buf


def _valid_for(arch: str):
    def valid(path: Path) -> bool:
        try:
            return read_cubin(path.read_bytes(), str(path)).arch == arch
        except (OSError, GraphoptError):
            return False
    return valid


def compile_cubin(source: str, arch: str, options: Iterable[str] | None = None) -> Path:
    """The cached cubin of ``source`` for ``arch``, compiled by NVRTC on a miss (with production's
    ``NVRTC_OPTIONS`` unless ``options`` are given)."""
    options = tuple(NVRTC_OPTIONS if options is None else options)
    major, minor = nvrtc_version()
    key = content_key("nvrtc", source, " ".join((*options, f"-arch={arch}")), f"{major}.{minor}", graphopt_version())
    return cached_file("cuda-nvrtc", key, ".cubin",
                       lambda tmp: tmp.write_bytes(nvrtc_cubin_bytes(source, arch, options)),
                       valid=_valid_for(arch))


def arch_of(compute_capability: str) -> str:
    """``"90"`` (CuPy's spelling of a device's compute capability) -> ``"sm_90"``."""
    return f"sm_{compute_capability}"


def kernel_arch(kernel, arch: str) -> str:
    """The arch ``kernel``'s translation unit is compiled for when ``arch`` is asked for: ``arch``,
    except that a wgmma kernel (``wgmma.py``) has one target, ``sm_90a`` (its instructions exist on
    no other; a cubin for it loads on compute capability 9.0 only, and the driver refuses it
    elsewhere).

    >>> kernel_arch(render_tc_matmul(make_tc_matmul(64, 64, 64, engine="wgmma")), "sm_90")  # doctest: +SKIP
    'sm_90a'
    """
    return ARCH_SPECIFIC if getattr(kernel.spec, "engine", None) == "wgmma" else arch


ARCH_SPECIFIC = "sm_90a"  # wgmma (and TMA) kernels: Hopper's arch-specific features


def compile_kernels(kernels, arch: str) -> dict[str, Path]:
    """The cubin of each kernel (one translation unit per kernel, with the helpers it calls), by name,
    for ``arch`` (``kernel_arch``: a wgmma kernel's is sm_90a).

    NVRTC compiles one program on one thread, and a model's kernels are independent programs:
    compiled side by side on a thread pool (the binding releases the GIL), a ResNet-50 takes the
    time of its slowest kernel rather than of all of them; and each kernel's cubin is cached on
    its own, so another model or shape with the same kernel reuses it."""
    from concurrent.futures import ThreadPoolExecutor

    from .kernel import translation_unit, unique_kernels

    ks = unique_kernels(kernels)
    if not ks:
        return {}

    def one(k) -> Path:
        return compile_cubin(translation_unit([k]), kernel_arch(k, arch))

    workers = min(len(ks), os.cpu_count() or 1)
    if workers == 1:
        return {k.name: one(k) for k in ks}
    with ThreadPoolExecutor(workers, thread_name_prefix="graphopt-nvrtc") as pool:
        return dict(zip((k.name for k in ks), pool.map(one, ks)))


def load_kernels(kernels) -> dict:
    """Compile (or take from the cache) every kernel for the current device, check that each cubin
    holds its kernel, and load them through the device seam: the launchable functions by name."""
    from . import device

    arch = arch_of(device.compute_capability())
    by_name = {k.name: k for k in kernels}
    fns = {}
    for name, path in compile_kernels(kernels, arch).items():
        if name not in read_cubin(path.read_bytes(), str(path)).kernels:
            raise GraphoptError(f"the cubin for {kernel_arch(by_name[name], arch)} lacks the kernel {name}")
        fns[name] = device.get_function(device.load_module(path), name)
        if by_name[name].dyn_smem:  # sized at launch; past 48 KB only once the function allows it
            fns[name] = device.with_dynamic_smem(fns[name], by_name[name].dyn_smem)
    return fns


def load_module(source: str, kernel_names: Iterable[str] = ()):
    """Compile ``source`` (a whole translation unit) for the current device, check that it holds
    every kernel in ``kernel_names``, and load it through the device seam (benchmarks, tests)."""
    from . import device

    arch = arch_of(device.compute_capability())
    path = compile_cubin(source, arch)
    missing = sorted(set(kernel_names) - read_cubin(path.read_bytes(), str(path)).kernels)
    if missing:
        raise GraphoptError(f"the cubin for {arch} lacks the kernels {', '.join(missing[:5])}")
    return device.load_module(path)
