"""A rendered kernel and the translation units built from many of them.

A ``Kernel`` is CUDA C source for one ``extern "C" __global__`` function plus
what a launcher needs: its parameter list (all pointers: shapes and strides are
baked into the source), the shared device helpers it calls, whether it uses
block-wide barriers, and the spec it was rendered from.

Its parameters are buffers (one per argument of a ``lower.Launch``, a tensor of
the graph each) followed by ``derived`` ones: a ``DerivedArg`` is a value the
launcher makes from the *address* of one of those buffers -- a TMA tensor map
(``wgmma_tma.TensorMapArg``) -- once per address: at plan time where the buffer
is fixed, at each run where it is a new array (an emulated input or output).

>>> k = Kernel("go_copy", 'extern "C" __global__ void go_copy(float* y) {}', (Param("y", "float*"),))
>>> "go_copy" in translation_unit([k])
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from graphopt.errors import UnsupportedOpError

# IR dtype -> C type, for types the kernels move or compute on
CTYPES = {
    "float32": "float", "float64": "double", "float16": "unsigned short",  # halves as their bits: see half.py
    "bfloat16": "unsigned short",
    "int64": "long long", "int32": "int", "int16": "short", "int8": "signed char",
    "uint64": "unsigned long long", "uint32": "unsigned int", "uint16": "unsigned short", "uint8": "unsigned char",
    "bool": "bool",
}


def ctype_of(dtype: str) -> str:
    try:
        return CTYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"dtype {dtype} has no CUDA kernels") from None


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # "float*", "const float*"


@dataclass(frozen=True)
class Helper:
    """A ``__device__`` function shared by kernels; emitted once per translation unit."""

    name: str
    source: str


class DerivedArg:
    """A trailing kernel parameter made on the host from the address of the launch's buffer
    argument ``source`` (its position among the kernel's parameters): 128 bytes of a tensor map,
    say, passed by pointer. A subclass is a frozen dataclass (equal args over one address share
    one encoding) with a ``source`` field and says how it is made:

    * ``host_value(address)``: a uint8 array the emulation passes by pointer;
    * ``device_value(address, stream)``: a device array (``device.py``), queued on ``stream``.

    >>> k = render_tc_matmul(make_tc_matmul(256, 256, 128, engine="wgmma", tma=True))  # doctest: +SKIP
    >>> [(p.name, d.source) for p, d in zip(k.params[-2:], k.derived)]                # doctest: +SKIP
    [('tma_a', 1), ('tma_b', 2)]
    """

    source: int

    def host_value(self, address: int):  # pragma: no cover - per kind
        raise NotImplementedError

    def device_value(self, address: int, stream):  # pragma: no cover - per kind
        raise NotImplementedError


@dataclass(frozen=True)
class Kernel:
    name: str
    source: str
    params: tuple[Param, ...]
    helpers: tuple[Helper, ...] = ()
    uses_barrier: bool = False  # __shared__ / __syncthreads / shuffles: blocks must not overlap under emulation
    spec: Any = field(default=None, compare=False)
    dyn_smem: int = 0  # bytes of dynamic shared memory a launch must ask for (past 48 KB: see device.py)
    derived: tuple[DerivedArg, ...] = ()  # the last len(derived) params, made from buffer addresses

    def param_types(self) -> list[str]:
        return [p.ctype for p in self.params]

    @property
    def n_buffers(self) -> int:
        """How many of the parameters are buffers (a launch's ``args``); the rest are ``derived``."""
        return len(self.params) - len(self.derived)

    def derived_values(self, addresses, make) -> list:
        """``make(arg, address)`` for each derived parameter, over the address of its source among
        ``addresses`` (one per buffer parameter, in order)."""
        return [make(d, addresses[d.source]) for d in self.derived]


# CUDA's launch limits (every GPU since compute capability 3.0): a launch outside them fails with
# CUDA_ERROR_INVALID_VALUE on the device, while the emulation would happily run it
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS = 1024


def check_launch(name: str, grid: Sequence[int], block: Sequence[int]) -> None:
    """Refuse, naming the kernel, a grid or block that no CUDA device launches."""
    from graphopt.errors import GraphoptError

    threads = 1
    for b in block:
        threads *= int(b)
    if (any(not 1 <= int(g) <= m for g, m in zip(grid, MAX_GRID))
            or any(not 1 <= int(b) <= m for b, m in zip(block, MAX_BLOCK)) or threads > MAX_THREADS):
        raise GraphoptError(f"kernel {name}: grid {tuple(grid)} / block {tuple(block)} is outside CUDA's launch "
                            f"limits (grid up to {MAX_GRID}, block up to {MAX_BLOCK} and {MAX_THREADS} threads)")


def kernel_source(name: str, threads: int, params: Sequence[Param], body: Sequence[str], comment: str,
                  min_blocks: int | None = None) -> str:
    """The text of one ``extern "C" __global__`` kernel (pointer parameters are ``__restrict__``).

    ``min_blocks`` (blocks per SM) sets ptxas's register budget: without it ptxas aims at
    high occupancy and may spill a register-tiled kernel to stay under 64 registers."""
    sig = ", ".join(f"{p.ctype} __restrict__ {p.name}" for p in params)
    bounds = f"{threads}, {min_blocks}" if min_blocks else f"{threads}"
    return (f"// {comment}\n"
            f'extern "C" __global__ void __launch_bounds__({bounds}) {name}({sig}) {{\n'
            + "\n".join("    " + line for line in body) + "\n}\n")


# Common definitions every translation unit starts with. NVRTC has no standard
# headers, so nothing here may depend on one.
PRELUDE = """\
#define GO_INF __int_as_float(0x7f800000)
#define GO_NAN __int_as_float(0x7fffffff)
"""


def translation_unit(kernels: Sequence[Kernel]) -> str:
    """One source file holding every distinct kernel (and each helper once)."""
    parts = [PRELUDE]
    seen_helpers: set[str] = set()
    seen_kernels: set[str] = set()
    for k in kernels:
        for h in k.helpers:
            if h.name not in seen_helpers:
                seen_helpers.add(h.name)
                parts.append(h.source)
    for k in kernels:
        if k.name not in seen_kernels:
            seen_kernels.add(k.name)
            parts.append(k.source)
    return "\n".join(parts)


def unique_kernels(kernels: Sequence[Kernel]) -> list[Kernel]:
    out: dict[str, Kernel] = {}
    for k in kernels:
        out.setdefault(k.name, k)
    return list(out.values())
