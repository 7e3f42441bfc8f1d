"""float16 mixed precision (a graph pass, run by name: never part of a default pipeline).

    Conv(x: f32, w: f32) => Cast(Conv(Cast(x, f16), w_f16), f32)

Softmax, the normalizations, the reductions and Exp/Log/Pow stay float32;
elementwise ops and data movement follow their inputs; model inputs and outputs
keep float32 (``ctx.options["keep_io_types"]=False`` changes them too). See
``graphopt.quantize.mixed_precision`` for the rules.
"""
from __future__ import annotations

from graphopt.passmanager import ON_REQUEST, PassResult, register_pass
from graphopt.quantize.mixed_precision import DEFAULT_BLOCKLIST, convert_precision


def run_precision_pass(graph, ctx, dtype: str) -> PassResult:
    opts = ctx.options
    rep = convert_precision(graph, dtype, keep_io_types=opts.get("keep_io_types", True),
                            blocklist=frozenset(opts.get("precision_blocklist", DEFAULT_BLOCKLIST)),
                            standard=opts.get("standard_onnx", True))
    converted = sum(rep["converted_ops"].values())
    stats = {f"{dtype}_ops": converted, "casts": rep.get("casts", 0), "constants": rep.get("constants", 0),
             "cast_pairs_removed": rep.get("cast_pairs_removed", 0)}
    return PassResult(converted > 0, {k: v for k, v in stats.items() if v})


PRECISION_OPTIONS = ("keep_io_types", "precision_blocklist", "standard_onnx")


@register_pass("convert_float16", opt_level=ON_REQUEST, kind="graph", order=950, options=PRECISION_OPTIONS)
def convert_float16(graph, ctx) -> PassResult:
    """Conv(x: f32, w: f32) => Cast(Conv(Cast(x, f16), w_f16), f32), float32 islands kept."""
    return run_precision_pass(graph, ctx, "float16")
