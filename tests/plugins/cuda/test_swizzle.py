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


# -- the mainloop's shared layout: addresses from the C it renders, evaluated per thread ---------------

from itertools import product  # noqa: E402

import numpy as np  # noqa: E402

from graphopt.plugins.cuda import mainloop  # noqa: E402
from graphopt.plugins.cuda.mainloop import (TILES, copy_slots, hoist_offsets, ldsm_slots, smem_tiles,  # noqa: E402
                                            thread_values)

LAYOUTS = list(product((True, False), repeat=2))  # (A k-major, B k-major)


def _tiles(name, a_kmajor, b_kmajor):
    t = TILES[name]
    return t, dict(zip("ab", smem_tiles(t, a_kmajor, b_kmajor))), {"a": a_kmajor, "b": b_kmajor}


@pytest.mark.parametrize("a_kmajor, b_kmajor", LAYOUTS)
@pytest.mark.parametrize("name", list(TILES))
def test_every_ldmatrix_phase_is_one_wavefront(name, a_kmajor, b_kmajor):
    t, tiles, kmajor = _tiles(name, a_kmajor, b_kmajor)
    env = thread_values(t)
    for op, tile in tiles.items():
        for (f, ks), (row, col) in ldsm_slots(t, kmajor[op], op).items():
            addr = c_eval(tile.at(row, col), **env) * 2  # bytes from the stage's start
            rows, cols = c_eval(row, **env), c_eval(col, **env)
            assert (addr % 16 == 0).all() and (rows < tile.rows).all() and (cols + 8 <= tile.cols).all()
            for warp in range(t.threads // 32):
                for q in range(4):  # matrix q: lanes 8q..8q+7 give its rows, one phase
                    lanes = range(warp * 32 + 8 * q, warp * 32 + 8 * q + 8)
                    assert wavefronts((int(addr[i]), 16) for i in lanes) == 1, (op, f, ks, warp, q)


@pytest.mark.parametrize("vec", [8, 4, 2, 1])
@pytest.mark.parametrize("a_kmajor, b_kmajor", LAYOUTS)
@pytest.mark.parametrize("name", list(TILES))
def test_copies_fill_each_tile_once_in_bounds_and_every_store_wavefront_is_one(name, a_kmajor, b_kmajor, vec):
    """16-byte copies: 8 lanes a wavefront; 8-, 4- and 2-byte stores: 16 and 32 lanes (128 bytes
    at most per wavefront). Every element of the tile written exactly once, nothing outside it."""
    t, tiles, _ = _tiles(name, a_kmajor, b_kmajor)
    env = thread_values(t)
    per_wave = min(32, 128 // (2 * vec))
    for op, tile in tiles.items():
        hits = np.zeros(tile.rows * tile.cols, np.int64)
        for u, row, col, _ in copy_slots(vec, tile, t.threads):
            live = c_eval(row, **env) < tile.rows
            addr = c_eval(tile.at(row, col), **env) - tile.base  # elements from the tile's start
            for i in np.flatnonzero(live):
                hits[addr[i]:addr[i] + vec] += 1
            for w0 in range(0, t.threads, per_wave):
                wave = [(int(addr[i]) * 2, 2 * vec) for i in range(w0, w0 + per_wave) if live[i]]
                assert wavefronts(wave) <= 1, (op, u, w0)
        assert (hits == 1).all(), (op, np.flatnonzero(hits != 1)[:8])


def test_the_layout_is_what_the_rendered_kernel_uses():
    """The kernel's copy and ldmatrix offsets are the registers ``hoist_offsets`` declares, each
    use its register plus a constant that reproduces the unhoisted offset in every thread."""
    from graphopt.plugins.cuda.specs import View
    from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul

    t = TILES["128x128"]
    spec = make_tc_matmul(256, 256, 64, (), a=View("float16", (1, 256)), b=View("float16", (256, 1)),
                          c=View.contiguous("float16", (256, 256)), tile=t)
    src = render_tc_matmul(spec).source
    env = thread_values(t)
    a_tile, _ = smem_tiles(t, False, True)  # A [K, M] stored: m contiguous; B [N, K]: k contiguous
    slots = ldsm_slots(t, False, "a")
    exprs = [a_tile.at(r, c) for r, c in slots.values()]
    decls, uses = hoist_offsets("a_ld", exprs, env)
    assert all(d in src for d in decls) and "go_ldsm_x4_trans(af[0], st_h + a_ld0)" in src
    regs = {d.split()[2]: c_eval(d.split("=", 1)[1].rstrip(";"), **env) for d in decls}
    for e, use in zip(exprs, uses):
        reg, *rest = use.split(" ", 1)
        np.testing.assert_array_equal(regs[reg] + (c_eval(rest[0].replace(" ", ""), x=0) if rest else 0),
                                      c_eval(e, **env))
    # a step of 16 rows of m moves a 256-byte-row tile's chunks by an XOR, not a constant: one
    # register per m step; k steps (16 rows down) keep the XOR and are constants
    assert len(decls) == t.wm // 16


def test_swizzled_stages_are_unpadded():
    t = TILES["128x128"]
    assert mainloop.smem_bytes(t) == t.stages * (128 + 128) * 32 * 2 == 64 * 1024  # padded: 80 KB
