"""Streaming calibration: observers that see activations batch by batch and keep
a fixed amount of state per tensor, and the range-selection methods.

* ``MinMaxObserver``: running min and max.
* ``HistogramObserver``: running min/max plus a histogram of ``bins`` bins over
  ``[-R, R]``. When a batch exceeds ``R``, ``R`` grows by the smallest power of
  two that covers it and old bins are merged into the wider ones (2**k old bins
  per new bin, exactly, while ``2**k < bins``), so the state never grows and no
  activation is kept after its batch.

Range selection (``observer.range(method, qtype)``) returns the real interval
``[lo, hi]`` that the quantization grid will cover:

* ``minmax``: the observed extremes.
* ``percentile``: the ``percentile``-th (and ``100 - percentile``-th) percentile,
  read from the histogram (interpolated within a bin).
* ``entropy``: TensorRT's KL-divergence threshold on ``|x|``: the clip ``T`` whose
  quantized distribution (128 levels per sign, 256 for a non-negative uint8
  tensor) loses the least information; the range is ``[-T, T]`` met with the
  observed extremes.
* ``mse``: the clip range, scanned over ``[a*min, a*max]`` for 0 < a <= 1, that
  minimizes the expected squared quantization error (clipping included) under the
  histogram.

>>> obs = HistogramObserver(bins=256)
>>> obs.update(np.linspace(-1, 3, 1000, dtype=np.float32))
>>> lo, hi = obs.range("minmax", "uint8"); (round(lo, 3), round(hi, 3))
(-1.0, 3.0)
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from ..errors import GraphoptError

METHODS = ("minmax", "percentile", "entropy", "mse")
QMAX = {"uint8": 255, "int8": 127}


class MinMaxObserver:
    """Running extremes of a tensor (NaN and inf ignored)."""

    def __init__(self):
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        x = x.astype(np.float32, copy=False)
        fin = x[np.isfinite(x)] if not np.isfinite(x).all() else x
        if fin.size == 0:
            return
        self.min = min(self.min, float(fin.min()))
        self.max = max(self.max, float(fin.max()))
        self.count += int(fin.size)

    @property
    def seen(self) -> bool:
        return self.count > 0

    def range(self, method: str = "minmax", qtype: str = "uint8", **opts) -> tuple[float, float]:
        if not self.seen:
            return 0.0, 0.0
        if method != "minmax":
            raise GraphoptError(f"calibration method {method!r} needs a HistogramObserver")
        return self.min, self.max

    def nbytes(self) -> int:
        return 24


class HistogramObserver(MinMaxObserver):
    """Min/max plus a fixed-size histogram over ``[-R, R]``; memory is O(bins)."""

    def __init__(self, bins: int = 4096):
        super().__init__()
        if bins < 64 or bins & (bins - 1):
            raise GraphoptError(f"histogram bins must be a power of two >= 64, got {bins}")
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)  # of the non-zero values
        self.zeros = 0  # exact zeros (ReLU outputs, padding) are counted apart: see _kl_threshold
        self.R = 0.0

    def nbytes(self) -> int:
        return int(self.hist.nbytes) + 32

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if not np.isfinite(x).all():
            x = x[np.isfinite(x)]
        if x.size == 0:
            return
        super().update(x)
        nz = x[x != 0]
        self.zeros += int(x.size - nz.size)
        x = nz
        if x.size == 0:
            return
        amax = float(np.max(np.abs(x)))
        if self.R == 0.0:
            self.R = _pow2_ceil(amax)
        elif amax > self.R:
            self._grow(_pow2_ceil(amax / self.R))
        h, _ = np.histogram(x, bins=self.bins, range=(-self.R, self.R))
        self.hist += h

    def _grow(self, factor: float) -> None:
        """Widen the range by ``factor`` (a power of two), merging old bins into new ones."""
        b = self.bins
        new_r = self.R * factor
        w, nw = 2 * self.R / b, 2 * new_r / b
        centers = -self.R + (np.arange(b) + 0.5) * w
        idx = np.clip(np.floor((centers + new_r) / nw).astype(np.int64), 0, b - 1)
        new = np.zeros(b, np.int64)
        np.add.at(new, idx, self.hist)
        self.hist, self.R = new, new_r

    def merge(self, other: "HistogramObserver") -> None:
        """Fold another observer of the same tensor (e.g. from another worker) into this one."""
        if not other.seen:
            return
        if not self.seen:
            self.min, self.max, self.count, self.R = other.min, other.max, other.count, other.R
            self.hist, self.zeros = other.hist.copy(), other.zeros
            return
        o_hist, o_r = other.hist, other.R
        if o_r > self.R:
            self._grow(o_r / self.R)
        elif o_r < self.R:
            tmp = HistogramObserver(self.bins)
            tmp.hist, tmp.R = o_hist.copy(), o_r
            tmp._grow(self.R / o_r)
            o_hist = tmp.hist
        self.hist = self.hist + o_hist
        self.zeros += other.zeros
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count

    # -- range selection --------------------------------------------------------
    def _edges(self) -> np.ndarray:
        return np.linspace(-self.R, self.R, self.bins + 1)

    def _full_hist(self) -> np.ndarray:
        h = self.hist.copy()
        h[self.bins // 2] += self.zeros  # np.histogram puts 0.0 in the bin that starts at 0
        return h

    def _abs_hist(self, zeros: bool = True) -> np.ndarray:
        half = self.bins // 2
        h = self.hist[half:] + self.hist[:half][::-1]
        if zeros:
            h[0] += self.zeros
        return h

    def range(self, method: str = "minmax", qtype: str = "uint8", *, percentile: float = 99.99,
              **opts) -> tuple[float, float]:
        if not self.seen:
            return 0.0, 0.0
        if method == "minmax":
            return self.min, self.max
        symmetric = qtype == "int8"
        if self.max == self.min:
            return self.min, self.max
        if method == "percentile":
            if not 50.0 < percentile <= 100.0:
                raise GraphoptError(f"percentile must be in (50, 100], got {percentile}")
            if symmetric:
                t = self._abs_quantile(percentile / 100.0)
                return max(self.min, -t), min(self.max, t)
            lo = self._quantile(1.0 - percentile / 100.0)
            hi = self._quantile(percentile / 100.0)
            return max(self.min, lo), min(self.max, hi)
        if method == "entropy":
            t = self._kl_threshold(256 if (self.min >= 0 and not symmetric) else 128)
            return max(self.min, -t), min(self.max, t)
        if method == "mse":
            return self._mse_range(qtype)
        raise GraphoptError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")

    def _quantile(self, q: float) -> float:
        h = self._full_hist()
        cdf = np.cumsum(h)
        target = q * cdf[-1]
        i = int(np.searchsorted(cdf, target))
        i = min(i, self.bins - 1)
        prev = cdf[i - 1] if i else 0
        frac = (target - prev) / max(h[i], 1)
        edges = self._edges()
        return float(edges[i] + frac * (edges[i + 1] - edges[i]))

    def _abs_quantile(self, q: float) -> float:
        h = self._abs_hist()
        cdf = np.cumsum(h)
        target = q * cdf[-1]
        i = min(int(np.searchsorted(cdf, target)), len(h) - 1)
        prev = cdf[i - 1] if i else 0
        frac = (target - prev) / max(h[i], 1)
        w = self.R / len(h)
        return float((i + frac) * w)

    def _kl_threshold(self, levels: int) -> float:
        """TensorRT-style entropy calibration on the |x| histogram.

        Exact zeros are left out: zero is always exactly representable, and the
        spike of a ReLU output at 0 would otherwise drag the threshold down."""
        h = self._abs_hist(zeros=False).astype(np.float64)
        n = len(h)
        w = self.R / n
        last = int(np.nonzero(h)[0][-1]) + 1 if h.any() else n
        if last <= levels:
            return last * w
        best_kl, best_i = math.inf, last
        stride = max(1, (last - levels) // 256)
        for i in range(levels, last + 1, stride):
            p = h[:i].copy()
            p[-1] += h[i:].sum()
            nz = h[:i] > 0
            # merge the i reference bins into `levels` quantized bins, then spread each
            # bin's mass evenly over its non-empty source bins
            edges = np.linspace(0, i, levels + 1).astype(np.int64)
            idx = np.repeat(np.arange(levels), np.diff(edges))
            mass = np.bincount(idx, weights=h[:i], minlength=levels)
            cnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=levels)
            q = np.where(nz, (mass / np.maximum(cnt, 1))[idx], 0.0)
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            p /= ps
            q /= qs
            m = p > 0
            qm = np.where(q[m] > 0, q[m], 1e-12)
            kl = float(np.sum(p[m] * np.log(p[m] / qm)))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return best_i * w

    def _mse_range(self, qtype: str) -> tuple[float, float]:
        """Scan clip ranges ``[a*min, a*max]`` (a on a linear and a log grid) for the least
        expected squared error. Each bin's error is its clipping error, or its rounding
        error: ``step**2/12`` when a bin spans several steps, else the bin center's own
        rounding error plus the spread within the bin."""
        edges = self._edges()
        w = float(edges[1] - edges[0])
        c = 0.5 * (edges[:-1] + edges[1:])
        keep = self.hist > 0  # exact zeros carry no error: 0 is always on the grid
        c, n = c[keep], self.hist[keep].astype(np.float64)
        best, best_err = (self.min, self.max), math.inf
        grid = np.unique(np.concatenate([np.linspace(1.0 / 128, 1.0, 128), np.geomspace(1.0 / 1024, 1.0, 64)]))
        for a in grid:
            lo, hi = self.min * a, self.max * a
            scale, zp, qmin, qmax = qparams(lo, hi, qtype)
            s = float(scale)
            lo_rep, hi_rep = (qmin - zp) * s, (qmax - zp) * s
            inside = (c >= lo_rep) & (c <= hi_rep)
            clip_err = (c - np.clip(c, lo_rep, hi_rep)) ** 2 + w * w / 12
            if w >= s:
                round_err = np.full_like(c, s * s / 12)
            else:
                round_err = (c - (np.clip(np.rint(c / s) + zp, qmin, qmax) - zp) * s) ** 2 + w * w / 12
            err = float(np.sum(n * np.where(inside, round_err, clip_err)))
            if err < best_err:
                best_err, best = err, (lo, hi)
        return best


def _pow2_ceil(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 1.0
    return 2.0 ** math.ceil(math.log2(x))


def qparams(lo: float, hi: float, qtype: str) -> tuple[np.float32, int, int, int]:
    """Scale and zero point covering ``[lo, hi]`` (zero always included, exactly representable).

    ``uint8``: asymmetric, 256 levels; ``int8``: symmetric, zero point 0, scale ``max|x|/127``.

    >>> qparams(-1.0, 3.0, "uint8")[:2]
    (np.float32(0.015686275), 64)
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if qtype == "int8":
        a = max(abs(lo), abs(hi))
        scale = np.float32(a / 127.0) if a > 0 else np.float32(1.0)
        return scale, 0, -128, 127
    if qtype == "uint8":
        scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
        zp = int(np.clip(np.rint(-lo / float(scale)), 0, 255))
        return scale, zp, 0, 255
    raise GraphoptError(f"activation type must be 'uint8' or 'int8', not {qtype!r}")


def make_observer(method: str, bins: int = 4096) -> MinMaxObserver:
    if method not in METHODS:
        raise GraphoptError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    return MinMaxObserver() if method == "minmax" else HistogramObserver(bins)


def collect(graph, value_names: Iterable[str], data: Iterable[Mapping[str, np.ndarray]], method: str = "minmax",
            *, bins: int = 4096, max_batches: int | None = None, progress=None) -> tuple[dict, int]:
    """Run ``graph`` on the NumPy reference over ``data`` (an iterable of feed dicts),
    feeding the values named in ``value_names`` to one observer each.

    Returns ``(observers by name, number of batches seen)``. Only one batch's
    activations are alive at a time.
    """
    from ..plugins.cpu.backend import CpuExecutable

    names = list(dict.fromkeys(value_names))
    g = graph.clone()
    by_name = {v.name: v for v in g.values()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise GraphoptError(f"calibration: no value named {missing[0]!r} in the graph")
    extra = []
    for n in names:
        v = by_name[n]
        if not v.is_graph_output:
            g.add_output(v)
        extra.append(v)
    exe = CpuExecutable(g)
    out_index = {v.name: i for i, v in enumerate(g.outputs)}
    observers = {n: make_observer(method, bins) for n in names}
    batches = 0
    for feeds in data:
        if max_batches is not None and batches >= max_batches:
            break
        outs = exe.run(feeds)
        for n in names:
            observers[n].update(outs[out_index[n]])
        del outs
        batches += 1
        if progress is not None:
            progress(batches)
    if batches == 0:
        raise GraphoptError("calibration data is empty: give at least one batch of inputs")
    return observers, batches
