"""Transpose(LayerNormalization(Transpose(x, NCHW->NHWC), axis=-1), NHWC->NCHW) => ChannelLayerNormalization(x)

A lowering pass: timm's LayerNorm2d (ConvNeXt's blocks and stems) normalizes each position of an
NCHW tensor over its channels by permuting to channels-last, running LayerNormalization over the
last axis and permuting back. Both Transposes copy the whole tensor (34 of them took 7% of
ConvNeXt's time on the CPU backend); ``ai.graphopt::ChannelLayerNormalization`` reads x where it
lies, and the CPU backend's kernel normalizes 16 positions at a time with the channels strided.

A graph pass would not do this: other runtimes and backends run the ONNX ops (onnxruntime folds
these Transposes into its own layout), only the CPU backend asks for it.

Refused: a Transpose or the LayerNormalization with other readers (the channels-last tensor is
needed anyway), Mean/InvStdDev outputs read, a LayerNormalization over more than the last axis,
Scale or B not constants of one value per channel.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (1, 8, 4, 4))
>>> t = b.op("Transpose", x, perm=[0, 2, 3, 1])
>>> ln = b.op("LayerNormalization", t, np.ones(8, np.float32), np.zeros(8, np.float32), axis=-1)
>>> _ = b.output(b.op("Transpose", ln, perm=[0, 3, 1, 2]), "y")
>>> _ = run_passes(b.graph, ["lower_channel_layernorm"], level=2)
>>> [n.op_type for n in b.graph]
['ChannelLayerNormalization']
"""
from __future__ import annotations

from collections import Counter

from graphopt.ir import Graph, Node
from graphopt.ops.fused import FUSED_DOMAIN, channels_first_perm, channels_last_perm
from graphopt.passmanager import PassContext, PassResult, register_pass


def _why_not(ln: Node) -> str | None:
    """Why ``ln`` is not the middle of a LayerNorm2d, or None."""
    t1 = ln.input(0).producer
    x = t1.input(0) if t1 is not None and t1.op_type == "Transpose" and not t1.domain else None
    rank = len(x.shape) if x is not None and x.shape is not None else None
    if rank is None or rank < 3 or tuple(t1.attrs.get("perm", ())) != channels_last_perm(rank):
        return "its input is not a channels-first tensor transposed to channels-last"
    if ln.input(0).num_uses != 1 or ln.input(0).is_graph_output:
        return "the channels-last tensor has other readers"
    if ln.attrs.get("axis", -1) not in (-1, rank - 1):
        return f"axis {ln.attrs.get('axis')} is not the last"
    if any(v.num_uses or v.is_graph_output for v in ln.outputs[1:]):
        return "Mean or InvStdDev is read"
    y = ln.outputs[0]
    t2 = y.users[0] if y.num_uses == 1 and not y.is_graph_output else None
    if t2 is None or t2.op_type != "Transpose" or t2.domain or tuple(t2.attrs.get("perm", ())) != channels_first_perm(rank):
        return "its output is not transposed back to channels-first (alone)"
    c = x.shape[1]
    for i in (1, 2):
        p = ln.input(i)
        if p is None:
            continue
        if p.const is None or p.const.size != (c if isinstance(c, int) else -1) or p.const.ndim != 1:
            return f"input {i} is not a constant of one value per channel"
    return None


@register_pass("lower_channel_layernorm", opt_level=2, kind="lowering")
def lower_channel_layernorm(graph: Graph, ctx: PassContext) -> PassResult:
    lowered = 0
    refused: Counter = Counter()
    for ln in [n for n in graph if n.op_type == "LayerNormalization" and not n.domain]:
        why = _why_not(ln)
        if why:
            if ln.input(0).producer is not None and ln.input(0).producer.op_type == "Transpose":
                refused[("layernorm2d_to_channel_layernorm", f"LayerNormalization {ln.name!r}: {why}")] += 1
            continue
        t1, t2 = ln.input(0).producer, ln.outputs[0].users[0]
        inputs = [t1.input(0), ln.input(1)] + ([ln.input(2)] if len(ln.inputs) > 2 and ln.input(2) is not None else [])
        attrs = {k: ln.attrs[k] for k in ("epsilon", "stash_type") if k in ln.attrs}
        new = graph.make_node("ChannelLayerNormalization", inputs, attrs, domain=FUSED_DOMAIN, name=ln.name,
                              output_types=[t2.output.type], before=t2)
        t2.output.replace_all_uses_with(new.output)
        for n in (t2, ln, t1):
            graph.remove(n, force=n is ln)
        lowered += 1
    return PassResult(lowered > 0, {"lowered": lowered}, refused)
