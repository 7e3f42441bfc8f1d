"""cuBLAS for the GEMMs where it beats the generated kernel (the ``cuda`` backend only).

For every MatMul / Gemm launch (float32 SIMT or float16 tensor-core spec) whose operand
views cuBLAS can address, ``choose_gemms`` may replace the generated kernel with one
``cublasGemmStridedBatchedEx`` (row-major ``C = A @ B`` is column-major ``Cᵀ = Bᵀ Aᵀ``, so
cuBLAS's first operand is our B) followed, when the node has an epilogue, by the same
epilogue as a generated elementwise kernel over a float32 accumulator. ``alpha`` goes to
cuBLAS; float16 operands accumulate and reach the epilogue in float32, as on tensor cores.

The option ``gemm`` (``graphopt.compile(..., backend="cuda", gemm=...)``) picks:

* ``"generated"`` - always the generated kernel (nothing here runs);
* ``"cublas"`` - cuBLAS wherever the views allow it;
* ``"auto"`` (default) - time both on the device at compile time and keep the faster. The
  choice is cached next to the kernel cache (``cuda-gemm/``), keyed by shapes, dtypes,
  operand layout, epilogue, compute capability, cuBLAS and graphopt versions.

>>> plan_gemm(make_matmul(64, 32, 16))            # doctest: +SKIP
GemmCall(m=32, n=64, k=16, ...)
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from graphopt.errors import GraphoptError

from graphopt.buildcache import cached_entry, content_key, graphopt_version, write_cached_text

from . import device
from .ew import make_elementwise, render_elementwise
from .gemm import MatmulSpec
from .specs import View, prod
from .tc_gemm import TcMatmulSpec

GEMM_MODES = ("auto", "generated", "cublas")
OP_N, OP_T = 0, 1  # cublasOperation_t
CUDA_DTYPES = {"float32": 0, "float16": 2}  # cudaDataType: CUDA_R_32F, CUDA_R_16F
COMPUTE_32F = 68  # cublasComputeType_t CUBLAS_COMPUTE_32F: float32 accumulation, no TF32
GEMM_DEFAULT = -1  # cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT
REPS = 10


@dataclass(frozen=True)
class GemmCall:
    """One column-major ``C[m, n] = alpha · op(A)[m, k] · op(B)[k, n]`` per batch entry,
    ``batch`` entries ``stride_*`` elements apart; ``a_offset``/``b_offset`` are element
    offsets into *our* B and A buffers (cuBLAS's A is our B)."""

    m: int
    n: int
    k: int
    batch: int
    transa: int
    transb: int
    lda: int
    ldb: int
    ldc: int
    stride_a: int
    stride_b: int
    stride_c: int
    a_offset: int
    b_offset: int
    in_dtype: str
    out_dtype: str  # the output's dtype when cuBLAS writes it, float32 for an accumulator
    alpha: float


def _operand(strides: tuple[int, int], rows: int, cols: int) -> tuple[int, int] | None:
    """(op, ld) addressing a ``rows x cols`` column-major operand whose element (r, c) is at
    ``r*strides[0] + c*strides[1]``, or None when no leading dimension fits."""
    sr, sc = strides
    if sr == 1 or rows == 1:  # stored as is: column c starts ld elements after column c-1
        ld = sc if cols > 1 else rows
        if ld >= max(rows, 1):
            return OP_N, ld
    if sc == 1 or cols == 1:  # stored transposed
        ld = sr if rows > 1 else cols
        if ld >= max(cols, 1):
            return OP_T, ld
    return None


def _batch_stride(batch: Sequence[int], strides: Sequence[int]) -> int | None:
    """One stride walking the (row-major) batch dims, or None when they do not collapse."""
    dims = [(d, s) for d, s in zip(batch, strides) if d != 1]
    if not dims:
        return 0
    stride = dims[-1][1]
    expect = stride * dims[-1][0]
    for d, s in reversed(dims[:-1]):
        if s != expect:
            return None
        expect = s * d
    return stride


def plan_gemm(spec) -> GemmCall | str:
    """The cuBLAS call computing ``spec``'s accumulation, or why there is none."""
    if not isinstance(spec, (MatmulSpec, TcMatmulSpec)):
        return f"{type(spec).__name__} is not a matrix product"
    M, N, K = spec.M, spec.N, spec.K
    if min(M, N, K, prod(spec.batch)) == 0:
        return "an empty GEMM"
    if spec.a.dtype != spec.b.dtype or spec.a.dtype not in CUDA_DTYPES:
        return f"operands {spec.a.dtype}/{spec.b.dtype}"
    nb = len(spec.batch)
    views = {"A": spec.a, "B": spec.b, "C": spec.c}
    if any(s < 0 for v in views.values() for s in v.strides):
        return "a reversed (negative-stride) operand"
    first = _operand((spec.b.strides[nb + 1], spec.b.strides[nb]), N, K)  # Bᵀ: (n, k)
    second = _operand((spec.a.strides[nb + 1], spec.a.strides[nb]), K, M)  # Aᵀ: (k, m)
    if first is None or second is None:
        return f"{'B' if first is None else 'A'} has no unit-stride dimension cuBLAS can lead with"
    strides = {name: _batch_stride(spec.batch, v.strides[:nb]) for name, v in views.items()}
    bad = [name for name, s in strides.items() if s is None]
    if bad:
        return f"the batch dims of {bad[0]} do not collapse to one stride"
    direct = spec.epilogue.fn is None
    if direct and (spec.c.strides[nb:] != (N, 1) or spec.c.offset):
        return "the output is not a contiguous matrix"
    if max(M, N, K, prod(spec.batch), first[1], second[1]) >= 2**31:
        return "a dimension beyond 32-bit cuBLAS"
    return GemmCall(m=N, n=M, k=K, batch=prod(spec.batch), transa=first[0], transb=second[0],
                    lda=first[1], ldb=second[1], ldc=N, stride_a=strides["B"], stride_b=strides["A"],
                    stride_c=strides["C"] if direct else M * N, a_offset=spec.b.offset, b_offset=spec.a.offset,
                    in_dtype=spec.a.dtype, out_dtype=spec.c.dtype if direct else "float32",
                    alpha=float(spec.alpha))


def epilogue_spec(spec):
    """The generated elementwise kernel finishing a cuBLAS GEMM: ``spec``'s epilogue over the
    float32 accumulator (input 0, contiguous ``(*batch, M, N)``) and its operands; None when
    cuBLAS writes the output itself."""
    ep = spec.epilogue
    if ep.fn is None:
        return None
    shape = (*spec.batch, spec.M, spec.N)
    return make_elementwise(shape, spec.c, [View.contiguous("float32", shape), *ep.operands], ep.fn)


def _ptr(a) -> int:
    return a.data.ptr


class CublasGemm:
    """A launch step: one cuBLAS call on the executable's stream. CuPy refuses cuBLAS calls while a
    stream captures, so the executable runs these between its captured CUDA graphs."""

    kind = "cublas"
    capturable = False

    def __init__(self, call: GemmCall, out, a, b, stream):
        import numpy as np

        self.call = call
        self.stream = stream
        self.out, self.a, self.b = out, a, b  # keep the buffers alive
        size = {"float32": 4, "float16": 2}
        self._alpha = np.array([call.alpha], np.float32)  # host scalars: read when the call is queued
        self._beta = np.zeros(1, np.float32)
        self.args = (call.transa, call.transb, call.m, call.n, call.k, int(self._alpha.ctypes.data),
                     _ptr(b) + call.a_offset * size[call.in_dtype], CUDA_DTYPES[call.in_dtype], call.lda,
                     call.stride_a, _ptr(a) + call.b_offset * size[call.in_dtype], CUDA_DTYPES[call.in_dtype],
                     call.ldb, call.stride_b, int(self._beta.ctypes.data), _ptr(out), CUDA_DTYPES[call.out_dtype],
                     call.ldc, call.stride_c, call.batch, COMPUTE_32F, GEMM_DEFAULT)

    def __call__(self) -> None:
        device.gemm_strided_batched(self.stream, *self.args)


class Candidate:
    """The steps one GEMM launch becomes under ``kind`` ("generated" or "cublas"), for timing."""

    def __init__(self, kind: str, spec, steps: Sequence[Callable[[], None]]):
        self.kind, self.spec, self.steps = kind, spec, list(steps)
        self.capturable = all(getattr(s, "capturable", True) for s in self.steps)

    def __call__(self) -> None:
        for s in self.steps:
            s()


def time_on_device(run: Candidate, stream, reps: int = REPS) -> float:
    """Milliseconds per call of ``run`` on ``stream`` (CUDA events; one warm-up call)."""
    return device.time_ms(run, stream, reps)


def _device_key() -> tuple[str, str]:
    return device.compute_capability(), device.cublas_version()


def _choice_key(spec, call: GemmCall, device: tuple[str, str]) -> str:
    shape = {"M": spec.M, "N": spec.N, "K": spec.K, "batch": list(spec.batch), "dtype": spec.a.dtype,
             "out": spec.c.dtype, "ops": [call.transa, call.transb],
             "epilogue": spec.epilogue.fn.key if spec.epilogue.fn else ""}
    return content_key("gemm-choice", json.dumps(shape, sort_keys=True), *device, graphopt_version())


def _valid_choice(path) -> bool:
    try:
        return json.loads(path.read_text()).get("choice") in ("generated", "cublas")
    except (OSError, ValueError, AttributeError):
        return False


def _cached_choice(key: str) -> dict | None:
    path = cached_entry("cuda-gemm", key, ".json", valid=_valid_choice)
    return None if path is None else json.loads(path.read_text())


def decide(mode: str, spec, call: GemmCall | str, timings: Callable[[], tuple[float, float]],
           key: str | None) -> dict:
    """The choice for one GEMM: ``{"choice", "reason", "generated_ms"?, "cublas_ms"?}``.

    Under ``auto`` a cached choice (by ``key``) is reused; otherwise ``timings()`` gives
    (generated ms, cuBLAS ms) and the faster wins (the generated kernel on a tie), cached."""
    if mode == "generated":
        return {"choice": "generated", "reason": "gemm='generated'"}
    if isinstance(call, str):
        return {"choice": "generated", "reason": f"cuBLAS cannot run it: {call}"}
    if mode == "cublas":
        return {"choice": "cublas", "reason": "gemm='cublas'"}
    if key is not None:
        hit = _cached_choice(key)
        if hit is not None:
            return {**hit, "reason": "cached timing"}
    gen_ms, blas_ms = timings()
    out = {"choice": "cublas" if blas_ms < gen_ms else "generated", "generated_ms": round(gen_ms, 4),
           "cublas_ms": round(blas_ms, 4)}
    if key is not None:
        write_cached_text("cuda-gemm", key, ".json", json.dumps(out), valid=_valid_choice)
    return {**out, "reason": "timed on this device"}


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``GEMM_MODES``, else a one-line error."""
    if mode not in GEMM_MODES:
        raise GraphoptError(f"gemm={mode!r}: use one of {', '.join(map(repr, GEMM_MODES))}")
    return mode


def choose_gemms(exe, mode: str) -> dict:
    """Swap the GEMM launches of ``exe`` (a ``CudaExecutable``) for cuBLAS where ``mode`` says
    so; the summary for ``stats["gemm"]``: which nodes use cuBLAS and why each choice was made."""
    check_mode(mode)
    lowered = exe.lowered
    gemms = [(i, l) for i, l in enumerate(lowered.launches) if isinstance(l.kernel.spec, (MatmulSpec, TcMatmulSpec))]
    summary = {"mode": mode, "cublas": [], "generated": [], "choices": {}}
    if not gemms:
        return summary
    calls = {i: (plan_gemm(l.kernel.spec) if mode != "generated" else "not asked") for i, l in gemms}
    eligible = [i for i, c in calls.items() if isinstance(c, GemmCall)]
    ep_specs = {i: epilogue_spec(lowered.launches[i].kernel.spec) for i in eligible}
    ep_kernels = {i: render_elementwise(s) for i, s in ep_specs.items() if s is not None}
    fns = exe.load_functions(list({k.name: k for k in ep_kernels.values()}.values())) if ep_kernels else {}
    acc_elems = max((calls[i].batch * calls[i].m * calls[i].n for i in ep_kernels), default=0)
    scratch = exe.scratch(acc_elems, "float32") if acc_elems else None  # one accumulator: launches run in order
    device_key = _device_key() if mode == "auto" else None
    if mode == "auto":
        device.zero(exe.arena, exe.stream)  # time on numbers, not on whatever bits the allocator left
    per_node = Counter(l.node.name for _, l in gemms)
    for i, l in gemms:
        spec, call = l.kernel.spec, calls[i]
        steps = None
        if isinstance(call, GemmCall):
            # y, a, b, epilogue operands...: the buffers only (a TMA kernel's tensor maps, made from their
            # addresses, stay with the generated step; cuBLAS reads the buffers themselves)
            bufs = [exe.buffer(a) for a in l.args]
            k = ep_kernels.get(i)
            if k is None:
                steps = [CublasGemm(call, bufs[0], bufs[1], bufs[2], exe.stream)]
            else:
                s = ep_specs[i]
                steps = [CublasGemm(call, scratch, bufs[1], bufs[2], exe.stream),
                         exe.launch_step(fns[k.name], s.grid(), s.block(),
                                         (bufs[0], scratch, *bufs[3:3 + len(spec.epilogue.operands)]))]
        generated = Candidate("generated", spec, [exe.steps[i]])
        blas = Candidate("cublas", spec, steps or [])
        key = _choice_key(spec, call, device_key) if device_key and isinstance(call, GemmCall) else None
        choice = decide(mode, spec, call, lambda: (time_on_device(generated, exe.stream),
                                                   time_on_device(blas, exe.stream)), key)
        name = l.node.name if per_node[l.node.name] == 1 else f"{l.node.name}#{i}"  # a node with several GEMMs
        summary["choices"][name] = {"shape": f"{spec.M}x{spec.N}x{spec.K}" + (f" batch {list(spec.batch)}"
                                                                           if spec.batch else ""), **choice}
        summary[choice["choice"]].append(name)
        if choice["choice"] == "cublas":
            exe.steps[i] = blas
    return summary

