"""QDQ patterns => graphopt's fused int8 ops (a lowering pass).

    Q(Act?(Conv(DQ(x), DQ(w), DQ(b)?)))            => QConv[act](x, .., w, .., y_scale, y_zp, b)
    Q(Act?(Gemm(DQ(a), DQ(w), DQ(b)?)))            => QGemm[act, transB](a, .., w, .., y_scale, y_zp, b)
    Q(Act?(Add?(MatMul(DQ(a), DQ(w)), DQ(b))))     => QMatMul[act](a, .., w, .., y_scale, y_zp, b)
    Q(Act?(Add(DQ(a), DQ(b))))                     => QAdd[act](a, .., b, .., y_scale, y_zp)
    Q(op(DQ(x, s, z)), s, z)                       => op(x)        op: MaxPool, Reshape, Transpose, Concat, ...
    Act?(Conv|Gemm|MatMul(DQ(x), DQ(w), ..))       => QConv|QGemm|QMatMul without y_scale (float32 out)

``Act`` is ``Relu`` or ``Clip`` (constant bounds). The fused ops accumulate in
int32 and requantize with a fixed-point multiplier, rounding half to even (see
``graphopt.ops.quant``), so the lowered graph equals the QDQ graph's float
simulation within one quantization step. Dequantize nodes left without readers
are removed; a model input's ``QuantizeLinear`` and the float ops around the
int8 islands stay as they are.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, TensorType, Value
from graphopt.ops.quant import FUSED_DOMAIN
from graphopt.passmanager import PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, Var, apply_rules, remove_dead
from graphopt.quantize.qdq import PASSTHROUGH

_INT8 = ("uint8", "int8")


def _dq(prefix: str, const: bool = False) -> P:
    return P("DequantizeLinear", Var(f"{prefix}_q", const=const), Const(f"{prefix}_s"), Const(f"{prefix}_zp"),
             name=f"dq_{prefix}")


def _layer_pattern(op: str, act: str | None, bias_add: bool) -> P:
    # Conv and Gemm read a constant weight; MatMul may read two activations; Add reads two
    inner = P(op, _dq("x"), _dq("w", const=op in ("Conv", "Gemm")), name="layer")
    if bias_add:
        inner = P("Add", inner, _dq("b", const=True), name="bias_add", commutative=True)
    if act:
        inner = P(act, inner, name="act")
    return inner


def _scalar(a: np.ndarray) -> bool:
    return a is not None and a.size == 1


def _same_const(a: Value, b: Value) -> bool:
    return (a.const is not None and b.const is not None and a.const.dtype == b.const.dtype
            and np.array_equal(a.const.reshape(-1), b.const.reshape(-1)))


def _check_layer(g: Graph, m: Match) -> str | None:
    lay = m.nodes["layer"]
    # every matched node but the DQs feeds only the next node of the pattern
    for n in m.matched[1:]:
        if n.op_type == "DequantizeLinear":
            continue
        o = n.output
        if o.num_uses != 1 or o.is_graph_output:
            return f"{n.op_type} {n.name!r} output has {o.num_uses + o.is_graph_output} readers"
    xq = m["x_q"]
    if xq.dtype not in _INT8 or m.nodes["dq_x"].attr("block_size", 0):
        return f"input is {xq.dtype}, not int8/uint8"
    if not _scalar(m.const("x_s")):
        return "input is not quantized per tensor"
    wq = m["w_q"]
    if wq.dtype not in _INT8:
        return f"weight is {wq.dtype}, not int8/uint8"
    ws = m.const("w_s")
    wdq = m.nodes["dq_w"]
    if wdq.attr("block_size", 0):
        return "blocked weight quantization"
    if lay.op_type == "Add":
        if not _scalar(ws):
            return "Add input is not quantized per tensor"
    elif lay.op_type == "MatMul" and wq.const is None:
        if not _scalar(ws):
            return "second MatMul input is not quantized per tensor"
    elif ws.size > 1:
        rank = len(wq.shape)
        axis = wdq.attr("axis", 1) % rank
        want = {"Conv": 0, "Gemm": 0 if lay.attr("transB", 0) else 1, "MatMul": rank - 1}[lay.op_type]
        if axis != want or (lay.op_type == "MatMul" and rank != 2):
            return f"weight is quantized along axis {axis}, not its output channels"
    if lay.op_type == "Gemm":
        if lay.attr("transA", 0):
            return "Gemm with transA=1"
        if float(lay.attr("alpha", 1.0)) != 1.0 or (lay.input(2) is not None and float(lay.attr("beta", 1.0)) != 1.0):
            return "Gemm with alpha or beta != 1"
    act = m.nodes.get("act")
    if act is not None and act.op_type == "Clip":
        for i in (1, 2):
            v = act.input(i)
            if v is not None and (v.const is None or v.const.size != 1):
                return "Clip bounds are not constants"
    if "y_zp" in m.values and m.const("y_zp").dtype.name not in _INT8:
        return f"output is quantized to {m.const('y_zp').dtype}, not int8/uint8"
    if "y_s" in m.values and not _scalar(m.const("y_s")):
        return "output is not quantized per tensor"
    return None


def _bias(g: Graph, m: Match) -> np.ndarray | str | None:
    """The int32 bias of the layer (its DQ), a float constant bias quantized here, None, or a reason."""
    lay = m.nodes["layer"]
    if "bias_add" in m.nodes:
        bq, bs = m.const("b_q"), m.const("b_s")
        if bq.dtype != np.int32 or np.any(m.const("b_zp") != 0):
            return "bias is not int32 with zero point 0"
        n_out = m["w_q"].shape[-1] if m["w_q"].shape else None
        if bq.size != n_out or bq.shape[-1:] != (n_out,):
            return "the added constant is not a bias over the output columns"
    elif lay.op_type in ("Conv", "Gemm") and lay.input(2) is not None:
        b = lay.input(2)
        p = b.producer
        if p is None or p.op_type != "DequantizeLinear" or p.input(0).const is None:
            if b.const is None:
                return "bias is not a constant"
            bq, bs = None, None
        else:
            bq, bs = p.input(0).const, p.input(1).const
            if bq.dtype != np.int32 or (p.input(2) is not None and np.any(p.input(2).const != 0)):
                return "bias is not int32 with zero point 0"
    else:
        return None
    acc_scale = (np.float32(m.const("x_s").reshape(())) * m.const("w_s").astype(np.float32)).astype(np.float32)
    if bq is None:  # a float bias: quantize it to the accumulator's scale
        bf = lay.input(2).const.astype(np.float64).reshape(-1)
        return np.clip(np.rint(bf / acc_scale.astype(np.float64)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    if not np.allclose(np.broadcast_to(bs.reshape(-1), bq.reshape(-1).shape),
                       np.broadcast_to(acc_scale.reshape(-1), bq.reshape(-1).shape), rtol=1e-6, atol=0):
        return "bias scale is not x_scale * w_scale"
    return bq.reshape(-1).astype(np.int32)


def _take_name(graph: Graph, old: Value, new: Value) -> None:
    """Give ``new`` the name of ``old`` (which is about to die), so graph outputs keep their names."""
    names = graph._all_names()
    old_name = old.name
    old.name = graph.unique_name(f"{old_name}_lowered")
    names.discard(new.name)
    new.name = old_name
    names.add(old_name)


def _rewrite_layer(g: Graph, m: Match) -> bool | str:
    lay = m.nodes["layer"]
    root = m.root
    bias = _bias(g, m) if lay.op_type != "Add" else None
    if isinstance(bias, str):
        return bias
    act = m.nodes.get("act")
    attrs: dict = {}
    if act is not None:
        attrs["activation"] = act.op_type
        if act.op_type == "Clip":
            lo = act.input(1).const if act.input(1) is not None else act.attr("min")
            hi = act.input(2).const if act.input(2) is not None else act.attr("max")
            if lo is not None:
                attrs["act_min"] = float(np.asarray(lo).reshape(()))
            if hi is not None:
                attrs["act_max"] = float(np.asarray(hi).reshape(()))
    if lay.op_type == "Conv":
        fused = "QConv"
        attrs.update({k: v for k, v in lay.attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape",
                                                                  "pads", "strides")})
    elif lay.op_type == "Gemm":
        fused = "QGemm"
        attrs["transB"] = int(lay.attr("transB", 0))
    elif lay.op_type == "MatMul":
        fused = "QMatMul"
    else:
        fused = "QAdd"
    quant_out = root.op_type == "QuantizeLinear"
    if fused == "QAdd" and not quant_out:
        return "a float-output QAdd is not worth it"
    ins: list[Value | None] = [m["x_q"], m["x_s"], m["x_zp"], m["w_q"], m["w_s"], m["w_zp"]]
    ins += [m["y_s"], m["y_zp"]] if quant_out else [None, None]
    if bias is not None:
        ins.append(g.add_initializer(f"{lay.name}_bias_int32", bias))
    while ins and ins[-1] is None:
        ins.pop()
    out = root.output
    out_type = TensorType(m.const("y_zp").dtype.name if quant_out else "float32", out.shape)
    node = g.make_node(fused, ins, attrs, domain=FUSED_DOMAIN, name=f"{lay.name}_int8", output_names=[f"{out.name}_int8"],
                       output_types=[out_type], before=root)
    out.replace_all_uses_with(node.output)
    _take_name(g, out, node.output)
    return True


def _rewrite_passthrough(g: Graph, m: Match) -> bool | str:
    q, op = m.root, m.nodes["op"]
    data = PASSTHROUGH.get(op.op_type, ())
    idx = range(len(op.inputs)) if data is None else data
    if op.output.num_uses != 1 or op.output.is_graph_output:
        return f"{op.op_type} output has other readers"
    if len(op.outputs) > 1 and any(o.num_uses for o in op.outputs[1:]):
        return f"{op.op_type} has more outputs in use"
    new_ins = list(op.inputs)
    for i in idx:
        v = op.input(i)
        p = v.producer if v is not None else None
        if p is None or p.op_type != "DequantizeLinear" or len(p.inputs) < 3:
            return "input is not dequantized"
        if not (_same_const(p.input(1), q.input(1)) and _same_const(p.input(2), q.input(2))):
            return "input and output scales differ"
        if p.attr("axis", 1) != q.attr("axis", 1) and p.input(1).const.size > 1:
            return "per-axis parameters on different axes"
        new_ins[i] = p.input(0)
    out = q.output
    node = g.make_node(op.op_type, new_ins, dict(op.attrs), domain=op.domain, name=f"{op.name}_int8",
                       output_names=[f"{out.name}_int8"], output_types=[TensorType(out.dtype, out.shape)], before=q)
    out.replace_all_uses_with(node.output)
    _take_name(g, out, node.output)
    return True


def _check_float(g: Graph, m: Match) -> str | None:
    """A float-output lowering must not cut off an epilogue that a longer rule fuses."""
    users = m.root.output.users
    if len(users) == 1 and m.root.output.num_uses == 1 and not m.root.output.is_graph_output:
        u = users[0]
        if u.op_type in ("Relu", "Clip") and m.root.op_type not in ("Relu", "Clip"):
            return f"{u.op_type} after it is fused by a longer rule"
        if (u.op_type == "Add" and m.root.op_type == "MatMul" and any(
                v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"
                and v.producer.input(0).const is not None for v in u.inputs)):
            return "its bias Add is fused by a longer rule"
    return _check_layer(g, m)


def _rules() -> tuple[list[Rule], list[Rule]]:
    quantized, floating = [], []
    for op in ("Conv", "Gemm", "MatMul", "Add"):
        for bias_add in ((False, True) if op == "MatMul" else (False,)):
            for act in (None, "Relu", "Clip"):
                pat = _layer_pattern(op, act, bias_add)
                tag = f"{op.lower()}{'_bias' if bias_add else ''}{'_' + act.lower() if act else ''}"
                target = {"Conv": "qconv", "Gemm": "qgemm", "MatMul": "qmatmul", "Add": "qadd"}[op]
                quantized.append(Rule(f"{tag}_qdq_to_{target}",
                                      P("QuantizeLinear", pat, Const("y_s"), Const("y_zp"), name="q"),
                                      _rewrite_layer, _check_layer, allow_shared=True))
                if op != "Add":
                    floating.append(Rule(f"{tag}_dq_to_{target}_float", pat, _rewrite_layer, _check_float,
                                         allow_shared=True))
    quantized.append(Rule("dq_op_q_to_int8_op",
                          P("QuantizeLinear", P(tuple(PASSTHROUGH), name="op"), Const("s"), Const("z")),
                          _rewrite_passthrough, allow_shared=True))
    return quantized, floating


QUANTIZED_RULES, FLOAT_OUTPUT_RULES = _rules()


def _remove_dead_dq(graph: Graph) -> int:
    dead = [n for n in graph if n.op_type in ("DequantizeLinear", "QuantizeLinear")
            and not any(o.num_uses or o.is_graph_output for o in n.outputs)]
    n = 0
    while dead:
        n += remove_dead(graph, dead)
        dead = [m for m in graph if m.op_type in ("DequantizeLinear", "QuantizeLinear")
                and not any(o.num_uses or o.is_graph_output for o in m.outputs)]
    for v in [v for v in graph.initializers.values() if not v.num_uses and not v.is_graph_output]:
        graph.remove_initializer(v)
    return n


@register_pass("lower_qdq_int8", opt_level=3, kind="lowering", order=500)
def lower_qdq_int8(graph: Graph, ctx) -> PassResult:
    """Q(Act?(Conv(DQ(x), DQ(w), DQ(b)))) => QConv[act](x, w, b) (and Gemm, MatMul, Add, int8 data movement)."""
    m1, s1 = apply_rules(graph, QUANTIZED_RULES)
    m2, s2 = apply_rules(graph, FLOAT_OUTPUT_RULES)
    s1.merge(s2)
    if m1 or m2:
        _remove_dead_dq(graph)
    return PassResult.from_rules(m1 or m2, s1)
