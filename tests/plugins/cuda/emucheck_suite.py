"""The checked-emulation sweep: real kernels of every family, and planted bugs, under
``GRAPHOPT_EMU_CHECK`` (AddressSanitizer and the race check).

    python -m graphopt.plugins.cuda.emucheck asan,race -- python tests/plugins/cuda/emucheck_suite.py

Kernel cases are taken from the family modules' ``CASES`` (a few per family, chosen to cover
its paths) and run as those modules run them (``cuda_harness.check_case``: every thread order,
against NumPy); whole graphs from the graph modules compile for ``cuda-emu`` (each value in its
own allocation) and are compared with the CPU reference. Everything is compiled in one batch.
Then each planted bug runs and must be caught. Prints one JSON object: what ran, the findings
on the real kernels (a check failed; expected: none), results off the reference (which the
family modules' own tests report too) and, per planted bug, the error it raised.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_harness import Guarded, aligned, check_case  # noqa: E402
from graphopt.builder import GraphBuilder  # noqa: E402
from graphopt.errors import GraphoptError  # noqa: E402
from graphopt.plugin_loader import get_backend  # noqa: E402
from graphopt.plugins.cpu import run_reference  # noqa: E402
from graphopt.plugins.cuda import emucheck  # noqa: E402
from graphopt.plugins.cuda.backend import CudaEmuExecutable  # noqa: E402
from graphopt.plugins.cuda.compile_emu import kernel_batch  # noqa: E402
from graphopt.plugins.cuda.kernel import Kernel, Param  # noqa: E402
from graphopt.plugins.cuda.lower import lower_graph  # noqa: E402

# family module -> the cases it contributes (ids of its CASES)
KERNEL_CASES = {
    "test_cuda_elementwise": ["Sigmoid-3x37", "Add-4x3x7", "Where-4x6", "Cast-3x7", "expr-two-results-shared",
                              "contiguous-vec4", "odd-size", "transpose-201", "scalar-broadcast"],
    "test_cuda_reduce": ["softmax-5x37-ax1-float32", "softmax-3x1500-ax1-float32", "sum-4x6x7-ax02-float32",
                         "mean-9x5000-ax1-float32", "sum-6x33-ax0-float32", "softmax-3x70-ax1-float16",
                         "layernorm-2x3x1100-ax2-stats-float32", "layernorm-5x48-ax1-stats-float16"],
    "test_cuda_gemm": ["odd-32x32", "tile64", "M1", "transA-transB", "batch-broadcast-B", "epilogue-16x64",
                       "conv3x3-pad1", "conv-stride2-dil2-groups2", "conv-asym-pads", "conv1x1-residual", "conv3d",
                       "depthwise-mult2-stride2", "conv-float16", "depthwise-dil2"],
    "test_cuda_tc": ["odd-sizes", "K-not-multiple-of-16", "batched-bias-relu"],
    "test_cuda_bf16": ["odd-sizes", "K-not-multiple-of-16"],
    "test_cuda_nhwc": ["conv3x3-stride2-odd", "conv-groups3-asym-pads", "conv-narrow-tile", "depthwise3x3-C37",
                       "max-ceil", "avg3x3-exclude-pad", "gap-7x7-C37", "conv-float16"],
    "test_cuda_spatial": ["max3x3-s2-p1", "avg-ceil-include-pad", "max3d", "gather-negative-2d-indices",
                          "gather-out-of-range-reads-zero", "pad-reflect", "pad-wrap", "pad-negative-crops"],
    "test_cuda_attention": ["small", "two-chunks-odd-dims", "bshd-layout-key-bias", "causal", "single-query"],
}
# graph module -> graphs (None: all of them)
GRAPH_CASES = {
    "test_cuda_backend": None,
    "test_cuda_int8": ["qgemm_uint8_weights_with_zero_points_clip", "qmatmul_activations_with_zero_points",
                       "qconv_groups_dilation_weight_zero_points", "qconv_depthwise_multiplier_2",
                       "qadd_broadcast_relu", "quantize_dequantize_edges", "maxpool_uint8"],
    "test_cuda_int8_tc": ["qgemm_four_warps_partial_k_step", "qconv_many_channels_weight_zero_points"],
    "test_cuda_resize": ["nearest_asymmetric_floor_uint8", "linear_antialias_downscale", "cubic_exclude_outside"],
    "test_cuda_rowfused": ["masked-softmax-epilogue", "residual-layernorm-extra-output"],
}


def _graph_builders():
    """(id, build() -> (graph, feeds, compiled executable)) for GRAPH_CASES."""
    import importlib

    out = []
    be = get_backend("cuda-emu")
    for mod_name, names in GRAPH_CASES.items():
        mod = importlib.import_module(mod_name)
        if mod_name == "test_cuda_int8_tc":  # its own builder forces the tensor-core schedule
            out += [(f"{mod_name}::{n}", lambda n=n, mod=mod: mod._build(n)) for n in names]
            continue
        if mod_name == "test_cuda_resize":
            out += [(f"{mod_name}::{n}", lambda n=n, mod=mod: (*mod.build(n), be.compile(mod.build(n)[0])))
                    for n in names]
            continue
        graphs = mod.GRAPHS
        for n in (names if names is not None else list(graphs)):
            entry = graphs[n]
            build = entry[1] if isinstance(entry, tuple) else entry

            def make(build=build):
                g, feeds = build()
                return g, feeds, be.compile(g)
            out.append((f"{mod_name}::{n}", make))
    return out


def _tolerance(dtype) -> float:
    return 0.0 if np.dtype(dtype).kind in "iub" else 1e-2 if np.dtype(dtype).itemsize <= 2 else 1e-4


def real_kernels() -> dict:
    """Run the selection; {"cases": n, "graphs": n, "kernels": n, "findings": [...]}."""
    import importlib

    findings, kernel_names = [], set()
    cases = []
    for mod_name, ids in KERNEL_CASES.items():
        by_id = {c.id: c for c in importlib.import_module(mod_name).CASES}
        cases += [(f"{mod_name}::{i}", by_id[i]) for i in ids]
    with kernel_batch() as batch:
        batch.add([c.kernel for _, c in cases])
        graphs = []
        for gid, make in _graph_builders():
            graphs.append((gid, *make()))
    mismatches = []  # numbers off the reference: the family's own tests say so too, unchecked

    def file_under(item: str, exc: Exception) -> None:
        line = f"{item}: {str(exc).strip().splitlines()[0]}"
        (findings if isinstance(exc, GraphoptError) or "thread orders" in str(exc) else mismatches).append(line)

    for cid, case in cases:
        kernel_names.add(case.kernel.name)
        try:
            check_case(batch.library(case.kernel.name), case)
        except (AssertionError, GraphoptError) as exc:
            file_under(cid, exc)
    reference_errors = []
    for gid, g, feeds, exe in graphs:
        kernel_names.update(l.kernel.name for l in exe.lowered.launches)
        try:
            want = run_reference(g, feeds)
        except GraphoptError as exc:  # the CPU reference's problem, not the kernels'
            reference_errors.append(f"{gid}: {str(exc).strip().splitlines()[0]}")
            want = None
        try:
            got = exe.run(feeds)
            for v, a, r in zip(g.outputs, got, want or []):
                tol = _tolerance(r.dtype)
                np.testing.assert_allclose(a.astype(np.float64), r.astype(np.float64), rtol=tol, atol=tol,
                                           err_msg=f"{gid}: {v.name}")
        except (AssertionError, GraphoptError) as exc:
            file_under(gid, exc)
    return {"cases": len(cases), "graphs": len(graphs), "kernels": len(kernel_names), "findings": findings,
            "mismatches": mismatches, "reference_errors": reference_errors}


# -- planted bugs ----------------------------------------------------------------------------------

def K(name, body, params, barrier=False):
    sig = ", ".join(f"{t} {n}" for n, t in params)
    return Kernel(name, f'extern "C" __global__ void {name}({sig}) {{\n{body}\n}}\n',
                  tuple(Param(n, t) for n, t in params), (), barrier)


YX = [("y", "float*"), ("x", "const float*")]
PLANTED_KERNELS = {
    # one element past the end of y (the last thread)
    "oob_write": K("p_oob_write", "const int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                                  "if (i < 100) y[i + 1] = x[i];", YX),
    # one element before the start of x (the first thread)
    "oob_read": K("p_oob_read", "const int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                                "if (i < 100) y[i] = x[i - 1];", YX),
    # one past the end of a __shared__ array
    "shared_oob": K("p_shared_oob", "__shared__ float s[64];\nconst int t = threadIdx.x;\ns[t] = x[t];\n"
                                    "__syncthreads();\ny[t] = s[t + 1];", YX, True),
    # the missing __syncthreads: a thread reads its neighbour's slot in the phase that writes it
    "shared_race": K("p_shared_race", "__shared__ float s[64];\nconst int t = threadIdx.x;\ns[t] = x[t];\n"
                                      "y[t] = s[63 - t];", YX, True),
    # shared memory read before anything wrote it
    "shared_uninitialized": K("p_shared_uninit", "__shared__ float s[64];\nconst int t = threadIdx.x;\n"
                                                 "if (t < 32) s[t] = x[t];\n__syncthreads();\ny[t] = s[t];", YX, True),
    # half the block waits at one barrier, half at another
    "divergent_barrier": K("p_divergent", "const int t = threadIdx.x;\nif (t < 32) { __syncthreads(); y[t] = x[t]; }\n"
                                          "else { __syncthreads(); y[t] = -x[t]; }", YX, True),
}
PLANTED_SHAPES = {"oob_write": 100, "oob_read": 100}


def run_planted_kernel(name: str, batch) -> str | None:
    """Run planted kernel ``name`` under every seed as the harness does; the error, or None."""
    k = PLANTED_KERNELS[name]
    n = PLANTED_SHAPES.get(name, 64)
    lib = batch.library(k.name)
    x = aligned(np.arange(n, dtype=np.float32) + 1)
    first = None
    try:
        for seed in emucheck.race_seeds():
            y = Guarded((n,), np.float32)
            y.raw[y.guard:len(y.raw) - y.guard] = emucheck.fill_byte(seed)
            lib.set_seed(seed)
            lib.launch(k.name, (1, 1, 1), (n, 1, 1), [y.ptr, x.ctypes.data])
            y.check_guards()
            if first is None:
                first = y.array.copy()
            elif not np.array_equal(first.view(np.uint8), y.array.view(np.uint8)):
                return f"results differ between thread orders 0 and {seed} ({emucheck.SEED_NAMES[seed]})"
    except (GraphoptError, AssertionError) as exc:
        return str(exc)
    return None


def _tampered(launch, suffix: str, source: str):
    """``launch`` with its kernel's source replaced (and the kernel renamed: names key the build)."""
    name = launch.kernel.name + suffix
    return replace(launch, kernel=replace(launch.kernel, name=name, source=source.replace(launch.kernel.name, name)))


def _arena_graph():
    """Two elementwise nodes whose results sit next to each other in the arena."""
    b = GraphBuilder()
    x = b.input("x", (4, 64))
    h = b.op("Relu", x)
    y = b.op("Sigmoid", h)
    b.output(b.op("Add", y, h), "y")
    return b.graph, {"x": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}


def planted_arena_overflow():
    """A compiled graph whose Sigmoid kernel reads one element past its input (the Relu's
    result): in the arena that is the next tensor's first byte, under the check a red zone."""
    g, feeds = _arena_graph()
    lowered = lower_graph(g, "cuda-emu")
    for i, l in enumerate(lowered.launches):
        if l.node.op_type == "Sigmoid":  # its float4 loads start one vector late: the last is past the end
            assert "(x0 + 0)" in l.kernel.source
            lowered.launches[i] = _tampered(l, "_oob", l.kernel.source.replace("(x0 + 0)", "(x0 + 4)"))
    assert lowered.offsets[lowered.launches[1].args[1]] + 1024 == lowered.offsets[lowered.launches[1].args[0]]
    return CudaEmuExecutable(lowered.graph, lowered, 0.0), feeds


def planted_graph_race():
    """A compiled graph (softmax over long rows: a block per row, partial results across warps
    through shared memory) with its __syncthreads removed."""
    b = GraphBuilder()
    x = b.input("x", (3, 3000))
    b.output(b.op("Softmax", x, axis=1), "y")
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3000)).astype(np.float32)}
    lowered = lower_graph(b.graph, "cuda-emu")
    (l,) = lowered.launches
    helpers, src = [], l.kernel.source
    for h in l.kernel.helpers:  # go_block_max / go_block_sum hold the barriers
        if "__syncthreads()" in h.source:
            src = src.replace(h.name + "(", h.name + "_nosync(")
            h = replace(h, name=h.name + "_nosync", source=h.source.replace(h.name + "(", h.name + "_nosync(")
                        .replace("__syncthreads();", ";"))
        helpers.append(h)
    assert src != l.kernel.source
    t = _tampered(l, "_nosync", src)
    lowered.launches[0] = replace(t, kernel=replace(t.kernel, helpers=tuple(helpers)))
    return CudaEmuExecutable(lowered.graph, lowered, 0.0), feeds


def planted() -> dict:
    """Every planted bug (one host compile): the error each raised, or None if it went unseen."""
    with kernel_batch() as batch:
        batch.add(list(PLANTED_KERNELS.values()))
        graphs = {"arena_overflow": planted_arena_overflow(), "graph_race": planted_graph_race()}
    out = {name: run_planted_kernel(name, batch) for name in PLANTED_KERNELS}
    for name, (exe, feeds) in graphs.items():
        try:
            exe.run(feeds)
            out[name] = None
        except GraphoptError as exc:
            out[name] = str(exc)
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("real", "planted"), help="run one half")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = {"checks": sorted(emucheck.modes())}
    if args.only != "planted":
        res["real"] = real_kernels()
    if args.only != "real":
        res["planted"] = planted()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print("EMUCHECK " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
