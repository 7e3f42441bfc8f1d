"""``graphopt compile --emit DIR``: what a compile produced, on disk.

Every backend: ``report.json`` (passes, then the backend's stats) and ``graph.txt``
(the compiled graph, one node per line). A backend that generates kernels (its
executable has a ``lowered`` launch list: ``cuda``, ``cuda-emu``) also writes
``kernels.cu``, the one translation unit that NVRTC compiles on a GPU and the host
compiler builds under emulation, and ``launch_plan.json``: per launch the kernel,
grid, block, the node it runs and each pointer argument's tensor and buffer
(graph input or output, constant, or arena offset).

>>> written = emit(compiled_model, Path("out"), report)   # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


def _buffer(lowered, exe_graph, v) -> str:
    if v in set(exe_graph.inputs):
        return "input"
    if v in lowered.consts:
        return "constant"
    if v in set(exe_graph.outputs):
        return "output"
    off = lowered.offsets.get(v)
    return f"arena+{off}" if off is not None else "arena"


def launch_plan(lowered) -> dict:
    """The launch list as plain data (see the module docstring)."""
    g = lowered.graph
    launches = []
    for i, l in enumerate(lowered.launches):
        launches.append({
            "index": i, "kernel": l.kernel.name, "node": l.node.name, "op": l.node.op_type,
            "grid": list(l.grid), "block": list(l.block),
            "args": [{"param": p.name, "ctype": p.ctype, "tensor": v.name, "type": str(v.type),
                      "buffer": _buffer(lowered, g, v)} for p, v in zip(l.kernel.params, l.args)],
        })
    plan = lowered.plan
    return {"kernels": len(lowered.kernels), "launches": launches,
            "folded_at_compile_time": list(lowered.folded),
            "arena_bytes": plan.peak_bytes if plan else 0, "memory_plan": plan.summary() if plan else ""}


def emit(model, folder: Path, report: dict) -> list[Path]:
    """Write the files of the module docstring into ``folder`` (created; must not hold other files
    of ours from another model: they are replaced). Returns the paths written."""
    from ..fileutil import atomic_write
    from ..printer import format_graph

    exe = model.executable
    lowered = getattr(exe, "lowered", None)
    if lowered is None and hasattr(exe, "for_feeds"):
        raise InputError("--emit: the model has symbolic input dims, so its kernels are generated per shape at "
                         "run time; give the shapes with --input-shape NAME:D0,D1,... (or --batch)")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {
        "report.json": json.dumps(report, indent=2, default=str) + "\n",
        "graph.txt": format_graph(lowered.graph if lowered is not None else model.graph) + "\n",
    }
    if lowered is not None:
        from ..plugins.cuda.kernel import translation_unit

        files["kernels.cu"] = translation_unit(lowered.kernels)
        files["launch_plan.json"] = json.dumps(launch_plan(lowered), indent=2) + "\n"
    written = []
    for name, text in files.items():
        with atomic_write(folder / name, "w") as f:
            f.write(text)
        written.append(folder / name)
    return written
