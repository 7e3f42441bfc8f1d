"""CPU benchmark: graphopt's NumPy backend vs ONNX Runtime and onnx's ReferenceEvaluator,
in one process, on the same inputs.

    python benchmarks/bench_cpu.py                       # resnet_style, mobilenet_v2_style, bert_style, batch 1
    python benchmarks/bench_cpu.py --batch 8 --reps 30
    python benchmarks/bench_cpu.py --models bert_style --json
    python benchmarks/bench_cpu.py --blas-threads 1     # NumPy's BLAS on one thread
    GRAPHOPT_CPU_NATIVE=0 python benchmarks/bench_cpu.py  # NumPy paths only, no native kernels

Each model of ``samples.models`` is exported to ONNX (opset 17) and run by
onnxruntime (``InferenceSession``, CPU, default threads), by
``onnx.reference.ReferenceEvaluator`` (a few runs: it is slow) and by graphopt's
CPU backend compiled at -O0 and at -O2. Latency is the median of ``--reps`` runs
after ``--warmup`` runs (milliseconds, wall clock, one call each); ratios
``graphopt/ORT`` (>1: graphopt is slower) and ``RefEval/graphopt`` (>1: graphopt
is faster). Every output is checked against onnxruntime before it is timed.

Memory: for ResNet-style at -O2, the memory plan's peak (the arena that the
intermediates' lifetimes need, graph outputs excluded) next to the measured peak
of one run: tracemalloc's peak of Python/NumPy allocations during ``run`` above
what was allocated before it (inputs and weights excluded; kernel temporaries
and the outputs included, except the conv scratch buffers -- im2col columns,
padded inputs -- which the backend allocates at the first run and keeps).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet_style", "mobilenet_v2_style", "bert_style")


def time_ms(fn, reps: int, warmup: int) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def measured_peak_bytes(fn) -> int:
    """tracemalloc's peak during ``fn()`` above what was already allocated (NumPy reports its buffers)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def bench_model(name: str, batch: int, reps: int, ref_reps: int, warmup: int, tmp: Path) -> dict:
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    import graphopt
    from samples import models

    module, example = models.BUILDERS[name](batch=batch)
    path = models.export_onnx(module, example, tmp / f"{name}.onnx", opset=17, dynamic_batch=False)
    feeds = {n: x.numpy() for n, x in zip(getattr(module, "input_names", ("input",)), example)}

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    want = sess.run(None, feeds)[0]
    row = {"model": name, "batch": batch}
    row["ort_ms"] = time_ms(lambda: sess.run(None, feeds), reps, warmup)

    ref = ReferenceEvaluator(onnx.load(str(path)))
    row["refeval_err"] = max_rel_err(ref.run(None, feeds)[0], want)
    row["refeval_ms"] = time_ms(lambda: ref.run(None, feeds), ref_reps, 0)

    for level in (0, 2):
        t0 = time.perf_counter()
        model = graphopt.compile(str(path), backend="cpu", level=level)
        row[f"O{level}_compile_s"] = time.perf_counter() - t0
        row[f"O{level}_err"] = max_rel_err(model.run(feeds)[0], want)
        row[f"O{level}_ms"] = time_ms(lambda: model.run(feeds), reps, warmup)
        row[f"O{level}_nodes"] = len(model.graph)
        if name == "resnet_style":
            row[f"O{level}_planned_peak_bytes"] = model.stats["planned_peak_bytes"]
            row[f"O{level}_measured_peak_bytes"] = measured_peak_bytes(lambda: model.run(feeds))
    for level in (0, 2):
        row[f"O{level}_vs_ort"] = row[f"O{level}_ms"] / row["ort_ms"]
        row[f"refeval_vs_O{level}"] = row["refeval_ms"] / row[f"O{level}_ms"]
    return row


def machine() -> str:
    import onnxruntime as ort

    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['version']} {i['num_threads']} threads"
                         for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        pass
    from graphopt.plugins.cpu import native

    ok, why = native.status()
    return (f"{platform.machine()}, {os.cpu_count()} cores, no GPU used; Python {platform.python_version()}, "
            f"NumPy {np.__version__} ({blas or 'BLAS unknown'}), onnxruntime {ort.__version__}; "
            f"graphopt native CPU kernels {'on' if ok else 'off (' + why + ')'}; "
            f"load average {os.getloadavg()[0]:.1f}")


def table(rows: list[dict]) -> str:
    head = (f"{'model':<20} {'b':>2} {'ORT ms':>8} {'RefEval ms':>11} {'O0 ms':>8} {'O2 ms':>8} "
            f"{'O0/ORT':>7} {'O2/ORT':>7} {'Ref/O0':>7} {'Ref/O2':>7}  {'max rel err O2 / RefEval':>24}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<20} {r['batch']:>2} {r['ort_ms']:>8.3f} {r['refeval_ms']:>11.1f} "
                     f"{r['O0_ms']:>8.3f} {r['O2_ms']:>8.3f} {r['O0_vs_ort']:>7.2f} {r['O2_vs_ort']:>7.2f} "
                     f"{r['refeval_vs_O0']:>7.1f} {r['refeval_vs_O2']:>7.1f}  "
                     f"{r['O2_err']:>11.1e} / {r['refeval_err']:.1e}")
    for r in rows:
        for level in (0, 2):
            key = f"O{level}_planned_peak_bytes"
            if key in r:
                lines.append(f"{r['model']} b{r['batch']} -O{level} memory: planned peak "
                             f"{r[key] / 2**10:.1f} KiB, measured peak {r[f'O{level}_measured_peak_bytes'] / 2**10:.1f}"
                             f" KiB (tracemalloc, one run, above the allocations before it: temporaries and outputs "
                             f"included, conv scratch kept from the first run excluded)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50, help="timed runs of ORT and graphopt (median)")
    ap.add_argument("--ref-reps", type=int, default=3, help="timed runs of the ReferenceEvaluator (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit NumPy's BLAS threads (threadpoolctl); on a loaded machine a BLAS worker thread "
                         "that loses its core stalls every GEMM. Default: NumPy's own setting")
    args = ap.parse_args(argv)
    limits = None
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.blas_threads, user_api="blas")
    with tempfile.TemporaryDirectory() as d:
        rows = [bench_model(m, args.batch, args.reps, args.ref_reps, args.warmup, Path(d)) for m in args.models]
    mach = machine()
    if limits is not None:
        limits.restore_original_limits()
    if args.json:
        print(json.dumps({"machine": mach, "rows": rows}, indent=1))
    else:
        print(f"machine: {mach}")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
