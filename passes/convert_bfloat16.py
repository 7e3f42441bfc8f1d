"""bfloat16 mixed precision (a graph pass, run by name: never part of a default pipeline).

    MatMul(x: f32, w: f32) => Cast(MatMul(Cast(x, bf16), w_bf16), f32)

Same rules as ``convert_float16``; ops whose ONNX schema at the model's opset
has no bfloat16 (``Conv`` before opset 22, pools) stay float32 unless
``ctx.options["standard_onnx"]=False``.
"""
from __future__ import annotations

from graphopt.passmanager import ON_REQUEST, PassResult, register_pass

from .convert_float16 import PRECISION_OPTIONS, run_precision_pass


@register_pass("convert_bfloat16", opt_level=ON_REQUEST, kind="graph", order=951, options=PRECISION_OPTIONS)
def convert_bfloat16(graph, ctx) -> PassResult:
    """MatMul(x: f32, w: f32) => Cast(MatMul(Cast(x, bf16), w_bf16), f32), float32 islands kept."""
    return run_precision_pass(graph, ctx, "bfloat16")
