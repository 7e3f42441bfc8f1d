"""Transformer blocks: Attention (opset 23-25), FlexAttention (ai.onnx.preview),
RotaryEmbedding, LinearAttention, CausalConvWithState.

Attention builds one additive bias from the mask, the causal frontier, the
sliding window and the padding lengths (``-inf`` where a key is hidden), then
runs ``softmax(Q K^T * scale + bias) V`` as two batched matmuls; a query row
that sees no key gives zeros, not NaN. Half-precision inputs are computed in
float32 and cast back.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .nn import compute_dtype
from .registry import in_type, register_op, same_as_input


def _heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hd = x.shape
    if hd % n_heads:
        raise ShapeError(f"hidden size {hd} is not divisible by {n_heads} heads")
    return x.reshape(b, s, n_heads, hd // n_heads).transpose(0, 2, 1, 3)


def _softmax_rows(x: np.ndarray, dead: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis; rows marked ``dead`` (every key hidden) become zeros."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(x - m)
    s = e.sum(axis=-1, keepdims=True)
    p = e / np.where(s == 0, 1, s)
    if dead is not None:
        p = np.where(dead, 0, p)
    return p


def _attention_infer(node: Node, attrs: dict):
    q, k, v = in_type(node, 0), in_type(node, 1), in_type(node, 2)
    if q is None:
        return [None] * len(node.outputs)
    out = [TensorType(q.dtype, None)]
    if q.shape is not None and v is not None and v.shape is not None:
        if len(q.shape) == 4:
            out = [TensorType(q.dtype, (q.shape[0], q.shape[1], q.shape[2], v.shape[3]))]
        elif len(q.shape) == 3 and attrs.get("kv_num_heads") and attrs.get("q_num_heads") \
                and isinstance(v.shape[2], int):
            dv = v.shape[2] // attrs["kv_num_heads"]
            out = [TensorType(q.dtype, (q.shape[0], q.shape[1], dv * attrs["q_num_heads"]))]
    for i in (1, 2, 3):
        out.append(None if k is None else TensorType(k.dtype, None) if i < 3 else TensorType(q.dtype, None))
    return out[:len(node.outputs)]


@register_op("Attention", inputs=["Q", "K", "V", "?attn_mask", "?past_key", "?past_value", "?nonpad_kv_seqlen"],
             outputs=["Y", "?present_key", "?present_value", "?qk_matmul_output"],
             attrs={"is_causal": 0, "kv_num_heads": None, "q_num_heads": None, "qk_matmul_output_mode": 0,
                    "scale": None, "softcap": 0.0, "softmax_precision": None, "left_window_size": -1,
                    "right_window_size": -1},
             infer=_attention_infer)
def attention(inputs, attrs, ctx):
    """Scaled dot-product attention with MHA/GQA/MQA heads, an in-op KV cache (past/present),
    a boolean or additive mask, causal and sliding-window masking, padding lengths and softcap.

    ``qk_matmul_output`` is the scaled (and soft-capped) scores (mode 0/1), the scores plus
    the bias (mode 2) or the softmax (mode 3)."""
    q, k, v = inputs[:3]
    opt = [inputs[i] if len(inputs) > i else None for i in range(3, 7)]
    mask, past_k, past_v, nonpad = opt
    if (past_k is None) != (past_v is None):
        raise ShapeError("Attention: past_key and past_value go together")
    out_dtype = q.dtype
    three_d = q.ndim == 3
    if three_d:
        hq, hkv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        if not hq or not hkv:
            raise ShapeError("Attention with 3-D inputs needs q_num_heads and kv_num_heads")
        q, k, v = _heads(q, hq), _heads(k, hkv), _heads(v, hkv)
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    wd = compute_dtype(q.dtype)
    qf, kf, vf = (a.astype(wd, copy=False) for a in (q, k, v))
    b, hq, sq, dq = qf.shape
    hk, skv = kf.shape[1], kf.shape[2]
    if hq != hk:
        if hq % hk:
            raise ShapeError(f"Attention: {hq} query heads for {hk} key/value heads")
        kf, vf = np.repeat(kf, hq // hk, axis=1), np.repeat(vf, hq // hk, axis=1)

    # the additive bias, broadcast to (B|1, H|1, Sq, Skv)
    bias = np.zeros((1, 1, sq, skv), wd)
    if mask is not None:
        pad = skv - mask.shape[-1]
        if mask.dtype == np.bool_:
            m = np.where(mask, 0, -np.inf).astype(wd)
        else:
            m = mask.astype(wd)
        if pad > 0:
            m = np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, pad)], constant_values=-np.inf)
        bias = bias + m.reshape((1,) * (4 - m.ndim) + m.shape)
    if past_k is not None:
        offset = np.array([past_k.shape[2]])
    elif nonpad is not None:
        offset = np.asarray(nonpad).astype(np.int64).reshape(-1) - sq
    else:
        offset = np.array([0])
    pos = (np.arange(sq)[None, :, None] + offset[:, None, None]) - np.arange(skv)[None, None, :]  # (B|1,Sq,Skv)
    allowed = np.ones(pos.shape, bool)
    if attrs["is_causal"]:
        allowed &= pos >= 0
    if attrs["left_window_size"] >= 0:
        allowed &= pos <= attrs["left_window_size"]
    if attrs["right_window_size"] >= 0:
        allowed &= -pos <= attrs["right_window_size"]
    if nonpad is not None:
        allowed = allowed & (np.arange(skv)[None, None, :] < np.asarray(nonpad).reshape(-1, 1, 1))
    if not allowed.all():
        bias = bias + np.where(allowed, 0, -np.inf).astype(wd)[:, None]
    scale = attrs.get("scale")
    scale = 1.0 / np.sqrt(dq) if scale is None else float(scale)
    s = np.sqrt(wd.type(scale))
    scores = np.matmul(qf * s, np.swapaxes(kf * s, -1, -2))
    if attrs["softcap"] and attrs["softcap"] > 0:
        cap = wd.type(attrs["softcap"])
        scores = np.tanh(scores / cap) * cap
    with_bias = scores + bias
    sm_dt = attrs.get("softmax_precision")
    sm = with_bias if sm_dt is None else with_bias.astype(compute_dtype(dtypes.to_numpy(dtypes.from_onnx(sm_dt))))
    dead = np.isneginf(bias.max(axis=-1, keepdims=True))
    probs = _softmax_rows(sm, dead if dead.any() else None).astype(wd, copy=False)
    y = np.matmul(probs, vf)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
    mode = attrs["qk_matmul_output_mode"]
    qk = {0: scores, 1: scores, 2: with_bias, 3: probs}.get(mode)
    if qk is None:
        raise UnsupportedOpError(f"Attention qk_matmul_output_mode={mode}")
    return [y.astype(out_dtype), present_k, present_v, qk.astype(out_dtype)]


@register_op("FlexAttention", domain="ai.onnx.preview", inputs=["Q", "K", "V"],
             attrs={"scale": None, "score_mod": None, "prob_mod": None, "softmax_precision": None},
             infer=lambda node, attrs: [TensorType(in_type(node, 0).dtype, None) if in_type(node, 0) else None])
def flex_attention(inputs, attrs, ctx):
    """``softmax(score_mod(Q K^T * scale))``, then ``prob_mod``, times V; the modifiers are subgraphs
    run on the (B, H, Sq, Skv) scores and probabilities in the softmax precision."""
    q, k, v = inputs
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ShapeError("FlexAttention needs rank-4 Q, K and V")
    sm_dt = attrs.get("softmax_precision")
    wd = compute_dtype(q.dtype) if sm_dt is None else np.dtype(dtypes.to_numpy(dtypes.from_onnx(sm_dt)))
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        if hq % hk:
            raise ShapeError(f"FlexAttention: {hq} query heads for {hk} key/value heads")
        k, v = np.repeat(k, hq // hk, axis=1), np.repeat(v, hq // hk, axis=1)
    scale = attrs.get("scale")
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else float(scale)
    qc, kc = (a.astype(compute_dtype(q.dtype), copy=False) for a in (q, k))
    s = np.sqrt(np.float32(scale)).astype(qc.dtype)
    scores = np.matmul(qc * s, np.swapaxes(kc * s, -1, -2)).astype(wd)

    def run_mod(name, x):
        g = attrs.get(name)
        if g is None:
            return x
        if ctx.run_subgraph is None:
            raise UnsupportedOpError("FlexAttention modifiers need a subgraph runner")
        (out,) = ctx.run_subgraph(g, [x], getattr(ctx, "outer_env", None))
        return np.asarray(out, dtype=wd)

    scores = run_mod("score_mod", scores)
    probs = run_mod("prob_mod", _softmax_rows(scores, None))
    return [np.matmul(probs, v.astype(wd)).astype(v.dtype)]


def _rotary_infer(node: Node, attrs: dict):
    return same_as_input(0)(node, attrs)


@register_op("RotaryEmbedding", inputs=["X", "cos_cache", "sin_cache", "?position_ids"],
             attrs={"interleaved": 0, "num_heads": 0, "rotary_embedding_dim": 0}, infer=_rotary_infer)
def rotary_embedding(inputs, attrs, ctx):
    """Rotate pairs of the first ``rotary_embedding_dim`` features of each head by the cached angles
    (pairs are halves, or neighbours when ``interleaved``); X is (B, H, S, D) or (B, S, H*D)."""
    x, cos, sin = inputs[:3]
    pos = inputs[3] if len(inputs) > 3 else None
    shape = x.shape
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)                      # (B, S, H, D)
    elif x.ndim == 3:
        nh = attrs["num_heads"]
        if not nh:
            raise ShapeError("RotaryEmbedding of a 3-D input needs num_heads")
        xs = x.reshape(shape[0], shape[1], nh, shape[2] // nh)
    else:
        raise ShapeError(f"RotaryEmbedding input of rank {x.ndim}")
    d = xs.shape[-1]
    rd = attrs["rotary_embedding_dim"] or d
    if pos is not None:
        cos, sin = cos[pos], sin[pos]                     # (B, S, rd/2)
    if cos.shape[-1] != rd // 2:
        raise ShapeError(f"RotaryEmbedding: cos_cache last dim {cos.shape[-1]} for rotary dim {rd}")
    cos, sin = cos[..., None, :], sin[..., None, :]      # broadcast over heads
    rot = xs[..., :rd]
    if attrs["interleaved"]:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :rd // 2], rot[..., rd // 2:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if attrs["interleaved"]:
        rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rot, xs[..., rd:]], axis=-1).astype(x.dtype, copy=False)
    out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(shape)
    return [np.ascontiguousarray(out)]


def _linear_attention_infer(node: Node, attrs: dict):
    q = in_type(node, 0)
    if q is None:
        return [None] * len(node.outputs)
    return [TensorType(q.dtype, None), None][:len(node.outputs)]


@register_op("LinearAttention", inputs=["query", "key", "value", "?past_state", "?decay", "?beta"],
             outputs=["output", "?present_state"],
             attrs={"chunk_size": 64, "kv_num_heads": None, "q_num_heads": None, "scale": 0.0,
                    "update_rule": "gated_delta"},
             infer=_linear_attention_infer)
def linear_attention(inputs, attrs, ctx):
    """Recurrent linear attention over the time steps: a (d_k, d_v) state per KV head updated by
    the ``linear``, ``gated``, ``delta`` or ``gated_delta`` rule, read by the queries."""
    q, k, v = inputs[:3]
    past, decay, beta = (inputs[i] if len(inputs) > i else None for i in (3, 4, 5))
    rule = attrs["update_rule"]
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise UnsupportedOpError(f"LinearAttention update_rule {rule!r}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ShapeError(f"LinearAttention {rule!r}: decay is {'needed' if gated else 'not allowed'}, "
                         f"beta is {'needed' if delta else 'not allowed'}")
    hq, hkv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    if not hq or not hkv or hq % hkv:
        raise ShapeError(f"LinearAttention: q_num_heads={hq}, kv_num_heads={hkv}")
    b, t, _ = q.shape
    f32 = np.float32
    q4, k4, v4 = (_heads(a, h).astype(f32) for a, h in ((q, hq), (k, hkv), (v, hkv)))
    dk, dv = q4.shape[-1], v4.shape[-1]
    if decay is not None:
        g4 = (decay.reshape(b, t, hkv, 1).transpose(0, 2, 1, 3) if decay.shape[-1] == hkv
              else _heads(decay, hkv)).astype(f32)
    if beta is not None:
        b4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(f32)
    state = np.zeros((b, hkv, dk, dv), f32) if past is None else past.astype(f32)
    scale = attrs["scale"] or 1.0 / np.sqrt(dk)
    group = hq // hkv
    out = np.zeros((b, hq, t, dv), f32)
    for i in range(t):
        kt, vt = k4[:, :, i], v4[:, :, i]
        if gated:
            state = state * np.exp(g4[:, :, i])[..., None]
        if delta:
            vt = b4[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", state, kt))
        state = state + kt[..., :, None] * vt[..., None, :]
        read = state if group == 1 else np.repeat(state, group, axis=1)
        out[:, :, i] = scale * np.einsum("bhd,bhdm->bhm", q4[:, :, i], read)
    y = out.transpose(0, 2, 1, 3).reshape(b, t, hq * dv).astype(q.dtype)
    return [y, state.astype(q.dtype if past is None else past.dtype)]


@register_op("CausalConvWithState", inputs=["input", "weight", "?bias", "?past_state"],
             outputs=["output", "?present_state"], attrs={"activation": "none"},
             infer=lambda node, attrs: [in_type(node, 0), None][:len(node.outputs)])
def causal_conv_with_state(inputs, attrs, ctx):
    """Depthwise causal 1-D convolution over (B, C, L) with the last k-1 steps carried as state,
    optionally followed by SiLU."""
    x, w = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    past = inputs[3] if len(inputs) > 3 else None
    act = attrs["activation"]
    if act not in ("none", "silu", "swish"):
        raise UnsupportedOpError(f"CausalConvWithState activation {act!r}")
    b, c, length = x.shape
    k = w.shape[2]
    pad = np.zeros((b, c, k - 1), x.dtype) if past is None else past.astype(x.dtype, copy=False)
    xp = np.concatenate([pad, x], axis=2)
    wd = compute_dtype(x.dtype)
    taps = np.lib.stride_tricks.sliding_window_view(xp.astype(wd, copy=False), k, axis=2)  # (B, C, L, k)
    y = np.einsum("bclk,ck->bcl", taps, w.reshape(c, k).astype(wd))
    if bias is not None:
        y = y + bias.astype(wd).reshape(1, c, 1)
    y = y.astype(x.dtype)
    if act != "none":
        yf = y.astype(np.float32)
        y = (yf / (1 + np.exp(-yf))).astype(x.dtype)
    return [y, np.ascontiguousarray(xp[:, :, xp.shape[2] - (k - 1):])]
