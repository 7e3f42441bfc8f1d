"""The ``graphopt`` command line.

Every user error is one line on stderr and a non-zero exit; ``--debug`` shows
the traceback and verifies the IR after every pass.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import GraphoptError, InputError
from .progress import Progress

EXAMPLES = {
    "optimize": "example:\n  graphopt optimize model.onnx -o model.opt.onnx -O2 --report report.json\n"
                "  graphopt optimize model.onnx -o model.opt.onnx --passes +onnxsim     (onnxsim, then -O2)\n"
                "  graphopt optimize model.onnx -o model.opt.onnx --passes onnxsim,fold_constants",
    "compile": "example:\n  graphopt compile model.onnx --backend cpu --report report.json",
    "run": "example:\n  graphopt run model.onnx --backend cpu --inputs in.npz -o out.npz",
    "verify": "example:\n  graphopt verify model.onnx -O2 --backend cpu",
    "bench": "example:\n  graphopt bench model.onnx --backend cpu --repeat 20",
    "inspect": "example:\n  graphopt inspect model.onnx --json",
    "passes": "example:\n  graphopt passes --json",
    "backends": "example:\n  graphopt backends",
    "quantize": "examples:\n  graphopt quantize model.onnx --calibration data.npz -o model.int8.onnx --method entropy"
                " --accuracy-budget 0.01\n  graphopt quantize bert.onnx --mode dynamic -o bert.int8.onnx\n"
                "  graphopt quantize model.onnx --mode float16 -o model.fp16.onnx\n"
                "data.npz holds one array per model input, samples stacked along axis 0",
}


def _add_common(p: argparse.ArgumentParser, *, passes: bool = True) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="load a plugin (a module name or a .py file) before running; repeatable")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks and verify the IR after every pass")
    if passes:
        p.add_argument("-O", dest="level", type=int, default=2, choices=[0, 1, 2, 3],
                       help="optimization level (default 2)")
        p.add_argument("--passes", default=None,
                       help="comma-separated passes to run instead of the level's; +name entries add to the "
                            "level's pipeline instead (--passes +onnxsim: onnxsim first, then -O2)")
        p.add_argument("--disable", default=None, help="comma-separated passes to skip")


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option, repeatable (cuda: --option gemm=cublas|generated|auto)")


def _options(args) -> dict:
    """``--option key=value`` pairs; values read as int, float or true/false where they parse."""
    out = {}
    for item in getattr(args, "option", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GraphoptError(f"--option {item!r}: expected KEY=VALUE")
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="graphopt", description="graphopt: a model compiler for DL inference",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  graphopt optimize model.onnx -o model.opt.onnx")
    ap.add_argument("--version", action="version", version=f"graphopt {__import__('graphopt').__version__}")
    sub = ap.add_subparsers(dest="verb", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = verb("optimize", "run graph passes and write an optimized ONNX model")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--report", metavar="FILE.json", help="write the per-pass report as JSON")
    p.add_argument("--keep-fused", action="store_true", help="also write graphopt's fused ops (ai.graphopt domain)")
    p.add_argument("--target-opset", type=int, default=None, help="raise the model's opset to this version")
    p.add_argument("--external-data", action="store_true", help="store large tensors in a .onnx.data file")
    _add_common(p)

    p = verb("compile", "optimize and compile a model for a backend, and report what was done")
    p.add_argument("model")
    p.add_argument("--backend", default="cpu")
    _add_backend_options(p)
    p.add_argument("--report", metavar="FILE.json")
    _add_common(p)

    p = verb("run", "run a model on a backend")
    p.add_argument("model")
    p.add_argument("--backend", default="cpu")
    _add_backend_options(p)
    p.add_argument("--inputs", metavar="IN.npz", help="inputs by name (default: random, seeded)")
    p.add_argument("-o", "--output", metavar="OUT.npz")
    p.add_argument("--batch", type=int, default=1, help="size of symbolic dims for random inputs")
    _add_common(p)

    p = verb("verify", "compare onnxruntime on the original with graphopt on the optimized model")
    p.add_argument("model")
    p.add_argument("--backend", default="cpu")
    _add_backend_options(p)
    p.add_argument("--inputs", metavar="IN.npz")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--atol", type=float, default=None)
    _add_common(p)

    p = verb("bench", "time a model on a backend next to onnxruntime")
    p.add_argument("model")
    p.add_argument("--backend", default="cpu")
    _add_backend_options(p)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--batch", type=int, default=1)
    _add_common(p)

    p = verb("inspect", "op counts, inputs, outputs and parameters of a model")
    p.add_argument("model")
    _add_common(p, passes=False)

    p = verb("quantize", "quantize a model: static int8 (QDQ, calibrated), dynamic int8, float16 or bfloat16")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mode", choices=["static", "dynamic", "float16", "bfloat16"], default="static")
    p.add_argument("--calibration", metavar="DATA.npz",
                   help="static mode: one array per model input, samples stacked along axis 0")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy", "mse"], default="minmax",
                   help="how calibration picks each activation's range (default minmax)")
    p.add_argument("--activation-type", choices=["uint8", "int8"], default="uint8",
                   help="uint8 asymmetric (default) or int8 symmetric activations")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights, for int8 kernels that add products in int16 (x86 without VNNI)")
    p.add_argument("--accuracy-budget", type=float, default=None, metavar="B",
                   help="send the most sensitive layers back to float until the metric on the calibration "
                        "data is <= B (top-1 disagreement for classifiers, else relative error)")
    p.add_argument("--metric", choices=["auto", "top1", "relative_error"], default="auto")
    p.add_argument("--exclude", default=None, help="comma-separated node names to keep float")
    p.add_argument("--batch-size", type=int, default=None,
                   help="calibration samples per run (default: the model's batch size, or 32 if symbolic)")
    p.add_argument("--max-samples", type=int, default=None, help="use at most this many calibration samples")
    p.add_argument("--no-optimize", action="store_true", help="quantize the model as it is (no -O2 first)")
    p.add_argument("--report", metavar="FILE.json", help="write the quantization report as JSON")
    _add_common(p, passes=False)

    p = verb("passes", "list the registered passes")
    _add_common(p, passes=False)
    p = verb("backends", "list the registered backends and whether they are available")
    _add_common(p, passes=False)
    return ap


# -- helpers -------------------------------------------------------------------

def _feeds(graph, path: str | None, batch: int) -> dict[str, np.ndarray]:
    from .testing import random_feeds

    if path is None:
        return random_feeds(graph, seed=0, batch=batch)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such inputs file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise InputError(f"{path}: cannot read inputs ({type(exc).__name__}: {exc})") from None


def _write_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    from .fileutil import atomic_write

    with atomic_write(Path(path)) as f:
        np.savez(f, **arrays)


def _write_json_atomic(path: str, obj) -> None:
    from .fileutil import atomic_write

    with atomic_write(Path(path), "w") as f:
        json.dump(obj, f, indent=2, default=str)


def _tolerance(dtype: str) -> tuple[float, float]:
    from .testing import tolerance_for

    return tolerance_for(dtype)


def _print(args, obj, text: str) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(text)


def _load(args):
    import graphopt

    for spec in args.plugin:
        from .plugin_loader import load_plugin

        load_plugin(spec)
    return graphopt.load(args.model)


def _optimize(args, graph):
    import graphopt

    return graphopt.optimize(graph, args.level, _split(args.passes), _split(args.disable), verify=args.debug,
                             return_report=True, target_opset=getattr(args, "target_opset", None),
                             keep_fused=getattr(args, "keep_fused", False))


# -- verbs -----------------------------------------------------------------------

def cmd_optimize(args) -> int:
    import graphopt

    graph = _load(args)
    opt, report = _optimize(args, graph)
    out = graphopt.save(opt, args.output, keep_fused=args.keep_fused, target_opset=args.target_opset,
                        external_data=True if args.external_data else None)
    if args.report:
        _write_json_atomic(args.report, report.to_json())
    _print(args, {"output": str(out), **report.to_json()},
           report.table() + f"\nwrote {out}")
    return 0


def cmd_compile(args) -> int:
    import graphopt

    graph = _load(args)
    m = graphopt.compile(graph, backend=args.backend, level=args.level, passes=_split(args.passes),
                         disable=_split(args.disable), verify=args.debug, **_options(args))
    rep = m.report.to_json()
    rep["backend"] = m.stats
    if args.report:
        _write_json_atomic(args.report, rep)
    stats = "\n".join(f"{k}: {v}" for k, v in m.stats.items())
    _print(args, rep, m.report.table() + "\n" + stats)
    return 0


def cmd_run(args) -> int:
    import graphopt

    graph = _load(args)
    feeds = _feeds(graph, args.inputs, args.batch)
    m = graphopt.compile(graph, backend=args.backend, level=args.level, passes=_split(args.passes),
                         disable=_split(args.disable), verify=args.debug, **_options(args))
    outs = m.run(feeds)
    named = dict(zip(m.output_names, outs))
    if args.output:
        _write_npz_atomic(args.output, named)
    rows = [{"output": k, "dtype": str(v.dtype), "shape": list(v.shape),
             "mean": float(np.mean(v)) if v.size and v.dtype.kind in "fiub" else None} for k, v in named.items()]
    text = "\n".join(f"{r['output']:<24} {r['dtype']:<8} {str(r['shape']):<20} mean={r['mean']}" for r in rows)
    _print(args, rows, text)
    return 0


def _run_onnxruntime(model_path: str, feeds: dict) -> list[np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise GraphoptError("graphopt verify needs onnxruntime (pip install graphopt[onnx])") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise GraphoptError(f"{model_path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
    return sess.run(None, feeds)


def cmd_verify(args) -> int:
    import graphopt

    graph = _load(args)
    feeds = _feeds(graph, args.inputs, args.batch)
    expected = _run_onnxruntime(args.model, feeds)
    m = graphopt.compile(graph, backend=args.backend, level=args.level, passes=_split(args.passes),
                         disable=_split(args.disable), verify=args.debug, **_options(args))
    got = m.run(feeds)
    rows, ok = [], True
    for name, e, g in zip(m.output_names, expected, got):
        rtol, atol = _tolerance(str(np.asarray(e).dtype))
        rtol = args.rtol if args.rtol is not None else rtol
        atol = args.atol if args.atol is not None else atol
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape or e.dtype != g.dtype:
            rows.append({"output": name, "max_abs": None, "max_rel": None, "ok": False,
                         "why": f"expected {e.dtype}{list(e.shape)}, got {g.dtype}{list(g.shape)}"})
            ok = False
            continue
        diff = np.abs(e.astype(np.float64) - g.astype(np.float64)) if e.size else np.zeros(0)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(e.astype(np.float64)), 1e-12)).max()) if diff.size else 0.0
        good = bool(np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True))
        ok &= good
        rows.append({"output": name, "max_abs": max_abs, "max_rel": max_rel, "rtol": rtol, "atol": atol, "ok": good})
    lines = [f"{'output':<24} {'max abs err':>12} {'max rel err':>12}  result"]
    for r in rows:
        if r["max_abs"] is None:
            lines.append(f"{r['output']:<24} {'-':>12} {'-':>12}  FAIL ({r['why']})")
        else:
            lines.append(f"{r['output']:<24} {r['max_abs']:>12.3g} {r['max_rel']:>12.3g}  "
                         f"{'ok' if r['ok'] else 'FAIL'} (rtol {r['rtol']:g}, atol {r['atol']:g})")
    lines.append(f"nodes: {m.report.nodes_before} -> {m.report.nodes_after}; "
                 f"{'all outputs match onnxruntime' if ok else 'MISMATCH against onnxruntime'}")
    _print(args, {"ok": ok, "outputs": rows}, "\n".join(lines))
    return 0 if ok else 3


def cmd_bench(args) -> int:
    import graphopt

    graph = _load(args)
    feeds = _feeds(graph, None, args.batch)
    m = graphopt.compile(graph, backend=args.backend, level=args.level, passes=_split(args.passes),
                         disable=_split(args.disable), **_options(args))

    def timeit(fn, label: str) -> float:
        for _ in range(args.warmup):  # first runs plan memory, specialize shapes, fill caches
            fn()
        ts = []
        with Progress(label, args.repeat) as bar:
            for i in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
                bar.update(i + 1)
        return float(np.median(ts))

    ours = timeit(lambda: m.run(feeds), f"graphopt ({args.backend})")
    res = {"backend": args.backend, "graphopt_ms": ours * 1e3}
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        theirs = timeit(lambda: sess.run(None, feeds), "onnxruntime")
        res["onnxruntime_ms"] = theirs * 1e3
        res["ratio_vs_onnxruntime"] = ours / theirs
    except ImportError:
        pass
    text = "\n".join(f"{k:<22} {v:.3f}" if isinstance(v, float) else f"{k:<22} {v}" for k, v in res.items())
    _print(args, res, text)
    return 0


def cmd_inspect(args) -> int:
    from collections import Counter

    graph = _load(args)
    ops = Counter(n.qualified_op for n in graph)
    params = sum(int(v.const.size) for v in graph.initializers.values())
    info = {
        "name": graph.name, "opset": graph.opset_imports, "nodes": len(graph),
        "inputs": [{"name": v.name, "type": str(v.type)} for v in graph.inputs],
        "outputs": [{"name": v.name, "type": str(v.type)} for v in graph.outputs],
        "initializers": len(graph.initializers), "parameters": params,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    lines = [f"model {graph.name}: {len(graph)} nodes, {params:,} parameters, opset {graph.opset_imports}"]
    lines += [f"  input  {d['name']}: {d['type']}" for d in info["inputs"]]
    lines += [f"  output {d['name']}: {d['type']}" for d in info["outputs"]]
    lines += [f"  {n:>6}  {op}" for op, n in info["ops"].items()]
    _print(args, info, "\n".join(lines))
    return 0


def cmd_passes(args) -> int:
    from .passmanager import ON_REQUEST, all_passes

    for spec in args.plugin:
        from .plugin_loader import load_plugin

        load_plugin(spec)
    rows = [{"name": p.name, "kind": p.kind, "level": p.opt_level, "source": p.source, "summary": p.summary}
            for p in all_passes()]
    def level(n: int) -> str:
        return "named" if n >= ON_REQUEST else f"-O{n}"

    text = "\n".join(f"{r['name']:<34} {r['kind']:<9} {level(r['level']):<6} {r['source']:<16} {r['summary']}"
                     for r in rows)
    _print(args, rows, text)
    return 0


def cmd_backends(args) -> int:
    from .plugin_loader import backend_names, get_backend

    for spec in args.plugin:
        from .plugin_loader import load_plugin

        load_plugin(spec)
    rows = []
    for name in backend_names():
        try:
            ok, why = get_backend(name).is_available()
        except GraphoptError as exc:
            ok, why = False, str(exc)
        rows.append({"name": name, "available": ok, "why": why})
    text = "\n".join(f"{r['name']:<12} {'available' if r['available'] else 'unavailable: ' + r['why']}"
                     for r in rows)
    _print(args, rows, text)
    return 0


def cmd_quantize(args) -> int:
    import graphopt
    from graphopt import dtypes
    from graphopt import quantize as gq

    graph = _load(args)

    def batches():
        """Feed dicts from the npz: samples along axis 0 (or one full input per entry of axis 0)."""
        p = Path(args.calibration)
        if not p.is_file():
            raise InputError(f"{args.calibration}: no such calibration file")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise InputError(f"{args.calibration}: cannot read it ({type(exc).__name__}: {exc})") from None
        per_input, counts, chunk = {}, set(), args.batch_size
        for v in graph.inputs:
            if v.name not in arrays:
                raise InputError(f"{args.calibration}: no array for model input {v.name!r} "
                                 f"(it has: {', '.join(sorted(arrays)) or 'nothing'})")
            a, want = arrays[v.name], dtypes.to_numpy(v.dtype)
            if a.dtype != want:
                if a.dtype.kind != want.kind and not (a.dtype.kind in "iu" and want.kind in "iu"):
                    raise InputError(f"{args.calibration}: array {v.name!r} is {a.dtype}, the model expects {want}")
                a = a.astype(want)
            rank = len(v.shape) if v.shape is not None else a.ndim
            if a.ndim == rank + 1:  # one full input per sample
                per_input[v.name] = ("each", a)
            elif a.ndim == rank:
                per_input[v.name] = ("stack", a)
                if v.shape and isinstance(v.shape[0], int):
                    chunk = v.shape[0]
            else:
                raise InputError(f"{args.calibration}: array {v.name!r} has shape {list(a.shape)}, not samples of "
                                 f"the input's shape {list(v.shape or [])} stacked along axis 0")
            counts.add(a.shape[0])
        if len(counts) != 1:
            raise InputError(f"{args.calibration}: the arrays hold different numbers of samples ({sorted(counts)})")
        n = counts.pop()
        if args.max_samples:
            n = min(n, args.max_samples)
        chunk = chunk or 32
        if any(kind == "each" for kind, _ in per_input.values()):
            chunk = 1
        if n < chunk:
            raise InputError(f"{args.calibration}: {n} sample(s), fewer than one batch of {chunk}")
        for i in range(0, n - chunk + 1, chunk):
            yield {k: (a[i] if kind == "each" else a[i:i + chunk]) for k, (kind, a) in per_input.items()}

    if args.mode in ("float16", "bfloat16"):
        out_graph = (gq.convert_float16 if args.mode == "float16" else gq.convert_bfloat16)(graph)
        rep = out_graph.meta["precision_report"]
        text = "\n".join([f"{args.mode}: {sum(rep['converted_ops'].values())} op(s) converted, "
                          f"{sum(rep['float32_ops'].values())} kept float32, {rep.get('casts', 0)} Cast(s)"]
                         + [f"  float32: {k} x{v}" for k, v in rep["float32_ops"].items()])
    elif args.mode == "dynamic":
        out_graph = gq.quantize_dynamic(graph, per_channel=not args.per_tensor, reduce_range=args.reduce_range,
                                        exclude=_split(args.exclude) or ())
        rep = out_graph.meta["quantization_report"]
        text = f"dynamic int8: {len(rep['quantized'])} MatMul/Gemm layer(s) quantized"
    else:
        if not args.calibration:
            raise InputError("static quantization needs --calibration DATA.npz (or use --mode dynamic)")
        with Progress("calibrating") as bar:
            out_graph, report = gq.quantize_static(
                graph, batches(), method=args.method, activation_type=args.activation_type,
                per_channel=not args.per_tensor, percentile=args.percentile, exclude=_split(args.exclude) or (),
                accuracy_budget=args.accuracy_budget, metric=args.metric, optimize=not args.no_optimize,
                reduce_range=args.reduce_range, return_report=True, progress=lambda n: bar.update(n, "batches"))
        rep, text = report.to_json(), report.table()
    out = graphopt.save(out_graph, args.output)
    if args.report:
        _write_json_atomic(args.report, rep)
    _print(args, {"output": str(out), "mode": args.mode, **rep}, text + f"\nwrote {out}")
    return 0


VERBS = {"optimize": cmd_optimize, "compile": cmd_compile, "run": cmd_run, "verify": cmd_verify,
         "bench": cmd_bench, "inspect": cmd_inspect, "passes": cmd_passes, "backends": cmd_backends,
         "quantize": cmd_quantize}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except GraphoptError as exc:
        if args.debug:
            raise
        print(f"graphopt: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        print(f"graphopt: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
