"""Static int8 QDQ insertion (a graph pass, run by name with calibration data).

    Relu(Conv(x, w, b)) => Q/DQ(Relu(Conv(Q/DQ(x), DQ(w_int8), DQ(b_int32))))

Calibrates on ``ctx.options["calibration_data"]`` (an iterable of feed dicts),
then inserts QuantizeLinear/DequantizeLinear around Conv, Gemm, MatMul and
residual Add, keeping MaxPool/Reshape/Transpose/Concat... in int8 between them
(see ``graphopt.quantize.qdq``). Options, all optional:
``quantize_method`` (minmax | percentile | entropy | mse), ``activation_type``
(uint8 | int8), ``per_channel``, ``percentile``, ``exclude`` (node names).

Without calibration data it changes nothing and says so. ``graphopt quantize``
and ``graphopt.quantize.quantize_static`` are the usual front doors; this pass
is for pipelines that quantize as one step among others.
"""
from __future__ import annotations

from collections import Counter

from graphopt.passmanager import ON_REQUEST, PassResult, register_pass
from graphopt.quantize.calibration import collect
from graphopt.quantize.qdq import activation_params, insert_qdq, plan_qdq


@register_pass("quantize_qdq", opt_level=ON_REQUEST, kind="graph", order=900,
               options=("calibration_data", "quantize_method", "activation_type", "exclude", "percentile",
                        "per_channel"))
def quantize_qdq(graph, ctx) -> PassResult:
    """Relu(Conv(x, w, b)) => Q/DQ(Relu(Conv(Q/DQ(x), DQ(w_int8), DQ(b_int32)))) (needs calibration_data)."""
    opts = ctx.options
    data = opts.get("calibration_data")
    if data is None:
        return PassResult(False, refused=Counter({("quantize_qdq", "no calibration_data in the pass options"): 1}))
    method = opts.get("quantize_method", "minmax")
    act_type = opts.get("activation_type", "uint8")
    plan = plan_qdq(graph, exclude=set(opts.get("exclude", ())))
    if not plan.layers:
        return PassResult(False, refused=Counter({("quantize_qdq", "no quantizable layer"): 1}))
    observers, _ = collect(graph, [v.name for v in plan.values], data, method)
    params = activation_params(plan, observers, method, act_type, {"percentile": opts.get("percentile", 99.99)})
    stats = insert_qdq(graph, plan, params, per_channel=opts.get("per_channel", True))
    refused = Counter({("quantize_qdq", f"{op} stays float: {why}"): 1 for _, op, why in plan.float_nodes})
    return PassResult(True, stats, refused)
