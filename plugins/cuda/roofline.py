"""A roofline model of a compiled graph: per launch its FLOPs, the fewest bytes it must move and
the time no kernel can beat on a named GPU, ``max(FLOPs / peak, bytes / bandwidth)``.

* **FLOPs** of the matrix kernels come from their specs: ``2 M N K`` per GEMM (times the batch
  or groups), a convolution's implicit GEMM, attention's ``2 Sq Sk (D + Dv)`` per head (only the
  visible query/key pairs of a causal one). Every other kernel is counted as one operation per
  output element: they are all memory-bound, so that count only matters next to the bytes.
* **Bytes** are every tensor the node reads or writes, moved once (its logical size; a gather's
  table counts as the rows it reads, i.e. its output's size): a floor, as no cache can serve a
  tensor the kernel has not read yet. Launch overhead is not in the floor (CUDA graphs replay
  the launches); the launch count is reported beside it.
* **Peaks** are a GPU's dense datasheet rates (float16/bfloat16 and int8 on tensor cores, float32
  on CUDA cores, no TF32: the generated kernels use none) and its memory bandwidth; ``*-measured``
  rows hold what this project's lent H100/H200 reached (a device-to-device copy counting bytes
  read and written, an 8192³ bfloat16 product through PyTorch).

>>> floor = model_floor(lowered, "h100")       # doctest: +SKIP
>>> floor.floor_us, floor.launches             # doctest: +SKIP
(412.7, 111)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from graphopt import dtypes
from graphopt.errors import GraphoptError
from graphopt.memory import value_nbytes

from .specs import prod


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    bandwidth: float  # bytes/s
    peaks: dict  # math type ("float16", "bfloat16", "int8", "float32") -> operations/s
    source: str


def _peaks(half: float, int8: float, f32: float) -> dict:
    return {"float16": half, "bfloat16": half, "int8": int8, "float32": f32}


GPUS = {
    "h100": Gpu("H100 SXM5 80GB", 132, 3.35e12, _peaks(989.4e12, 1978.9e12, 66.9e12), "datasheet"),
    "h200": Gpu("H200 SXM 141GB", 132, 4.8e12, _peaks(989.4e12, 1978.9e12, 66.9e12), "datasheet"),
    "a100": Gpu("A100 SXM4 80GB", 108, 2.039e12, _peaks(312e12, 624e12, 19.5e12), "datasheet"),
    "h100-measured": Gpu("H100 80GB HBM3 (measured)", 132, 3.0e12, _peaks(798e12, 1978.9e12, 66.9e12),
                         "copy 3.0 TB/s, bf16 8192^3 798 TFLOP/s; int8 and float32 datasheet"),
    "h200-measured": Gpu("H200 (measured)", 132, 4.3e12, _peaks(788e12, 1978.9e12, 66.9e12),
                         "copy 4.3 TB/s, bf16 8192^3 788 TFLOP/s; int8 and float32 datasheet"),
}
DEFAULT_GPU = "h100"
GATHERS = {"Gather", "GatherElements", "GatherND"}  # read as many table rows as they write


def gpu(name: str | None) -> Gpu:
    """The GPU named ``name`` (a key of ``GPUS``, or a device name such as "NVIDIA H200"), H100 when None."""
    if name is None:
        return GPUS[DEFAULT_GPU]
    key = name.lower().removeprefix("nvidia").strip()
    if key in GPUS:
        return GPUS[key]
    for k in ("h200", "h100", "a100"):
        if k in key.replace(" ", ""):
            return GPUS[k]
    raise GraphoptError(f"no roofline figures for GPU {name!r} (known: {', '.join(GPUS)})")


def _math_type(dtype: str) -> str:
    return {"uint8": "int8", "int8": "int8", "float16": "float16", "bfloat16": "bfloat16"}.get(dtype, "float32")


def matrix_work(spec) -> tuple[float, str] | None:
    """(FLOPs, math type) of a matrix kernel's spec (GEMM, implicit-GEMM convolution, attention), else None."""
    from .attention import AttentionProblem

    if isinstance(spec, AttentionProblem):
        pairs = spec.sq * spec.sk
        if spec.causal:
            off = getattr(spec, "causal_offset", 0)
            pairs = sum(max(0, min(spec.sk, i + off + 1)) for i in range(spec.sq))
        return 2.0 * prod(spec.batch) * pairs * (spec.d + spec.dv), _math_type(spec.q.dtype)
    a = getattr(spec, "a", None)
    dtype = getattr(spec, "dtype", None) or getattr(spec, "a_dtype", None) or (a.dtype if a is not None else None)
    if all(hasattr(spec, f) for f in ("M", "N", "K")):
        nz = prod(getattr(spec, "batch", ()) or ())  # an int8 convolution's groups are its batch
        return 2.0 * spec.M * spec.N * spec.K * nz, _math_type(dtype or "float32")
    if hasattr(spec, "gemm_mnk"):  # NCHW/NHWC convolutions: the implicit GEMM of one group
        m, n, k = spec.gemm_mnk
        return 2.0 * m * n * k * getattr(spec, "groups", 1), _math_type(dtype or "float32")
    return None


@dataclass(frozen=True)
class LaunchFloor:
    kernel: str
    node: str
    op: str
    flops: float
    bytes: int
    math: str
    floor_s: float
    bound: str  # "compute" or "memory"


def _nbytes(v) -> int:
    n = value_nbytes(v)
    return int(n) if n is not None else 0


def launch_bytes(launch, lowered) -> int:
    """The node's tensors this launch touches, each once (a gather's table as its output's size)."""
    node = launch.node
    args = set(launch.args)
    outs = [v for v in node.outputs if v is not None and lowered.root(v) in args]
    ins = [v for v in node.inputs if v is not None and lowered.root(v) in args and v not in outs]
    total = sum(_nbytes(v) for v in dict.fromkeys(outs))
    for v in dict.fromkeys(ins):
        n = _nbytes(v)
        if node.op_type in GATHERS and v is node.input(0) and outs:
            n = min(n, sum(_nbytes(o) for o in outs))
        total += n
    return total


def launch_floor(launch, lowered, g: Gpu) -> LaunchFloor:
    work = matrix_work(launch.kernel.spec)
    if work is None:
        elems = sum(prod(v.shape) for v in launch.node.outputs if v is not None and v.type is not None
                    and v.type.is_static)
        work = (float(elems), "float32")
    flops, math = work
    nbytes = launch_bytes(launch, lowered)
    t_c, t_m = flops / g.peaks[math], nbytes / g.bandwidth
    return LaunchFloor(launch.kernel.name, launch.node.name, launch.node.op_type, flops, nbytes, math,
                       max(t_c, t_m), "compute" if t_c > t_m else "memory")


@dataclass(frozen=True)
class ModelFloor:
    gpu: Gpu
    launches: int
    floors: tuple[LaunchFloor, ...]

    @property
    def floor_us(self) -> float:
        return 1e6 * sum(f.floor_s for f in self.floors)

    @property
    def flops(self) -> float:
        return sum(f.flops for f in self.floors)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.floors)

    def summary(self) -> dict:
        """The figures ``stats["roofline"]`` shows (times in microseconds)."""
        mem = 1e6 * sum(f.floor_s for f in self.floors if f.bound == "memory")
        return {"gpu": f"{self.gpu.name} ({self.gpu.source})", "launches": self.launches,
                "floor_us": round(self.floor_us, 2), "memory_bound_us": round(mem, 2),
                "compute_bound_us": round(self.floor_us - mem, 2), "gflop": round(self.flops / 1e9, 3),
                "mbytes": round(self.bytes / 1e6, 3)}

    def per_kernel(self, top: int | None = None) -> dict[str, str]:
        """``node: floor, bound, FLOPs, bytes`` per launch, the largest floors first."""
        rows = sorted(self.floors, key=lambda f: -f.floor_s)[:top]
        return {f"{f.node} ({f.op})": f"{1e6 * f.floor_s:.2f} us {f.bound}-bound, {f.flops / 1e9:.3g} GFLOP "
                                      f"{f.math}, {f.bytes / 1e6:.3g} MB" for f in rows}


def model_floor(lowered, gpu_name: str | None = None, launches: Iterable | None = None) -> ModelFloor:
    """The roofline floor of every launch of ``lowered`` (a ``LoweredGraph``) on ``gpu_name``."""
    g = gpu(gpu_name)
    ls = list(lowered.launches if launches is None else launches)
    return ModelFloor(g, len(ls), tuple(launch_floor(l, lowered, g) for l in ls))


def gemm_floor_us(m: int, n: int, k: int, dtype: str, gpu_name: str | None = None) -> float:
    """The floor of one ``m x n x k`` GEMM (inputs and output of ``dtype``, read and written once).

    >>> round(gemm_floor_us(4096, 4096, 4096, "float16"), 1)
    138.9
    """
    g = gpu(gpu_name)
    size = dtypes.to_numpy(dtype).itemsize
    return 1e6 * max(2.0 * m * n * k / g.peaks[_math_type(dtype)], size * (m * k + k * n + m * n) / g.bandwidth)


def roofline_stats(lowered, gpu_name: str | None = None, top: int = 10) -> dict:
    """``stats["roofline"]`` (the model's floor and launch count on ``gpu_name``) and
    ``stats["roofline_kernels"]`` (the ``top`` largest per-launch floors)."""
    mf = model_floor(lowered, gpu_name)
    return {"roofline": mf.summary(), "roofline_kernels": mf.per_kernel(top)}
