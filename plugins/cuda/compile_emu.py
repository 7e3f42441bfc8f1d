"""Compiler target 3: host emulation.

The translation unit that would go to NVRTC is compiled unchanged by the host
C++ compiler (``g++ -fopenmp -include emu/cuda_emu.h``) into a shared library,
with one ``extern "C"`` launch wrapper per kernel appended after it::

    int go_emu_launch_<kernel>(const unsigned dims[6], void* const* args);

``dims`` is grid x, y, z then block x, y, z; ``args`` holds the kernel's
pointer arguments in order. ``go_emu_run_list`` runs a whole list of launches
in one call. Libraries are cached by content (source, flags, compiler version,
header, graphopt version). ``GRAPHOPT_EMU_CHECK`` builds checked libraries
(``emucheck.py``).

Kernels compiled together share one library: inside ``with kernel_batch():``
every ``EmuLibrary`` request is deferred until the first launch, so a test
module (or a set of models) costs one compiler run.

>>> lib = build_library([kernel])                     # doctest: +SKIP
>>> lib.launch(kernel.name, (4, 1, 1), (128, 1, 1), [y.ctypes.data, x.ctypes.data])   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
import platform
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Sequence

from graphopt.errors import GraphoptError

from graphopt.buildcache import cached_file, content_key, graphopt_version
from . import emucheck
from .kernel import Kernel, translation_unit, unique_kernels

HEADER = Path(__file__).parent / "emu" / "cuda_emu.h"
# -ffp-contract=off: a*b+c stays two roundings, as the NumPy reference computes it (fmaf is
# one, as on the device); -fno-math-errno: sqrtf is one instruction (nothing reads errno)
CXX_FLAGS = ("-std=c++17", "-O2", "-fopenmp", "-fPIC", "-shared", "-w", "-fvisibility=hidden",
             "-ffp-contract=off", "-fno-math-errno")
# x86-64-v3 (AVX2, FMA, ...): without it every fmaf of a GEMM is a call into libm
X86_64_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}


@functools.lru_cache(maxsize=None)
def arch_flags() -> tuple[str, ...]:
    """Target flags for this CPU: ``-march=x86-64-v3`` where it has those features (the
    flags are part of the build key, so a cache shared with older CPUs stays apart)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines()
                         if l.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return ()
    return ("-march=x86-64-v3",) if X86_64_V3 <= flags else ()


class EmuUnavailable(GraphoptError):
    """No host C++ compiler with OpenMP."""


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EmuUnavailable("CUDA emulation needs a host C++ compiler with OpenMP (g++); none was found")
    return cxx


@functools.lru_cache(maxsize=None)
def compiler_version(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def emu_available() -> tuple[bool, str]:
    try:
        cxx = host_compiler()
    except EmuUnavailable as exc:
        return False, str(exc)
    if not HEADER.is_file():
        return False, f"the emulation header {HEADER} is missing"
    return True, cxx


# what makes a kernel's threads need fibers under emulation (cuda_emu.h): they wait for each other
BARRIER = re.compile(r"\b(__syncthreads|__syncwarp|__shfl_\w*sync)\b")


def needs_barriers(k: Kernel) -> bool:
    """Whether ``k`` or a helper it calls waits at a barrier (read from the source: a kernel
    marked ``uses_barrier=False`` that has one would otherwise run as a plain loop)."""
    return k.uses_barrier or any(BARRIER.search(text) for text in (k.source, *(h.source for h in k.helpers)))


def launch_wrappers(kernels: Sequence[Kernel]) -> str:
    lines = ["", "// ---- emulation launch wrappers (not part of the CUDA source) ----"]
    for k in kernels:
        args = ", ".join(f"({p.ctype})a[{i}]" for i, p in enumerate(k.params))
        sync = "true" if needs_barriers(k) else "false"
        lines.append(f'extern "C" __attribute__((visibility("default"))) int go_emu_launch_{k.name}(const unsigned* d, void* const* a) {{\n'
                     f"    return go_emu::launch(d, {sync}, [&] {{ {k.name}({args}); }});\n}}")
    return "\n".join(lines) + "\n"


def emu_source(kernels: Sequence[Kernel]) -> str:
    """The exact CUDA translation unit followed by the launch wrappers."""
    ks = unique_kernels(kernels)
    return translation_unit(ks) + launch_wrappers(ks)


_loaded: dict[str, ctypes.CDLL] = {}
_load_lock = threading.Lock()


def _load(path: Path) -> ctypes.CDLL:
    with _load_lock:
        lib = _loaded.get(str(path))
        if lib is None:
            # OpenMP reads its wait policy once, when libgomp is loaded. A block
            # has up to 1024 threads on a few cores, so waiting threads must sleep,
            # not spin; restore the caller's environment afterwards.
            old = os.environ.get("OMP_WAIT_POLICY")
            os.environ["OMP_WAIT_POLICY"] = old or "passive"
            try:
                lib = ctypes.CDLL(str(path))
            finally:
                if old is None:
                    del os.environ["OMP_WAIT_POLICY"]
            _loaded[str(path)] = lib
        return lib


LAUNCH_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p))


class EmuLibrary:
    """A loaded emulation library: launches kernels by name."""

    def __init__(self, path: Path, kernels: Sequence[Kernel], checks: frozenset[str] = frozenset()):
        self.path = path
        self.checks = checks  # what it was built to check (emucheck.MODES)
        self.lib = _load(path)
        self._fns = {}
        for k in kernels:
            fn = getattr(self.lib, f"go_emu_launch_{k.name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p)]
            self._fns[k.name] = (fn, len(k.params))
        self.lib.go_emu_check_report.restype = ctypes.c_char_p
        self.run_list_fn = self.lib.go_emu_run_list
        self.run_list_fn.restype = ctypes.c_int

    def address(self, name: str) -> int:
        """The C address of kernel ``name``'s launch wrapper (for ``go_emu_run_list``)."""
        return ctypes.cast(self._fns[name][0], ctypes.c_void_p).value

    def set_seed(self, seed: int) -> None:
        """Thread and block orders (and shared memory's garbage) for the race check's next launches."""
        if "race" in self.checks:
            self.lib.go_emu_set_seed(ctypes.c_uint(seed))

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], ptrs: Sequence[int]) -> None:
        fn, nparams = self._fns[name]
        if len(ptrs) != nparams:
            raise GraphoptError(f"kernel {name} takes {nparams} arguments, got {len(ptrs)}")
        dims = (ctypes.c_uint * 6)(*grid, *block)
        args = (ctypes.c_void_p * max(nparams, 1))(*ptrs)
        rc = fn(dims, args)
        if self.checks:
            emucheck.log_launch(name, rc == 0)
        if rc != 0:
            raise self.error(name, rc, grid, block)

    def error(self, name: str, rc: int, grid, block) -> GraphoptError:
        if rc == -3:
            report = emucheck.summary((self.lib.go_emu_check_report() or b"").decode(errors="replace"))
            under = f" under {emucheck.ENV}={','.join(sorted(self.checks))}" if self.checks else ""
            return GraphoptError(f"emulated kernel {name} (grid {tuple(grid)}, block {tuple(block)}) failed{under}: "
                                 f"{report}")
        why = "bad block size" if rc == -1 else f"error {rc}"
        return GraphoptError(f"emulated launch of {name} failed: {why} (grid {tuple(grid)}, block {tuple(block)})")


def build_library(kernels: Sequence[Kernel]) -> EmuLibrary:
    """Compile (or fetch from the cache) one library holding all ``kernels``."""
    ks = unique_kernels(kernels)
    cxx = host_compiler()
    src = emu_source(ks)
    header = HEADER.read_text()
    checks = emucheck.modes()
    flags = (*CXX_FLAGS, *arch_flags(), *emucheck.compile_flags(checks))
    key = content_key("emu", src, " ".join(flags), compiler_version(cxx), header, graphopt_version())

    def build(tmp: Path) -> None:
        src_path = tmp.with_suffix(".cu")
        src_path.write_text(src)
        try:
            cmd = [cxx, *flags, "-include", str(HEADER), "-x", "c++", str(src_path), "-o", str(tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise GraphoptError("host compile of the emulated CUDA kernels failed:\n"
                                    + "\n".join(res.stderr.splitlines()[:40]))
        finally:
            src_path.unlink(missing_ok=True)

    path = cached_file("cuda-emu", key, ".so", build)
    return EmuLibrary(path, ks, checks)


class KernelBatch:
    """Kernels collected to be compiled in one translation unit, at first use."""

    def __init__(self):
        self._pending: dict[str, Kernel] = {}
        self._built: dict[str, EmuLibrary] = {}

    def add(self, kernels: Sequence[Kernel]) -> "KernelBatch":
        for k in kernels:
            if k.name not in self._built:
                self._pending.setdefault(k.name, k)
        return self

    def flush(self) -> None:
        if self._pending:
            lib = build_library(list(self._pending.values()))
            for name in self._pending:
                self._built[name] = lib
            self._pending.clear()

    def library(self, name: str) -> EmuLibrary:
        """The library holding kernel ``name`` (built now with everything pending, if need be)."""
        lib = self._built.get(name)
        if lib is None:
            self.flush()
            lib = self._built[name]
        return lib

    def launch(self, name: str, grid, block, ptrs) -> None:
        self.library(name).launch(name, grid, block, ptrs)


_batch: contextvars.ContextVar[KernelBatch | None] = contextvars.ContextVar("graphopt_cuda_emu_batch", default=None)


@contextlib.contextmanager
def kernel_batch() -> Iterator[KernelBatch]:
    """Defer emulation builds: every kernel registered inside is compiled together."""
    b = KernelBatch()
    token = _batch.set(b)
    try:
        yield b
    finally:
        _batch.reset(token)


def register_kernels(kernels: Sequence[Kernel]) -> KernelBatch:
    """The batch that will build ``kernels``: the active one, or a fresh one of their own."""
    b = _batch.get()
    return (b if b is not None else KernelBatch()).add(kernels)
