"""graphopt -O2 against onnxsim and onnxslim on real model families (samples/zoo.py).

For every family and torch.onnx exporter: the export's node count, the node count
after ``graphopt optimize -O2`` (default opset, and ``--target-opset 23``), after
onnxsim and after onnxslim; whether every optimized model's output equals the
export's in onnxruntime (max |diff|, rtol 1e-4 / atol 1e-4 over the whole model); the
time each tool took; and how many attention blocks, RMS norms and rotary embeddings
graphopt fused at opset 23 and in the CPU backend's lowering at the export's own opset.

Exports come from ``samples/zoo.py``; ``GRAPHOPT_ZOO_CACHE=<folder>`` keeps them on disk
between runs.

    python benchmarks/bench_passes.py                       # every family, both exporters, dynamic axes
    python benchmarks/bench_passes.py --static hf_bert hf_vit
    python benchmarks/bench_passes.py --json out.json --markdown out.md

Goal: graphopt at or below min(onnxsim, onnxslim) on every row ("<= min" column).
The peers are benchmark tools, not dependencies: onnxsim comes with the dev extra,
onnxslim with ``pip install onnxslim`` (it leaves torch alone).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RTOL = ATOL = 1e-4  # whole-model reassociation (Gemm, fused attention, LayerNorm) on O(1) outputs
FUSED = ("Attention", "RMSNormalization", "RotaryEmbedding")


def _session(proto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graphs as written
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(proto, feeds):
    s = _session(proto)
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _graphopt(proto, target_opset=None):
    import graphopt
    from graphopt.onnx_io import to_onnx_model

    t = time.perf_counter()
    g = graphopt.optimize(graphopt.load(proto), level=2, target_opset=target_opset)
    out = to_onnx_model(g, target_opset=target_opset)
    return out, time.perf_counter() - t


def _lowered(proto) -> dict:
    """Attention, RMSNormalization and RotaryEmbedding nodes after -O2 and the CPU backend's
    lowering passes (the model's own opset)."""
    import graphopt
    from graphopt.passmanager import PassContext, PassManager, get_pass
    from graphopt.plugin_loader import get_backend

    g = graphopt.optimize(graphopt.load(proto), level=2)
    ctx = PassContext(level=2, backend="cpu")
    PassManager([get_pass(p) for p in get_backend("cpu").lowering_pipeline(ctx)], ctx).run(g)
    return dict(collections.Counter(n.op_type for n in g if n.op_type in FUSED))


def _onnxsim(proto):
    import onnxsim

    t = time.perf_counter()
    model, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return model, time.perf_counter() - t


def _onnxslim(proto):
    import onnxslim

    t = time.perf_counter()
    model = onnxslim.slim(proto)
    return model, time.perf_counter() - t


def _copy(proto):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    return m


def _attention_count(proto) -> int:
    return sum(1 for n in proto.graph.node if n.op_type in ("Attention", "MultiHeadAttention"))


def _tool(fn, proto, ref, feeds):
    """(nodes, seconds, max |diff| or an error line, outputs equal?)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, secs = fn(_copy(proto))
        got = _run(out, feeds)
    except Exception as e:  # noqa: BLE001 -- a tool that fails is a row, not the end of the run
        return {"nodes": None, "seconds": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    equal = got.shape == ref.shape and bool(np.allclose(got, ref, rtol=RTOL, atol=ATOL))
    diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
    return {"nodes": len(out.graph.node), "seconds": round(secs, 3), "max_diff": diff, "equal": equal,
            "attention": _attention_count(out), "ops": dict(collections.Counter(n.op_type for n in out.graph.node))}


def bench_one(name: str, exporter: str, dynamic: bool) -> dict:
    from samples import zoo

    row = {"family": name, "exporter": exporter, "dynamic": dynamic}
    t = time.perf_counter()
    try:
        proto = zoo.export(name, exporter=exporter, dynamic=dynamic)
    except zoo.ZooUnsupported as e:
        row["unsupported"] = str(e)
        return row
    row["export_seconds"] = round(time.perf_counter() - t, 1)
    feeds = zoo.feeds(name, proto)
    ref = _run(proto, feeds)
    row["export_nodes"] = len(proto.graph.node)
    row["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    row["graphopt"] = _tool(_graphopt, proto, ref, feeds)
    row["graphopt_opset23"] = _tool(lambda p: _graphopt(p, 23), proto, ref, feeds)
    row["onnxsim"] = _tool(_onnxsim, proto, ref, feeds)
    row["onnxslim"] = _tool(_onnxslim, proto, ref, feeds)
    try:
        row["lowered"] = _lowered(_copy(proto))
    except Exception as e:  # noqa: BLE001
        row["lowered"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    peers = [row[k]["nodes"] for k in ("onnxsim", "onnxslim") if row[k].get("nodes") is not None]
    row["peer_min"] = min(peers) if peers else None
    return row


def _cell(tool: dict) -> str:
    if tool.get("nodes") is None:
        return "error"
    mark = "" if tool["equal"] else " (!)"
    return f"{tool['nodes']}{mark}"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| family | exporter | export | graphopt -O2 | onnxsim | onnxslim | <= min | graphopt -O2 opset 23 "
             "| attention (opset 23 / lowering) | RMSNorm, rotary (opset 23 / lowering) | max diff (graphopt) "
             "| seconds graphopt / onnxsim / onnxslim |",
             "|---|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "unsupported" in r:
            lines.append(f"| {r['family']} | {r['exporter']} | {r['unsupported']} ||||||||||")
            continue
        g, g23, s, sl = r["graphopt"], r["graphopt_opset23"], r["onnxsim"], r["onnxslim"]
        ok = "" if g.get("nodes") is None or r["peer_min"] is None else ("yes" if g["nodes"] <= r["peer_min"] else
                                                                         f"no (+{g['nodes'] - r['peer_min']})")
        secs = " / ".join("-" if t.get("seconds") is None else f"{t['seconds']:.2f}" for t in (g, s, sl))
        diff = "-" if g.get("max_diff") is None else f"{g['max_diff']:.1e}"
        low = r.get("lowered")
        low = low if isinstance(low, dict) else {}
        ops23 = g23.get("ops") or {}
        att = f"{ops23.get('Attention', 0)} / {low.get('Attention', 0)}"
        norm = (f"{ops23.get('RMSNormalization', 0)}, {ops23.get('RotaryEmbedding', 0)} / "
                f"{low.get('RMSNormalization', 0)}, {low.get('RotaryEmbedding', 0)}")
        lines.append(f"| {r['family']} | {r['exporter']} | {r['export_nodes']} | {_cell(g)} | {_cell(s)} | "
                     f"{_cell(sl)} | {ok} | {_cell(g23)} | {att} | {norm} | {diff} | {secs} |")
    errors = [(r["family"], r["exporter"], k, r[k]["error"]) for r in rows for k in
              ("graphopt", "graphopt_opset23", "onnxsim", "onnxslim") if isinstance(r.get(k), dict) and "error" in r[k]]
    if errors:
        lines += ["", "Errors:"] + [f"- {f} / {e} / {k}: {msg}" for f, e, k, msg in errors]
    lines += ["", "(!) marks an output that differs from the export's beyond rtol/atol "
              f"{RTOL:g}/{ATOL:g} in onnxruntime."]
    return "\n".join(lines)


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 -- not a checkout
        return "unknown"


def _env() -> str:
    import os

    folder = os.environ.get("GRAPHOPT_ZOO_CACHE")
    return f"GRAPHOPT_ZOO_CACHE={folder} " if folder else ""


def main(argv=None) -> int:
    from samples import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", help=f"default: all ({', '.join(zoo.FAMILIES)})")
    ap.add_argument("--exporters", default="torchscript,dynamo")
    ap.add_argument("--static", action="store_true", help="static batch/sequence (default: dynamic axes)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--markdown", help="write the table here")
    args = ap.parse_args(argv)
    names = args.families or list(zoo.FAMILIES)
    if not zoo.timm_available():
        names = [n for n in names if zoo.FAMILIES[n].library != "timm"]
    rows = []
    for name in names:
        for exporter in args.exporters.split(","):
            row = bench_one(name, exporter, not args.static)
            rows.append(row)
            print(markdown([row], "").splitlines()[-3], flush=True)
    import onnxruntime
    import onnxsim
    import onnxslim
    import torch
    import transformers

    header = (f"# graphopt -O2 vs onnxsim vs onnxslim ({'static' if args.static else 'dynamic'} axes)\n\n"
              f"{datetime.date.today()}, {platform.node()} ({platform.processor() or platform.machine()}), "
              f"graphopt at commit {_commit()}, `{_env()}python benchmarks/bench_passes.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`; "
              f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime "
              f"{onnxruntime.__version__}, onnxsim {onnxsim.__version__}, onnxslim {onnxslim.__version__}. "
              "Node counts of the main graph; tiny configs (samples/zoo.py).")
    text = markdown(rows, header)
    wins = sum(1 for r in rows if r.get("peer_min") is not None and r["graphopt"].get("nodes") is not None
               and r["graphopt"]["nodes"] <= r["peer_min"])
    text += f"\n\ngraphopt at or below min(onnxsim, onnxslim): {wins} of {sum(1 for r in rows if 'unsupported' not in r)}"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
