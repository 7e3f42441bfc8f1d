"""Autotuning on a GPU: a kernel's candidate schedules timed once per shape and GPU, the fastest
kept, the choice cached next to the kernels (the ``gemm="auto"`` choice of ``cublas.py``,
generalized to any kernel family with a list of schedules).

A family is tunable when ``CANDIDATES`` has a function from its spec to the specs of the same
problem under other schedules, the table's own choice first:

* flash attention: 1, 2 or 4 warps (16 query rows each) a block, 32 or 64 keys a tile;
* row kernels (reductions, Softmax, LayerNorm, fused rows): a warp per row with 1-8 rows a
  block, or a block of 64-256 threads per row.

At compile time on a GPU (``tune="auto"``, the default of the ``cuda`` backend), every launch
with more than one candidate is timed on the device (CUDA events, one warm-up, ``REPS`` calls,
on the executable's stream and buffers) and its step swapped for the fastest candidate's
launch; the table's choice wins a tie. The choice is cached in ``cuda-tune/`` keyed by the
candidates (the problem and every schedule), the compute capability and graphopt's version, so
a second compile times nothing. Nothing is timed when a model runs. ``tune="table"`` (or
``GRAPHOPT_TUNE=table`` in the environment) keeps the table's choices; ``cuda-emu`` has no
device to time on and always does.

>>> summary = tune_launches(exe, "auto")   # doctest: +SKIP
>>> summary["choices"]["attn"]["schedule"]  # doctest: +SKIP
'FlashTile(warps=2, bc=64)'
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Callable

from graphopt.buildcache import cached_entry, content_key, graphopt_version, write_cached_text
from graphopt.errors import GraphoptError

from . import device
from .flash_attention import FlashAttentionSpec, FlashTile, render_flash_attention
from .reduce import ReduceSpec, render_row_reduce
from .specs import ceil_div, round_up

TUNE_MODES = ("auto", "table")
REPS = 10


def flash_candidates(spec: FlashAttentionSpec) -> list[FlashAttentionSpec]:
    keys = (32, 64) if max(spec.d, spec.dv) <= 64 else (32,)  # 64-key tiles past width 64 spill
    tiles = [spec.tile] + [FlashTile(w, bc) for w in (4, 2, 1) for bc in keys if FlashTile(w, bc) != spec.tile]
    return [replace(spec, tile=t) for t in tiles if t.br <= round_up(max(spec.sq, 1), 16) or t == spec.tile]


def row_candidates(spec: ReduceSpec) -> list[ReduceSpec]:
    """A warp per row (1, 2, 4 or 8 rows a block) or a block per row (64-256 threads); the block
    path reduces through shared memory across the row's warps, so it keeps one row a block."""
    shapes = [(32, r) for r in (1, 2, 4, 8)] + [(t, 1) for t in (64, 128, 256)]
    rows = max(spec.nrows, 1)
    out = [spec]
    for tx, rpb in shapes:
        if (tx, rpb) == (spec.tx, spec.rpb) or rpb > rows or (tx > 32 and ceil_div(spec.ncols, tx) < 2):
            continue
        out.append(replace(spec, tx=tx, rpb=rpb))
    return out


# spec family -> (candidate specs, renderer)
CANDIDATES: dict[type, tuple[Callable, Callable]] = {
    FlashAttentionSpec: (flash_candidates, render_flash_attention),
    ReduceSpec: (row_candidates, render_row_reduce),
}


def check_mode(mode: str) -> str:
    if mode not in TUNE_MODES:
        raise GraphoptError(f"tune={mode!r}: use one of {', '.join(map(repr, TUNE_MODES))}")
    return mode


def default_mode() -> str:
    """``GRAPHOPT_TUNE`` when set, else ``auto``."""
    return check_mode(os.environ.get("GRAPHOPT_TUNE", "auto"))


def candidates(spec) -> list:
    """The candidate specs of ``spec``'s problem, the table's choice first ([spec] if not tunable)."""
    entry = CANDIDATES.get(type(spec))
    return entry[0](spec) if entry else [spec]


def schedule_of(spec) -> str:
    if isinstance(spec, FlashAttentionSpec):
        return repr(spec.tile)
    return f"tx={spec.tx}, rpb={spec.rpb}" if isinstance(spec, ReduceSpec) else type(spec).__name__


def time_on_device(run: Callable[[], None], stream, reps: int = REPS) -> float:
    """Milliseconds per call of ``run`` on ``stream`` (CUDA events; one warm-up call)."""
    return device.time_ms(run, stream, reps)


def _key(cands: list) -> str:
    return content_key("tune", repr(cands), device.compute_capability(), graphopt_version())


def _valid(path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()).get("choice"), int)
    except (OSError, ValueError, AttributeError):
        return False


def tune_launches(exe, mode: str) -> dict:
    """Time the candidate schedules of every tunable launch of ``exe`` (a ``CudaExecutable``)
    and swap each step for its fastest; the summary for ``stats["tuning"]``."""
    check_mode(mode)
    summary: dict = {"mode": mode, "choices": {}}
    launches = exe.lowered.launches
    tunable = {i: candidates(l.kernel.spec) for i, l in enumerate(launches)}
    tunable = {i: c for i, c in tunable.items() if len(c) > 1}
    if mode == "table" or not tunable:
        return summary
    chosen: dict[str, int] = {}  # one timing per distinct kernel: launches of one spec share it
    zeroed = False
    for i, cands in tunable.items():
        l = launches[i]
        name = l.kernel.name
        if name not in chosen:
            key = _key(cands)
            path = cached_entry("cuda-tune", key, ".json", valid=_valid)
            if path is not None:
                hit = json.loads(path.read_text())
                chosen[name] = hit["choice"]
                summary["choices"][name] = {**hit, "schedule": schedule_of(cands[hit["choice"]]),
                                            "reason": "cached timing"}
            else:
                if not zeroed:  # time on numbers, not on whatever bits the allocator left
                    device.zero(exe.arena, exe.stream)
                    zeroed = True
                render = CANDIDATES[type(l.kernel.spec)][1]
                kernels = [render(c) for c in cands]
                fns = exe.load_functions(kernels)
                # each candidate's own arguments: its derived ones (a TMA GEMM's tensor maps, whose boxes
                # follow its tile) come from the same buffers
                ms = [time_on_device(exe.launch_step(fns[k.name], c.grid(), c.block(), exe.kernel_args(k, l.args)),
                                     exe.stream)
                      for k, c in zip(kernels, cands)]
                best = min(range(len(ms)), key=lambda j: (ms[j], j))  # the table's choice on a tie
                rec = {"choice": best, "ms": [round(t, 4) for t in ms]}
                write_cached_text("cuda-tune", key, ".json", json.dumps(rec), valid=_valid)
                chosen[name] = best
                summary["choices"][name] = {**rec, "schedule": schedule_of(cands[best]), "reason": "timed on this device"}
        j = chosen[name]
        if j:
            c = cands[j]
            k = CANDIDATES[type(l.kernel.spec)][1](c)
            fn = exe.load_functions([k])[k.name]
            exe.steps[i] = exe.launch_step(fn, c.grid(), c.block(), exe.kernel_args(k, l.args))
    return summary
