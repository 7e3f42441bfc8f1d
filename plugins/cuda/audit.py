"""A static audit of generated kernels: what an expert reads in the SASS, checked per kernel.

Each kernel is compiled by NVRTC with production's function and options
(``compile_nvrtc.compile_kernels``) for each architecture, its resources and SASS read with
cuobjdump (``sass.py``), and these checks run on it:

| check | passes when | applies to |
|---|---|---|
| ``tensor_cores`` | ``HMMA``/``HGMMA``/``IMMA`` instructions (``HGMMA`` for a wgmma kernel) | float16/bfloat16/int8 matrix kernels |
| ``async_copy`` | ``LDGSTS`` (cp.async) or ``UTMALDG``/``UBLKCP`` (TMA) | matrix kernels (their mainloops) |
| ``vec16`` | 16-byte global loads (``LDG.E.128``, ``LDGSTS...128``) or TMA | matrix kernels |
| ``no_local`` | no ``LDL``/``STL``, no local memory, no stack frame (spills or arrays indexed at run time) | every kernel |
| ``occupancy`` | at least ``MIN_WARPS`` warps resident per SM given its registers, shared memory and block | every kernel |

``sm_90a`` audits the Hopper build: the models lowered with the wgmma mainloop
(``lower_for_cuda(graph, level, "sm_90a")``: the GEMMs and the channels-last convolutions whose
operands are copied 16 bytes at a time), every kernel compiled for sm_90a; a wgmma kernel of
either family must show ``HGMMA``.

A check either must hold now (a failure fails CI), or is an **expected failure** listed in
``EXPECTED`` with its reason (a kernel family whose mainloop does not have it yet); an
expected failure that passes is reported as such, so it can be turned into a requirement.
Kernel families that use CUDA cores by design (the int8 ``dp4a`` kernels where ``mma`` does
not pay) are ``n/a`` for ``tensor_cores``.

>>> audits = audit_kernels(lowered.launches, ("sm_80", "sm_90"))   # doctest: +SKIP
>>> print(audit_table(audits))                                       # doctest: +SKIP
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .roofline import matrix_work

CHECKS = ("tensor_cores", "async_copy", "vec16", "no_local", "occupancy")
MIN_WARPS = 8  # resident warps per SM: a block of 256 threads, or two of 128, at the least

# arch -> (registers, shared memory bytes usable by blocks, max threads, max blocks) per SM
SM_LIMITS = {"sm_80": (65536, 164 * 1024, 2048, 32), "sm_90": (65536, 228 * 1024, 2048, 32),
             "sm_90a": (65536, 228 * 1024, 2048, 32)}
# The arch whose kernels are lowered with the Hopper mainloop (wgmma.py): its wgmma GEMMs and convolutions
# (spec.engine "wgmma") must show HGMMA
HOPPER_ARCH = "sm_90a"
SMEM_RESERVED = 1024  # per block, by the driver (sm_80 and later)

TENSOR_OPS = re.compile(r"\b(HMMA|HGMMA|IMMA|IGMMA)\.")
WGMMA_OPS = re.compile(r"\bHGMMA\.")  # a wgmma kernel's tensor-core instruction: warpgroup MMA, not HMMA
ASYNC_OPS = re.compile(r"\b(LDGSTS|UTMALDG|UBLKCP)\b")
VEC16_OPS = re.compile(r"\b(LDG\.E\.128|LDG\.E\.(?:\w+\.)*128|LDGSTS\.E\.(?:\w+\.)*128|UTMALDG|UBLKCP)\b")
LOCAL_OPS = re.compile(r"\b(LDL|STL)(\.|\s)")

# kernel families (spec class) meant to run their matrix work on tensor cores
TENSOR_CORE_FAMILIES = {"TcMatmulSpec", "TcConvSpec", "Int8MmaGemmSpec", "FlashAttentionSpec"}
# families whose matrix work is on CUDA cores by design, and why
CUDA_CORE_BY_DESIGN = {
    "Int8GemmSpec": "dp4a where mma.sync does not pay (small M, N or K)",
    "AttentionSpec": "heads wider than the flash kernel's 128",
}
def _narrow_gemm(spec) -> bool:
    """A GEMM operand whose contiguous rows are not whole 16-byte runs (copies of 8 halves)."""
    def rows_of_8(v, rows: int, cols: int) -> bool:
        *outer, sr, sc = v.strides
        run = cols if sc == 1 else rows if sr == 1 else 1
        return run % 8 == 0 and v.offset % 8 == 0 and all(x % 8 == 0 for x in (*outer, sr, sc) if x != 1)
    return not (rows_of_8(spec.a, spec.M, spec.K) and rows_of_8(spec.b, spec.K, spec.N))


def _narrow_conv(spec) -> bool:
    """An NCHW im2col (gathered element by element) or channels a group not a multiple of 8."""
    return spec.layout != "NHWC" or (spec.c // spec.groups) % 8 != 0


NARROW_GEMM = ("operand rows that are not whole 16-byte runs (K or N not a multiple of 8, odd strides) are "
               "copied in narrower pieces", _narrow_gemm)
NARROW_CONV = ("an NCHW im2col, or a group of channels not a multiple of 8 (a first convolution over 3), is "
               "gathered element by element", _narrow_conv)
# (check, family) -> why it is expected to fail today: a reason (always) or (reason, the specs it
# applies to); a family not listed must pass
EXPECTED = {
    ("async_copy", "TcMatmulSpec"): NARROW_GEMM,
    ("async_copy", "TcConvSpec"): NARROW_CONV,
    ("async_copy", "Int8MmaGemmSpec"): "the int8 mma GEMM stages one slice with plain loads",
    ("async_copy", "Int8GemmSpec"): "the dp4a GEMM stages with plain loads",
    ("async_copy", "MatmulSpec"): "the SIMT GEMM stages with plain loads",
    ("async_copy", "ConvSpec"): "the NCHW implicit GEMM gathers its im2col tile element by element",
    ("async_copy", "ConvNhwcSpec"): "the NHWC implicit GEMM stages with plain loads",
    ("async_copy", "FlashAttentionSpec"): ("heads whose width or strides are not multiples of 8 are staged one "
                                           "element at a time", lambda spec: not (spec.vec_k and spec.vec_v)),
    ("async_copy", "AttentionSpec"): "one warp per query row reads K and V straight from global memory",
    ("vec16", "TcMatmulSpec"): NARROW_GEMM,
    ("vec16", "TcConvSpec"): NARROW_CONV,
    ("vec16", "Int8MmaGemmSpec"): "A is staged a 32-bit word a load",
    ("vec16", "Int8GemmSpec"): "A is staged a 32-bit word a load",
    ("vec16", "MatmulSpec"): "the SIMT GEMM loads one float at a time",
    ("vec16", "ConvSpec"): "the im2col gather loads one element at a time",
    ("vec16", "ConvNhwcSpec"): "the im2col gather loads one element at a time",
    ("vec16", "AttentionSpec"): "K and V are read one element a load",
    ("vec16", "FlashAttentionSpec"): ("heads whose width or strides are not multiples of 8 are staged one "
                                      "element at a time", lambda spec: not (spec.vec_k and spec.vec_v)),
}


def expected_failure(check: str, spec) -> str | None:
    """Why ``check`` is expected to fail on ``spec``'s kernel today, or None (it must pass)."""
    rule = EXPECTED.get((check, type(spec).__name__))
    if isinstance(rule, tuple):
        reason, applies = rule
        return reason if applies(spec) else None
    return rule


@dataclass
class KernelAudit:
    kernel: str
    family: str
    arch: str
    threads: int
    registers: int
    shared: int  # bytes per block, static and dynamic
    local: int
    stack: int
    warps_per_sm: int
    results: dict[str, str] = field(default_factory=dict)  # check -> pass | FAIL | xfail: why | XPASS: why | n/a

    def failures(self) -> list[str]:
        """The checks that must hold and do not."""
        return [c for c, r in self.results.items() if r == "FAIL"]


def resident_warps(arch: str, threads: int, registers: int, shared: int) -> int:
    """Warps per SM that the registers, shared memory, threads and block limits allow."""
    regs_sm, smem_sm, threads_sm, blocks_sm = SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256  # allocated in units of 256 per warp
    blocks = min(blocks_sm, threads_sm // max(threads, 1), (regs_sm // regs_per_warp) // warps,
                 smem_sm // (shared + SMEM_RESERVED) if shared else blocks_sm)
    return blocks * warps


def _status(check: str, spec, ok: bool) -> str:
    why = expected_failure(check, spec)
    if why is None:
        return "pass" if ok else "FAIL"
    return f"XPASS: {why}" if ok else f"xfail: {why}"


def audit_one(kernel, threads: int, arch: str, sass_text: str, res) -> KernelAudit:
    """The checks of one compiled kernel (``res``: its ``sass.Resources``)."""
    family = type(kernel.spec).__name__
    shared = res.shared + getattr(kernel, "dyn_smem", 0)  # static, plus the dynamic bytes its launch asks for
    warps = resident_warps(arch, threads, res.registers, shared)
    a = KernelAudit(kernel.name, family, arch, threads, res.registers, shared, res.local, res.stack, warps)
    work = matrix_work(kernel.spec)
    low = work is not None and work[1] in ("float16", "bfloat16", "int8")
    if not low:
        a.results["tensor_cores"] = "n/a"  # float32 matrix work stays on CUDA cores: no TF32, it rounds as the reference
    elif family in CUDA_CORE_BY_DESIGN:
        a.results["tensor_cores"] = f"n/a: {CUDA_CORE_BY_DESIGN[family]}"
    else:
        ops = WGMMA_OPS if getattr(kernel.spec, "engine", None) == "wgmma" else TENSOR_OPS
        a.results["tensor_cores"] = _status("tensor_cores", kernel.spec, bool(ops.search(sass_text)))
    for check, pattern in (("async_copy", ASYNC_OPS), ("vec16", VEC16_OPS)):
        a.results[check] = "n/a" if work is None else _status(check, kernel.spec, bool(pattern.search(sass_text)))
    clean = not LOCAL_OPS.search(sass_text) and res.local == 0 and res.stack == 0
    a.results["no_local"] = _status("no_local", kernel.spec, clean)
    a.results["occupancy"] = _status("occupancy", kernel.spec, warps >= MIN_WARPS)
    return a


def audit_kernels(launches: Iterable, archs: Sequence[str] = ("sm_80", "sm_90")) -> list[KernelAudit]:
    """Every distinct kernel of ``launches`` (objects with ``kernel`` and ``block``) compiled by
    NVRTC for each of ``archs`` and audited; one ``KernelAudit`` per (kernel, arch)."""
    from . import sass
    from .compile_nvrtc import compile_kernels, kernel_arch

    threads = {}
    kernels = {}
    for l in launches:
        kernels.setdefault(l.kernel.name, l.kernel)
        b = l.block
        threads[l.kernel.name] = max(threads.get(l.kernel.name, 0), int(b[0]) * int(b[1]) * int(b[2]))
    out = []
    for arch in archs:
        cubins = compile_kernels(list(kernels.values()), arch)  # a wgmma kernel's cubin is sm_90a's
        for name, k in kernels.items():
            path = cubins[name]
            res = sass.resource_usage(path)[name]
            # disassembling takes a quarter second a kernel: only the matrix kernels' instructions are
            # checked; the others' local-memory traffic shows in their resources (LOCAL, STACK)
            text = sass.sass(path) if matrix_work(k.spec) is not None else ""
            out.append(audit_one(k, threads[name], kernel_arch(k, arch), text, res))
    return out


def lower_for_cuda(graph, level: int = 2, arch: str | None = None):
    """``graph`` (static shapes) through ``level``'s graph passes and the ``cuda`` backend's
    lowering passes, partitioned into launches: the kernels a GPU would run, without compiling.
    For ``arch`` sm_90a the float16/bfloat16 GEMMs and convolutions that wgmma suits get its
    mainloop (``wgmma.py``, ``wgmma.choose_engine``), as on an H100 that passed its self-check.

    >>> audit_kernels(lower_for_cuda(graph, 3).launches)   # doctest: +SKIP
    """
    import graphopt
    from graphopt.passmanager import PassContext, PassManager, get_pass
    from graphopt.plugin_loader import get_backend

    from .lower import lower_graph

    from .wgmma import engine_forced

    g = graphopt.optimize(graph, level=level)
    ctx = PassContext(level=level, backend="cuda", options={})
    with engine_forced("wgmma" if arch == HOPPER_ARCH else "mma"):
        PassManager([get_pass(p) for p in get_backend("cuda").lowering_pipeline(ctx)], ctx).run(g)
        return lower_graph(g, "cuda")


def _mark(result: str) -> str:
    return {"pass": "yes", "FAIL": "**NO**", "n/a": "-"}.get(result, "xfail" if result.startswith("xfail")
                                                            else "XPASS" if result.startswith("XPASS") else "-")


def audit_table(audits: Sequence[KernelAudit], title: str = "") -> str:
    """A Markdown table, one row per (kernel, arch), then the reasons of the expected failures."""
    head = "| kernel | family | arch | threads | regs | smem | warps/SM | " + " | ".join(CHECKS) + " |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (8 + len(CHECKS))]
    for a in audits:
        lines.append(f"| {a.kernel} | {a.family} | {a.arch} | {a.threads} | {a.registers} | {a.shared} | "
                     f"{a.warps_per_sm} | " + " | ".join(_mark(a.results[c]) for c in CHECKS) + " |")
    notes = sorted({(c, a.family, r.split(": ", 1)[1]) for a in audits for c, r in a.results.items()
                    if r.startswith(("xfail:", "XPASS:", "n/a:"))})
    if notes:
        lines += ["", "Expected failures (xfail), and checks passing where a failure was expected (XPASS):", ""]
        lines += [f"* `{c}` on {fam}: {why}" for c, fam, why in notes]
    return "\n".join(lines)
