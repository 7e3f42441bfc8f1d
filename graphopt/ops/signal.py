"""Signal processing: DFT, STFT, HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix.

Complex tensors are ONNX-style real tensors with a trailing axis of 2 (real,
imaginary), or 1 for a real signal. Transforms run in ``np.fft`` and
are cast back to the input's dtype; float32 signals transform in single precision.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import in_type, normalize_axis, register_op
from .shape_ops import values_of


def _to_complex(x: np.ndarray) -> np.ndarray:
    """(..., 1|2) real pairs -> complex, in the input's precision (float64 inputs stay float64: np.fft
    computes in single precision for complex64, as the model's own precision asks)."""
    wd = np.float64 if x.dtype == np.float64 else np.float32
    if x.shape[-1] == 1:
        return x[..., 0].astype(wd)
    if x.shape[-1] != 2:
        raise ShapeError(f"a complex signal needs a last axis of 1 or 2, got {x.shape[-1]}")
    z = np.empty(x.shape[:-1], np.complex128 if wd == np.float64 else np.complex64)
    z.real, z.imag = x[..., 0], x[..., 1]
    return z


def _to_pairs(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def _scalar_input(inputs, i):
    if len(inputs) > i and inputs[i] is not None and np.size(inputs[i]):
        return int(np.asarray(inputs[i]).reshape(-1)[0])
    return None


def _dft_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    return [None if t is None else TensorType(t.dtype, None if t.shape is None else (None,) * len(t.shape))]


@register_op("DFT", inputs=["input", "?dft_length", "?axis"], attrs={"axis": 1, "inverse": 0, "onesided": 0},
             infer=_dft_infer)
def dft(inputs, attrs, ctx):
    """Discrete Fourier transform along ``axis`` (an attribute before opset 20, an input after);
    ``onesided`` keeps the non-negative frequencies (an inverse one-sided transform is irfft)."""
    x = inputs[0]
    axis = _scalar_input(inputs, 2) if ctx.opset >= 20 else attrs["axis"]
    if axis is None:
        axis = -2
    axis = normalize_axis(axis, x.ndim, ctx.node)
    if axis == x.ndim - 1:
        raise ShapeError("DFT along the last axis, which holds the real/imaginary parts")
    n = _scalar_input(inputs, 1)
    inverse, onesided = bool(attrs["inverse"]), bool(attrs["onesided"])
    z = _to_complex(x)
    if inverse:
        if onesided:
            n = n or 2 * (x.shape[axis] - 1)
            return [np.fft.irfft(z, n=n, axis=axis)[..., None].astype(x.dtype)]
        y = np.fft.ifft(z, n=n or x.shape[axis], axis=axis)
    else:
        y = np.fft.fft(z, n=n or x.shape[axis], axis=axis)
        if onesided:
            y = np.take(y, np.arange(y.shape[axis] // 2 + 1), axis=axis)
    return [_to_pairs(y).astype(x.dtype)]


def _stft_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    return [None if t is None else TensorType(t.dtype, (None,) * 4)]


@register_op("STFT", inputs=["signal", "frame_step", "?window", "?frame_length"], attrs={"onesided": 1},
             infer=_stft_infer)
def stft(inputs, attrs, ctx):
    """Short-time Fourier transform of (batch, length, 1|2) into (batch, frames, bins, 2)."""
    x, step = inputs[:2]
    window = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    flen = _scalar_input(inputs, 3)
    step = int(np.asarray(step).reshape(-1)[0])
    if flen is None:
        flen = x.shape[-2] if window is None else window.shape[0]
    w = np.ones(flen) if window is None else window.astype(np.float64)
    if w.shape[0] != flen:
        raise ShapeError(f"STFT: window of {w.shape[0]} for frame_length {flen}")
    z = _to_complex(x)                                   # (batch, length)
    n_frames = 1 + (z.shape[1] - flen) // step
    starts = np.arange(n_frames) * step
    frames = z[:, starts[:, None] + np.arange(flen)[None, :]] * w   # (batch, frames, flen)
    y = np.fft.fft(frames, n=flen, axis=-1)
    if attrs["onesided"]:
        y = y[..., :flen // 2 + 1]
    return [_to_pairs(y).astype(x.dtype)]


def _window_infer(node: Node, attrs: dict):
    size = values_of(node.input(0))
    n = size[0] if size is not None and len(size) == 1 else None
    return [TensorType(dtypes.from_onnx(attrs["output_datatype"]), (n,))]


def _window(op_type, coeffs):
    @register_op(op_type, inputs=["size"], attrs={"output_datatype": 1, "periodic": 1}, infer=_window_infer)
    def kernel(inputs, attrs, ctx):
        size = int(np.asarray(inputs[0]).reshape(-1)[0])
        denom = size if attrs["periodic"] else size - 1
        phase = 2 * np.pi * np.arange(size) / denom if denom else np.zeros(size)
        y = sum(c * np.cos(k * phase) for k, c in enumerate(coeffs))
        return [np.asarray(y).astype(dtypes.to_numpy(dtypes.from_onnx(attrs["output_datatype"])))]

    kernel.__name__ = op_type.lower()
    kernel.__doc__ = f"The generalized cosine window ``sum_k a_k cos(2 pi k n / N)`` with a = {coeffs}."


_window("HannWindow", (0.5, -0.5))
_window("HammingWindow", (25 / 46, -21 / 46))
_window("BlackmanWindow", (0.42, -0.5, 0.08))


def _mel_infer(node: Node, attrs: dict):
    n_mel, n_dft = values_of(node.input(0)), values_of(node.input(1))
    shape = (n_dft[0] // 2 + 1 if n_dft else None, n_mel[0] if n_mel else None)
    return [TensorType(dtypes.from_onnx(attrs["output_datatype"]), shape)]


@register_op("MelWeightMatrix", inputs=["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
                                        "upper_edge_hertz"], attrs={"output_datatype": 1}, infer=_mel_infer)
def mel_weight_matrix(inputs, attrs, ctx):
    """Triangular mel filters (num_spectrogram_bins, num_mel_bins) over the DFT bins (HTK mel scale)."""
    n_mel, n_dft, rate = (int(np.asarray(a).reshape(-1)[0]) for a in inputs[:3])
    lo, hi = (float(np.asarray(a).reshape(-1)[0]) for a in inputs[3:5])
    n_bins = n_dft // 2 + 1
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    lo_mel, hi_mel = mel(lo), mel(hi)
    step = (hi_mel - lo_mel) / (n_mel + 2)
    points = np.arange(n_mel + 2) * step + lo_mel
    hz = 700 * (10 ** (points / 2595) - 1)
    bins = (((n_dft + 1) * hz) // rate).astype(np.int64)
    out = np.zeros((n_bins, n_mel))
    j = np.arange(n_bins)[:, None]
    left, center, right = bins[:-2][None, :], bins[1:-1][None, :], bins[2:][None, :]
    rise = np.where(center > left, (j - left) / np.maximum(center - left, 1), (j == center).astype(float))
    fall = (right - j) / np.maximum(right - center, 1)
    out = np.where((j >= left) & (j <= center), rise, 0.0)
    out = np.where((j >= center) & (j < right) & (right > center), fall, out)
    return [out.astype(dtypes.to_numpy(dtypes.from_onnx(attrs["output_datatype"])))]
