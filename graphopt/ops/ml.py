"""A few classical-ML ops of the ``ai.onnx.ml`` domain: Binarizer, ArrayFeatureExtractor,
LabelEncoder, TreeEnsemble (opset 5). (The older TreeEnsembleRegressor/Classifier,
SVMs and the other ``ai.onnx.ml`` models are not implemented: running them raises
UnsupportedOpError.)
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .registry import in_type, register_op, same_as_input

ML = "ai.onnx.ml"


@register_op("Binarizer", domain=ML, inputs=["X"], attrs={"threshold": 0.0}, infer=same_as_input(0))
def binarizer(inputs, attrs, ctx):
    """1 where ``x > threshold``, else 0 (in x's dtype)."""
    x = inputs[0]
    return [(x > attrs["threshold"]).astype(x.dtype)]


def _afe_infer(node: Node, attrs: dict):
    x, idx = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    if x.shape is None or idx is None or idx.shape is None or not idx.is_static:
        return [TensorType(x.dtype, None)]
    n = int(np.prod(idx.shape))
    return [TensorType(x.dtype, (1, n) if len(x.shape) == 1 else tuple(x.shape[:-1]) + (n,))]


@register_op("ArrayFeatureExtractor", domain=ML, inputs=["X", "Y"], infer=_afe_infer)
def array_feature_extractor(inputs, attrs, ctx):
    """The elements of the last axis that ``Y`` names (a 1-D X gives one row, as ORT does)."""
    x, idx = inputs
    idx = np.asarray(idx).astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[-1]):
        raise ShapeError(f"ArrayFeatureExtractor: indices out of range for a last axis of {x.shape[-1]}")
    y = x[..., idx]
    return [y.reshape(1, -1) if x.ndim == 1 else y]


_KEYS = ("keys_floats", "keys_int64s", "keys_strings", "keys_tensor")
_VALUES = {"values_floats": ("default_float", np.float32), "values_int64s": ("default_int64", np.int64),
           "values_strings": ("default_string", object), "values_tensor": ("default_tensor", None)}


def _label_values(attrs):
    for name, (default_name, dt) in _VALUES.items():
        vals = attrs.get(name)
        if vals is not None:
            default = attrs.get(default_name)
            if name == "values_tensor":
                dt = np.asarray(vals).dtype
                default = np.asarray(default).reshape(-1)[0] if default is not None else None
            return list(np.asarray(vals).reshape(-1)), default, np.dtype(dt)
    raise ShapeError("LabelEncoder has no values attribute")


def _label_infer(node: Node, attrs: dict):
    from .. import dtypes

    _, _, dt = _label_values(attrs)
    t = in_type(node, 0)
    return [TensorType(dtypes.from_numpy(dt), None if t is None else t.shape)]


@register_op("LabelEncoder", domain=ML, inputs=["X"],
             attrs={"default_float": -0.0, "default_int64": -1, "default_string": "_Unused", "default_tensor": None,
                    **dict.fromkeys(_KEYS), **dict.fromkeys(_VALUES)}, infer=_label_infer)
def label_encoder(inputs, attrs, ctx):
    """Map each element through the keys -> values table; unknown keys give the default."""
    x = inputs[0]
    keys = next((attrs[k] for k in _KEYS if attrs.get(k) is not None), None)
    if keys is None:
        raise ShapeError("LabelEncoder has no keys attribute")
    values, default, dt = _label_values(attrs)
    keys = list(np.asarray(keys).reshape(-1))
    if len(keys) != len(values):
        raise ShapeError(f"LabelEncoder: {len(keys)} keys for {len(values)} values")
    table = dict(zip((k.item() if hasattr(k, "item") else k for k in keys), values))
    out = [table.get(v.item() if hasattr(v, "item") else v, default) for v in x.reshape(-1)]
    return [np.array(out, dtype=dt).reshape(x.shape)]


def _tree_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None]
    n = t.shape[0] if t.shape is not None else None
    return [TensorType(t.dtype, (n, attrs.get("n_targets")))]


@register_op("TreeEnsemble", domain=ML, inputs=["X"],
             attrs={"aggregate_function": 1, "leaf_targetids": None, "leaf_weights": None, "membership_values": None,
                    "n_targets": None, "nodes_falseleafs": None, "nodes_falsenodeids": None, "nodes_featureids": None,
                    "nodes_hitrates": None, "nodes_missing_value_tracks_true": None, "nodes_modes": None,
                    "nodes_splits": None, "nodes_trueleafs": None, "nodes_truenodeids": None, "post_transform": 0,
                    "tree_roots": None},
             infer=_tree_infer)
def tree_ensemble(inputs, attrs, ctx):
    """Every row walks every tree at once (one step per level, vectorized over rows); the leaves'
    weights are summed (averaged, min, max) per target."""
    x = inputs[0]
    if attrs["post_transform"] != 0:
        raise UnsupportedOpError(f"TreeEnsemble post_transform={attrs['post_transform']} (only NONE)")
    modes = np.asarray(attrs["nodes_modes"]).astype(np.int64).reshape(-1)
    splits = np.asarray(attrs["nodes_splits"]).astype(np.float64).reshape(-1)
    feat = np.asarray(attrs["nodes_featureids"], np.int64)
    t_ids, f_ids = np.asarray(attrs["nodes_truenodeids"], np.int64), np.asarray(attrs["nodes_falsenodeids"], np.int64)
    t_leaf, f_leaf = np.asarray(attrs["nodes_trueleafs"], bool), np.asarray(attrs["nodes_falseleafs"], bool)
    missing = np.asarray(attrs.get("nodes_missing_value_tracks_true") or np.zeros(len(modes)), bool)
    weights = np.asarray(attrs["leaf_weights"]).astype(np.float64).reshape(-1)
    targets = np.asarray(attrs["leaf_targetids"], np.int64)
    members: dict[int, np.ndarray] = {}
    if (modes == 6).any():  # BRANCH_MEMBER: the sets come one after another, NaN-separated
        vals = np.asarray(attrs["membership_values"]).astype(np.float64).reshape(-1)
        groups = np.split(vals, np.flatnonzero(np.isnan(vals)) + 1)
        for node_id, g in zip(np.flatnonzero(modes == 6), groups):
            members[int(node_id)] = g[~np.isnan(g)]
    xf = x.astype(np.float64)
    rows = np.arange(x.shape[0])
    n_targets = int(attrs["n_targets"])
    agg = attrs["aggregate_function"]
    init = {0: 0.0, 1: 0.0, 2: np.inf, 3: -np.inf}.get(agg)
    if init is None:
        raise UnsupportedOpError(f"TreeEnsemble aggregate_function={agg}")
    out = np.full((x.shape[0], n_targets), init)
    roots = list(attrs["tree_roots"])
    for root in roots:
        node = np.full(x.shape[0], root, np.int64)
        leaf = np.full(x.shape[0], bool(t_leaf[root] and f_leaf[root] and t_ids[root] == f_ids[root]))
        node = np.where(leaf, t_ids[root], node)
        while not leaf.all():
            idx = np.where(leaf, 0, node)
            v = xf[rows, feat[idx]]
            s = splits[idx]
            m = modes[idx]
            go = np.select([m == 0, m == 1, m == 2, m == 3, m == 4, m == 5],
                           [v <= s, v < s, v >= s, v > s, v == s, v != s], False)
            for node_id, g in members.items():
                at = idx == node_id
                go = np.where(at, np.isin(v, g), go)
            go |= missing[idx] & np.isnan(v)
            nxt = np.where(go, t_ids[idx], f_ids[idx])
            nleaf = np.where(go, t_leaf[idx], f_leaf[idx])
            node = np.where(leaf, node, nxt)
            leaf = leaf | nleaf
        w, tg = weights[node], targets[node]
        if agg in (0, 1):
            np.add.at(out, (rows, tg), w / (len(roots) if agg == 0 else 1))
        elif agg == 2:
            np.minimum.at(out, (rows, tg), w)
        else:
            np.maximum.at(out, (rows, tg), w)
    return [out.astype(x.dtype)]
