"""Per-layer error of a quantized model against its float original.

For every quantized layer the table gives two views of the error at the
layer's output (the dequantized value its consumers read):

* **cumulative**: the fully quantized model vs the float model, so the error
  of every layer upstream is included;
* **local**: only this layer quantized (its inputs, weight and output), fed the
  float model's own activations: the layer's own sensitivity, the number the
  accuracy-budget fallback ranks layers by.

Both as SQNR in dB (``10 log10(sum x^2 / sum (x - x_q)^2)``, higher is better;
int8 is about 40 dB on well-behaved tensors) and relative L2 error
(``||x - x_q|| / ||x||``).

>>> rows = layer_errors(float_graph, qdq_graph, plan, batches)   # doctest: +SKIP
>>> print(format_table(rows))                                    # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np

from ..ir import Graph, Node, Value


@dataclass
class LayerError:
    layer: str
    op: str
    output: str
    sqnr_db: float
    rel_err: float
    local_sqnr_db: float
    local_rel_err: float

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


class _ErrAcc:
    """Streaming sums for SQNR: signal energy and error energy."""

    __slots__ = ("sig", "err")

    def __init__(self):
        self.sig = 0.0
        self.err = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r = np.asarray(ref, np.float64)
        self.sig += float(np.sum(r * r))
        self.err += float(np.sum((r - np.asarray(got, np.float64)) ** 2))

    @property
    def sqnr_db(self) -> float:
        if self.err == 0:
            return math.inf
        if self.sig == 0:
            return -math.inf
        return 10.0 * math.log10(self.sig / self.err)

    @property
    def rel_err(self) -> float:
        if self.sig == 0:
            return 0.0 if self.err == 0 else math.inf
        return math.sqrt(self.err / self.sig)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref``, in dB.

    >>> round(sqnr_db(np.ones(4), np.ones(4) * 1.01), 1)
    40.0
    """
    acc = _ErrAcc()
    acc.add(ref, got)
    return acc.sqnr_db


def _run_with(graph: Graph, names: list[str]):
    """An executable of a copy of ``graph`` that also outputs the values ``names``."""
    from ..plugins.cpu.backend import CpuExecutable

    g = graph.clone()
    by_name = {v.name: v for v in g.values()}
    for n in names:
        v = by_name[n]
        if not v.is_graph_output:
            g.add_output(v)
    idx = {v.name: i for i, v in enumerate(g.outputs)}
    return CpuExecutable(g), idx


def _dq_reader(v: Value) -> Value:
    """The dequantized twin of ``v`` in a QDQ graph (``v`` itself when it has none)."""
    for u in v.users:
        if u.op_type == "QuantizeLinear":
            for w in u.output.users:
                if w.op_type == "DequantizeLinear":
                    return w.output
    return v


def _layer_graph(qgraph: Graph, layer_node: Node, epilogue: list[Node], acts: list[Value], output: Value) -> Graph:
    """A graph of one quantized layer: Q/DQ of its float inputs, weight/bias DQ,
    the layer and its epilogue, then its output Q/DQ."""
    g = Graph(f"layer_{layer_node.name}")
    g.opset_imports = dict(qgraph.root.opset_imports)
    vmap: dict[Value, Value] = {}
    for v in acts:
        vmap[v] = g.add_input(v.name, v.type)

    def copy(n: Node) -> None:
        ins = []
        for v in n.inputs:
            if v is None:
                ins.append(None)
            elif v in vmap:
                ins.append(vmap[v])
            elif v.const is not None:
                vmap[v] = g.add_initializer(v.name, v.const)
                ins.append(vmap[v])
            else:
                copy(v.producer)
                ins.append(vmap[v])
        m = g.make_node(n.op_type, ins, dict(n.attrs), num_outputs=len(n.outputs), domain=n.domain,
                        output_names=[o.name for o in n.outputs], output_types=[o.type for o in n.outputs])
        for o, no in zip(n.outputs, m.outputs):
            vmap[o] = no

    # producers are copied on demand: an act's Q/DQ chain ends at the act (an input here)
    for n in [layer_node, *epilogue]:
        copy(n)
    out = _dq_reader(output)
    if out is not output:
        copy(out.producer.input(0).producer)
        copy(out.producer)
    g.add_output(vmap[out])
    return g


def layer_errors(float_graph: Graph, qdq_graph: Graph, layers: list, data: Iterable[Mapping[str, np.ndarray]]
                 ) -> list[LayerError]:
    """The per-layer table for ``layers`` (``qdq.Layer`` objects of ``qdq_graph``'s plan)."""
    layers = [lay for lay in layers if lay.output is not None]
    if not layers:
        return []
    names_f = sorted({lay.output.name for lay in layers}
                     | {v.name for lay in layers for v in lay.acts})
    exe_f, idx_f = _run_with(float_graph, names_f)
    q_names = sorted({_dq_reader(lay.output).name for lay in layers})
    exe_q, idx_q = _run_with(qdq_graph, q_names)
    locals_ = []
    for lay in layers:
        acts = [v for v in (_pre_q(a) for a in lay.node.inputs if a is not None) if v is not None]
        from ..plugins.cpu.backend import CpuExecutable

        locals_.append((CpuExecutable(_layer_graph(qdq_graph, lay.node, lay.epilogue, acts, lay.output)),
                        [a.name for a in acts]))
    cum = [_ErrAcc() for _ in layers]
    loc = [_ErrAcc() for _ in layers]
    for feeds in data:
        of = exe_f.run(feeds)
        oq = exe_q.run(feeds)
        for k, lay in enumerate(layers):
            ref = of[idx_f[lay.output.name]]
            cum[k].add(ref, oq[idx_q[_dq_reader(lay.output).name]])
            exe_l, act_names = locals_[k]
            (y,) = exe_l.run({n: of[idx_f[n]] for n in act_names})
            loc[k].add(ref, y)
    return [LayerError(lay.name, lay.op_type, lay.output.name, c.sqnr_db, c.rel_err, lo.sqnr_db, lo.rel_err)
            for lay, c, lo in zip(layers, cum, loc)]


def _pre_q(v: Value) -> Value | None:
    """For a layer input that is ``DQ(Q(a))``, the float ``a``; None for constants and weight DQs."""
    if v.const is not None:
        return None
    p = v.producer
    if p is not None and p.op_type == "DequantizeLinear":
        q = p.input(0)
        if q.const is not None:
            return None  # a constant weight or bias
        if q.producer is not None and q.producer.op_type == "QuantizeLinear":
            return q.producer.input(0)
    return v


def format_table(rows: list[LayerError]) -> str:
    """The per-layer error table as text (columns laid out by the CLI's ``Table``)."""
    from ..commands.output import Table

    def f(x: float) -> str:
        return "inf" if x == math.inf else ("-inf" if x == -math.inf else f"{x:.1f}")

    t = Table("layer", "op", "SQNR dB", "rel err", "local SQNR", "local rel",
              right=("SQNR dB", "rel err", "local SQNR", "local rel"))
    for r in rows:
        t.add_row(r.layer, r.op, f(r.sqnr_db), f"{r.rel_err:.2e}", f(r.local_sqnr_db), f"{r.local_rel_err:.2e}")
    return str(t)


# ---------------------------------------------------------------------------
# model-level accuracy metric for the budget


def output_metric(float_outs: list[list[np.ndarray]], quant_outs: list[list[np.ndarray]], metric: str = "auto"
                  ) -> tuple[str, float]:
    """Compare model outputs over batches.

    ``top1``: fraction of samples whose argmax over the last axis of the first
    output differs from the float model's (classifier logits);
    ``relative_error``: ``||y_q - y|| / ||y||`` over every float output.
    ``auto`` picks ``top1`` when the first output is 2-D with more than one class.
    """
    first = float_outs[0][0] if float_outs and float_outs[0] else None
    if metric == "auto":
        metric = "top1" if first is not None and first.ndim == 2 and first.shape[1] > 1 else "relative_error"
    if metric == "top1":
        diff = total = 0
        for f, q in zip(float_outs, quant_outs):
            a, b = np.argmax(f[0], axis=-1), np.argmax(q[0], axis=-1)
            diff += int(np.sum(a != b))
            total += int(a.size)
        return metric, diff / max(total, 1)
    if metric == "relative_error":
        acc = _ErrAcc()
        for f, q in zip(float_outs, quant_outs):
            for a, b in zip(f, q):
                if np.issubdtype(np.asarray(a).dtype, np.floating):
                    acc.add(a, b)
        return metric, acc.rel_err
    from ..errors import GraphoptError

    raise GraphoptError(f"unknown accuracy metric {metric!r} (use auto, top1 or relative_error)")


def compare_with_onnxruntime(qdq_graph: Graph, int8_graph: Graph, data: Iterable[Mapping[str, np.ndarray]],
                             *, ort_optimizations: bool = False) -> dict:
    """Run the QDQ model in onnxruntime and the lowered ``int8_graph`` on graphopt's
    CPU reference; compare every int8 tensor (in quantization steps) and the outputs.

    The lowered graph keeps the names of the ``QuantizeLinear`` outputs it replaces, so
    each int8 tensor is compared by name. ``ort_optimizations=True`` lets onnxruntime
    fuse QDQ groups into its own int8 kernels (see docs/quantization.md on x86 without
    VNNI); False runs the QDQ ops as written.

    Two step counts come back. ``max_steps`` is end to end: a one-step difference
    where the two first disagree (a rounding tie, float vs exact integer
    accumulation) flows downstream, and a convolution summing many such inputs can
    move its own output by more than one step, so in deep residual networks it
    grows with depth. ``local_max_steps`` isolates each op: every int8 op of
    ``int8_graph`` is run again on onnxruntime's own int8 tensors as its inputs and
    compared with onnxruntime's output for it, which is the "within one
    quantization step" of each op (its float inputs, such as the LayerNorm output
    a QuantizeLinear reads, are onnxruntime's values too where the QDQ model has them).

    Returns ``{"int8_tensors", "max_steps", "local_max_steps", "output_max_abs",
    "argmax_agree", "samples"}``.
    """
    import onnxruntime as ort

    from ..onnx_io import to_onnx_model
    from ..plugins.cpu.backend import CpuExecutable

    have = {v.name for v in int8_graph.values()}
    names = [n.output.name for n in qdq_graph if n.op_type == "QuantizeLinear" and n.output.name in have]
    wanted = set(names)
    probe = qdq_graph.clone()
    mine = int8_graph.clone()
    producers = [n for n in mine if any(v.name in wanted for v in n.outputs)]
    # what those ops read, from onnxruntime where it has the value too (a float LayerNorm output
    # that a QuantizeLinear reads), from graphopt's run otherwise
    in_probe = {v.name: v for v in probe.values()}
    feeders = [v.name for n in producers for v in n.inputs
               if v is not None and v.const is None and v.name in in_probe and v.name not in wanted]
    for g, extra in ((probe, names + feeders), (mine, [v.name for n in mine for v in n.outputs])):
        by = {v.name: v for v in g.values()}
        for name in dict.fromkeys(extra):
            if not by[name].is_graph_output:
                g.add_output(by[name])
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if ort_optimizations
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(to_onnx_model(probe).SerializeToString(), so, providers=["CPUExecutionProvider"])
    n_out = len(qdq_graph.outputs)
    exe = CpuExecutable(mine)
    steps, local, out_diff, agree, samples = 0, 0, 0.0, 0, 0
    for feeds in data:
        theirs, ours = sess.run(None, dict(feeds)), exe.run(feeds)
        theirs_by = dict(zip((v.name for v in probe.outputs), theirs))
        ours_by = dict(zip((v.name for v in mine.outputs), ours))
        local = max(local, _local_steps(producers, theirs_by, ours_by, feeds))
        theirs = theirs[:n_out] + [theirs_by[n] for n in names]
        ours = ours[:n_out] + [ours_by[n] for n in names]
        for t, o in zip(theirs[:n_out], ours[:n_out]):
            if np.issubdtype(np.asarray(t).dtype, np.floating):
                out_diff = max(out_diff, float(np.max(np.abs(np.asarray(t, np.float64) - o))) if t.size else 0.0)
        t0, o0 = np.asarray(theirs[0]), np.asarray(ours[0])
        if t0.ndim >= 1 and t0.size:
            a = np.argmax(t0.reshape(-1, t0.shape[-1]), -1)
            b = np.argmax(o0.reshape(-1, o0.shape[-1]), -1)
            agree += int(np.sum(a == b))
            samples += int(a.size)
        for t, o in zip(theirs[n_out:], ours[n_out:]):
            if t.size:
                steps = max(steps, int(np.max(np.abs(t.astype(np.int64) - o.astype(np.int64)))))
    return {"int8_tensors": len(names), "max_steps": steps, "local_max_steps": local, "output_max_abs": out_diff,
            "argmax_agree": agree, "samples": samples}


def _local_steps(producers: list[Node], theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray],
                 feeds: Mapping[str, np.ndarray]) -> int:
    """The largest step difference of an int8 op run on onnxruntime's values of its inputs."""
    from ..ops.registry import KernelContext, node_opset, require_schema

    worst = 0
    for n in producers:
        args = []
        for v in n.inputs:
            if v is None:
                args.append(None)
            elif v.const is not None:
                args.append(v.const)
            else:
                args.append(theirs.get(v.name, ours.get(v.name, feeds.get(v.name))))
        schema = require_schema(n)
        outs = schema.kernel(args, schema.resolve_attrs(n.attrs), KernelContext(node=n, opset=node_opset(n)))
        for v, o in zip(n.outputs, outs):
            t = theirs.get(v.name)
            if t is not None and t.size:
                d = int(np.max(np.abs(t.astype(np.int64) - np.asarray(o).astype(np.int64))))
                worst = max(worst, d)
    return worst
