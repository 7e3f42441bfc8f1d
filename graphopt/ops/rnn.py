"""Recurrent layers: RNN, GRU, LSTM (forward, reverse, bidirectional; layout 0 and 1).

The input projections of every time step are one matmul up front; the loop
over time does only the recurrent ``H @ R^T`` and the gates. Batch entries
shorter than the sequence (``sequence_lens``) stop updating: their outputs past
the end are zeros and their final state is the last valid one; the reverse
direction starts at each entry's own last step.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .elementwise import _sigmoid
from .registry import in_type, register_op

# name -> (function of x, alpha, beta; default alpha; default beta)
_ACTIVATIONS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: _sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _activations(op: str, attrs: dict, n_dir: int) -> list[list]:
    """Per direction, the op's activation functions with their alpha/beta bound."""
    per = len(_DEFAULT_ACTS[op])
    names = attrs.get("activations") or _DEFAULT_ACTS[op] * n_dir
    if len(names) == per and n_dir == 2:
        names = list(names) * 2
    if len(names) != per * n_dir:
        raise ShapeError(f"{op}: {len(names)} activations for {n_dir} direction(s)")
    alphas = list(attrs.get("activation_alpha") or [])
    betas = list(attrs.get("activation_beta") or [])
    fns = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise UnsupportedOpError(f"{op} activation {name!r}")
        fn, da, db = _ACTIVATIONS[key]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        fns.append(lambda x, _f=fn, _a=a, _b=b: _f(x, _a, _b))
    return [fns[i * per:(i + 1) * per] for i in range(n_dir)]


def _rnn_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None] * len(node.outputs)
    n_dir = 2 if attrs["direction"] == "bidirectional" else 1
    h = attrs.get("hidden_size")
    if x.shape is None or len(x.shape) != 3:
        return [TensorType(x.dtype, None)] * len(node.outputs)
    if attrs["layout"]:
        b, s = x.shape[0], x.shape[1]
        y, yh = (b, s, n_dir, h), (b, n_dir, h)
    else:
        s, b = x.shape[0], x.shape[1]
        y, yh = (s, n_dir, b, h), (n_dir, b, h)
    return [TensorType(x.dtype, y), TensorType(x.dtype, yh), TensorType(x.dtype, yh)][:len(node.outputs)]


def _cell(op, acts, gx, h, c, r, rb, p, attrs, hidden):
    """One time step for one direction: (new h, new c). ``gx`` already holds X W^T + Wb."""
    clip = attrs.get("clip")

    def act(i, v):
        if clip is not None:
            v = np.clip(v, -clip, clip)
        return acts[i](v)

    if op == "RNN":
        return act(0, gx + h @ r.T + rb), None
    if op == "GRU":
        rz = gx[:, :2 * hidden] + h @ r[:2 * hidden].T + rb[:2 * hidden]
        z, rr = act(0, rz[:, :hidden]), act(0, rz[:, hidden:])
        rh, rbh = r[2 * hidden:], rb[2 * hidden:]
        if attrs["linear_before_reset"]:
            n = act(1, gx[:, 2 * hidden:] + rr * (h @ rh.T + rbh))
        else:
            n = act(1, gx[:, 2 * hidden:] + (rr * h) @ rh.T + rbh)
        return (1 - z) * n + z * h, None
    g = gx + h @ r.T + rb                      # gates in ONNX order i, o, f, c
    gi, go, gf, gc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
    pi, po, pf = (p[k * hidden:(k + 1) * hidden] for k in range(3))
    i = act(0, gi + pi * c)
    f = 1 - i if attrs["input_forget"] else act(0, gf + pf * c)
    c_new = f * c + i * act(1, gc)
    o = act(0, go + po * c_new)
    return o * act(2, c_new), c_new


def _recurrent(op: str, inputs: list, attrs: dict):
    x, w, r = inputs[:3]
    opt = [inputs[i] if len(inputs) > i else None for i in range(3, 8)]
    b, lens, h0, c0, p = opt
    if attrs["layout"]:
        x = x.transpose(1, 0, 2)                # -> (seq, batch, input)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    out_dtype = x.dtype
    wd = np.float64 if x.dtype == np.float64 else np.float32
    x, w, r = x.astype(wd), w.astype(wd), r.astype(wd)
    seq, batch, _ = x.shape
    n_dir = w.shape[0]
    hidden = attrs.get("hidden_size") or r.shape[-1]
    gates = _GATES[op] * hidden
    if attrs["direction"] not in ("forward", "reverse", "bidirectional"):
        raise ShapeError(f"{op} direction {attrs['direction']!r}")
    if n_dir != (2 if attrs["direction"] == "bidirectional" else 1):
        raise ShapeError(f"{op}: weights for {n_dir} directions, direction is {attrs['direction']!r}")
    b = np.zeros((n_dir, 2 * gates), wd) if b is None else b.astype(wd)
    lens = np.full(batch, seq, np.int64) if lens is None else np.asarray(lens).astype(np.int64).reshape(-1)
    h0 = np.zeros((n_dir, batch, hidden), wd) if h0 is None else h0.astype(wd)
    c0 = np.zeros((n_dir, batch, hidden), wd) if c0 is None else c0.astype(wd)
    p = np.zeros((n_dir, 3 * hidden), wd) if p is None else p.astype(wd)
    acts = _activations(op, attrs, n_dir)
    y = np.zeros((seq, n_dir, batch, hidden), wd)
    yh = np.zeros((n_dir, batch, hidden), wd)
    yc = np.zeros((n_dir, batch, hidden), wd)
    for d in range(n_dir):
        reverse = attrs["direction"] == "reverse" or d == 1
        gx_all = x @ w[d].T + b[d, :gates]                      # (seq, batch, gates)
        h, c = h0[d], c0[d]
        for step in range(seq):
            # reverse: each batch entry walks its own valid steps backwards
            t = np.where(step < lens, lens - 1 - step, step) if reverse else np.full(batch, step)
            live = (step < lens)[:, None]
            gx = gx_all[t, np.arange(batch)]
            h_new, c_new = _cell(op, acts[d], gx, h, c, r[d], b[d, gates:], p[d], attrs, hidden)
            h = np.where(live, h_new, h)
            if c_new is not None:
                c = np.where(live, c_new, c)
            y[t, d, np.arange(batch)] = np.where(live, h, 0)
        yh[d], yc[d] = h, c
    if attrs["layout"]:
        y, yh, yc = y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
    return [np.ascontiguousarray(a).astype(out_dtype) for a in (y, yh, yc)]


_COMMON = {"activation_alpha": None, "activation_beta": None, "activations": None, "clip": None,
           "direction": "forward", "hidden_size": None, "layout": 0}


@register_op("RNN", inputs=["X", "W", "R", "?B", "?sequence_lens", "?initial_h"], outputs=["?Y", "?Y_h"],
             attrs=dict(_COMMON), infer=_rnn_infer)
def rnn(inputs, attrs, ctx):
    """``H = f(X W^T + H R^T + Wb + Rb)`` per step."""
    return _recurrent("RNN", inputs, attrs)[:2]


@register_op("GRU", inputs=["X", "W", "R", "?B", "?sequence_lens", "?initial_h"], outputs=["?Y", "?Y_h"],
             attrs={**_COMMON, "linear_before_reset": 0}, infer=_rnn_infer)
def gru(inputs, attrs, ctx):
    """Update/reset gates z, r and candidate n; ``H = (1 - z) n + z H``."""
    return _recurrent("GRU", inputs, attrs)[:2]


@register_op("LSTM", inputs=["X", "W", "R", "?B", "?sequence_lens", "?initial_h", "?initial_c", "?P"],
             outputs=["?Y", "?Y_h", "?Y_c"], attrs={**_COMMON, "input_forget": 0}, infer=_rnn_infer)
def lstm(inputs, attrs, ctx):
    """Gates i, o, f (with optional peepholes P) and cell candidate c; ``H = o h(C)``."""
    return _recurrent("LSTM", inputs, attrs)
