"""Shared helpers for the CUDA backend tests: run rendered kernels under
emulation on guarded buffers, and compile them with nvcc.

A test module lists its cases at import time (``Case``: a rendered kernel,
its launch dims and a function making inputs and the expected output); one
module-scoped library holds all of them, so a module costs one host compile
(cached by content across runs).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from graphopt.plugins.cuda import emucheck
from graphopt.plugins.cuda.compile_emu import build_library, emu_available
from graphopt.plugins.cuda.hostmem import buffer_empty
from graphopt.plugins.cuda.kernel import Kernel

GUARD = 256  # bytes of canary before and after every output buffer
CANARY = 0xA5

needs_emu = pytest.mark.skipif(not emu_available()[0], reason=f"no CUDA emulation: {emu_available()[1]}")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


class Guarded:
    """An aligned output buffer with canary bytes on both sides (out-of-bounds writes show);
    under ``GRAPHOPT_EMU_CHECK`` an exact allocation instead (AddressSanitizer's red zones
    catch reads as well)."""

    def __init__(self, shape, dtype, fill=np.nan):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.guard = 0 if emucheck.modes() else GUARD
        self.raw = buffer_empty((n + 2 * self.guard,), np.uint8)
        self.raw[:] = CANARY
        self.array = self.raw[self.guard:self.guard + n].view(dtype).reshape(shape)
        if dtype.kind == "f":
            self.array[...] = fill
        else:
            self.array[...] = 0

    @property
    def ptr(self) -> int:
        return self.array.ctypes.data

    def check_guards(self) -> None:
        assert (self.raw[:self.guard] == CANARY).all(), "kernel wrote before its output buffer"
        assert (self.raw[self.guard + self.array.nbytes:] == CANARY).all(), "kernel wrote past its output buffer"


def aligned(a: np.ndarray) -> np.ndarray:
    out = buffer_empty(a.shape, a.dtype)
    out[...] = a
    return out


@dataclass
class Case:
    """One kernel run: ``make()`` returns (output shape, output dtype, input arrays, expected)."""

    id: str
    kernel: Kernel
    spec: object
    make: Callable[[np.random.Generator], tuple]
    rtol: float = 1e-4
    atol: float = 1e-5
    outputs_first: bool = False  # the kernel takes every output before the inputs (multi-result elementwise)


def planted(case: Case, cid: str, old: str, new: str) -> Case:
    """``case`` with ``old`` replaced by ``new`` in its kernel's source (renamed ``<name>_<cid>``):
    a planted bug that a test expects emulation to catch."""
    k = case.kernel
    assert old in k.source, old
    name = k.name + "_" + cid
    bad = Kernel(name, k.source.replace(old, new).replace(k.name, name), k.params, k.helpers, True, k.spec)
    return Case(cid, bad, case.spec, case.make, 0, 0)


def run_case(lib, case: Case, seed: int = 0):
    """Run ``case`` under emulation; return (output, expected) after checking the guards.
    Under the race check (``GRAPHOPT_EMU_CHECK=race``) it runs once per thread order, the
    outputs starting as that order's garbage, and every run must give the same bits."""
    rng = np.random.default_rng(seed)
    made = case.make(rng)
    out_shape, out_dtype, inputs, expected = made[:4]
    extra = made[4] if len(made) > 4 else []
    ins = [aligned(np.ascontiguousarray(a)) if a.flags.c_contiguous or a.ndim == 0 else a for a in inputs]
    first = None
    for order in emucheck.race_seeds():
        y = Guarded(out_shape, out_dtype)
        extras = [Guarded(s, d) for s, d, _ in extra]
        if "race" in emucheck.modes():
            for g in (y, *extras):
                g.raw[g.guard:len(g.raw) - g.guard] = emucheck.fill_byte(order)
        if case.outputs_first:
            ptrs = [y.ptr, *(e.ptr for e in extras), *(a.ctypes.data for a in ins)]
        else:  # y, inputs, then further outputs (LayerNormalization's Mean and InvStdDev)
            ptrs = [y.ptr, *(a.ctypes.data for a in ins), *(e.ptr for e in extras)]
        if not getattr(case.spec, "empty", False):
            lib.set_seed(order)
            lib.launch(case.kernel.name, case.spec.grid(), case.spec.block(), ptrs)
        y.check_guards()
        for e in extras:
            e.check_guards()
        if first is None:
            first = (y, extras)
        else:
            same = all(np.array_equal(a.raw, b.raw)
                       for a, b in zip((y, *extras), (first[0], *first[1])))
            assert same, (f"{case.id}: results differ between thread orders 0 and {order} "
                          f"({emucheck.SEED_NAMES[order]}): a race on shared memory or a read of unwritten memory")
    y, extras = first
    return y.array, expected, [(e.array, exp) for e, (_, _, exp) in zip(extras, extra)]


def check_case(lib, case: Case, seed: int = 0) -> None:
    got, expected, extra = run_case(lib, case, seed)
    np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol, err_msg=case.id)
    for g, e in extra:
        np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=case.id)


def module_library(cases: list[Case]):
    return build_library([c.kernel for c in cases])


def assert_ptxas_clean(report: dict, kernels, max_registers: int = 255) -> None:
    """Every kernel compiled, none spills, registers within the budget."""
    missing = [k.name for k in kernels if k.name not in report]
    assert not missing, f"ptxas reported nothing for {missing}"
    bad = {k.name: report[k.name] for k in kernels
           if report[k.name].spill_stores or report[k.name].registers > max_registers}
    assert not bad, f"kernels spill or use too many registers: {bad}"


def kernel_module_tests(cases: list[Case], max_registers: int, extra_kernels=()):
    """The fixture and two tests every kernel-family module runs over its ``cases``:
    each kernel under emulation against its reference, and all of them through nvcc
    for sm_90 (no spills, registers within ``max_registers``).

    >>> lib, test_matches_reference, test_compiles_for_sm90 = kernel_module_tests(CASES, 64)  # doctest: +SKIP
    """

    @pytest.fixture(scope="module")
    def lib():
        return module_library(cases)

    @needs_emu
    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_matches_reference(lib, case):
        check_case(lib, case)

    @needs_nvcc
    def test_compiles_for_sm90(record_property):
        from graphopt.plugins.cuda.compile_nvcc import nvcc_check

        kernels = [c.kernel for c in cases] + list(extra_kernels)
        report = nvcc_check(kernels)
        record_property("ptxas", {k: (r.registers, r.spill_stores, r.smem_bytes) for k, r in report.items()})
        assert_ptxas_clean(report, kernels, max_registers)

    return lib, test_matches_reference, test_compiles_for_sm90


def run_conversions(helpers, widen: str, narrow: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a 16-bit float type's device conversions under emulation: ``narrow`` on every float32
    of ``x`` and ``widen`` on all 65536 bit patterns; returns (narrowed bits, widened floats).

    >>> bits, floats = run_conversions(HALF_HELPERS, "go_h2f", "go_f2h", x)   # doctest: +SKIP
    """
    from graphopt.plugins.cuda.kernel import Param

    name = f"t_{widen}_{narrow}"
    src = (f'extern "C" __global__ void {name}(unsigned short* y, float* z, const float* x, const unsigned short* h) '
           "{\n    const int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
           f"    if (i < 65536) {{ z[i] = {widen}(h[i]); }}\n"
           f"    if (i < {len(x)}) {{ y[i] = {narrow}(x[i]); }}\n}}\n")
    k = Kernel(name, src, (Param("y", "unsigned short*"), Param("z", "float*"), Param("x", "const float*"),
                           Param("h", "const unsigned short*")), tuple(helpers), False)
    lib = build_library([k])
    xs = aligned(np.asarray(x, np.float32))
    h = aligned(np.arange(65536, dtype=np.uint32).astype(np.uint16))
    y, z = Guarded((len(x),), np.uint16), Guarded((65536,), np.float32)
    lib.launch(name, (256, 1, 1), (256, 1, 1), [y.ptr, z.ptr, xs.ctypes.data, h.ctypes.data])
    y.check_guards()
    z.check_guards()
    return y.array, z.array
