"""``graphopt fuzz``: random valid ONNX graphs against onnxruntime, on every backend and level.

Prints one row per backend and level (ok, mismatch, crash, unsupported,
onnxruntime-side divergences, disputed, invalid: ``check.py`` says what each
means) and the minimized reproducers written under
``--out``; the exit status is 3 when graphopt mismatched or crashed, else 0.

>>> from graphopt.cli import main
>>> main(["fuzz", "--count", "2", "--level", "0,2", "--out", str(tmp)])   # doctest: +SKIP
0
"""
from __future__ import annotations

import argparse

from ..commands.base import add_common, check_writable, load_plugins, nonneg_float, nonneg_int, positive_int, \
    register_verb, split, write_json
from ..commands.output import Table, show
from ..errors import InputError

EXAMPLE = ("examples:\n  graphopt fuzz --count 200                          (cpu, every level; failures to fuzz-cases/)\n"
           "  graphopt fuzz --time 600 --seed 7 --backend cpu,ort-optimized,cuda-emu --share cuda-emu=0.05\n"
           "  graphopt fuzz --ops MatMul,Add,Relu --level 2 --count 1000 --out mm-cases\n"
           "  graphopt fuzz --seed 7 --start 1234 --count 1    (graph 1234 of seed 7 again)\n"
           "  graphopt fuzz --recheck report.json              (each failure of an earlier run, checked again)")


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels are integers 0-3, not {text!r}") from None
    if not levels or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise argparse.ArgumentTypeError(f"levels are integers 0-3, not {text!r}")
    return levels


def _shares(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, frac = item.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or not 0 <= value <= 1:
            raise InputError(f"--share {item!r}: expected BACKEND=FRACTION with a fraction from 0 to 1")
        out[name] = value
    return out


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="the run's seed (graph i depends only on the seed, i and the graphopt version)")
    p.add_argument("--count", type=positive_int, default=None, help="graphs to generate (default 100 without --time)")
    p.add_argument("--time", type=nonneg_float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--start", type=nonneg_int, default=0, help="index of the first graph (default 0)")
    p.add_argument("--ops", default=None, help="comma-separated ops to generate (default: every op it knows)")
    p.add_argument("--backend", default="cpu",
                   help="comma-separated backends (default cpu); ort-optimized runs what 'graphopt optimize' writes "
                        "on onnxruntime")
    p.add_argument("--level", type=_levels, default=[0, 1, 2, 3], help="comma-separated levels (default 0,1,2,3)")
    p.add_argument("--share", action="append", default=[], metavar="BACKEND=FRACTION",
                   help="the fraction of graphs a backend sees (default cuda-emu=0.02: it compiles C++)")
    p.add_argument("--out", default="fuzz-cases", metavar="DIR", help="where reproducers go (default fuzz-cases)")
    p.add_argument("--no-minimize", action="store_true", help="write failures as generated, not minimized")
    p.add_argument("--no-isolate", action="store_true",
                   help="check graphs in this process (default: a worker process, so that a crash by a signal "
                        "or a hang costs one graph)")
    p.add_argument("--timeout", type=nonneg_float, default=600.0, metavar="SECONDS",
                   help="a graph still running after this long is a hang (default 600)")
    p.add_argument("--report", metavar="FILE.json", help="also write the results as JSON")
    p.add_argument("--log", metavar="FILE.jsonl", help="append one JSON line per outcome as it comes")
    p.add_argument("--recheck", metavar="REPORT.json",
                   help="instead of a new run: check each failure of an earlier run's --report again (its graphs "
                        "made again from its seed) and say which are fixed; exit 3 when any still fails")
    add_common(p, passes=False)


@register_verb("fuzz", "differential fuzzing: random ONNX graphs on graphopt against onnxruntime", EXAMPLE,
               _arguments)
def cmd_fuzz(args) -> int:
    from pathlib import Path

    from ..plugin_loader import get_backend
    from ..progress import Progress
    from .check import KINDS, RUNNERS
    from .run import fuzz, table_rows

    load_plugins(args)
    if args.recheck:
        return _recheck(args)
    backends = split(args.backend) or ["cpu"]
    for b in backends:
        if b in RUNNERS:
            continue
        ok, why = get_backend(b).is_available()
        if not ok:
            raise InputError(f"backend {b!r} is not available: {why}")
    ops = split(args.ops)
    table_rows(ops)  # an unknown op is refused before any work
    share = _shares(args.share)
    check_writable(args.report, "--report")
    check_writable(args.log, "--log")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out}: not a folder")
    count = args.count if args.count is not None or args.time is not None else 100
    with Progress("fuzzing", count) as bar:
        stats = fuzz(seed=args.seed, count=count, seconds=args.time, ops=ops, backends=backends, levels=args.level,
                     out_dir=out, share=share, minimize_failures=not args.no_minimize, start=args.start,
                     progress=lambda n, s: bar.update(n, f"{s.failures} failure(s)"), isolate=not args.no_isolate,
                     plugins=args.plugin, timeout=args.timeout, log=args.log)
    result = stats.to_json()
    if args.report:
        write_json(args.report, result)
    t = Table("backend", "level", "graphs", *KINDS, right=("graphs", *KINDS))
    for r in result["results"]:
        t.add_row(r["backend"], f"-O{r['level']}", r["graphs"], *(r[k] for k in KINDS))
    show(args, result, t, stats.summary())
    return 3 if stats.failures else 0


def _recheck(args) -> int:
    import json

    from ..progress import Progress
    from .check import FAILURES
    from .recheck import recheck

    try:
        with open(args.recheck, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"--recheck {args.recheck}: cannot read it as JSON ({getattr(exc, 'strerror', None) or exc})")\
            from None
    if not isinstance(report, dict):
        raise InputError(f"--recheck {args.recheck}: not a report of graphopt fuzz (--report)")
    check_writable(args.report, "--report")
    with Progress("checking again", None) as bar:
        try:
            rows = recheck(report, isolate=not args.no_isolate, plugins=args.plugin, timeout=args.timeout,
                           progress=lambda n, total: bar.update(n, f"of {total}"))
        except InputError as exc:
            raise InputError(f"--recheck {args.recheck}: {exc}") from None
    failing = [r for r in rows if r["now"] in FAILURES]
    fixed = [r for r in rows if r["was"] in FAILURES and r["now"] not in FAILURES]
    summary = (f"{len(rows)} case(s) of seed {report['seed']} checked again: {len(fixed)} fixed, "
               f"{len(failing)} still failing")
    result = {"seed": report["seed"], "rows": rows, "fixed": len(fixed), "failing": len(failing)}
    if args.report:
        write_json(args.report, result)
    t = Table("graph", "backend", "level", "was", "now", "message", right=("graph",))
    for r in rows:
        t.add_row(r["graph"], r["backend"], f"-O{r['level']}", r["was"], r["now"], r["message"][:100])
    show(args, result, t, summary)
    return 3 if failing else 0
