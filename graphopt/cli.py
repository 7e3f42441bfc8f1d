"""The ``graphopt`` command line.

Every user error is one line on stderr and a non-zero exit (argparse's included: a
misspelt flag names the verb and the nearest flag); ``--debug`` shows the traceback
and verifies the IR after every pass. A failing command leaves no output file.
Output piped into ``head`` ends quietly. Python warnings are one line without a
source path, and onnxruntime's log is quiet unless ``--verbose``.

Verbs are registered in ``graphopt.commands.base`` (``register_verb``); the core ones
are below, others live in their own module under ``graphopt/commands/``.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .commands.base import (VERB_MODULES, VERBS, add_backend_options, add_common, add_shape_options,
                            check_writable, compile_model, load_model, load_plugins, nonneg_float, nonneg_int,
                            outputs, positive_int, register_verb, split, write_json, write_npz)
from .commands.output import Table, fmt, show
from .errors import GraphoptError, InputError
from .progress import Progress, step


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the verb's name, the problem and where help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for mod in VERB_MODULES:
        importlib.import_module(mod)
    ap = _Parser(prog="graphopt", description="graphopt: a model compiler for DL inference",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="example:\n  graphopt optimize model.onnx -o model.opt.onnx")
    ap.add_argument("--version", action="version", version=f"graphopt {__import__('graphopt').__version__}")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for v in VERBS.values():
        p = sub.add_parser(v.name, help=v.help, description=v.help, epilog=v.example,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        v.arguments(p)
    ap.verb_parsers = sub.choices  # for the nearest-flag hint
    return ap


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    if extra:
        verb = parser.verb_parsers[args.verb]
        flags = [s for a in verb._actions for s in a.option_strings]
        word = extra[0].split("=", 1)[0]
        near = difflib.get_close_matches(word, flags, n=1) if word.startswith("-") else []
        hint = f"; did you mean {near[0]}?" if near else ""
        verb.error(f"unrecognized argument {extra[0]}{hint}")
    return args


# -- core verbs ------------------------------------------------------------------------------------

def _optimize_args(p):
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--report", metavar="FILE.json", help="write the per-pass report as JSON")
    p.add_argument("--keep-fused", action="store_true", help="also write graphopt's fused ops (ai.graphopt domain)")
    p.add_argument("--target-opset", type=positive_int, default=None, help="raise the model's opset to this version")
    p.add_argument("--external-data", action="store_true", help="store large tensors in a .onnx.data file")
    p.add_argument("--fold-limit", type=nonneg_int, default=None, metavar="BYTES",
                   help="constant folding writes no tensor bigger than this (default: 1M elements)")
    add_common(p)


@register_verb("optimize", "run graph passes and write an optimized ONNX model",
               "example:\n  graphopt optimize model.onnx -o model.opt.onnx -O2 --report report.json\n"
               "  graphopt optimize model.onnx -o model.opt.onnx --passes +onnxsim     (onnxsim, then -O2)\n"
               "  graphopt optimize model.onnx -o model.opt.onnx --passes onnxsim,fold_constants",
               _optimize_args)
def cmd_optimize(args) -> int:
    import graphopt

    check_writable(args.output, "-o")
    check_writable(args.report, "--report")
    graph = load_model(args)
    with step("optimizing"):
        fold = {} if args.fold_limit is None else {"fold_limit": args.fold_limit}
        opt, report = graphopt.optimize(graph, args.level, split(args.passes), split(args.disable),
                                        verify=args.debug, return_report=True, target_opset=args.target_opset,
                                        keep_fused=args.keep_fused, **fold)
    with outputs() as written, step(f"writing {args.output}"):
        out = graphopt.save(opt, args.output, keep_fused=args.keep_fused, target_opset=args.target_opset,
                            external_data=True if args.external_data else None)
        written.append(out)
        if args.report:
            written.append(write_json(args.report, report.to_json()))
    from .opcount import compare

    model = compare(graph, opt, file_before=args.model, file_after=out)
    show(args, {"output": str(out), **report.to_json(), "model": model.to_json()}, report.table(), model.table(),
         model.size_line(), f"wrote {out}")
    return 0


def _compile_args(p):
    p.add_argument("model")
    add_backend_options(p)
    add_shape_options(p, inputs=False)
    p.add_argument("--report", metavar="FILE.json")
    p.add_argument("--emit", metavar="DIR", help="write the generated source, the launch plan and the report "
                                                 "into DIR")
    add_common(p)


@register_verb("compile", "optimize and compile a model for a backend, and report what was done",
               "examples:\n  graphopt compile model.onnx --backend cpu --report report.json\n"
               "  graphopt compile model.onnx --backend cuda-emu --emit out/   (kernels.cu, launch_plan.json, ...)\n"
               "  graphopt compile bert.onnx --backend cuda-emu --input-shape input_ids:1,128 --emit out/",
               _compile_args)
def cmd_compile(args) -> int:
    from .commands.inputs import parse_input_shapes, resolve_shapes, specialize

    check_writable(args.report, "--report")
    if args.emit and Path(args.emit).exists() and not Path(args.emit).is_dir():
        raise InputError(f"--emit {args.emit}: exists and is not a folder")
    if args.emit:
        check_writable(str(Path(args.emit) / "report.json") if Path(args.emit).is_dir() else args.emit, "--emit")
    graph = load_model(args)
    shapes = parse_input_shapes(args.input_shape)
    if shapes or (args.emit and not all(v.type is not None and v.type.is_static for v in graph.inputs)):
        graph = specialize(graph, resolve_shapes(graph, shapes, args.batch))
    m = compile_model(args, graph)
    rep = m.report.to_json()
    rep["backend"] = m.stats
    with outputs() as written:
        if args.report:
            written.append(write_json(args.report, rep))
        if args.emit:
            from .commands.emit import emit

            written += emit(m, Path(args.emit), rep)
    stats = Table("backend stat", "value")
    for k, v in m.stats.items():
        if isinstance(v, dict):  # per-kernel schedules: one row each, not one long dict
            for kk, vv in v.items():
                stats.add_row(f"{k}: {kk}", vv)
        else:
            stats.add_row(k, v)
    show(args, rep, m.report.table(), stats, f"wrote {args.emit}/ ({len(written) - bool(args.report)} files)"
         if args.emit else None)
    return 0


def _run_args(p):
    p.add_argument("model")
    add_backend_options(p)
    add_shape_options(p)
    p.add_argument("-o", "--output", metavar="OUT.npz")
    add_common(p)


@register_verb("run", "run a model on a backend",
               "examples:\n  graphopt run model.onnx --backend cpu --inputs in.npz -o out.npz\n"
               "  graphopt run bert.onnx --input-shape input_ids:2,128 --input-shape attention_mask:2,128",
               _run_args)
def cmd_run(args) -> int:
    from .commands.inputs import make_feeds, parse_input_shapes

    check_writable(args.output, "-o")
    graph = load_model(args)
    feeds = make_feeds(graph, args.inputs, parse_input_shapes(args.input_shape), args.batch)
    m = compile_model(args, graph)
    with step(f"running on {args.backend}"):
        outs = m.run(feeds)
    named = dict(zip(m.output_names, outs))
    with outputs() as written:
        if args.output:
            written.append(write_npz(args.output, named))
    rows = [{"output": k, "dtype": str(v.dtype), "shape": list(v.shape),
             "mean": float(np.mean(v)) if v.size and v.dtype.kind in "fiub" else None} for k, v in named.items()]
    t = Table("output", "dtype", "shape", "mean", right=("mean",))
    for r in rows:
        t.add_row(r["output"], r["dtype"], r["shape"], fmt(r["mean"], ".6g"))
    show(args, rows, t)
    return 0


def _verify_args(p):
    p.add_argument("model")
    add_backend_options(p)
    add_shape_options(p)
    p.add_argument("--rtol", type=nonneg_float, default=None)
    p.add_argument("--atol", type=nonneg_float, default=None)
    add_common(p)


@register_verb("verify", "compare onnxruntime on the original with graphopt on the optimized model, and "
                         "onnxruntime on the optimized file graphopt writes",
               "example:\n  graphopt verify model.onnx -O2 --backend cpu\n"
               "  graphopt verify bert.onnx --input-shape input_ids:1,128 --input-shape attention_mask:1,128",
               _verify_args)
def cmd_verify(args) -> int:
    import tempfile

    import graphopt

    from .commands import ort
    from .commands.compare import compare_outputs, result_table
    from .commands.inputs import make_feeds, parse_input_shapes

    graph = load_model(args)
    feeds = make_feeds(graph, args.inputs, parse_input_shapes(args.input_shape), args.batch)
    sess = ort.session(args.model, verbose=args.verbose)
    with step("running the original on onnxruntime"):
        expected = ort.run(sess, args.model, feeds)
    names = [o.name for o in sess.get_outputs()]
    m = compile_model(args, graph)
    with step(f"running on {args.backend}"):
        got = m.run(feeds)
    rows, ok = compare_outputs(names, expected, got, rtol=args.rtol, atol=args.atol,
                               against=f"graphopt {args.backend}")
    # the file `graphopt optimize` would write, run where users run it
    with step("optimizing"):
        opt = graphopt.optimize(graph, args.level, split(args.passes), split(args.disable), verify=args.debug)
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as d:
        path = graphopt.save(opt, Path(d) / "optimized.onnx")
        with step("running the optimized file on onnxruntime"):
            written = ort.run(ort.session(path, verbose=args.verbose), "the optimized file", feeds)
    rows2, ok2 = compare_outputs(names, expected, written, rtol=args.rtol, atol=args.atol,
                                 against="optimized file, onnxruntime")
    ok = ok and ok2
    verdict = "all outputs match onnxruntime" if ok else "MISMATCH against onnxruntime"
    show(args, {"ok": ok, "outputs": rows, "optimized_file": rows2},
         result_table(rows + rows2, with_against=True),
         f"nodes: {m.report.nodes_before} -> {m.report.nodes_after}; {verdict}")
    return 0 if ok else 3


def _bench_args(p):
    p.add_argument("model")
    add_backend_options(p)
    add_shape_options(p)
    p.add_argument("--repeat", type=positive_int, default=20, help="timed runs (default 20)")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed runs first (default 3)")
    add_common(p)


@register_verb("bench", "time a model on a backend next to onnxruntime",
               "example:\n  graphopt bench model.onnx --backend cpu --repeat 20\n"
               "  graphopt bench bert.onnx --input-shape input_ids:8,128 --input-shape attention_mask:8,128",
               _bench_args)
def cmd_bench(args) -> int:
    from .commands import ort
    from .commands.inputs import make_feeds, parse_input_shapes

    graph = load_model(args)
    feeds = make_feeds(graph, args.inputs, parse_input_shapes(args.input_shape), args.batch)
    m = compile_model(args, graph)

    def timeit(fn, label: str) -> float:
        with Progress(f"{label}: warm-up", args.warmup) as bar:
            for i in range(args.warmup):  # first runs plan memory, specialize shapes, fill caches
                fn()
                bar.update(i + 1)
        ts = []
        with Progress(label, args.repeat) as bar:
            for i in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
                bar.update(i + 1)
        return float(np.median(ts))

    ours = timeit(lambda: m.run(feeds), f"graphopt ({args.backend})")
    res = {"backend": args.backend, "inputs": {k: list(np.shape(v)) for k, v in feeds.items()},
           "graphopt_ms": ours * 1e3}
    try:
        sess = ort.session(args.model, verbose=args.verbose, optimize=True, threads=os.cpu_count() or 1)
    except GraphoptError as exc:
        if "needs onnxruntime" not in str(exc):
            raise
    else:
        ort.run(sess, args.model, feeds)  # its input checks, once
        theirs = timeit(lambda: sess.run(None, feeds), "onnxruntime")
        res["onnxruntime_ms"] = theirs * 1e3
        res["ratio_vs_onnxruntime"] = ours / theirs
    t = Table("runner", "median ms", right=("median ms",))
    t.add_row(f"graphopt ({args.backend})", f"{res['graphopt_ms']:.3f}")
    if "onnxruntime_ms" in res:
        t.add_row("onnxruntime", f"{res['onnxruntime_ms']:.3f}")
    shapes = ", ".join(f"{k}{v}" for k, v in res["inputs"].items())
    ratio = (f"graphopt / onnxruntime: {res['ratio_vs_onnxruntime']:.3f}" if "ratio_vs_onnxruntime" in res
             else "onnxruntime is not installed: no peer")
    show(args, res, t, f"{ratio} (median of {args.repeat} runs; inputs {shapes})")
    return 0


def _inspect_args(p):
    p.add_argument("model")
    add_common(p, passes=False)


@register_verb("inspect", "op counts, inputs, outputs and parameters of a model",
               "example:\n  graphopt inspect model.onnx --json", _inspect_args)
def cmd_inspect(args) -> int:
    from collections import Counter

    graph = load_model(args)
    ops = Counter(n.qualified_op for n in graph)
    params = sum(int(v.const.size) for v in graph.initializers.values())
    info = {
        "name": graph.name, "opset": graph.opset_imports, "nodes": len(graph),
        "inputs": [{"name": v.name, "type": str(v.type)} for v in graph.inputs],
        "outputs": [{"name": v.name, "type": str(v.type)} for v in graph.outputs],
        "initializers": len(graph.initializers), "parameters": params,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    io_table = Table("", "name", "type")
    for d in info["inputs"]:
        io_table.add_row("input", d["name"], d["type"])
    for d in info["outputs"]:
        io_table.add_row("output", d["name"], d["type"])
    op_table = Table("count", "op", right=("count",))
    for op, n in info["ops"].items():
        op_table.add_row(n, op)
    show(args, info, f"model {graph.name}: {len(graph)} nodes, {params:,} parameters, opset {graph.opset_imports}",
         io_table, op_table)
    return 0


@register_verb("passes", "list the registered passes", "example:\n  graphopt passes --json",
               lambda p: add_common(p, passes=False))
def cmd_passes(args) -> int:
    from .passmanager import ON_REQUEST, all_passes

    load_plugins(args)
    rows = [{"name": p.name, "kind": p.kind, "level": p.opt_level, "source": p.source, "summary": p.summary}
            for p in all_passes()]
    t = Table("pass", "kind", "level", "source", "rewrite")
    for r in rows:
        t.add_row(r["name"], r["kind"], "named" if r["level"] >= ON_REQUEST else f"-O{r['level']}", r["source"],
                  r["summary"])
    show(args, rows, t)
    return 0


@register_verb("backends", "list the registered backends and whether they are available",
               "example:\n  graphopt backends", lambda p: add_common(p, passes=False))
def cmd_backends(args) -> int:
    from .plugin_loader import backend_names, get_backend

    load_plugins(args)
    rows = []
    for name in backend_names():
        try:
            ok, why = get_backend(name).is_available()
        except GraphoptError as exc:
            ok, why = False, str(exc)
        rows.append({"name": name, "available": ok, "why": why})
    t = Table("backend", "available", "why not")
    for r in rows:
        t.add_row(r["name"], "yes" if r["available"] else "no", r["why"])
    show(args, rows, t)
    return 0


def _quantize_args(p):
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mode", choices=["static", "dynamic", "float16", "bfloat16"], default="static")
    p.add_argument("--calibration", metavar="DATA.npz",
                   help="static mode: one array per model input, samples stacked along axis 0")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy", "mse"], default="minmax",
                   help="how calibration picks each activation's range (default minmax)")
    p.add_argument("--activation-type", choices=["uint8", "int8"], default="uint8",
                   help="uint8 asymmetric (default) or int8 symmetric activations")
    p.add_argument("--percentile", type=nonneg_float, default=99.99, help="for --method percentile")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights, for int8 kernels that add products in int16 (x86 without VNNI)")
    p.add_argument("--accuracy-budget", type=nonneg_float, default=None, metavar="B",
                   help="send the most sensitive layers back to float until the metric on the calibration "
                        "data is <= B (top-1 disagreement for classifiers, else relative error)")
    p.add_argument("--metric", choices=["auto", "top1", "relative_error"], default="auto")
    p.add_argument("--exclude", default=None, help="comma-separated node names to keep float")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="calibration samples per run (default: the model's batch size, or 32 if symbolic)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="use at most this many calibration samples")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="fix an input's shape in the quantized model (its leading dim is the calibration batch)")
    p.add_argument("--no-optimize", action="store_true", help="quantize the model as it is (no -O2 first)")
    p.add_argument("--report", metavar="FILE.json", help="write the quantization report as JSON")
    add_common(p, passes=False)


# The lowest opset each mode's ops exist at: QuantizeLinear/DequantizeLinear 10 (per-axis scales 13),
# DynamicQuantizeLinear 11.
_QDQ_OPSET = {"static": 10, "dynamic": 11}
_PER_CHANNEL_OPSET = 13


@register_verb("quantize", "quantize a model: static int8 (QDQ, calibrated), dynamic int8, float16 or bfloat16",
               "examples:\n  graphopt quantize model.onnx --calibration data.npz -o model.int8.onnx --method entropy"
               " --accuracy-budget 0.01\n  graphopt quantize bert.onnx --mode dynamic -o bert.int8.onnx\n"
               "  graphopt quantize model.onnx --mode float16 -o model.fp16.onnx\n"
               "data.npz holds one array per model input, samples stacked along axis 0", _quantize_args)
def cmd_quantize(args) -> int:
    import graphopt
    from graphopt import quantize as gq

    from .commands.inputs import parse_input_shapes, resolve_shapes, specialize

    check_writable(args.output, "-o")
    check_writable(args.report, "--report")
    if args.mode == "static" and not args.calibration:
        raise InputError("static quantization needs --calibration DATA.npz (or use --mode dynamic)")
    graph = load_model(args)
    shapes = parse_input_shapes(args.input_shape)
    if shapes:
        graph = specialize(graph, resolve_shapes(graph, shapes, args.batch_size or 1))
    notes = []
    if args.mode in _QDQ_OPSET:
        graph, note = _raise_opset_for_qdq(graph, args)
        notes += [note] if note else []
    if args.mode in ("float16", "bfloat16"):
        out_graph = (gq.convert_float16 if args.mode == "float16" else gq.convert_bfloat16)(graph)
        rep = out_graph.meta["precision_report"]
        text = "\n".join([f"{args.mode}: {sum(rep['converted_ops'].values())} op(s) converted, "
                          f"{sum(rep['float32_ops'].values())} kept float32, {rep.get('casts', 0)} Cast(s)"]
                         + [f"  float32: {k} x{v}" for k, v in rep["float32_ops"].items()])
    elif args.mode == "dynamic":
        out_graph = gq.quantize_dynamic(graph, per_channel=not args.per_tensor, reduce_range=args.reduce_range,
                                        exclude=split(args.exclude) or ())
        rep = out_graph.meta["quantization_report"]
        text = f"dynamic int8: {len(rep['quantized'])} MatMul/Gemm layer(s) quantized"
    else:
        batches = _calibration_batches(graph, args)  # checked now, before optimizing and calibrating
        with Progress("calibrating") as bar:
            out_graph, report = gq.quantize_static(
                graph, batches, method=args.method, activation_type=args.activation_type,
                per_channel=not args.per_tensor, percentile=args.percentile, exclude=split(args.exclude) or (),
                accuracy_budget=args.accuracy_budget, metric=args.metric, optimize=not args.no_optimize,
                reduce_range=args.reduce_range, return_report=True, progress=lambda n: bar.update(n, "batches"))
        rep, text = report.to_json(), report.table()
    if notes:
        rep = {**rep, "notes": notes}
    with outputs() as written, step(f"writing {args.output}"):
        out = graphopt.save(out_graph, args.output)
        written.append(out)
        if args.report:
            written.append(write_json(args.report, rep))
    show(args, {"output": str(out), "mode": args.mode, **rep}, *notes, text, f"wrote {out}")
    return 0


def _raise_opset_for_qdq(graph, args):
    """The graph at an opset where the mode's ops exist (onnx's version converter raises it), and a note
    saying so; ``(graph, None)`` when it already is."""
    import graphopt

    from .onnx_io import to_onnx_model

    have = graph.opset_imports.get("", 17)
    need = _QDQ_OPSET[args.mode] if args.per_tensor else max(_QDQ_OPSET[args.mode], _PER_CHANNEL_OPSET)
    if have >= need:
        return graph, None
    why = "per-channel weight scales need" if need == _PER_CHANNEL_OPSET else f"{args.mode} int8 needs"
    with step(f"raising the opset from {have} to {need}"):
        try:
            raised = graphopt.load(to_onnx_model(graph, target_opset=need))
        except GraphoptError as exc:
            raise GraphoptError(f"{args.model}: opset {have} is too old for {args.mode} quantization "
                                f"({why} opset {need}) and {str(exc).splitlines()[0]}") from None
    return raised, f"note: raised the model's opset from {have} to {need} ({why} opset {need})"


def _calibration_batches(graph, args):
    """The calibration feed dicts: samples along axis 0 (or one full input per entry of axis 0), checked
    against the model's inputs and the batch size before any work."""
    from . import dtypes
    from .commands.inputs import read_npz

    arrays = read_npz(args.calibration, "calibration")
    per_input, counts, chunk, fixed = {}, set(), args.batch_size, False
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
                chunk, fixed = v.shape[0], True
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
        hint = (f"the model's batch dim is fixed to {chunk}" if fixed
                else f"use --batch-size {n} (or fewer) for a smaller batch")
        raise InputError(f"{args.calibration}: {n} sample(s), fewer than one batch of {chunk}: {hint}")
    return ({k: (a[i] if kind == "each" else a[i:i + chunk]) for k, (kind, a) in per_input.items()}
            for i in range(0, n - chunk + 1, chunk))


# -- running a verb --------------------------------------------------------------------------------

def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message).strip().splitlines()
    print(f"graphopt: warning: {text[0] if text else category.__name__}", file=sys.stderr)


def _stdout_gone() -> None:
    """The reader of our stdout left (``| head``): send what is still buffered nowhere."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    from . import progress

    progress.show_steps(True)
    saved_warning = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _one_line_warning
    try:
        rc = VERBS[args.verb].run(args)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        _stdout_gone()
        return 141  # as if killed by SIGPIPE, like other tools in a pipeline
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
    finally:
        warnings.showwarning = saved_warning
        progress.show_steps(False)


if __name__ == "__main__":
    sys.exit(main())
