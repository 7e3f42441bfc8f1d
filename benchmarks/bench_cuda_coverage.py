"""Does every model the CPU backend runs also run on ``cuda``? Checked on ``cuda-emu``.

    python benchmarks/bench_cuda_coverage.py                         # every zoo family, both exporters,
                                                                     # static and dynamic axes, -O2 and -O3
    python benchmarks/bench_cuda_coverage.py --families hf_bert,timm_resnet18 --levels 2
    python benchmarks/bench_cuda_coverage.py --onnx-zoo squeezenet,bvlc_alexnet
    python benchmarks/bench_cuda_coverage.py --json out.json
    python benchmarks/bench_cuda_coverage.py --merge a.json b.json     # one table from runs saved with --json

Every family of ``samples/zoo.py`` (transformers configs and timm, tiny size, random
weights perturbed to look trained) is exported with both torch.onnx exporters
(``torchscript``: ``dynamo=False``; ``dynamo``: ``dynamo=True``) with static axes and
with dynamic batch (and sequence) axes; each export is compiled for ``cuda-emu`` at
the levels asked and run on the family's inputs, and its outputs are compared with the
CPU reference running the same export at -O0. A model matches when every output is
within rtol 1e-3 / atol 1e-4 (float32 across a whole model: fusion and the kernels'
reassociation of sums move the last bits; per-op tolerances are in the tests).

Each row: the export, the level, ``match`` / ``MISMATCH`` (max abs error) / ``refused``
(the one-line reason), the launches, how many nodes ran on the host (the CUDA backend's
fallback for a node with no kernel: the goal is none) and which ops they were, and
for a dynamic export the compiled signature. An export an exporter cannot produce is
listed with the exporter's reason. All kernels of one family compile in one host
compile (``kernel_batch``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RTOL, ATOL = 1e-3, 1e-4


def _one_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return f"{type(exc).__name__}: {s.splitlines()[0] if s else ''}"[:300]


def _compare(got, want) -> tuple[bool, float]:
    worst, ok = 0.0, len(got) == len(want)
    for a, r in zip(got, want):
        a, r = np.asarray(a), np.asarray(r)
        if a.shape != r.shape or a.dtype != r.dtype:
            return False, float("inf")
        if a.dtype.kind in "iub":
            ok &= bool(np.array_equal(a, r))
            continue
        a64, r64 = a.astype(np.float64), r.astype(np.float64)
        err = float(np.max(np.abs(a64 - r64))) if a.size else 0.0
        worst = max(worst, err)
        ok &= bool(np.allclose(a64, r64, rtol=RTOL, atol=ATOL, equal_nan=True))
    return ok, worst


def _host_ops(stats: dict) -> list[str]:
    return [h["op"] for h in stats.get("host_nodes", [])]


def check_model(name: str, proto, feeds: dict, levels, cpu_want) -> list[dict]:
    """Compile ``proto`` for cuda-emu at each level, run, compare with ``cpu_want``."""
    import graphopt

    rows = []
    for level in levels:
        row = {"level": level}
        t0 = time.perf_counter()
        try:
            m = graphopt.compile(proto, backend="cuda-emu", level=level)
            got = m.run(feeds)
            st = m.stats
            ok, err = _compare(got, cpu_want)
            row.update(status="match" if ok else "MISMATCH", max_abs_err=err, launches=st.get("launches"),
                       host_nodes=len(st.get("host_nodes", [])), host_ops=sorted(set(_host_ops(st))),
                       signatures=st.get("signatures", []))
        except Exception as exc:  # noqa: BLE001 -- the reason is the row
            row.update(status="refused", reason=_one_line(exc))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def zoo_rows(families, exporters, levels, dynamics) -> list[dict]:
    import graphopt
    from graphopt.plugins.cuda.compile_emu import kernel_batch
    from samples import zoo

    rows = []
    for fam in families:
        with kernel_batch():
            for exporter in exporters:
                for dynamic in dynamics:
                    base = {"model": fam, "exporter": exporter, "axes": "dynamic" if dynamic else "static"}
                    try:
                        proto = zoo.export(fam, exporter=exporter, dynamic=dynamic)
                    except Exception as exc:  # noqa: BLE001 -- ZooUnsupported and friends: report them
                        rows.append({**base, "status": "no export", "reason": _one_line(exc)})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    feeds = zoo.feeds(fam, proto)
                    try:
                        want = graphopt.compile(proto, backend="cpu", level=0).run(feeds)
                    except Exception as exc:  # noqa: BLE001
                        rows.append({**base, "status": "cpu refused", "reason": _one_line(exc)})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    for r in check_model(fam, proto, feeds, levels, want):
                        rows.append({**base, **r})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def onnx_zoo_rows(names, levels) -> list[dict]:
    import graphopt
    from graphopt.plugins.cuda.compile_emu import kernel_batch
    from samples import zoo

    rows = []
    for name in names:
        proto = zoo.onnx_zoo(name)
        feeds = zoo.onnx_zoo_feeds(proto)
        want = graphopt.compile(proto, backend="cpu", level=0).run(feeds)
        with kernel_batch():
            for r in check_model(name, proto, feeds, levels, want):
                rows.append({"model": f"onnx:{name}", "exporter": "onnx zoo", "axes": "static", **r})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows) -> str:
    out = ["| model | exporter | axes | level | result | max abs err | launches | host nodes | host ops |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] in ("no export", "cpu refused", "refused"):
            res = f"{r['status']}: {r['reason'][:140]}"
            out.append(f"| {r['model']} | {r['exporter']} | {r['axes']} | {r.get('level', '')} | {res} | | | | |")
            continue
        out.append(f"| {r['model']} | {r['exporter']} | {r['axes']} | -O{r['level']} | {r['status']} | "
                   f"{r['max_abs_err']:.2e} | {r['launches']} | {r['host_nodes']} | {', '.join(r['host_ops'])} |")
    ran = [r for r in rows if r["status"] in ("match", "MISMATCH")]
    c = Counter(r["status"] for r in rows)
    out.append("")
    out.append(f"{len(ran)} compiled runs: {c['match']} match, {c['MISMATCH']} mismatch; {c['refused']} refused; "
               f"{c['no export']} exports the exporter could not produce; "
               f"{sum(r['host_nodes'] > 0 for r in ran)} runs with host-fallback nodes "
               f"({sum(r['host_nodes'] for r in ran)} nodes in all)")
    return "\n".join(out)


def main(argv=None) -> int:
    from samples import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--families", default=",".join(zoo.FAMILIES), help="comma-separated zoo families")
    ap.add_argument("--exporters", default=",".join(zoo.EXPORTERS))
    ap.add_argument("--levels", default="2,3")
    ap.add_argument("--axes", default="static,dynamic")
    ap.add_argument("--onnx-zoo", default="", help="comma-separated light onnx zoo models (full-size CNNs: slow)")
    ap.add_argument("--json", default=None, help="also write every row to this file")
    ap.add_argument("--merge", nargs="+", metavar="ROWS.json",
                    help="run nothing: print one table of the rows these --json files hold (runs split by family)")
    args = ap.parse_args(argv)
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())]
        print(table(rows))
        return 0
    warnings.simplefilter("ignore")
    levels = [int(x) for x in args.levels.split(",")]
    fams = [f for f in args.families.split(",") if f]
    dyn = [a == "dynamic" for a in args.axes.split(",")]
    t0 = time.perf_counter()
    rows = zoo_rows(fams, args.exporters.split(","), levels, dyn)
    if args.onnx_zoo:
        rows += onnx_zoo_rows(args.onnx_zoo.split(","), levels)
    print(f"# cuda-emu coverage: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s")
    print(f"# command: python benchmarks/bench_cuda_coverage.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
