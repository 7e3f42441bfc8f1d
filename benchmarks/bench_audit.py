"""The static audit and the roofline of the CUDA backend's kernels, without a GPU.

For ResNet-50 and BERT-base (batch 1, float16 through ``graphopt.quantize.convert_float16``,
-O3 as the GPU session runs them), the generated 4096^3 float16 GEMM, and every sample model
in float32 and float16: each kernel compiled by the real NVRTC for sm_80 and sm_90 (and, asked for,
sm_90a: the Hopper build, its GEMMs on the wgmma mainloop) and audited
(``plugins/cuda/audit.py``: tensor cores, async copies, 16-byte loads, no local memory,
occupancy), the launch count per model with the launches per op, and the roofline floor on
the H100, H200 and A100 (``plugins/cuda/roofline.py``). Prints Markdown; ``--out FILE`` also
writes it.

    python benchmarks/bench_audit.py --out benchmarks/results/audit-$(date +%F).md
    python benchmarks/bench_audit.py --models bert_base --archs sm_90     # one model, one arch
    python benchmarks/bench_audit.py --models gemm4096 bert_base --archs sm_90a   # the wgmma build
"""
from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ["resnet50", "bert_base", "gemm4096", "resnet_style", "mobilenet_v2_style", "bert_style", "gpt_style_block"]


def model_graph(name: str, dtype: str, batch: int):
    from graphopt.ir import TensorType
    from graphopt.ops.registry import infer_graph
    from graphopt.quantize import convert_float16
    from samples import models

    g = models.load_graph(name)
    if dtype == "float16":
        g = convert_float16(g)
    for v, x in zip(g.inputs, models.example_inputs(name, batch)):
        v.type = TensorType(v.dtype, tuple(x.shape))
    infer_graph(g)
    return g


class _Launch:
    def __init__(self, kernel, block, node=None):
        self.kernel, self.block, self.node = kernel, block, node


def gemm_launches(engine: str = "mma"):
    from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul

    specs = [make_tc_matmul(4096, 4096, 4096, engine=engine)]
    if engine == "wgmma":  # and its TMA variant (wgmma_tma.py), which the backend does not launch yet
        specs.append(make_tc_matmul(4096, 4096, 4096, engine=engine, tma=True))
    return [_Launch(render_tc_matmul(spec), spec.block()) for spec in specs]


def arch_groups(archs):
    """(archs, lowering arch) groups: the plain archs share one lowering (mma.sync); sm_90a gets
    its own, with the wgmma mainloop."""
    from graphopt.plugins.cuda.audit import HOPPER_ARCH

    plain = [a for a in archs if a != HOPPER_ARCH]
    return ([(plain, None)] if plain else []) + ([([HOPPER_ARCH], HOPPER_ARCH)] if HOPPER_ARCH in archs else [])


def cases(args):
    for name in args.models:
        if name == "gemm4096":
            yield name, "float16", None
        elif name in ("resnet50", "bert_base"):
            yield name, "float16", 3
        else:
            for dtype in args.dtypes:
                yield name, dtype, 3 if "resnet" in name or "mobilenet" in name else 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    ap.add_argument("--dtypes", nargs="*", default=["float16", "float32"], help="for the sample models")
    ap.add_argument("--archs", nargs="*", default=["sm_80", "sm_90"],
                    help="sm_80, sm_90, and sm_90a (the Hopper build: GEMMs on wgmma)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)

    from graphopt.plugins.cuda.audit import audit_kernels, audit_table, lower_for_cuda
    from graphopt.plugins.cuda.compile_nvrtc import nvrtc_version
    from graphopt.plugins.cuda.roofline import gemm_floor_us, model_floor

    out = [f"# CUDA kernel audit and roofline, {datetime.date.today()}", "",
           f"Machine: {platform.node()} ({platform.processor() or platform.machine()}), no GPU: NVRTC "
           f"{'.'.join(map(str, nvrtc_version()))} compiles each kernel for {', '.join(args.archs)}, cuobjdump reads "
           "it. Command: `python benchmarks/bench_audit.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
           ""]
    summary = ["| model | dtype | level | launches | kernels | must-hold failures | xfail | XPASS | "
               "floor H100 (us) | floor H200 (us) | floor A100 (us) |", "|" + "---|" * 11]
    tables = []
    for name, dtype, level in cases(args):
        t0 = time.perf_counter()
        audits, first = [], None
        for archs, lower_arch in arch_groups(args.archs):
            if name == "gemm4096":
                launches, lowered = gemm_launches("wgmma" if lower_arch else "mma"), None
                floors = [gemm_floor_us(4096, 4096, 4096, "float16", g) for g in ("h100", "h200", "a100")]
            else:
                lowered = lower_for_cuda(model_graph(name, dtype, args.batch), level, lower_arch)
                launches = lowered.launches
                floors = [model_floor(lowered, g).floor_us for g in ("h100", "h200", "a100")]
            audits += audit_kernels(launches, archs)
            first = first or (launches, lowered, floors)
        launches, lowered, floors = first  # the summary describes the first lowering (the plain archs')
        fails = sum(len(a.failures()) for a in audits)
        xf = sum(r.startswith("xfail") for a in audits for r in a.results.values())
        xp = sum(r.startswith("XPASS") for a in audits for r in a.results.values())
        kernels = len({l.kernel.name for l in launches})
        lv = "-" if level is None else f"-O{level}"
        summary.append(f"| {name} | {dtype} | {lv} | {len(launches)} | {kernels} | {fails} | {xf} | {xp} | "
                       + " | ".join(f"{f:.1f}" for f in floors) + " |")
        title = f"{name} {dtype} {lv} batch {args.batch}" if name != "gemm4096" else "4096^3 float16 GEMM"
        block = [audit_table(audits, title)]
        if lowered is not None:
            ops = collections.Counter(l.node.op_type for l in launches)
            block += ["", f"Launches: {len(launches)} ({', '.join(f'{n} {op}' for op, n in ops.most_common())})."]
            mf = model_floor(lowered, "h100")
            block += ["", "Largest roofline floors on the H100:", ""]
            block += [f"* {k}: {v}" for k, v in mf.per_kernel(5).items()]
        tables.append("\n".join(block))
        print(summary[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    report = "\n".join(out + summary + [""] + ["\n\n".join(tables)]) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
