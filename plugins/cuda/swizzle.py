"""XOR-swizzled shared-memory layouts: where a 16-byte chunk of a tile lives, so that the eight
16-byte rows an ``ldmatrix`` phase reads, and the eight 16-byte chunks a ``cp.async`` wavefront
writes, fall in eight different bank quads without padding.

Shared memory is 32 banks of 4 bytes: a 128-byte *line* spans every bank once, and a 16-byte
chunk occupies one *bank quad* (``(address // 16) % 8``). An unpadded tile whose rows are 128
bytes puts chunk ``c`` of every row in the same quad, so reading one column of chunks down eight
rows (what ``ldmatrix`` does) costs eight wavefronts instead of one. Swizzling moves the chunk
instead of padding the row: **a chunk's position within its 128-byte line is XORed with the
line's index mod 8**.

* Rows of 128 bytes or more (``row_chunks >= 8``): each row is its own line (per 128 bytes),
  chunk ``c`` of row ``r`` goes to ``c ^ (r % 8)`` (only the low three bits of ``c`` change).
* Shorter rows (64, 32, 16 bytes): ``8 / row_chunks`` rows share a line, and the XOR applies to
  the tile's linear chunk index ``L = r * row_chunks + c``: ``L ^ ((L >> 3) % 8)``. For 64-byte
  rows this is CUTLASS's ``Swizzle<2,3,3>`` on pairs of rows, plus the third bit (which only
  permutes whole 8-row groups), i.e. the same 128-byte pattern.

For rows of exactly 128 bytes both readings agree, and they are the Hopper 128-byte swizzle
(``CU_TENSOR_MAP_SWIZZLE_128B``, the ``wgmma`` 128B shared-memory layout): byte address bits
[4:6] ^= bits [7:9], ``swizzle_bytes(offset, 128)``; the 64- and 32-byte modes are
``swizzle_bytes(offset, 64 / 32)`` (CUTLASS ``Swizzle<2,4,3>`` and ``Swizzle<1,4,3>``). A tile
laid out this way must start at an address that is a multiple of 1024 bytes for TMA/wgmma, and
of 128 bytes for the bank argument (everything here is relative to the tile's start).

Each function has a C rendering (``*_c``) over expressions, built of ``+ * >> & ^`` only, so the
same text also evaluates in Python (``c_eval``) and tests can check the two agree.

>>> [swizzle_chunk(r, 0, 8) for r in range(8)]          # one column of 128-byte rows: 8 quads
[0, 9, 18, 27, 36, 45, 54, 63]
>>> [swizzle_chunk(r, 1, 4) % 8 for r in range(8)]      # 64-byte rows (BK = 32 halves)
[1, 5, 0, 4, 3, 7, 2, 6]
>>> swizzle_bytes(3 * 128 + 2 * 16, 128) == swizzle_chunk(3, 2, 8) * 16
True
>>> swizzle_chunk_c("r", "c", 4)
'(((r) * 4 + (c)) ^ (((r) >> 1) & 7))'
"""
from __future__ import annotations

import re
from typing import Iterable

CHUNK = 16  # bytes: one cp.async.cg copy, one ldmatrix row, one bank quad
LINE = 128  # bytes: every bank once
BANKS, BANK_BYTES = 32, 4
SWIZZLE_MODES = {32: 1, 64: 2, 128: 3}  # TMA swizzle span in bytes -> XORed bits (CUTLASS Swizzle<B,4,3>)


def _check(row_chunks: int) -> None:
    if row_chunks < 1 or row_chunks & (row_chunks - 1):
        raise ValueError(f"a swizzled row is a power of two of 16-byte chunks, not {row_chunks}")


def _line_shift(row_chunks: int) -> int:
    """log2 of the rows per 128-byte line (rows shorter than a line); 0 for longer rows."""
    return max(0, (LINE // CHUNK // row_chunks).bit_length() - 1)


def swizzle_chunk(row: int, chunk: int, row_chunks: int) -> int:
    """Where chunk ``chunk`` (16 bytes) of row ``row`` of a tile with rows of ``row_chunks`` chunks
    lives, in chunks from the tile's start. A bijection on every whole number of 128-byte lines.

    >>> sorted(swizzle_chunk(r, c, 2) for r in range(8) for c in range(2)) == list(range(16))
    True
    """
    _check(row_chunks)
    if row_chunks >= 8:
        return row * row_chunks + (chunk ^ (row & 7))
    lin = row * row_chunks + chunk
    return lin ^ ((row >> _line_shift(row_chunks)) & 7)


def swizzle_chunk_c(row: str, chunk: str, row_chunks: int) -> str:
    """``swizzle_chunk`` as a C expression over the expressions ``row`` and ``chunk``.

    >>> swizzle_chunk_c("r", "c", 16)
    '((r) * 16 + ((c) ^ ((r) & 7)))'
    """
    _check(row_chunks)
    if row_chunks >= 8:
        return f"(({row}) * {row_chunks} + (({chunk}) ^ (({row}) & 7)))"
    sh = _line_shift(row_chunks)
    line = f"({row})" if sh == 0 else f"(({row}) >> {sh})"
    return f"((({row}) * {row_chunks} + ({chunk})) ^ ({line} & 7))"


def swizzle_bytes(offset: int, mode: int = 128) -> int:
    """The TMA/``wgmma`` swizzle of a byte offset (from a 1024-byte aligned tile start):
    ``mode`` 128, 64 or 32 bytes XORs bits [4:4+b) with bits [7:7+b), b = 3, 2, 1.

    >>> swizzle_bytes(0x90, 128), swizzle_bytes(0x190, 64)
    (128, 416)
    """
    b = SWIZZLE_MODES[mode]
    mask = (1 << b) - 1
    return offset ^ (((offset >> 7) & mask) << 4)


def swizzle_bytes_c(offset: str, mode: int = 128) -> str:
    """``swizzle_bytes`` as a C expression.

    >>> swizzle_bytes_c("o")
    '((o) ^ ((((o) >> 7) & 7) << 4))'
    """
    mask = (1 << SWIZZLE_MODES[mode]) - 1
    return f"(({offset}) ^ (((({offset}) >> 7) & {mask}) << 4))"


def c_eval(expr: str, **env: int) -> int:
    """Evaluate a C integer expression made of names, literals, ``+ - * / % >> << & ^ |`` and
    parentheses, for non-negative values (where C and Python agree; ``/`` truncates). The values
    may be NumPy integer arrays (one element per thread): the result is then an array.

    >>> c_eval(swizzle_chunk_c("lane >> 2", "lane & 3", 4), lane=9)
    8
    """
    if not re.fullmatch(r"[\w\s+\-*/%&^|()]*", expr.replace("<<", "").replace(">>", "")) or "//" in expr:
        raise ValueError(f"not a plain integer expression: {expr}")
    return eval(expr.replace("/", "//"), {"__builtins__": {}}, dict(env))


def wavefronts(accesses: Iterable[tuple[int, int]]) -> int:
    """Shared-memory wavefronts one phase of a warp's request needs: ``accesses`` are
    (byte address, bytes) per lane of the phase; a bank serves one distinct 4-byte word per
    wavefront (lanes reading the same word share it). 1 means conflict-free.

    >>> wavefronts((r * 128, 16) for r in range(8))     # one column of unswizzled 128-byte rows
    8
    >>> wavefronts((swizzle_chunk(r, 0, 8) * 16, 16) for r in range(8))
    1
    """
    words: dict[int, set[int]] = {}
    for addr, n in accesses:
        for w in range(addr // BANK_BYTES, (addr + n + BANK_BYTES - 1) // BANK_BYTES):
            words.setdefault(w % BANKS, set()).add(w)
    return max((len(s) for s in words.values()), default=0)
