"""``graphopt compare``: two models, or one model on two runners, or a model against saved outputs,
output by output (max abs and rel error, tolerances by dtype).

A runner is ``onnxruntime`` (the file as written) or any graphopt backend (``cpu``,
``cuda-emu``, ...: the model optimized at ``-O`` and compiled). ``--save-outputs F.npz``
keeps the first side's outputs and the inputs they came from (under ``input:NAME``);
``--load-outputs F.npz`` compares against them, on those inputs, instead of running a
first side.

>>> rows, ok = compare_outputs(["y"], [np.ones(3, np.float32)], [np.ones(3, np.float32)])
>>> ok, rows[0]["max_abs"]
(True, 0.0)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .base import (add_backend_options, add_common, add_shape_options, check_writable, load_model, nonneg_float,
                   outputs, register_verb, write_npz)
from .output import Table, fmt, show

INPUT_PREFIX = "input:"
ORT_NAMES = ("onnxruntime", "ort")


def compare_outputs(names: Sequence[str], expected: Sequence, got: Sequence, *, rtol: float | None = None,
                    atol: float | None = None, against: str = "") -> tuple[list[dict], bool]:
    """One row per output: max abs/rel error, the tolerance used (by dtype unless given), ok."""
    from ..testing import tolerance_for

    rows, ok = [], True
    if len(expected) != len(got):
        return [{"output": "*", "against": against, "ok": False,
                 "why": f"{len(expected)} outputs expected, {len(got)} given"}], False
    for name, e, g in zip(names, expected, got):
        e, g = np.asarray(e), np.asarray(g)
        r_dt, a_dt = tolerance_for(e.dtype) if e.dtype != object else (0.0, 0.0)
        r, a = (rtol if rtol is not None else r_dt), (atol if atol is not None else a_dt)
        row = {"output": name, "against": against, "dtype": str(e.dtype), "shape": list(e.shape),
               "max_abs": None, "max_rel": None, "rtol": r, "atol": a}
        if e.shape != g.shape or e.dtype != g.dtype:
            row.update(ok=False, why=f"expected {e.dtype}{list(e.shape)}, got {g.dtype}{list(g.shape)}")
        elif e.dtype == object or e.dtype.kind in "USb":
            row.update(ok=bool(np.array_equal(e, g)), max_abs=None)
        else:
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(e64 - g64)
                both_nan = np.isnan(e64) & np.isnan(g64)
                diff = np.where(both_nan | (e64 == g64), 0.0, diff)  # equal infinities, NaN where NaN
            row["max_abs"] = float(diff.max()) if diff.size else 0.0
            row["max_rel"] = float((diff / np.maximum(np.abs(e64), 1e-12)).max()) if diff.size else 0.0
            row["ok"] = bool(np.allclose(g, e, rtol=r, atol=a, equal_nan=True))
        ok &= row["ok"]
        rows.append(row)
    return rows, ok


def result_table(rows: list[dict], with_against: bool) -> Table:
    cols = ["output"] + (["against"] if with_against else []) + ["max abs err", "max rel err", "tolerance", "result"]
    t = Table(*cols, right=("max abs err", "max rel err"))
    for r in rows:
        tol = f"rtol {r['rtol']:g}, atol {r['atol']:g}" if "rtol" in r else ""
        verdict = "ok" if r["ok"] else ("FAIL: " + r["why"] if r.get("why") else "FAIL")
        t.add_row(r["output"], *([r["against"]] if with_against else []), fmt(r.get("max_abs")),
                  fmt(r.get("max_rel")), tol, verdict)
    return t


def run_on(runner: str, model_path: str, graph, feeds: dict, args) -> tuple[list[str], list[np.ndarray]]:
    """Output names and arrays of ``model_path`` (``graph`` loaded from it) on ``runner``."""
    from ..progress import step
    from . import ort
    from .base import compile_model

    if runner in ORT_NAMES:
        sess = ort.session(model_path, verbose=args.verbose)
        with step(f"running {model_path} on onnxruntime"):
            return [o.name for o in sess.get_outputs()], ort.run(sess, model_path, feeds)
    m = compile_model(args, graph, backend=runner)
    with step(f"running {model_path} on {runner}"):
        return m.output_names, m.run(feeds)


def _arguments(p) -> None:
    p.add_argument("model")
    p.add_argument("other", nargs="?", help="a second model to compare with the first (same inputs)")
    p.add_argument("--runner", default="onnxruntime", help="what runs each model (onnxruntime or a backend)")
    p.add_argument("--runners", metavar="A,B", help="one model on two runners, e.g. onnxruntime,cuda-emu")
    add_backend_options(p, default=None)
    add_shape_options(p)
    p.add_argument("--save-outputs", metavar="OUT.npz", help="save the first side's outputs and inputs")
    p.add_argument("--load-outputs", metavar="REF.npz", help="compare against saved outputs (on their inputs)")
    p.add_argument("--rtol", type=nonneg_float, default=None, help="relative tolerance (default: by dtype)")
    p.add_argument("--atol", type=nonneg_float, default=None, help="absolute tolerance (default: by dtype)")
    add_common(p)


EXAMPLE = ("examples:\n  graphopt compare model.onnx model.opt.onnx                 (both on onnxruntime)\n"
           "  graphopt compare model.onnx --runners onnxruntime,cuda-emu  (one model, two runners)\n"
           "  graphopt compare model.onnx --runner cpu --save-outputs ref.npz\n"
           "  graphopt compare model.opt.onnx --load-outputs ref.npz\n"
           "  graphopt compare bert.onnx bert.opt.onnx --input-shape input_ids:1,128 --input-shape attention_mask:1,128")


@register_verb("compare", "compare two models, one model on two runners, or a model with saved outputs",
               EXAMPLE, _arguments)
def cmd_compare(args) -> int:
    from .inputs import make_feeds, parse_input_shapes, read_npz

    sides = _sides(args)
    check_writable(args.save_outputs, "--save-outputs")
    graph = load_model(args)
    shapes = parse_input_shapes(args.input_shape)
    if args.load_outputs:
        saved = read_npz(args.load_outputs, "saved outputs")
        ref_feeds = {k[len(INPUT_PREFIX):]: v for k, v in saved.items() if k.startswith(INPUT_PREFIX)}
        ref_out = {k: v for k, v in saved.items() if not k.startswith(INPUT_PREFIX)}
        feeds = make_feeds(graph, args.inputs, shapes, args.batch) if args.inputs else ref_feeds
        if not feeds:
            feeds = make_feeds(graph, None, shapes, args.batch)
        ref_label = args.load_outputs
    else:
        feeds = make_feeds(graph, args.inputs, shapes, args.batch)
        model0, runner0 = sides[0]
        names, outs = run_on(runner0, model0, graph, feeds, args)
        ref_out = dict(zip(names, outs))
        ref_label = f"{model0} on {runner0}"
    result: dict = {"reference": ref_label, "inputs": {k: list(np.shape(v)) for k, v in feeds.items()}}
    with outputs() as written:
        if args.save_outputs:
            written.append(write_npz(args.save_outputs,
                                     {**ref_out, **{INPUT_PREFIX + k: v for k, v in feeds.items()}}))
            result["saved"] = args.save_outputs
        others = sides if args.load_outputs else sides[1:]
        rows, ok = [], True
        for model, runner in others:
            g = graph if model == args.model else load_model(args, model)
            names, outs = run_on(runner, model, g, feeds, args)
            missing = [n for n in ref_out if n not in names]
            if missing:
                raise InputError(f"{model} on {runner} has no output {missing[0]!r} "
                                 f"(its outputs: {', '.join(names)})")
            got = dict(zip(names, outs))
            r, good = compare_outputs(list(ref_out), list(ref_out.values()), [got[n] for n in ref_out],
                                      rtol=args.rtol, atol=args.atol, against=f"{model} on {runner}")
            rows += r
            ok &= good
    if not others:
        show(args, result, f"saved the outputs of {ref_label} to {args.save_outputs}")
        return 0
    result.update(ok=ok, outputs=rows)
    verdict = "all outputs match" if ok else "MISMATCH"
    show(args, result, f"reference: {ref_label}", result_table(rows, with_against=len(others) > 1),
         f"{verdict} ({len(rows)} output(s) compared)")
    return 0 if ok else 3


def _sides(args) -> list[tuple[str, str]]:
    """(model, runner) pairs in the order they run; the first is the reference."""
    if args.runners:
        if args.other:
            raise InputError("--runners runs one model on two runners; give one model, or --runner for two")
        runners = [r.strip() for r in args.runners.split(",") if r.strip()]
        if len(runners) != 2:
            raise InputError(f"--runners {args.runners!r}: name two runners, e.g. onnxruntime,cpu")
        return [(args.model, r) for r in runners]
    sides = [(args.model, args.runner)]
    if args.other:
        sides.append((args.other, args.runner))
    elif not (args.load_outputs or args.save_outputs):
        raise InputError("nothing to compare with: give a second model, --runners A,B or --load-outputs REF.npz")
    if args.load_outputs and args.other:
        raise InputError("--load-outputs compares one model with saved outputs; give one model")
    return sides
