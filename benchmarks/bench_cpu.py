"""CPU benchmark: graphopt's CPU backend vs ONNX Runtime on real model families, in one process,
on the same inputs, batch 1.

    python benchmarks/bench_cpu.py                        # the fixed set below, full size
    python benchmarks/bench_cpu.py --models timm_resnet18 hf_bert --rounds 3
    python benchmarks/bench_cpu.py --models resnet_style bert_style --refeval --memory   # the small samples
    python benchmarks/bench_cpu.py --json
    GRAPHOPT_CPU_NATIVE=0 python benchmarks/bench_cpu.py  # NumPy paths only, no native kernels

The fixed set (``MODELS``) comes from ``samples/zoo.py``, random weights, nothing downloaded:
timm EfficientNet-B0, MobileNetV3 (small, 1.0), ResNet-18 and ConvNeXt (atto) at 224x224;
transformers BERT-base, GPT-2 (base) and ViT-B/16 (text at ``--seq`` tokens); the onnx wheel's
model-zoo ResNet-50, SqueezeNet, ShuffleNet and DenseNet-121. The timm and transformers models are
exported with torch.onnx's TorchScript exporter at fixed shapes. ``samples/models.py``'s small
models (``resnet_style``, ``mobilenet_v2_style``, ``bert_style``, ...) can be named too.

onnxruntime runs with 2 intra-op threads (``--ort-threads``) and its default graph
optimizations; graphopt compiles at -O2 with the CPU backend (its native kernels use one
thread per core, NumPy's BLAS its own default). Every graphopt output is checked against
onnxruntime's before anything is timed. Timing alternates between the two: ``--rounds``
rounds of ``--reps`` calls each (after ``--warmup`` calls); a model's time is the median
call over all rounds, its ratio the median of the rounds' ratios (graphopt / ORT: > 1 means
graphopt is slower), and the summary the geometric mean of the ratios. On a machine shared
with other work the ratios are the figures to read; each round times both peers within a
few hundred milliseconds of each other. On a heavily loaded machine the wall clock of two
threads mostly measures the scheduler; ``--cpu-time`` with everything on one thread
(``GRAPHOPT_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ... --ort-threads 1 --cpu-time``) compares
one core's work instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("timm_efficientnet_b0", "timm_mobilenetv3", "timm_resnet18", "timm_convnext", "hf_bert", "hf_gpt2",
          "hf_vit", "zoo_resnet50", "zoo_squeezenet", "zoo_shufflenet", "zoo_densenet121")
SAMPLES = ("resnet_style", "mobilenet_v2_style", "bert_style", "gpt_style_block", "mnist_convnet")


def load(name: str, seq: int, tmp: Path):
    """``(onnx.ModelProto, feeds)`` for a model of the fixed set or a sample."""
    import onnx

    if name in SAMPLES:
        from samples import models

        module, example = models.BUILDERS[name](batch=1)
        path = models.export_onnx(module, example, tmp / f"{name}.onnx", opset=17, dynamic_batch=False)
        names = getattr(module, "input_names", ("input",))
        return onnx.load(str(path)), {n: x.numpy() for n, x in zip(names, example)}
    from samples import zoo

    if name.startswith("zoo_"):
        proto = zoo.onnx_zoo(name[4:])
        return proto, zoo.onnx_zoo_feeds(proto)
    proto = zoo.export(name, size="full", batch=1, seq=seq)
    return proto, zoo.feeds(name, proto, size="full", batch=1, seq=seq)


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def calls_ms(fn, reps: int, clock=time.perf_counter) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return times


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


def bench_model(name: str, args, tmp: Path) -> dict:
    import onnxruntime as ort

    import graphopt

    t0 = time.perf_counter()
    proto, feeds = load(name, args.seq, tmp)
    row = {"model": name, "load_s": time.perf_counter() - t0}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.ort_threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    want = sess.run(None, feeds)[0]
    t0 = time.perf_counter()
    model = graphopt.compile(proto, backend="cpu", level=2)
    row["compile_s"] = time.perf_counter() - t0
    row["err"] = max_rel_err(model.run(feeds)[0], want)
    row["nodes"] = len(model.graph)
    row["native_steps"] = model.stats.get("native_steps", 0)

    def ort_run():
        sess.run(None, feeds)

    def go_run():
        model.run(feeds)

    for _ in range(args.warmup):
        ort_run()
        go_run()
    ort_all, go_all, ratios = [], [], []
    clock = time.thread_time if args.cpu_time else time.perf_counter
    for _ in range(args.rounds):
        a = calls_ms(ort_run, args.reps, clock)
        b = calls_ms(go_run, args.reps, clock)
        ort_all += a
        go_all += b
        ratios.append(statistics.median(b) / statistics.median(a))
    row["ort_ms"] = statistics.median(ort_all)
    row["graphopt_ms"] = statistics.median(go_all)
    row["ratio"] = statistics.median(ratios)
    row["ratio_min"], row["ratio_max"] = min(ratios), max(ratios)
    if args.refeval:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(proto)
        row["refeval_err"] = max_rel_err(ref.run(None, feeds)[0], want)
        row["refeval_ms"] = statistics.median(calls_ms(lambda: ref.run(None, feeds), args.ref_reps))
    if args.memory:
        row["planned_peak_bytes"] = model.stats["planned_peak_bytes"]
        row["measured_peak_bytes"] = measured_peak_bytes(go_run)
    return row


def machine(args) -> str:
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
            f"NumPy {np.__version__} ({blas or 'BLAS unknown'}), onnxruntime {ort.__version__} "
            f"({args.ort_threads} threads); graphopt native CPU kernels {'on' if ok else 'off (' + why + ')'}, "
            f"GRAPHOPT_NUM_THREADS={os.environ.get('GRAPHOPT_NUM_THREADS', 'unset')}; "
            f"{'thread CPU time' if args.cpu_time else 'wall clock'}; load average {os.getloadavg()[0]:.1f}")


def table(rows: list[dict]) -> str:
    head = (f"{'model':<22} {'ORT ms':>8} {'graphopt ms':>11} {'ratio':>6} {'(min-max)':>11} {'compile s':>9} "
            f"{'nodes':>5} {'native':>6} {'max rel err':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<22} {r['ort_ms']:>8.2f} {r['graphopt_ms']:>11.2f} {r['ratio']:>6.2f} "
                     f"{r['ratio_min']:>5.2f}-{r['ratio_max']:<5.2f} {r['compile_s']:>9.1f} {r['nodes']:>5} "
                     f"{r['native_steps']:>6} {r['err']:>11.1e}")
    ratios = [r["ratio"] for r in rows]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        worst = max(rows, key=lambda r: r["ratio"])
        lines.append(f"geometric mean graphopt/ORT {geo:.2f} over {len(rows)} models; "
                     f"worst {worst['model']} {worst['ratio']:.2f}")
    for r in rows:
        if "refeval_ms" in r:
            lines.append(f"{r['model']}: onnx ReferenceEvaluator {r['refeval_ms']:.1f} ms "
                         f"({r['refeval_ms'] / r['graphopt_ms']:.1f}x graphopt), max rel err {r['refeval_err']:.1e}")
        if "planned_peak_bytes" in r:
            lines.append(f"{r['model']}: memory plan peak {r['planned_peak_bytes'] / 2**10:.1f} KiB, measured peak "
                         f"{r['measured_peak_bytes'] / 2**10:.1f} KiB (tracemalloc, one run, above the allocations "
                         f"before it; kernel scratch kept from the first run excluded)")
    return "\n".join(lines)


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS) + list(SAMPLES))
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence of the text models")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of ORT and graphopt calls")
    ap.add_argument("--reps", type=int, default=10, help="calls of each per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ort-threads", type=int, default=2)
    ap.add_argument("--refeval", action="store_true", help="also time onnx.reference.ReferenceEvaluator")
    ap.add_argument("--ref-reps", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure one run's peak allocations")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the calling thread's CPU time instead of the wall clock: with --ort-threads 1, "
                         "GRAPHOPT_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 every call runs on that thread, so the "
                         "figure is one core's work, steady on a loaded machine")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for m in args.models:
            rows.append(bench_model(m, args, Path(d)))
            if not args.json:
                print(f"  {m}: ORT {rows[-1]['ort_ms']:.2f} ms, graphopt {rows[-1]['graphopt_ms']:.2f} ms, "
                      f"ratio {rows[-1]['ratio']:.2f}", file=sys.stderr, flush=True)
    mach = machine(args)
    if args.json:
        print(json.dumps({"machine": mach, "rows": rows}, indent=1))
    else:
        print(f"machine: {mach}")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
