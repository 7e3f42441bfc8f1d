"""CUDA emulation speed: one model run on ``cuda-emu`` next to onnxruntime and graphopt's CPU
backend, in one process, on the same inputs.

    python benchmarks/bench_emu.py                          # resnet50 and bert_base, batch 1
    python benchmarks/bench_emu.py --models resnet50 --reps 3
    python benchmarks/bench_emu.py --cold                   # also time the host compile (empty build cache)
    GRAPHOPT_EMU_THREADS=1 python benchmarks/bench_emu.py   # blocks on one host thread

Each model of ``samples.models`` is exported to ONNX (opset 17, static batch) and
compiled at -O2 by ``cuda-emu`` (the generated CUDA C run on the host: what CI uses to
check every kernel), by graphopt's ``cpu`` backend and by onnxruntime. Printed per model:
the emulation's compile time (lowering and rendering; ``--cold`` adds the host
compiler's run into an empty build cache), its first run, the median of ``--reps``
further runs, the CPU seconds of one more run (of the first with ``--reps 0``; all threads
of the process, the host compiler not counted: on a shared
machine the wall clock also counts time spent waiting for a core), the ratio to
onnxruntime and to the CPU backend (>1: emulation is slower), and the largest error
against the CPU backend relative to its largest output.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50", "bert_base")


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_s(fn, reps: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(max(reps, 1)))


def cpu_s(fn) -> float:
    """CPU seconds of this process (all its threads) during one call: what the work costs
    whatever else the machine is running; wall clock on a shared machine also counts waiting."""
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def max_rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def bench_model(name: str, batch: int, reps: int, cold: bool, tmp: Path) -> dict:
    import onnx
    import onnxruntime as ort

    import graphopt
    from samples import models

    example = models.example_inputs(name, batch)
    path = models.export_onnx(models.BUILDERS[name](batch=batch), tmp / f"{name}.onnx", dynamic_batch=False)
    proto = onnx.load(str(path))
    feeds = {i.name: t.numpy() for i, t in zip(proto.graph.input, example)}

    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ort_s = median_s(lambda: sess.run(None, feeds), reps)

    cpu = graphopt.compile(proto, backend="cpu")
    want = cpu(**feeds)[0]
    cpu_backend_s = median_s(lambda: cpu(**feeds), reps)

    if cold:  # the host compiler's run into an empty build cache, then the build is reused below
        os.environ["GRAPHOPT_CACHE_DIR"] = str(tmp / "cache")
    compile_s, emu = timed(lambda: graphopt.compile(proto, backend="cuda-emu"))
    c0 = time.process_time()
    first_s, out = timed(lambda: emu(**feeds))
    first_cpu_s = time.process_time() - c0  # the host compiler runs in a child process: not counted
    err = max_rel_err(out[0], want)
    run_s = median_s(lambda: emu(**feeds), reps) if reps else first_s
    run_cpu_s = cpu_s(lambda: emu(**feeds)) if reps else first_cpu_s
    return {"model": name, "batch": batch, "kernels": emu.stats.get("kernels"), "launches": emu.stats.get("launches"),
            "compile_s": compile_s, "first_run_s": first_s, "run_s": run_s, "run_cpu_s": run_cpu_s, "ort_s": ort_s,
            "cpu_backend_s": cpu_backend_s, "err": err, "cold": cold}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names from samples.models")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="timed runs after the first (median; 0: the first run only)")
    ap.add_argument("--cold", action="store_true", help="compile into an empty build cache (times the host compiler)")
    args = ap.parse_args(argv)

    from graphopt.plugins.cuda import compile_emu

    print(f"# bench_emu  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  cores={len(os.sched_getaffinity(0))}  load={os.getloadavg()[0]:.2f}")
    print(f"# command: python {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(f"# host compiler flags: {' '.join((*compile_emu.CXX_FLAGS, *getattr(compile_emu, 'arch_flags', tuple)()))}"
          f"  GRAPHOPT_EMU_THREADS={os.environ.get('GRAPHOPT_EMU_THREADS', '(default)')}")
    print(f"{'model':<10} {'batch':>5} {'kernels':>7} {'launches':>8} {'compile s':>9} {'1st run s':>9} "
          f"{'run s':>8} {'run CPU s':>9} {'ORT s':>8} {'cpu-be s':>8} {'emu/ORT':>8} {'emu/cpu':>8} {'max rel err':>11}")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            r = bench_model(name.strip(), args.batch, args.reps, args.cold, Path(d))
            print(f"{r['model']:<10} {r['batch']:>5} {r['kernels']:>7} {r['launches']:>8} {r['compile_s']:>9.2f} "
                  f"{r['first_run_s']:>9.2f} {r['run_s']:>8.3f} {r['run_cpu_s']:>9.3f} {r['ort_s']:>8.4f} "
                  f"{r['cpu_backend_s']:>8.4f} {r['run_s'] / r['ort_s']:>8.1f} {r['run_s'] / r['cpu_backend_s']:>8.1f} "
                  f"{r['err']:>11.2e}", flush=True)
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
