"""GPU benchmark of the CUDA backend: models vs torch eager and torch.compile, the
generated GEMM vs cuBLAS, all in one process on the same inputs.

    python benchmarks/bench_cuda.py                 # everything
    python benchmarks/bench_cuda.py --only gemm     # just the 4096^3 GEMMs (float32, float16, int8 dp4a and mma)
    python benchmarks/bench_cuda.py --models resnet50 --batches 1 --reps 20
    python benchmarks/bench_cuda.py --only int8     # resnet_style b1/b64 in float32, float16 and int8
    python benchmarks/bench_cuda.py --no-torch-compile --reps 20 --warmup 2   # a short run
    python benchmarks/bench_cuda.py --only models --dtypes float16 --batches 1   # vs torch eager and torch.compile(mode="reduce-overhead")

``--dtypes int8`` quantizes a model with ``graphopt.quantize.quantize_static`` (calibrated
on a few random batches) and lowers it with ``lower_int8``: int8 convolutions and GEMMs on
the dp4a kernels; it is checked against graphopt's float32 run of the same model.

Reports milliseconds per run (median of CUDA-event timings after warm-up) and
ratios to the peers (>1 means graphopt is slower). Models run from device-resident
inputs with the compiled launch sequence replayed as a CUDA graph, which is how
torch is timed too (its inputs are already on the GPU). Every graphopt result is
checked against the peer before it is timed.

Needs an NVIDIA GPU with CuPy; exits with a one-line reason otherwise.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpu_or_exit():
    from graphopt.plugins.cuda import CudaBackend

    ok, why = CudaBackend().is_available()
    if not ok:
        sys.exit(f"bench_cuda: needs a CUDA GPU: {why}")
    import cupy

    return cupy


def time_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` by CUDA events on the current stream."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def torch_on_gpu():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


# -- GEMM ------------------------------------------------------------------------------------------


def bench_gemm(cp, n: int, reps: int, warmup: int = 3, dtypes=("int8", "float32", "float16")) -> list[tuple]:
    from graphopt.plugins.cuda.compile_nvrtc import load_module
    from graphopt.plugins.cuda.gemm import make_matmul, render_gemm
    from graphopt.plugins.cuda.kernel import translation_unit
    from graphopt.plugins.cuda.roofline import gemm_floor_us
    from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul

    rows = []
    if "int8" in dtypes:
        rows.extend(bench_int8_gemm(cp, n, reps, load_module, translation_unit, warmup))
    for dtype, make, render in (("float32", make_matmul, render_gemm), ("float16", make_tc_matmul, render_tc_matmul)):
        if dtype not in dtypes:
            continue
        spec = make(n, n, n)
        kernel = render(spec)
        fn = load_module(translation_unit([kernel])).get_function(kernel.name)
        if kernel.dyn_smem:  # a pipelined tile past 48 KB of shared memory
            from graphopt.plugins.cuda.device import with_dynamic_smem

            fn = with_dynamic_smem(fn, kernel.dyn_smem)
        ws, ctr = getattr(spec, "workspace", (0, 0))
        extra = (cp.zeros(ws, cp.float32), cp.zeros(ctr, cp.int32)) if ws else ()  # split-K
        rng = cp.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=cp.float32).astype(dtype)
        b = rng.standard_normal((n, n), dtype=cp.float32).astype(dtype)
        y = cp.empty((n, n), dtype)

        def ours():
            fn(spec.grid(), spec.block(), (y, a, b, *extra))

        ours()
        ref = cp.matmul(a, b)
        err = float(cp.max(cp.abs(y.astype(cp.float32) - ref.astype(cp.float32))) / cp.max(cp.abs(ref)))
        t_ours = time_ms(ours, reps, warmup)
        t_cublas = time_ms(lambda: cp.matmul(a, b, out=y), reps, warmup)
        tflops = 2 * n ** 3 / (t_ours * 1e-3) / 1e12
        rows.append((f"gemm {n}^3 {dtype}", t_ours, {"cuBLAS": t_cublas}, f"{tflops:.1f} TFLOP/s, rel err {err:.1e}, "
                     + floor_note(gpu_name(cp), t_ours, lambda g: gemm_floor_us(n, n, n, dtype, g)), spec.tile))
    return rows


def bench_int8_gemm(cp, n: int, reps: int, load_module, translation_unit, warmup: int = 3) -> list[tuple]:
    """uint8 x int8 (packed constant weight) -> uint8, on dp4a and on int8 tensor cores (mma
    m16n8k32), each vs cuBLAS float16 on the same size."""
    from graphopt.ops.quant import quantize_multiplier, requantize
    from graphopt.plugins.cuda.int8 import make_int8_gemm
    from graphopt.plugins.cuda.int8_tc import Int8MmaGemmSpec, pick_int8_gemm, render_int8
    from graphopt.plugins.cuda.requant import QuantOut, channel_table

    rng = np.random.default_rng(0)
    a_h = rng.integers(0, 256, (n, n)).astype(np.uint8)
    w_h = rng.integers(-127, 128, (n, n)).astype(np.int8)  # (N, K): K contiguous, packed four to a word
    mult = 2.0 ** -22
    m0, shift = quantize_multiplier(np.array([mult]))
    a, w = cp.asarray(a_h), cp.asarray(w_h.view("<i4"))
    qp = cp.asarray(channel_table(n, 0, m0[0], shift[0], 0))
    acc = cp.matmul(cp.asarray(a_h, cp.float64) - 128, cp.asarray(w_h, cp.float64).T)  # exact in float64
    want = requantize(cp.asnumpy(acc).astype(np.int64), mult, np.uint8(7), "uint8")
    ah, bh = a.astype(cp.float16), cp.asarray(w_h).astype(cp.float16)
    t_cublas = time_ms(lambda: cp.matmul(ah, bh.T), reps, warmup)
    kw = dict(out=QuantOut("uint8", 7), a_zp=128)  # zero point 128: centered A, cc = 0
    rows = []
    for spec in (make_int8_gemm(n, n, n, **kw), pick_int8_gemm(n, n, n, **kw)):
        kind = "mma" if isinstance(spec, Int8MmaGemmSpec) else "dp4a"
        kernel = render_int8(spec)
        fn = load_module(translation_unit([kernel])).get_function(kernel.name)
        y = cp.empty((n, n), cp.uint8)

        def ours():
            fn(spec.grid(), spec.block(), (y, a, w, qp))

        ours()
        exact = bool(np.array_equal(cp.asnumpy(y), want))
        t_ours = time_ms(ours, reps, warmup)
        tops = 2 * n ** 3 / (t_ours * 1e-3) / 1e12
        rows.append((f"gemm {n}^3 int8 {kind}", t_ours, {"cuBLAS f16": t_cublas},
                     f"{tops:.1f} TOP/s, bit-exact {exact}", spec.tile))
    return rows


# -- roofline: each measured time over the floor the roofline model predicts for this GPU --------------


def floor_note(name: str, t_ms: float, floor_us) -> str:
    """``roofline floor X us (GPU), measured/floor Y`` with ``floor_us(name)`` from roofline.py."""
    from graphopt.errors import GraphoptError

    try:
        f = floor_us(name)
    except GraphoptError as exc:
        return str(exc)
    return f"roofline floor {f:.1f} us ({name}), measured/floor {t_ms * 1e3 / f:.1f}"


def model_floor_note(name: str, t_ms: float, exe, feeds) -> str:
    from graphopt.plugins.cuda.roofline import model_floor

    lowered = (exe.for_feeds(feeds) if hasattr(exe, "for_feeds") else exe).lowered  # this signature's launches
    return floor_note(name, t_ms, lambda g: model_floor(lowered, g).floor_us)


def gpu_name(cp) -> str:
    return cp.cuda.runtime.getDeviceProperties(0)["name"].decode()


# -- models ----------------------------------------------------------------------------------------


def prepare_model(model, dtype: str, example, calib_batches: int = 4):
    """The graph to compile for ``dtype``: float32 as loaded, float16 converted inside, int8
    quantized (QDQ, calibrated on random batches like ``example``) and lowered to int8 ops."""
    if dtype == "float16":  # graphopt's own conversion: float16 inside, float32 inputs and outputs
        from graphopt.quantize import convert_float16

        return convert_float16(model)
    if dtype == "int8":
        from graphopt.quantize import lower_int8, quantize_static

        rng = np.random.default_rng(1)
        names = [v.name for v in model.inputs]
        calib = [{k: rng.standard_normal(tuple(x.shape)).astype(np.float32) for k, x in zip(names, example)}
                 for _ in range(calib_batches)]
        return lower_int8(quantize_static(model, calib))
    return model


def bench_model(cp, name: str, batch: int, reps: int, dtype: str, warmup: int = 3,
                torch_compile: str | None = "reduce-overhead", level: int = 2):
    """Rows for one model case, each yielded as soon as it is measured: graphopt vs torch eager,
    then (when asked) vs torch.compile in ``torch_compile`` mode, whose first call compiles."""
    import torch

    import graphopt
    from samples import models

    module, example = getattr(models, name)(batch=batch)  # a Sample: eval-mode module, example inputs
    # float32, dynamic batch; exported once per process (the builders are seeded: the same weights as ``module``)
    model = prepare_model(models.load_graph(name), dtype, example)
    t0 = time.perf_counter()
    compiled = graphopt.compile(model, backend="cuda", level=level)
    exe = compiled.executable
    feeds = {v.name: cp.asarray(x.numpy()) for v, x in zip(exe.graph.inputs, example)}
    outs = exe.run_device(feeds)  # specializes to these shapes and builds the kernels
    compile_s = time.perf_counter() - t0
    case = f"{name} b{batch} {dtype}"
    stats = compiled.stats
    note = (f"-O{level}, compile {compile_s:.1f}s, {stats.get('kernels')} kernels, {stats.get('launches')} launches, "
            f"cuda_graph: {stats.get('cuda_graph')}")
    t = time_ms(lambda: exe.run_device(feeds), reps, warmup)
    note += ", " + model_floor_note(gpu_name(cp), t, exe, feeds)
    tg = torch_on_gpu()
    if tg is None:
        yield (case, t, {}, note + ", torch has no CUDA here: no peers", None)
        return
    dtype_peer = "float32" if dtype == "int8" else dtype  # torch has no int8 GPU path: float32 is the peer
    mod = module.cuda().half() if dtype_peer == "float16" else module.cuda()
    dev = [x.cuda().half() if dtype_peer == "float16" and x.is_floating_point() else x.cuda() for x in example]
    with torch.inference_mode():
        want = mod(*dev)
        want = want[0] if isinstance(want, (tuple, list)) else want
        got = torch.as_tensor(cp.asnumpy(outs[0])).cuda()
        err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
        note += f", rel err vs torch {err:.1e}"
        yield (case, t, {"torch eager": time_ms(lambda: mod(*dev), reps, warmup)}, note, None)
        if not torch_compile:
            return
        try:
            t1 = time.perf_counter()
            cmod = torch.compile(mod, mode=torch_compile)
            for _ in range(3):  # reduce-overhead records its CUDA graph after warm-up calls
                cmod(*dev)
            peer = f"torch.compile[{torch_compile}]"
            yield (case, t, {peer: time_ms(lambda: cmod(*dev), reps, warmup)},
                   f"torch.compile {time.perf_counter() - t1:.0f}s to compile", None)
        except Exception as exc:  # torch.compile needs a working Triton
            yield (case, t, {}, f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", None)


DTYPES = ("float32", "float16", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--only", choices=["gemm", "models", "int8"], default=None,
                    help="int8: --int8-model at --int8-batches in float32, float16 and int8 (issue 7)")
    ap.add_argument("--models", nargs="*", default=["resnet50", "bert_base"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    ap.add_argument("--dtypes", nargs="*", default=["float32"], choices=DTYPES,
                    help="float16 runs the models in half precision (tensor-core GEMMs, half storage elsewhere); "
                         "int8 quantizes them (dp4a convolutions and GEMMs)")
    ap.add_argument("--int8-model", default="resnet_style")
    ap.add_argument("--int8-batches", nargs="*", type=int, default=[1, 64])
    ap.add_argument("--gemm-size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before each timing")
    ap.add_argument("--torch-compile-mode", dest="torch_compile", default="reduce-overhead",
                    help="torch.compile's mode for the peer (default reduce-overhead: CUDA graphs, as published "
                         "batch-1 figures use)")
    ap.add_argument("--no-torch-compile", dest="torch_compile", action="store_const", const=None,
                    help="skip the torch.compile peer (its first call compiles for tens of seconds per model)")
    ap.add_argument("--level", type=int, default=2, help="graphopt's optimization level for the models")
    ap.add_argument("--gemm-dtypes", nargs="*", default=["int8", "float32", "float16"],
                    choices=["int8", "float32", "float16"])
    return ap.parse_args(argv)


def model_cases(args) -> list[tuple[str, int, str]]:
    """(model, batch, dtype) to run."""
    cases = []
    if args.only in (None, "models"):
        # batch-major: every model at the first batch before any at the next (a run cut short keeps b1)
        cases += [(m, b, d) for b in args.batches for m in args.models for d in args.dtypes]
    if args.only in (None, "int8"):
        cases += [(args.int8_model, b, d) for b in args.int8_batches for d in DTYPES]
    return list(dict.fromkeys(cases))


HEADER = f"{'case':<28} {'graphopt ms':>12}  {'peer':<14} {'peer ms':>9} {'ratio':>7}  notes"


def format_row(case: str, t: float, peers: dict, note: str) -> str:
    """One table row per peer (the case, our time and the note on the first)."""
    if not peers:
        return f"{case:<28} {t:>12.3f}  {'-':<14} {'-':>9} {'-':>7}  {note}"
    lines = []
    for i, (peer, tp) in enumerate(peers.items()):
        first = i == 0
        ours = f"{t:>12.3f}" if first else " " * 12
        tail = note if first else ""
        lines.append(f"{case if first else '':<28} {ours}  {peer:<14} {tp:>9.3f} {t / tp:>7.2f}  {tail}")
    return "\n".join(lines)


def row_line(case: str, t: float, peers: dict, note: str) -> str:
    """The machine-readable twin of a ``done:`` row, which benchmarks/gpu_report.py reads."""
    return "row: " + json.dumps({"case": case, "ms": t, "peers": peers, "note": note})


def main(argv=None) -> int:
    args = parse_args(argv)
    cp = gpu_or_exit()
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    rows = []

    def done(new_rows) -> None:  # each row as soon as it is measured: a run cut short keeps its numbers
        for case, t, peers, note, _ in new_rows:
            print(f"done: {format_row(case, t, peers, note)}", flush=True)
            print(row_line(case, t, peers, note), flush=True)
        rows.extend(new_rows)

    if args.only in (None, "gemm"):
        done(bench_gemm(cp, args.gemm_size, args.reps, args.warmup, args.gemm_dtypes))
    for name, batch, dtype in model_cases(args):
        try:
            for row in bench_model(cp, name, batch, args.reps, dtype, args.warmup, args.torch_compile, args.level):
                done([row])
        except Exception as exc:  # one model failing must not hide the others
            done([(f"{name} b{batch} {dtype}", float("nan"), {},
                   f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", None)])
    print(HEADER)
    for case, t, peers, note, _ in rows:
        print(format_row(case, t, peers, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
