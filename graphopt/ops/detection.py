"""Object-detection ops: NonMaxSuppression, RoiAlign, MaxRoiPool.

NonMaxSuppression computes each class's pairwise IoU matrix at once and then
runs the greedy selection over it; the ROI ops loop over regions (there are
few) and vectorize within one.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import REQUIRED, in_type, register_op

# ---------------------------------------------------------------------------
# NonMaxSuppression


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(…, 4) boxes as (y1, x1, y2, x2) with y1 <= y2, x1 <= x2."""
    b = boxes.astype(np.float64)
    if center_point_box:
        xc, yc, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    y1, x1, y2, x2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1)


def _iou_matrix(c: np.ndarray) -> np.ndarray:
    """Pairwise IoU of corner boxes (M, 4); 0 where a box or the intersection is empty."""
    y1, x1, y2, x2 = (c[:, i] for i in range(4))
    ih = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    iw = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, 0.0)
    area = (y2 - y1) * (x2 - x1)
    union = area[:, None] + area[None, :] - inter
    ok = (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(union > 0, union, 1.0), 0.0)


def _scalar(inputs, i, default, cast):
    if len(inputs) > i and inputs[i] is not None and np.size(inputs[i]):
        return cast(np.asarray(inputs[i]).reshape(-1)[0])
    return default


@register_op("NonMaxSuppression",
             inputs=["boxes", "scores", "?max_output_boxes_per_class", "?iou_threshold", "?score_threshold"],
             outputs=["selected_indices"], attrs={"center_point_box": 0},
             infer=lambda node, attrs: [TensorType("int64", (None, 3))])
def non_max_suppression(inputs, attrs, ctx):
    """Per batch and class, greedily keep the best-scoring boxes whose IoU with every box kept
    before is at most ``iou_threshold`` (scores must exceed ``score_threshold`` when given).
    Rows are (batch, class, box)."""
    boxes, scores = inputs[:2]
    max_out = max(_scalar(inputs, 2, 0, int), 0)
    iou_thr = _scalar(inputs, 3, 0.0, float)
    has_score_thr = len(inputs) > 4 and inputs[4] is not None and np.size(inputs[4])
    score_thr = _scalar(inputs, 4, 0.0, float)
    nb, nc, n = scores.shape
    if boxes.shape != (nb, n, 4):
        raise ShapeError(f"NonMaxSuppression: boxes {list(boxes.shape)} for scores {list(scores.shape)}")
    corners = _corners(boxes, attrs["center_point_box"])
    rows = []
    for b in range(nb):
        for c in range(nc):
            if max_out == 0:
                break
            s = scores[b, c].astype(np.float64)
            cand = np.flatnonzero(s > score_thr) if has_score_thr else np.arange(n)
            # best score first; equal scores keep the lower box index first
            cand = cand[np.lexsort((cand, -s[cand]))]
            iou = _iou_matrix(corners[b, cand])
            suppressed = np.zeros(len(cand), bool)
            kept = 0
            for i in range(len(cand)):
                if suppressed[i]:
                    continue
                rows.append((b, c, int(cand[i])))
                kept += 1
                if kept >= max_out:
                    break
                suppressed |= iou[i] > iou_thr
    return [np.array(rows, dtype=np.int64).reshape(-1, 3)]


# ---------------------------------------------------------------------------
# RoiAlign, MaxRoiPool


def _roi_infer(node: Node, attrs: dict):
    x, rois = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    r = rois.shape[0] if rois is not None and rois.shape is not None else None
    c = x.shape[1] if x.shape is not None else None
    if node.op_type == "MaxRoiPool":
        ph, pw = attrs["pooled_shape"]
    else:
        ph, pw = attrs["output_height"], attrs["output_width"]
    return [TensorType(x.dtype, (r, c, ph, pw))]


def _axis_samples(start: float, bin_size: float, pooled: int, grid: int, size: int):
    """Sample positions along one axis, (pooled, grid), with the two taps and weights each
    (positions past [-1, size] are marked invalid, as in Detectron's RoiAlign)."""
    p = start + np.arange(pooled)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    valid = (p >= -1.0) & (p <= size)
    p = np.maximum(p, 0.0)
    lo = np.floor(p).astype(np.int64)
    at_end = lo >= size - 1
    lo = np.where(at_end, size - 1, lo)
    hi = np.where(at_end, size - 1, lo + 1)
    p = np.where(at_end, lo, p)
    frac = p - lo
    return lo, hi, 1.0 - frac, frac, valid


@register_op("RoiAlign", inputs=["X", "rois", "batch_indices"],
             attrs={"coordinate_transformation_mode": "half_pixel", "mode": "avg", "output_height": 1,
                    "output_width": 1, "sampling_ratio": 0, "spatial_scale": 1.0}, infer=_roi_infer)
def roi_align(inputs, attrs, ctx):
    """Average (or max) of bilinear samples on a regular grid in each output bin of each region
    (``output_half_pixel``, the opset-10 behaviour, does not shift by half a pixel)."""
    x, rois, bidx = inputs
    n, c, h, w = x.shape
    ph, pw = int(attrs["output_height"]), int(attrs["output_width"])
    scale, ratio = float(attrs["spatial_scale"]), int(attrs["sampling_ratio"])
    half = attrs["coordinate_transformation_mode"] == "half_pixel"
    mode = attrs["mode"].lower()
    if mode not in ("avg", "max"):
        raise ShapeError(f"RoiAlign mode {attrs['mode']!r} (avg or max)")
    work = np.float64
    xf = x.astype(work)
    rois = rois.astype(work)
    bidx = np.asarray(bidx).astype(np.int64).reshape(-1)
    out = np.zeros((len(bidx), c, ph, pw), work)
    off = 0.5 if half else 0.0
    for r in range(len(bidx)):
        x1, y1, x2, y2 = (rois[r, i] * scale - off for i in range(4))
        rw, rh = x2 - x1, y2 - y1
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = ratio if ratio > 0 else int(math.ceil(rh / ph))
        gw = ratio if ratio > 0 else int(math.ceil(rw / pw))
        ylo, yhi, wy0, wy1, vy = _axis_samples(y1, bh, ph, gh, h)
        xlo, xhi, wx0, wx1, vx = _axis_samples(x1, bw, pw, gw, w)
        img = xf[bidx[r]]                                   # (C, H, W)
        # (C, PH, GH, PW, GW) for each of the four neighbours
        def tap(yi, xi):
            return img[:, yi[:, :, None, None], xi[None, None, :, :]]

        wy0_, wy1_ = wy0[:, :, None, None], wy1[:, :, None, None]
        wx0_, wx1_ = wx0[None, None], wx1[None, None]
        parts = [wy0_ * wx0_ * tap(ylo, xlo), wy0_ * wx1_ * tap(ylo, xhi),
                 wy1_ * wx0_ * tap(yhi, xlo), wy1_ * wx1_ * tap(yhi, xhi)]
        valid = (vy[:, :, None, None] & vx[None, None])
        if mode == "avg":
            s = np.where(valid, parts[0] + parts[1] + parts[2] + parts[3], 0.0)
            out[r] = s.sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            # the max of the weighted neighbours (what ORT and ONNX's reference compute)
            m = np.where(valid, np.maximum(np.maximum(parts[0], parts[1]), np.maximum(parts[2], parts[3])), 0.0)
            out[r] = m.max(axis=(2, 4)) if gh * gw else 0.0
    return [out.astype(x.dtype)]


@register_op("MaxRoiPool", inputs=["X", "rois"], attrs={"pooled_shape": REQUIRED, "spatial_scale": 1.0},
             infer=_roi_infer)
def max_roi_pool(inputs, attrs, ctx):
    """Max over each bin of each region (rois rows: batch, x1, y1, x2, y2; corners rounded after
    scaling, as Caffe and ORT do); an empty bin gives 0."""
    x, rois = inputs
    n, c, h, w = x.shape
    ph, pw = (int(v) for v in attrs["pooled_shape"])
    scale = float(attrs["spatial_scale"])
    out = np.zeros((rois.shape[0], c, ph, pw), x.dtype)

    def rnd(v):  # std::round: half away from zero
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        x1, y1, x2, y2 = (rnd(float(rois[r, i]) * scale) for i in range(1, 5))
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = rh / ph, rw / pw
        for i in range(ph):
            hs = min(max(int(math.floor(i * bh)) + y1, 0), h)
            he = min(max(int(math.ceil((i + 1) * bh)) + y1, 0), h)
            for j in range(pw):
                ws = min(max(int(math.floor(j * bw)) + x1, 0), w)
                we = min(max(int(math.ceil((j + 1) * bw)) + x1, 0), w)
                if he > hs and we > ws:
                    out[r, :, i, j] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
    return [out]
