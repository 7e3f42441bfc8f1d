"""Native kernels of the CPU backend: a C extension compiled once per machine.

The NumPy kernels (the registry's, and ``prepared.py``'s) are bounded by BLAS calls
on small matrices and by the im2col copies around them; a small model's
convolutions run several times slower than in onnxruntime that way, and a
transformer's LayerNorm and attention spend their time in NumPy's per-call
overhead on small rows. ``kernels.c`` holds graphopt's own direct convolution
(dense and depthwise, any stride and dilation, bias and a clamp/residual epilogue
fused), LayerNormalization over the last axis and fused attention (one score row
per task, softmax in registers' reach), written with GCC's generic
vectors so that one source serves AVX-512 and AVX2 machines alike. It is a CPython
extension (arrays pass through the buffer protocol, the work runs without the GIL
on the pool of ``native/pool.h``), because a ctypes call with its pointer lookups
costs several microseconds, which is what a small conv computes in. It is built
with the host C compiler (``$CC``, else ``gcc`` or ``cc``) at ``-O3 -march=native``
on first use and kept in graphopt's build cache (``graphopt/buildcache.py``), keyed
by the source, the flags, the compiler, the CPU and the Python ABI. Without a
compiler or Python's headers, or with ``GRAPHOPT_CPU_NATIVE=0``, nothing changes:
the NumPy paths run, and ``status()`` says why.

>>> ok, why = status()                               # doctest: +SKIP
>>> conv = prepare_conv(node, attrs, w, b)           # doctest: +SKIP  (None when the node does not fit)
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import math
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.expr import Binary, Const, Expr, Input, Unary
from graphopt.ops.windows import geometry, spatial_attrs

from .native_small import small_plane_conv
from .prepared import _Workspace

SOURCE_DIR = Path(__file__).parent / "native"
# every file of the translation unit, all in the build's cache key: a header left out of a list
# would let an edit to it keep the old library
SOURCES = tuple(sorted(p.name for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h")))
# -fno-math-errno: sqrtf and friends vectorize (nothing reads errno)
FLAGS = ("-std=gnu11", "-O3", "-march=native", "-fPIC", "-shared", "-fvisibility=hidden", "-w", "-pthread",
         "-fno-math-errno")
ENV = "GRAPHOPT_CPU_NATIVE"  # "0" turns the native kernels off
MODULE = "_graphopt_native"

_f32 = np.dtype(np.float32)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(keep))


def _load(path: Path):
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _build():
    from graphopt.buildcache import cached_file, content_key, graphopt_version

    cc = _compiler()
    if cc is None:
        return None, "no C compiler (set CC, or install gcc)"
    include = sysconfig.get_paths().get("include")
    if not include or not Path(include, "Python.h").is_file():
        return None, f"Python's C headers are not installed (no Python.h in {include})"
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError as exc:
        return None, f"C compiler {cc} does not run: {exc}"
    texts = [(SOURCE_DIR / s).read_text() for s in SOURCES]
    key = content_key("cpu-native", *texts, " ".join(FLAGS), version.splitlines()[0] if version else cc,
                      _cpu_id(), sys.version, sysconfig.get_config_var("EXT_SUFFIX") or "", graphopt_version())

    def build(tmp: Path) -> None:
        cmd = [cc, *FLAGS, "-I", str(SOURCE_DIR), "-I", include, str(SOURCE_DIR / "kernels.c"), "-o", str(tmp), "-ldl"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise GraphoptError("building the native CPU kernels failed: "
                                + " ".join(res.stderr.splitlines()[:3]))

    try:
        mod = _load(cached_file("cpu-native", key, ".so", build))
        return mod, ""
    except (GraphoptError, OSError, ImportError) as exc:
        return None, str(exc).splitlines()[0]


def status() -> tuple[bool, str]:
    """``(True, "")`` when the native kernels run here, else ``(False, why)``."""
    if os.environ.get(ENV, "1") == "0":
        return False, f"{ENV}=0"
    with _lock:
        lib, why = _build()
    return lib is not None, why


def library():
    ok, _ = status()
    return _build()[0] if ok else None


# ---------------------------------------------------------------------------
# epilogues the kernels apply while storing: clamp(acc + bias [+ residual], lo, hi)


def _clamp_of(e: Expr) -> tuple[Expr, float, float] | None:
    """``e`` as clamp(inner, lo, hi): relu(x), max(x, c), min(x, c) and their nestings."""
    lo, hi = -math.inf, math.inf
    while True:
        if isinstance(e, Unary) and e.op == "relu":
            lo, e = max(lo, 0.0), e.a
        elif isinstance(e, Binary) and e.op in ("max", "min") and isinstance(e.b, Const) \
                and e.b.dtype == "float32" and np.ndim(e.b.value) == 0 and not math.isnan(float(e.b.value)):
            c = float(e.b.value)
            if e.op == "max":
                if c > hi:  # max applied after a smaller min: the order matters, not a plain clamp
                    return None
                lo = max(lo, c)
            else:
                if c < lo:
                    return None
                hi = min(hi, c)
            e = e.a
        else:
            return e, lo, hi


def epilogue_plan(expr: Expr | None) -> tuple[int | None, float, float] | None:
    """``(residual input or None, lo, hi)`` when ``expr`` (over ``acc`` = in0) is a clamp of
    ``acc`` or of ``acc + inK``, else None.

    Clamps apply innermost first; ``min(max(x, 0), 6)`` is ``clamp(x, 0, 6)``.

    >>> from graphopt.expr import parse_exprs
    >>> epilogue_plan(parse_exprs("relu(add(acc, in1))")[0])
    (1, 0.0, inf)
    """
    if expr is None:
        return None, -math.inf, math.inf
    got = _clamp_of(expr)
    if got is None:
        return None
    inner, lo, hi = got
    if inner == Input(0):
        return None, lo, hi
    if isinstance(inner, Binary) and inner.op == "add":
        a, b = inner.a, inner.b
        for x, r in ((a, b), (b, a)):
            if x == Input(0) and isinstance(r, Input) and r.index > 0:
                return r.index, lo, hi
    return None


# ---------------------------------------------------------------------------
# convolution


class _Plan:
    """How one input shape is laid out for the kernels: which stride phases are read, the
    flat plane size, each tap's offset, and the copies that fill the phase planes
    (``geometry``: the int64 block ``kernels.c`` reads)."""

    def __init__(self, shape: tuple, ks: list[int], strides: list[int], dilations: list[int], attrs: dict,
                 groups: int, m_per_group: int):
        n, c, h, w = shape
        (ho, wo), pb, _ = geometry(shape[2:], ks, attrs)
        sy, sx = strides
        dy, dx = dilations
        taps = [((ky * dy) % sy, (kx * dx) % sx, (ky * dy) // sy, (kx * dx) // sx)
                for ky in range(ks[0]) for kx in range(ks[1])]
        phases = sorted({(a, b) for a, b, _, _ in taps})
        row_off = max(t[2] for t in taps)
        col_off = max(t[3] for t in taps)
        self.ho, self.wo = ho, wo
        hq, wq = ho + row_off, wo + col_off
        lq = hq * wq + col_off  # the last row's dropped columns read col_off past the plane
        self.P = ho * wq
        index = {ph: i for i, ph in enumerate(phases)}
        cstride = len(phases) * lq
        self.offs = np.array([index[(a, b)] * lq + r * wq + q for a, b, r, q in taps], np.int32)
        # x read in place: stride 1, no padding, no dropped columns (a 1x1 conv, or any conv whose
        # output keeps the input's size)
        self.direct = sy == sx == 1 and not any(pb) and wq == w and hq == h and col_off == 0
        if self.direct:
            cstride = h * w
        copies = []
        for (a, b) in phases:
            r0, r1 = _phase_range(a, sy, pb[0], h, hq)
            q0, q1 = _phase_range(b, sx, pb[1], w, wq)
            if r1 > r0 and q1 > q0:
                copies.append((index[(a, b)] * lq, r0, r1, q0, q1, a + r0 * sy - pb[0], b + q0 * sx - pb[1], sy, sx))
        # the planes, and PLANES_SLACK floats past them that the last vector of a depthwise row or flat
        # plane may read (depthwise.h)
        self.planes_shape = None if self.direct else (n * c * cstride + 16,)
        head = [n, groups, c // groups, h, w, cstride, m_per_group, len(taps), self.P, wq, ho, wo,
                int(self.direct), len(copies)]
        # the kernel's own terms, which dwlanes.h reads past the copies
        tail = [ks[0], ks[1], sy, sx, dy, dx, pb[0], pb[1]]
        self.geometry = np.array(head + [v for cp in copies for v in cp] + tail, np.int64)
        self.variant: int | None = None
        self.gemm_candidate = False  # _tune times conv_gemm.h's route beside the tiles


def _phase_range(a: int, s: int, pad: int, n: int, limit: int) -> tuple[int, int]:
    """Plane indices r in [r0, r1) whose padded coordinate a + r*s falls on the input [pad, pad + n)."""
    r0 = max(0, -(-(pad - a) // s))
    r1 = min(limit, (n - 1 + pad - a) // s + 1)
    return r0, r1


LANES = -2  # the variant of dwlanes.h's depthwise kernel (-1: depthwise.h's, by rows)
# output rows up to this wide put a depthwise conv's channels in the lanes: in MobileNetV3 and
# EfficientNet-B0 (in the model, one Zen 4 core) its 7x7 outputs took 0.6-0.75x the time by rows,
# its 14x14 ones 1.0-1.1x (a row of 14 already fills most of a vector, and the transposes cost)
LANES_MAX_WIDTH = 10


def prepare_conv(node, attrs: dict, w: np.ndarray, b: np.ndarray | None, epilogue: Expr | None,
                 fallback: Callable) -> tuple[Callable, tuple[int, ...]] | None:
    """``(fn, inputs)`` running a 2-D float32 Conv (with the fused ``epilogue`` over acc = in0,
    when it is a clamp of acc or of acc + a residual input) on the native kernels, or None
    (no native kernels here, another dtype or rank, an epilogue they do not apply).

    ``fn(x[, residual])`` returns a new contiguous array; an input whose output plane is
    smaller than one vector (16 values) runs ``fallback(x[, residual])`` instead, except in a
    depthwise conv that reads padded planes (its one tile covers the plane)."""
    lib = library()
    if lib is None or w.dtype != _f32 or w.ndim != 4 or (b is not None and b.dtype != _f32):
        return None
    plan_e = epilogue_plan(epilogue)
    program = None
    if plan_e is None:  # an activation of acc alone (SiLU, HardSwish, GELU...): a program applied per tile
        from .nativeexpr import conv_epilogue

        prog = conv_epilogue(epilogue)
        if prog is None:
            return None
        program, plan_e = prog.code, (None, -math.inf, math.inf)
    else:
        prog = None
    res_index, lo, hi = plan_e
    ks = [int(k) for k in (attrs.get("kernel_shape") or w.shape[2:])]
    if ks != list(w.shape[2:]):
        return None
    g = int(attrs.get("group", 1))
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    m, cg = w.shape[:2]
    mg = m // g
    k = ks[0] * ks[1]
    depthwise = cg == 1 and g > 1
    bias = None if b is None else np.ascontiguousarray(b, np.float32)
    variants = lib.variants()
    gemm_variant = len(variants)  # conv_gemm.h's route: columns and one product per group
    use_gemm = not depthwise and os.environ.get("GRAPHOPT_CONV_GEMM", "1") != "0"
    # one output per input channel: 16 channels in the vector lanes (dwlanes.h) unless switched off
    lanes = depthwise and mg == 1 and os.environ.get("GRAPHOPT_DW_LANES", "1") != "0"
    packed: dict[int, np.ndarray] = {}

    def weights(variant: int) -> np.ndarray:  # dense: per group, ceil(mg/mt) blocks of [cg][k][mt]
        mt = variant if variant < 0 else -3 if variant == gemm_variant else variants[variant][0]
        p = packed.get(mt)
        if p is None:
            if variant == LANES:  # dwlanes.h: [k][channels], channels padded to whole vectors of 16
                p = np.zeros((k, -(-m // 16) * 16), np.float32)
                p[:, :m] = w.reshape(m, k).T
            elif variant == gemm_variant:  # sgemm.h's row panels of [m][cg * k], per group
                mr = lib.sgemm_panel()[0]
                p = np.empty(g * -(-mg // mr) * mr * cg * k, np.float32)
                lib.pack_a(np.ascontiguousarray(w.reshape(m, cg * k)), g, p)
            elif mt == -1:  # depthwise [m][k]
                p = np.ascontiguousarray(w.reshape(m, k))
            else:
                mb = -(-mg // mt)
                wz = np.zeros((g, mb * mt, cg, k), np.float32)
                wz[:, :mg] = w.reshape(g, mg, cg, k)
                p = np.ascontiguousarray(wz.reshape(g, mb, mt, cg, k).transpose(0, 1, 3, 4, 2))
            packed[mt] = p
        return p

    plans: dict[tuple, _Plan] = {}
    scratch = _Workspace()  # the phase planes, per thread and shape: zeroed once, only the interior rewritten
    conv = lib.conv
    small = small_plane_conv(w, bias, attrs, ks, strides, prog, lo, hi)

    def run(x: np.ndarray, res: np.ndarray | None, variant: int | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        plan = plans.get(x.shape)
        if plan is None:
            if x.ndim != 4 or x.shape[1] != cg * g:
                raise ValueError(f"Conv input {list(x.shape)} does not fit weight {list(w.shape)}, group={g}")
            plan = plans[x.shape] = _Plan(x.shape, ks, strides, dilations, attrs, g, mg)
            if depthwise:
                plan.variant = LANES if lanes and plan.wo <= LANES_MAX_WIDTH else -1
            elif use_gemm:
                route = gemm_route(plan, cg, k)
                plan.gemm_candidate = route == "time" and plan.P >= 16  # timed against the tiles on its first run
                if route == "gemm" or (route == "time" and not plan.gemm_candidate):
                    plan.variant = gemm_variant
        whole_plane = (depthwise or (plan.variant if variant is None else variant) == gemm_variant) \
            and not plan.direct  # kernels that take a plane smaller than a vector
        if (plan.P < 16 and not whole_plane) or x.dtype != _f32:
            if small is not None and x.dtype == _f32:
                r = small(x, res)
            else:
                r = fallback(x) if res is None else fallback(x, res)
            if out is None:
                return r
            out[...] = r
            return out
        if variant is None:
            variant = plan.variant
            if variant is None:
                variant = _tune(plan, variants, lambda v: run(x, res, v), gemm_variant if plan.gemm_candidate else None)
        shape = (x.shape[0], m, plan.ho, plan.wo)
        y = np.empty(shape, np.float32) if out is None else out
        if y.shape != shape or y.dtype != _f32 or not y.flags.c_contiguous:
            raise ValueError(f"Conv output buffer {y.shape} {y.dtype} does not take {list(shape)} float32")
        if res is not None and (res.shape != y.shape or res.dtype != _f32 or not res.flags.c_contiguous):
            res = np.ascontiguousarray(np.broadcast_to(res, y.shape), _f32)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        planes = None if plan.planes_shape is None or variant == LANES else \
            scratch.get("planes", plan.planes_shape, _f32, zero=True)
        col = None
        if variant == gemm_variant and not plan.direct:
            col = scratch.get("col", (x.shape[0] * cg * g * k * plan.ho * plan.wo,), _f32)
        conv(variant, plan.geometry, x, planes, weights(variant), plan.offs, bias, res, y, lo, hi, program, col)
        return y

    fn = (lambda x: run(x, None)) if res_index is None else (lambda x, r: run(x, r))
    # into(out, x[, residual]): the same result written into out (a C-contiguous float32 array of
    # the output's shape, a slice of a Concat's result: backend.py's concat_in_place)
    fn.into = (lambda out, x: run(x, None, out=out)) if res_index is None else (lambda out, x, r: run(x, r, out=out))
    fn.run = run  # run(x, residual or None, variant): one tile variant, for tests
    fn.plans = plans  # input shape -> _Plan: which kernel each shape runs on
    fn.native = True
    return fn, (0,) if res_index is None else (0, res_index)


GEMM_MAX_PLANE = 1024  # output positions up to which a dense conv may be one GEMM (28x28 and smaller)
GEMM_MIN_OUTPUTS = 64  # output channels (per group) a kxk kernel's GEMM needs to pay for its columns
GEMM_MIN_OUTPUTS_1X1 = 32  # output channels a 1x1 conv on a bigger plane needs (it copies no columns)


def gemm_route(plan: _Plan, cg: int, k: int) -> str:
    """Whether a dense conv runs as columns + one GEMM per group (``conv_gemm.h``, the weights
    packed once): "gemm", "tiles" (the register tiles), or "time" (both timed on its first run,
    ``_tune``). Measured per conv of ResNet-18, MobileNetV3, SqueezeNet, ShuffleNet and
    DenseNet-121 (one core, hot; benchmarks/results/cpu-2026-12-07-gemm.md and
    cpu-2026-12-07-zen4.md):

    * a 1x1 conv, which reads x in place, took 0.5-0.8x the tiles' time on the GEMM from 32
      output channels per group up (DenseNet's 160-256 -> 128 at 56x56: 0.47-0.53x) and on
      planes of 28x28 and smaller: "gemm"; with fewer outputs on a bigger plane 0.6-1.0x
      (ShuffleNet's grouped 24 -> 112 at 56x56, 28 a group: 0.62x; MobileNetV3's 16 -> 16: 0.79x
      on one CPU, about 1.0x on another): "time";
    * a kxk conv on a plane of 28x28 or smaller with 64 outputs or more: the GEMM took 0.6-1.0x
      the best tile's time on a Sapphire Rapids core (the tiles then broadcast each weight on
      an FMA port) and 0.97-1.19x on a Zen 4 core: "time"; with fewer outputs the columns it
      copies (C*K per position) cost more than it saves (1.45-1.55x with 32), and on bigger
      planes it took 1.1-1.6x: "tiles"."""
    plane = plan.ho * plan.wo
    mg = int(plan.geometry[6])
    if k == 1:
        return "gemm" if plane <= GEMM_MAX_PLANE or mg >= GEMM_MIN_OUTPUTS_1X1 else "time"
    return "time" if plane <= GEMM_MAX_PLANE and mg >= GEMM_MIN_OUTPUTS else "tiles"


def _tune(plan: _Plan, variants: list, call: Callable[[int], np.ndarray], gemm: int | None = None) -> int:
    """The fastest dense variant for this shape, timed on its first run: the tile variants (each
    accumulates in the same order, so their choice never changes a bit) and, where ``gemm`` is
    given, the GEMM route (k-slices of 256: its sums may differ from the tiles' in the last bit,
    so two compiles on two machines may differ there; one compiled model never changes)."""
    candidates = [i for i, (mt, rv) in enumerate(variants) if rv * 16 <= plan.P]
    candidates += [gemm] if gemm is not None else []
    best_t = dict.fromkeys(candidates, math.inf)
    # on one thread the work is the caller's: its CPU time, which another process taking the core
    # does not inflate; with a pool the work is spread over its threads: the wall clock
    clock = time.thread_time if library().threads() == 1 else time.perf_counter
    for _ in range(3):  # rounds over every candidate: a burst of noise or a cold first call skews no one variant
        for i in candidates:
            t0 = clock()
            call(i)
            best_t[i] = min(best_t[i], clock() - t0)
    best = min(candidates, key=best_t.__getitem__, default=None)
    plan.variant = best
    return best


# ---------------------------------------------------------------------------
# LayerNormalization over the last axis, attention


def prepare_layernorm(scale: np.ndarray, bias: np.ndarray | None, eps: float, fallback: Callable,
                      channels: bool = False) -> Callable | None:
    """``fn(x)``: LayerNormalization of float32 ``x`` over its last axis with a 1-D ``scale``
    (and ``bias``), or with ``channels`` over axis 1 of ``[N, C, *spatial]``
    (``ai.graphopt::ChannelLayerNormalization``, x read where it lies); None where the native
    kernels do not run; ``fallback(x)`` takes the inputs whose axis does not match ``scale``."""
    lib = library()
    if lib is None or scale.dtype != _f32 or scale.ndim != 1 or (bias is not None and bias.shape != scale.shape
                                                                  or bias is not None and bias.dtype != _f32):
        return None
    sc = np.ascontiguousarray(scale)
    bb = None if bias is None else np.ascontiguousarray(bias)
    n, ln, e = sc.size, lib.layernorm, float(eps)

    def fn(x):
        if x.dtype != _f32 or x.ndim < (3 if channels else 1) or x.shape[1 if channels else -1] != n or x.size == 0:
            return fallback(x)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        y = np.empty(x.shape, _f32)
        if channels:
            ln(x, sc, bb, y, e, math.prod(x.shape[2:]))
        else:
            ln(x, sc, bb, y, e)
        return y

    fn.native = True
    return fn


def _heads(x: np.ndarray, heads: int, layout: str) -> np.ndarray | None:
    """``x`` as a (B, H, S, D) view with its last axis contiguous, or None."""
    if layout == "BSHD":
        if x.ndim == 3:
            if x.shape[2] % heads:
                return None
            x = x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)
        if x.ndim != 4:
            return None
        x = x.transpose(0, 2, 1, 3)
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        return None
    if x.strides[-1] != 4:
        x = np.ascontiguousarray(x)
    return x


def prepare_attention(attrs: dict, fallback: Callable) -> Callable | None:
    """``fn(q, k, v[, mask])``: graphopt's fused Attention on float32 inputs (``ops/fused.py``
    defines it: softmax(scale * Q K^T + mask) V per head), or None where the native kernels
    do not run. The kernel reads K transposed (lanes over keys: no horizontal sums), so K is
    transposed into a contiguous copy unless the op gives it so. Shapes the kernel does not
    take (batch axes that broadcast between Q, K and V, a mask of more than 4 axes) run
    ``fallback``."""
    lib = library()
    layout, heads, scale = attrs["layout"], int(attrs["num_heads"]), float(np.float32(attrs["scale"]))
    k_t = bool(attrs["k_transposed"])
    if lib is None:
        return None
    attention = lib.attention

    def fn(q, k, v, mask=None):
        if q.dtype != _f32 or k.dtype != _f32 or v.dtype != _f32 or (mask is not None and mask.dtype != _f32):
            return fallback(q, k, v) if mask is None else fallback(q, k, v, mask)
        qh, vh = _heads(q, heads, layout), _heads(v, heads, layout)
        if k_t:  # (B, H, D, Sk) already: only its last axis must be contiguous
            kt = k[None] if k.ndim == 3 else k
            if kt.ndim == 4 and kt.strides[-1] != 4:
                kt = np.ascontiguousarray(kt)
        else:
            kh = _heads(k, heads, layout)
            kt = None if kh is None else np.ascontiguousarray(kh.swapaxes(-1, -2))
        if qh is None or kt is None or vh is None or kt.ndim != 4 or kt.shape[:2] != qh.shape[:2] \
                or vh.shape[:2] != qh.shape[:2] or (mask is not None and mask.ndim > 4):
            return fallback(q, k, v) if mask is None else fallback(q, k, v, mask)
        b, h, sq, _ = qh.shape
        dv = vh.shape[3]
        mh = None
        if mask is not None:
            try:
                mh = np.broadcast_to(mask, (b, h, sq, kt.shape[3]))
            except ValueError:
                return fallback(q, k, v, mask)
        if layout == "BSHD":
            out = np.empty((b, sq, h, dv), _f32)
            attention(qh, kt, vh, mh, out.transpose(0, 2, 1, 3), scale)
            return out.reshape(b, sq, h * dv) if q.ndim == 3 else out
        out = np.empty((b, h, sq, dv), _f32)
        attention(qh, kt, vh, mh, out, scale)
        return out[0] if q.ndim == 3 else out

    fn.native = True
    return fn


# ---------------------------------------------------------------------------
# MaxPool, AveragePool (2-D, NCHW)


def prepare_pool(op_type: str, attrs: dict, opset: int, fallback: Callable) -> Callable | None:
    """``fn(x)``: a 2-D float32 MaxPool (without Indices) or AveragePool on the native kernels,
    or None where they do not run here; ``fallback(x)`` takes other dtypes and ranks. An
    average divides by the registry's counts (``ops.nn.average_pool``), computed once per shape.

    >>> fn = prepare_pool("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], ...}, 17, fb)  # doctest: +SKIP
    """
    from graphopt.ops.nn import average_pool_counts

    lib = library()
    ks = [int(k) for k in attrs["kernel_shape"]]
    if lib is None or len(ks) != 2 or ks[1] > 64:  # pooling.h keeps a window row's column ranges on its stack
        return None
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    avg = op_type == "AveragePool"
    ceil = bool(attrs.get("ceil_mode", 0))
    plans: dict[tuple, tuple] = {}
    pool = lib.pool

    def plan(shape: tuple) -> tuple:
        n, c, h, w = shape
        out, pb, pe = geometry((h, w), ks, attrs, ceil, pool=True)
        g = np.array([n * c, h, w, out[0], out[1], ks[0], ks[1], strides[0], strides[1], dilations[0], dilations[1],
                      pb[0], pb[1], int(avg)], np.int64)
        count = None
        if avg:  # the registry's divisor
            cnt = average_pool_counts(attrs, (h, w), out, pb, pe, opset)
            count = np.ascontiguousarray(np.multiply.outer(cnt[0], cnt[1]), np.float32)
        got = plans[shape] = ((n, c, out[0], out[1]), g, count)
        return got

    def fn(x):
        if x.dtype != _f32 or x.ndim != 4:
            return fallback(x)
        shape, g, count = plans.get(x.shape) or plan(x.shape)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        y = np.empty(shape, _f32)
        pool(g, x, count, y)
        return y

    fn.native = True
    return fn


# ---------------------------------------------------------------------------
# GEMM: NumPy's OpenBLAS, one single-threaded call per block of the result, on the pool (blas.h)


def _numpy_openblas() -> str | None:
    """The path of the OpenBLAS that NumPy loaded (threadpoolctl knows it; else NumPy's wheel folder)."""
    root = Path(np.__file__).resolve().parent
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            path = info.get("filepath", "")
            if info.get("internal_api") == "openblas" and Path(path).resolve().parent in (root, root.with_name(
                    root.name + ".libs")):
                return path
    except Exception:  # noqa: BLE001 -- threadpoolctl is optional; its failure only means the glob below
        pass
    found = sorted(root.with_name(root.name + ".libs").glob("*openblas*.so*"))
    return str(found[0]) if found else None


@functools.lru_cache(maxsize=1)
def _bind_blas() -> tuple[bool, str]:
    lib = library()
    if lib is None:
        return False, "no native kernels"
    path = _numpy_openblas()
    if path is None:
        return False, "NumPy's OpenBLAS was not found"
    why = lib.blas_bind(path)
    return not why, why


def blas_status() -> tuple[bool, str]:
    """``(True, "")`` when GEMMs run on NumPy's OpenBLAS through the native pool, else ``(False, why)``."""
    if library() is None:
        return False, status()[1] or "no native kernels"
    return _bind_blas()


@functools.lru_cache(maxsize=1)
def gemm_fn() -> Callable | None:
    """``mm(a, b, trans_a=False, alpha=1.0)``: ``alpha * op(a) @ b`` for float32 ``a`` (..., M, K)
    (or (K, M) transposed) and 2-D ``b``, as a new array, on NumPy's OpenBLAS split over the
    native pool (``native/blas.h`` says why); NumPy's matmul for anything else. None where
    the native kernels or the BLAS binding are missing.

    >>> mm = gemm_fn()                                   # doctest: +SKIP
    >>> mm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))[0, 0]    # doctest: +SKIP
    3.0
    """
    if not blas_status()[0]:
        return None
    gemm, matmul, f32 = library().gemm, np.matmul, _f32

    def mm(a, b, trans_a=False, alpha=1.0):
        if a.dtype != f32 or b.dtype != f32 or b.ndim != 2 or a.ndim < 2 or (trans_a and a.ndim != 2) \
                or a.size == 0 or b.size == 0:
            r = matmul(a.T if trans_a else a, b)
            return r * np.float32(alpha) if alpha != 1.0 else r
        k = a.shape[0] if trans_a else a.shape[-1]
        if k != b.shape[0]:
            return matmul(a.T if trans_a else a, b)  # NumPy's error
        a2 = a if trans_a else a.reshape(-1, k)
        if a2.strides[-1] != 4 or a2.strides[0] < 4 * a2.shape[1]:
            a2 = np.ascontiguousarray(a2)
        if b.strides[-1] != 4 or b.strides[0] < 4 * b.shape[1]:
            b = np.ascontiguousarray(b)
        lead = (a.shape[1],) if trans_a else a.shape[:-1]
        out = np.empty(lead + (b.shape[1],), f32)
        gemm(a2, b, out.reshape(-1, b.shape[1]), trans_a, False, float(alpha), 0.0)
        return out

    mm.native = True
    return mm


def packed_gemm(b: np.ndarray) -> Callable | None:
    """``mm(a, trans_a=False, alpha=1.0)``: ``alpha * op(a) @ b`` for a constant 2-D float32 ``b``
    (a MatMul's or Gemm's weights), packed once here into ``native/sgemm.h``'s panels, so a
    product never re-packs it (OpenBLAS copies all of B on every call). Falls back to
    ``gemm_fn``'s product for what the packed kernel does not take (another dtype, a ``b``
    that is not 2-D). None without the native kernels or with ``GRAPHOPT_PACKED_GEMM=0``.

    >>> mm = packed_gemm(np.eye(3, dtype=np.float32))            # doctest: +SKIP
    >>> mm(np.ones((2, 3), np.float32))[0]                       # doctest: +SKIP
    array([1., 1., 1.], dtype=float32)
    """
    lib = library()
    if lib is None or os.environ.get("GRAPHOPT_PACKED_GEMM", "1") == "0" or b.dtype != _f32 or b.ndim != 2:
        return None
    k, n = b.shape
    nr = lib.sgemm_panel()[1]
    packed = np.empty(-(-n // nr) * nr * k, _f32)
    lib.pack_b(np.ascontiguousarray(b), packed)
    run, fallback = lib.gemm_packed, gemm_fn()

    def mm(a, trans_a=False, alpha=1.0):
        if a.dtype != _f32 or a.ndim < 2 or (trans_a and a.ndim != 2) or a.size == 0 or n == 0:
            return (fallback or _numpy_mm)(a, b, trans_a, alpha)
        a2 = np.ascontiguousarray(a.T) if trans_a else a.reshape(-1, a.shape[-1])
        if a2.shape[1] != k:
            return np.matmul(a2, b)  # NumPy's error
        if a2.strides[-1] != 4 or a2.strides[0] < 4 * a2.shape[1]:
            a2 = np.ascontiguousarray(a2)
        out = np.empty(((a.shape[1],) if trans_a else a.shape[:-1]) + (n,), _f32)
        run(a2, packed, out.reshape(-1, n), float(alpha))
        return out

    mm.native = True
    return mm


def _numpy_mm(a, b, trans_a=False, alpha=1.0):
    r = np.matmul(a.T if trans_a else a, b)
    return r * np.float32(alpha) if alpha != 1.0 else r


def upgrade(node, attrs: dict, consts: list, numpy_fn: Callable) -> Callable | None:
    """The native kernel for a node whose NumPy ``Prepared`` kernel is ``numpy_fn`` (which
    has already checked dtypes, axis and constant operands), or None."""
    if node.op_type in ("LayerNormalization", "ChannelLayerNormalization"):
        scale = consts[1]
        bias = consts[2] if len(consts) > 2 else None
        return prepare_layernorm(scale, bias, float(np.float32(attrs["epsilon"])), numpy_fn,
                                 channels=node.op_type == "ChannelLayerNormalization")
    if node.op_type == "Attention":
        return prepare_attention(attrs, numpy_fn)
    return None
