"""Kernel specs: what a kernel computes (op family, shapes, dtypes, fused
functions) plus the schedule chosen for those shapes (tiles, threads, vector
width, index width). Specs are frozen dataclasses; a kernel's name is its
family plus a hash of its spec, so equal specs share one compiled kernel.

A ``View`` is how a kernel sees one tensor: element strides per iteration
dimension (0 = broadcast) and an element offset, so transposes, slices,
broadcasts and concatenation slots need no copies.

>>> View("float32", (3, 1)).with_offset(6)
View(dtype='float32', strides=(3, 1), offset=6)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

from .scalar import ScalarFn, contiguous_strides


@dataclass(frozen=True)
class View:
    dtype: str
    strides: tuple[int, ...]
    offset: int = 0

    @staticmethod
    def contiguous(dtype: str, shape: Sequence[int], offset: int = 0) -> "View":
        return View(dtype, contiguous_strides(shape), offset)

    def with_offset(self, offset: int) -> "View":
        return replace(self, offset=offset)


def spec_hash(spec) -> str:
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:12]


def kernel_name(family: str, spec) -> str:
    return f"go_{family}_{spec_hash(spec)}"


def prod(xs) -> int:
    n = 1
    for d in xs:
        n *= int(d)
    return n


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


@dataclass(frozen=True)
class Epilogue:
    """Per-element work after an accumulation: ``fn(acc, operand_0, ...)``.

    Each operand is read at the output element's coordinates through its view
    (strides over the kernel's output dimensions). ``fn=None`` stores ``acc``.
    """

    fn: ScalarFn | None = None
    operands: tuple[View, ...] = ()

    @property
    def arity(self) -> int:
        return 1 + len(self.operands)


MAX_BLOCKS = 65535  # grid-stride kernels loop over the rest


class OnePerElement:
    """Launch shape of kernels with one thread per output element in a grid-stride loop.

    Subclasses (frozen dataclasses) define ``work``, the number of output elements.
    """

    THREADS = 256

    @property
    def work(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def grid(self) -> tuple[int, int, int]:
        return (min(max(ceil_div(self.work, self.THREADS), 1), MAX_BLOCKS), 1, 1)

    def block(self) -> tuple[int, int, int]:
        return (self.THREADS, 1, 1)

    @property
    def empty(self) -> bool:
        return self.work == 0


class TiledLaunch:
    """Launch shape of the tiled GEMM kernels: one block per ``BM x BN`` tile of the
    ``M x N`` output, ``nz`` of them along z (batch or groups).

    Subclasses (frozen dataclasses) have ``M``, ``N``, ``tile`` (``bm``, ``bn``, ``threads``) and ``nz``.
    """

    def grid(self) -> tuple[int, int, int]:
        return (ceil_div(self.N, self.tile.bn), ceil_div(self.M, self.tile.bm), self.nz)

    def block(self) -> tuple[int, int, int]:
        return (self.tile.threads, 1, 1)

    @property
    def empty(self) -> bool:
        return self.M == 0 or self.N == 0 or self.nz == 0
