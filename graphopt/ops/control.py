"""Control flow: If, Loop, Scan (opset 9+ form).

Bodies are ``Graph`` attributes run through ``ctx.run_subgraph(graph, inputs,
outer_env)``; ``ctx.outer_env`` (set by the interpreter before a node with
subgraphs runs) holds the enclosing graphs' values that bodies read by name.
Inference is shallow: types come from the body's declared outputs and the
node's inputs, not from re-inferring the body.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError, UnsupportedOpError
from ..ir import Graph, Node, TensorType
from .registry import REQUIRED, in_type, normalize_axis, register_op


def _run(ctx, graph: Graph, inputs: list) -> list:
    if ctx.run_subgraph is None:
        raise UnsupportedOpError(f"{ctx.node.op_type if ctx.node else 'control flow'}: no subgraph runner "
                                 f"in this context")
    return ctx.run_subgraph(graph, inputs, getattr(ctx, "outer_env", None))


def _out_types(g: Graph | None) -> list:
    return [] if g is None else [v.type for v in g.outputs]


def _join(a: TensorType | None, b: TensorType | None) -> TensorType | None:
    """A type that fits both branches: dims they agree on, unknown elsewhere."""
    if a is None or b is None:
        return a or b
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return TensorType(a.dtype, None)
    return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))


def _if_infer(node: Node, attrs: dict):
    then_t, else_t = _out_types(attrs.get("then_branch")), _out_types(attrs.get("else_branch"))
    return [_join(then_t[i] if i < len(then_t) else None, else_t[i] if i < len(else_t) else None)
            for i in range(len(node.outputs))]


def _arity(node: Node, what: str, have: int, want: int) -> str | None:
    """``"Loop node 'l': body takes inputs: 0, the node needs 3"`` when the counts differ."""
    return None if have == want else f"{node.op_type} node {node.name!r}: {what} {have}, the node needs {want}"


def _if_arity(node: Node, attrs: dict) -> str | None:
    """Each branch makes exactly the node's outputs."""
    for b in ("then_branch", "else_branch"):
        g = attrs.get(b)
        if isinstance(g, Graph):
            why = _arity(node, f"{b} takes inputs:", len(g.inputs), 0) or \
                _arity(node, f"{b} makes outputs:", len(g.outputs), len(node.outputs))
            if why:
                return why
    return None


def _loop_arity(node: Node, attrs: dict) -> str | None:
    """body(iteration, cond, carried...) -> (cond, carried..., scan outputs...)."""
    body = attrs.get("body")
    if not isinstance(body, Graph):
        return None
    n_carried = len(node.inputs) - 2
    if n_carried < 0:
        return f"Loop node {node.name!r} has {len(node.inputs)} inputs: it needs M and cond (either may be empty)"
    return _arity(node, "body takes inputs:", len(body.inputs), 2 + n_carried) or \
        _arity(node, "body makes outputs:", len(body.outputs), 1 + len(node.outputs)) or \
        (f"Loop node {node.name!r}: {len(node.outputs)} outputs for {n_carried} loop-carried values"
         if len(node.outputs) < n_carried else None)


def _scan_arity(node: Node, attrs: dict) -> str | None:
    """body(state..., scan slices...) -> (state..., scan outputs...); opset 8 has sequence_lens first."""
    body = attrs.get("body")
    if not isinstance(body, Graph) or "num_scan_inputs" not in attrs:
        return None
    from .registry import node_opset

    n_in = len(node.inputs) - (1 if node.graph is not None and node_opset(node) < 9 else 0)
    n_state = n_in - int(attrs["num_scan_inputs"])
    if n_state < 0:
        return f"Scan node {node.name!r}: num_scan_inputs {attrs['num_scan_inputs']} is more than its {n_in} inputs"
    return _arity(node, "body takes inputs:", len(body.inputs), n_in) or \
        _arity(node, "body makes outputs:", len(body.outputs), len(node.outputs)) or \
        (f"Scan node {node.name!r}: {len(node.outputs)} outputs for {n_state} state values"
         if len(node.outputs) < n_state else None)


@register_op("If", inputs=["cond"], outputs=["*outputs"], attrs={"then_branch": REQUIRED, "else_branch": REQUIRED},
             infer=_if_infer, check=_if_arity)
def if_(inputs, attrs, ctx):
    cond = np.asarray(inputs[0])
    if cond.size != 1:
        raise ShapeError(f"If condition must hold one element, got shape {list(cond.shape)}")
    branch = attrs["then_branch"] if bool(cond.reshape(-1)[0]) else attrs["else_branch"]
    return list(_run(ctx, branch, []))


def _empty_scan(t: TensorType | None) -> np.ndarray:
    """A zero-iteration scan output: (0, *per-iteration shape) where the body's type says it."""
    dt = dtypes.to_numpy(t.dtype) if t is not None else np.float32
    inner = t.shape if t is not None and t.is_static else ()
    return np.zeros((0,) + tuple(inner), dtype=dt)


def _loop_infer(node: Node, attrs: dict):
    body = attrs.get("body")
    n_carried = max(len(node.inputs) - 2, 0)
    out = [in_type(node, 2 + i) for i in range(n_carried)]
    body_t = _out_types(body)
    for k in range(len(node.outputs) - n_carried):
        t = body_t[1 + n_carried + k] if 1 + n_carried + k < len(body_t) else None
        out.append(None if t is None else TensorType(t.dtype, None if t.shape is None else (None, *t.shape)))
    return out[: len(node.outputs)]


@register_op("Loop", inputs=["?M", "?cond", "*v_initial"], outputs=["*v_final_and_scan_outputs"],
             attrs={"body": REQUIRED}, infer=_loop_infer, check=_loop_arity)
def loop(inputs, attrs, ctx):
    """``for i in range(M) while cond``: body(i, cond, carried...) -> (cond, carried..., scan...).

    Scan outputs are stacked along a new first axis; an omitted M or cond does
    not bound the loop (both omitted would never end, and is refused).
    """
    body = attrs["body"]
    m = inputs[0] if inputs else None
    cond = inputs[1] if len(inputs) > 1 else None
    carried = list(inputs[2:])
    if m is None and cond is None:
        raise UnsupportedOpError("Loop without a trip count or a condition would never end")
    trips = None if m is None else int(np.asarray(m).reshape(-1)[0])
    going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    n_carried = len(carried)
    n_scan = len(body.outputs) - 1 - n_carried
    if n_scan < 0:
        raise ShapeError(f"Loop body has {len(body.outputs)} outputs for {n_carried} loop-carried values")
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while going and (trips is None or i < trips):
        outs = _run(ctx, body, [np.array(i, np.int64), np.array(going), *carried])
        # without a cond input the body's cond output is ignored (ONNX)
        going = bool(np.asarray(outs[0]).reshape(-1)[0]) if cond is not None else True
        carried = list(outs[1:1 + n_carried])
        for acc, v in zip(scans, outs[1 + n_carried:]):
            acc.append(v)
        i += 1
    body_t = _out_types(body)
    stacked = [np.stack(acc) if acc else _empty_scan(body_t[1 + n_carried + k]) for k, acc in enumerate(scans)]
    return carried + stacked


def _scan_axes(attrs, name, n):
    v = attrs.get(name)
    return [0] * n if v is None else [int(a) for a in v]


def _scan_infer(node: Node, attrs: dict):
    body = attrs.get("body")
    m = attrs.get("num_scan_inputs")
    if body is None or m is None:
        return [None] * len(node.outputs)
    n_state = len(node.inputs) - m
    out = [in_type(node, i) for i in range(n_state)]
    seq = None
    in_axes = _scan_axes(attrs, "scan_input_axes", m)
    t0 = in_type(node, n_state) if m else None
    if t0 is not None and t0.shape is not None:
        seq = t0.shape[normalize_axis(in_axes[0], len(t0.shape), node)]
    body_t = _out_types(body)
    k = len(node.outputs) - n_state
    out_axes = _scan_axes(attrs, "scan_output_axes", k)
    for j in range(k):
        t = body_t[n_state + j] if n_state + j < len(body_t) else None
        if t is None or t.shape is None:
            out.append(None if t is None else TensorType(t.dtype, None))
            continue
        dims = list(t.shape)
        dims.insert(normalize_axis(out_axes[j], len(dims) + 1, node), seq)
        out.append(TensorType(t.dtype, tuple(dims)))
    return out


@register_op("Scan", inputs=["*initial_state_and_scan_inputs"], outputs=["*final_state_and_scan_outputs"],
             attrs={"body": REQUIRED, "num_scan_inputs": REQUIRED, "scan_input_axes": None,
                    "scan_input_directions": None, "scan_output_axes": None, "scan_output_directions": None},
             infer=_scan_infer, check=_scan_arity)
def scan(inputs, attrs, ctx):
    """body(state..., slice...) -> (state..., out_slice...) over the scan inputs' scan axis.

    Directions reverse the order slices are read (inputs) or stacked (outputs).
    """
    if ctx.opset < 9:
        return _scan_opset8(inputs, attrs, ctx)
    body = attrs["body"]
    m = int(attrs["num_scan_inputs"])
    n_state = len(inputs) - m
    states, xs = list(inputs[:n_state]), inputs[n_state:]
    in_axes = [normalize_axis(a, x.ndim, ctx.node) for a, x in zip(_scan_axes(attrs, "scan_input_axes", m), xs)]
    in_dirs = _scan_axes(attrs, "scan_input_directions", m)
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) > 1:
        raise ShapeError(f"Scan inputs have different sequence lengths {sorted(lengths)}")
    seq = lengths.pop() if lengths else 0
    k = len(body.outputs) - n_state
    outs_acc: list[list] = [[] for _ in range(k)]
    for t in range(seq):
        slices = [np.take(x, seq - 1 - t if d else t, axis=a) for x, a, d in zip(xs, in_axes, in_dirs)]
        outs = _run(ctx, body, [*states, *slices])
        states = list(outs[:n_state])
        for acc, v in zip(outs_acc, outs[n_state:]):
            acc.append(np.asarray(v))
    out_axes = _scan_axes(attrs, "scan_output_axes", k)
    out_dirs = _scan_axes(attrs, "scan_output_directions", k)
    body_t = _out_types(body)
    results = []
    for j, acc in enumerate(outs_acc):
        if not acc:
            results.append(_empty_scan(body_t[n_state + j]))
            continue
        if out_dirs[j]:
            acc = acc[::-1]
        results.append(np.stack(acc, axis=normalize_axis(out_axes[j], acc[0].ndim + 1, ctx.node)))
    return states + results


def _scan_opset8(inputs, attrs, ctx):
    """Opset 8: an optional ``sequence_lens`` first, then states and scan inputs that all carry a
    batch axis 0. Each batch entry is an opset-9 scan over its own length; shorter scan outputs
    are zero-padded to the longest."""
    import copy

    lens, rest = inputs[0], list(inputs[1:])
    m = int(attrs["num_scan_inputs"])
    if not rest:
        return []
    batch = rest[0].shape[0]
    seq = rest[-1].shape[1] if m else 0
    lens = np.full(batch, seq, np.int64) if lens is None else np.asarray(lens).astype(np.int64).reshape(-1)
    sub = copy.copy(ctx)
    sub.opset = 9
    attrs9 = {**attrs, "scan_input_directions": attrs.get("directions"), "scan_input_axes": None,
              "scan_output_axes": None, "scan_output_directions": None}
    n_state = len(rest) - m
    per_batch = [scan([a[b] if i < n_state else a[b, :lens[b]] for i, a in enumerate(rest)], attrs9, sub)
                 for b in range(batch)]
    outs = []
    for j in range(len(per_batch[0])):
        parts = [r[j] for r in per_batch]
        if j >= n_state:
            longest = max(p.shape[0] for p in parts)
            parts = [np.concatenate([p, np.zeros((longest - p.shape[0],) + p.shape[1:], p.dtype)]) for p in parts]
        outs.append(np.stack(parts))
    return outs
