"""String ops: StringNormalizer, StringSplit, StringConcat, RegexFullMatch.

String tensors are NumPy object arrays of ``str`` (what the ONNX importer
decodes them to); each op loops over the elements in Python, which is what
string work costs anyway.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import REQUIRED, broadcast_infer, in_type, register_op


def _strings(x: np.ndarray, op: str) -> np.ndarray:
    if x.dtype != object and x.dtype.kind not in "US":
        raise ShapeError(f"{op} expects a string tensor, got {x.dtype}")
    return x


def _as_object(values, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _normalizer_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None or t.shape is None:
        return [TensorType("string", None)]
    return [TensorType("string", tuple(t.shape[:-1]) + (None,))]


@register_op("StringNormalizer", inputs=["X"],
             attrs={"case_change_action": "NONE", "is_case_sensitive": 0, "locale": None, "stopwords": None},
             infer=_normalizer_infer)
def string_normalizer(inputs, attrs, ctx):
    """Drop the stop words (elements equal to one, case-insensitively unless ``is_case_sensitive``),
    then change case; X is [C] or [1, C], and an all-dropped result is one empty string."""
    x = _strings(inputs[0], "StringNormalizer")
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ShapeError(f"StringNormalizer input of shape {list(x.shape)} (needs [C] or [1, C])")
    action = attrs["case_change_action"]
    if action not in ("NONE", "LOWER", "UPPER"):
        raise ShapeError(f"StringNormalizer case_change_action {action!r}")
    stops = list(attrs.get("stopwords") or [])
    sensitive = bool(attrs["is_case_sensitive"])
    stopset = set(stops) if sensitive else {s.lower() for s in stops}
    kept = [w for w in x.reshape(-1) if (w if sensitive else w.lower()) not in stopset]
    if action == "LOWER":
        kept = [w.lower() for w in kept]
    elif action == "UPPER":
        kept = [w.upper() for w in kept]
    if not kept:
        kept = [""]
    return [_as_object(kept, (len(kept),) if x.ndim == 1 else (1, len(kept)))]


def _split_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    shape = None if t is None or t.shape is None else tuple(t.shape)
    return [TensorType("string", None if shape is None else shape + (None,)), TensorType("int64", shape)]


@register_op("StringSplit", inputs=["X"], outputs=["Y", "Z"], attrs={"delimiter": None, "maxsplit": None},
             infer=_split_infer)
def string_split(inputs, attrs, ctx):
    """Split each string at ``delimiter`` (runs of whitespace when empty), at most ``maxsplit``
    times; Y pads the pieces with "" to the longest split, Z counts them."""
    x = _strings(inputs[0], "StringSplit")
    sep = attrs.get("delimiter") or None
    maxsplit = attrs.get("maxsplit")
    parts = [str(s).split(sep, -1 if maxsplit is None else maxsplit) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    flat = [q for p in parts for q in p + [""] * (width - len(p))]
    return [_as_object(flat, x.shape + (width,)), np.array([len(p) for p in parts], np.int64).reshape(x.shape)]


@register_op("StringConcat", inputs=["X", "Y"], infer=broadcast_infer("string"))
def string_concat(inputs, attrs, ctx):
    """Element-wise concatenation with broadcasting."""
    a, b = (_strings(v, "StringConcat") for v in inputs)
    a, b = np.broadcast_arrays(a, b)
    return [_as_object([str(p) + str(q) for p, q in zip(a.reshape(-1), b.reshape(-1))], a.shape)]


@register_op("RegexFullMatch", inputs=["X"], attrs={"pattern": REQUIRED},
             infer=lambda node, attrs: [TensorType("bool", None if in_type(node, 0) is None else in_type(node, 0).shape)])
def regex_full_match(inputs, attrs, ctx):
    """Whether each string matches ``pattern`` (Python ``re`` syntax, close to RE2's) entirely."""
    x = _strings(inputs[0], "RegexFullMatch")
    try:
        rx = re.compile(attrs["pattern"])
    except re.error as exc:
        raise ShapeError(f"RegexFullMatch: invalid pattern {attrs['pattern']!r}: {exc}") from None
    return [np.array([rx.fullmatch(str(s)) is not None for s in x.reshape(-1)], bool).reshape(x.shape)]


def _tfidf_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    width = max(attrs.get("ngram_indexes") or [-1]) + 1
    if t is None or t.shape is None:
        return [TensorType("float32", None)]
    return [TensorType("float32", (width,) if len(t.shape) == 1 else (t.shape[0], width))]


@register_op("TfIdfVectorizer", inputs=["X"],
             attrs={"max_gram_length": REQUIRED, "max_skip_count": REQUIRED, "min_gram_length": REQUIRED,
                    "mode": REQUIRED, "ngram_counts": REQUIRED, "ngram_indexes": REQUIRED, "pool_int64s": None,
                    "pool_strings": None, "weights": None},
             infer=_tfidf_infer)
def tfidf_vectorizer(inputs, attrs, ctx):
    """Count the pool's n-grams (``min_gram_length``..``max_gram_length`` long, their items up to
    ``max_skip_count`` apart) in each row; TF gives counts, IDF the weight of each n-gram present,
    TFIDF count times weight."""
    x = inputs[0]
    pool = attrs.get("pool_int64s")
    pool = list(attrs.get("pool_strings") or []) if pool is None else [int(v) for v in pool]
    starts = [int(v) for v in attrs["ngram_counts"]] + [len(pool)]
    out_idx = [int(v) for v in attrs["ngram_indexes"]]
    table: dict[tuple, int] = {}   # n-gram -> output column
    grams = [tuple(pool[i:i + n]) for n in range(1, len(starts)) for i in range(starts[n - 1], starts[n], n)]
    for g, col in zip(grams, out_idx):
        table[g] = col
    width = max(out_idx, default=-1) + 1
    lo, hi, skip = int(attrs["min_gram_length"]), int(attrs["max_gram_length"]), int(attrs["max_skip_count"])
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    counts = np.zeros((rows.shape[0], width), np.float32)
    for r, row in enumerate(rows):
        items = [v if isinstance(v, str) else int(v) for v in row]
        for n in range(lo, hi + 1):
            for s in range(0, skip + 1 if n > 1 else 1):  # a unigram has no gaps to skip
                step = s + 1
                for i in range(len(items) - (n - 1) * step):
                    j = table.get(tuple(items[i:i + (n - 1) * step + 1:step]))
                    if j is not None:
                        counts[r, j] += 1
    mode = attrs["mode"]
    weights = np.asarray(attrs.get("weights") if attrs.get("weights") is not None else np.ones(width), np.float32)
    if mode == "IDF":
        counts = np.where(counts > 0, weights[:width], 0).astype(np.float32)
    elif mode == "TFIDF":
        counts = counts * weights[:width]
    elif mode != "TF":
        raise ShapeError(f"TfIdfVectorizer mode {mode!r} (TF, IDF or TFIDF)")
    return [counts.reshape(width) if x.ndim == 1 else counts]
